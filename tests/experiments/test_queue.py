"""experiments.queue: sweep commands from a file, one per core, pinned; a sweep's commands one
at a time; a line removed when its command succeeds, a failed one kept and reported."""
import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from experiments import queue
from tests.train_helpers import REPO, assert_one_line_error, run_cli, subprocess_env


def test_lines_comments_and_one_command_per_sweep_at_a_time(tmp_path):
  path = tmp_path / "q.txt"
  path.write_text("# the routers first\nexperiments/routers.py --only=relu  # 5 seeds\n\n"
                  "experiments/routers.py --only=hash\nexperiments/balancing.py --only=x\n"
                  "experiments/routers.py --only=relu\n")
  lines = queue.read_lines(path)
  assert lines == ["experiments/routers.py --only=relu", "experiments/routers.py --only=hash",
                   "experiments/balancing.py --only=x", "experiments/routers.py --only=relu"]
  assert queue.next_line(lines, []) == lines[0]
  assert queue.next_line(lines, [lines[0]]) == lines[2]      # routers busy: balancing
  assert queue.next_line(lines, [lines[0], lines[2]]) is None
  queue.remove_line(path, lines[0])                          # the first occurrence only
  assert queue.read_lines(path) == lines[1:]
  assert path.read_text().startswith("# the routers first\n\nexperiments/routers.py --only=h")


def test_a_sweep_is_its_file_however_the_line_spells_its_path():
  lines = ["./experiments/routers.py --only=relu", "experiments/routers.py --only=hash",
           "--quick experiments/balancing.py"]
  assert queue.sweep_of(lines[0]) == queue.sweep_of(lines[1]) == \
      str(REPO / "experiments" / "routers.py")
  assert queue.sweep_of(lines[2]) == str(REPO / "experiments" / "balancing.py")
  assert queue.next_line(lines, [lines[0]]) == lines[2]      # routers busy, however spelt
  for bad in ("--quick", "experiments/a.py experiments/b.py"):
    with pytest.raises(ValueError, match="sweep files"):
      queue.sweep_of(bad)


def test_a_line_added_while_a_finished_one_is_removed_is_kept(tmp_path, monkeypatch):
  path = tmp_path / "q.txt"
  path.write_text("experiments/routers.py --only=relu\nexperiments/routers.py --only=hash\n")
  write = pathlib.Path.write_text
  def write_and_edit(self, text, *a, **k):      # the user saves an edit mid-rewrite, once
    if self.name == "q.txt.tmp" and "cluster" not in path.read_text():
      write(path, path.read_text() + "experiments/routers.py --only=cluster\n")
    return write(self, text, *a, **k)
  monkeypatch.setattr(pathlib.Path, "write_text", write_and_edit)
  queue.remove_line(path, "experiments/routers.py --only=relu")
  assert queue.read_lines(path) == ["experiments/routers.py --only=hash",
                                    "experiments/routers.py --only=cluster"]


def test_a_missing_queue_file_bad_cores_and_a_malformed_line_are_one_line(tmp_path):
  proc = run_cli([sys.executable, "-m", "experiments.queue", str(tmp_path / "none.txt")])
  assert_one_line_error(proc, r"none.txt is not a file \(one experiments.run command per line\)")
  path = tmp_path / "q.txt"
  path.write_text("experiments/a.py experiments/b.py\n")
  proc = run_cli([sys.executable, "-m", "experiments.queue", str(path), "--cores", "a"])
  assert_one_line_error(proc, r"--cores a: this process may use cores")
  proc = run_cli([sys.executable, "-m", "experiments.queue", str(path)])
  assert proc.returncode == 1 and "FAILED (not run: names 2 sweep files" in proc.stdout
  assert "0 commands left" not in proc.stdout and path.read_text().startswith("experiments/a")


def test_ctrl_c_stops_each_command_once_and_it_saves_its_checkpoint(tmp_path):
  """Ctrl-C at a terminal signals the whole foreground process group: the commands must not
  get it as well as the queue's SIGTERM (a second signal exits without saving)."""
  out = tmp_path / "results"
  path = tmp_path / "q.txt"
  line = (f"experiments/num_experts.py --only=E1 --quick --seeds=1 --out={out} "
          "--config.steps=100000")
  path.write_text(line + "\n")
  proc = subprocess.Popen([sys.executable, "-m", "experiments.queue", str(path)], cwd=REPO,
                          env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  metrics = out / "runs" / "E1" / "seed0" / "metrics.jsonl"
  try:
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
      time.sleep(0.2)
    # As the terminal does (pytest-xdist's workers ignore SIGINT, and their children inherit
    # that: the queue must handle it itself)
    os.killpg(proc.pid, signal.SIGINT)
    said, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:       # never leave a 100,000-step run behind
      proc.terminate()
      proc.wait(timeout=60)
  log = (tmp_path / "q.txt.logs" / "num_experts.log").read_text()
  assert proc.returncode == 130 and "1 commands left. Run the same command" in said, said
  assert "SIGTERM: finishing this step and saving a checkpoint" in log, log[-2000:]
  assert "again: exiting now" not in log and "SIGINT" not in log, log[-2000:]
  assert any(p.name.isdigit() for p in (metrics.parent / "checkpoints").iterdir())
  assert queue.read_lines(path) == [line]


# ~25 s: make test's budget: test-all.
@pytest.mark.slow
def test_a_queue_runs_its_commands_and_keeps_the_failed_one(tmp_path):
  out = tmp_path / "results"
  path = tmp_path / "q.txt"
  common = f"--quick --seeds=1 --out={out}"
  path.write_text(f"experiments/num_experts.py --only=E1 {common}\n"
                  f"experiments/num_experts.py --only=E2 {common}\n"
                  "experiments/no_such_sweep.py\n")
  proc = run_cli([sys.executable, "-m", "experiments.queue", str(path)])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert queue.read_lines(path) == ["experiments/no_such_sweep.py"]
  assert "FAILED" in proc.stdout and "1 commands left, 1 failed" in proc.stdout
  with open(out / "results.csv") as f:     # one after the other: the second wrote both
    assert [r["point"] for r in csv.DictReader(f)] == ["E1", "E2"]
  log = (tmp_path / "q.txt.logs" / "num_experts.log").read_text()
  assert log.count("=== ") == 2 and "E2 seed 0: 6 steps" in log


def test_the_committed_queue_of_remaining_points_names_real_points():
  """experiments/remaining.queue (what the next session runs): every line an experiments.run
  command whose --only selects points of its sweep."""
  from experiments import harness, run as run_cli, sweep as sweep_lib
  for line in queue.read_lines(REPO / "experiments" / "remaining.queue"):
    args = run_cli.parse(line.split())
    sweep = sweep_lib.load(str(REPO / args.sweep), args.quick, None)[0]
    assert harness.selected(sweep, args.only), line
