"""A queue of sweep commands on a CPU machine, one per core, each pinned to its core.

    python -m experiments.queue QUEUE_FILE [--cores 0,1] [--nice 19]

QUEUE_FILE holds one `python -m experiments.run` command per line, as its arguments
(`experiments/routers.py --only=relu`; '#' starts a comment). Each core runs the first line no
other core is running a command of the same sweep for (a sweep's results files are written by
whichever of its commands ends, so two of them at once would race), in a child process pinned
to that core (os.sched_setaffinity), its output in QUEUE_FILE.logs/. A line is removed from the
file when its command succeeds; a failed one stays, is reported, and its core moves on. Stopped
(Ctrl-C, a session's end), the same command starts again where the file says: each sweep skips
what finished and resumes an interrupted run from its checkpoint.

Why one run per core: at the CPU protocol's sizes a step's small matmuls do not keep two
threads busy, so two single-core runs side by side give 1.31x the tokens/s of one run on both
cores (benchmarks/concurrent_runs.py, benchmarks/README.md "A run per core"). Linux only.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def read_lines(path: pathlib.Path) -> list[str]:
  """The queue's commands, in order (blank lines and comments left out)."""
  lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
  return [line for line in lines if line]


def sweep_of(line: str) -> str:
  """The sweep file a command runs (its positional argument), as a resolved path, so that
  `./experiments/x.py` and `experiments/x.py` are one sweep. ValueError: a malformed line."""
  positional = [a for a in shlex.split(line) if not a.startswith("-")]
  if len(positional) != 1:
    raise ValueError(f"names {len(positional)} sweep files (one experiments.run command: a "
                     "sweep file and its --options)")
  return str((REPO / positional[0]).resolve())


def next_line(lines: list[str], running: list[str]) -> str | None:
  """The first line that is not running and whose sweep has no running command (the lines
  are well formed: run_queue sets the others aside)."""
  busy = {sweep_of(line) for line in running}
  return next((line for line in lines
               if line not in running and sweep_of(line) not in busy), None)


def remove_line(path: pathlib.Path, line: str) -> None:
  """Removes the command's first occurrence from the file (kept as the user wrote it
  otherwise); an atomic rewrite, so a stop mid-write loses nothing. The file may be edited
  while the queue runs: a rewrite whose source changed meanwhile is redone from the new text,
  so an added line is not lost (short of an edit inside the last microseconds)."""
  while True:
    before = path.stat().st_mtime_ns, path.stat().st_size
    kept, removed = [], False
    for raw in path.read_text().splitlines():
      if not removed and raw.split("#", 1)[0].strip() == line:
        removed = True
        continue
      kept.append(raw)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(kept) + ("\n" if kept else ""))
    if (path.stat().st_mtime_ns, path.stat().st_size) == before:
      tmp.replace(path)
      return


def _start(line: str, core: int, log: pathlib.Path, niceness: int) -> subprocess.Popen:
  def pin():
    os.sched_setaffinity(0, {core})
    os.nice(niceness)
  with open(log, "a") as out:      # the child keeps its own copy of the descriptor
    out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} core {core}: {line}\n")
    out.flush()
    # A session of its own: a Ctrl-C at the terminal reaches the queue alone, which passes
    # each command one SIGTERM (a second signal makes a run exit without its checkpoint).
    return subprocess.Popen([sys.executable, "-m", "experiments.run", *shlex.split(line)],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin,
                            start_new_session=True)


def _interrupt(signum, frame):
  raise KeyboardInterrupt(signal.Signals(signum).name)


def run_queue(path, cores: list[int], *, niceness: int = 0, poll_s: float = 2.0,
              say=print) -> list[str]:
  """Runs the queue until no line can start and nothing runs; returns the failed lines."""
  path = pathlib.Path(path)
  logs = path.with_name(path.name + ".logs")
  logs.mkdir(exist_ok=True)
  running: dict[int, tuple[str, subprocess.Popen]] = {}
  failed: list[str] = []
  # A session's end (SIGHUP) or a kill (SIGTERM) stops the queue as a Ctrl-C does: its
  # commands are stopped, not left running unseen. SIGINT too, even where the queue was
  # started with it ignored (a parent's inherited SIG_IGN would make Python leave it so).
  previous = {sig: signal.signal(sig, _interrupt)
              for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
  try:
    while True:
      for core, (line, proc) in list(running.items()):
        if proc.poll() is None:
          continue
        del running[core]
        if proc.returncode == 0:
          remove_line(path, line)
          say(f"done (core {core}): {line}")
        else:
          failed.append(line)
          say(f"FAILED (core {core}, exit {proc.returncode}; log in {logs}): {line}")
      todo = []
      for line in read_lines(path):
        try:
          sweep_of(line)
        except ValueError as e:
          if line not in failed:
            failed.append(line)
            say(f"FAILED (not run: {e}): {line}")
        if line not in failed:
          todo.append(line)
      for core in cores:
        if core in running:
          continue
        line = next_line(todo, [l for l, _ in running.values()])
        if line is None:
          break
        log = logs / f"{pathlib.Path(sweep_of(line)).stem}.log"
        running[core] = (line, _start(line, core, log, niceness))
        say(f"start (core {core}): {line}")
      if not running:
        return failed
      time.sleep(poll_s)
  finally:
    # Stopped (or failed) with commands running: each saves a checkpoint and exits
    # (moe_jax.interrupts), its line kept for the next start.
    for _, proc in running.values():
      if proc.poll() is None:
        proc.terminate()
    for _, proc in running.values():
      proc.wait()
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("queue", help="a file of experiments.run commands, one per line")
  parser.add_argument("--cores", default=None,
                      help="comma-separated CPU ids (default: every core this process may use)")
  parser.add_argument("--nice", type=int, default=0, help="the commands' niceness")
  args = parser.parse_args(argv)
  path = pathlib.Path(args.queue)
  if not path.is_file():
    sys.exit(f"error: {path} is not a file (one experiments.run command per line)")
  allowed = sorted(os.sched_getaffinity(0))
  try:
    cores = allowed if args.cores is None else [int(c) for c in args.cores.split(",")]
  except ValueError:
    cores = None
  if cores is None or not set(cores) <= set(allowed):
    sys.exit(f"error: --cores {args.cores}: this process may use cores "
             f"{','.join(map(str, allowed))}")
  try:
    failed = run_queue(path, cores, niceness=args.nice)
  except KeyboardInterrupt as stop:
    print(f"queue {path}: stopped ({stop or 'SIGINT'}), the running commands saved their "
          f"checkpoints; {len(read_lines(path))} commands left. Run the same command to go on.")
    sys.exit(130)
  left = read_lines(path)
  print(f"queue {path}: {len(left)} commands left" + (f", {len(failed)} failed" if failed
                                                      else ""))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
