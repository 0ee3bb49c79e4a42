"""A run's directory: one run at a time (a lock), and the record of the config it ran with.

    with hold(workdir):                 # WorkdirBusy if another live process holds it
      record_start(workdir, tree, start_step=s, restored_from=None)   # once the run is accepted

Lock: `run.lock` holds the owner's PID, host and start time, and is `flock`ed while the run
lives. The kernel drops an flock when its process dies however it dies (SIGKILL, OOM, power),
so a lock file left by a killed run never blocks the next one: only a live holder does.

Config record: `config.json` is the config the run was first accepted with and is never
rewritten; `config_history.jsonl` gets one line per later accepted start (a resume): the step
it started from, a `restore_step` fallback if one was applied, the fields that changed
({path: [old, new]}) and the full config. `current_config` is the latest (what `evaluate`
uses). Nothing is written for a run that is refused, so a refused run cannot damage the
record of the run in the directory.

Seeding: a command that writes a run's first checkpoint for `train` to continue (upcycle, hf
import) does it inside `with seeding(workdir, verb=..., command=..., outputs=...)`. `seeding.json`
(what is seeding it and the command) is written before anything else and removed once the
seed is complete, so a seed cut short (kill -9, SIGTERM, a full disk) is recognised: the same
command reruns on such a workdir (clearing what the interrupted one wrote), and `train` calls
`check_not_unfinished(workdir)`, which refuses it in one line with that command instead of
training from random init.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import time
from typing import Any

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used (a file, not writable, ...)."""


def prepare(workdir: pathlib.Path) -> bool:
  """Makes the directory if needed; True if it was created (so a refused run can remove it)."""
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
  if workdir.is_dir():
    return False
  try:
    workdir.mkdir(parents=True)
  except OSError as e:
    raise WorkdirError(f"cannot create --workdir {workdir}: {e.strerror}") from e
  return True


def _holder(path: pathlib.Path) -> str:
  try:
    info = json.loads(path.read_text())
    return (f"process {info['pid']} on {info['host']} (running since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))})")
  except (OSError, ValueError, KeyError):
    return "another process"


def _lock(workdir: pathlib.Path) -> int:
  path = workdir / LOCK_FILE
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write to --workdir {workdir}: {e.strerror}") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise WorkdirBusy(f"--workdir {workdir} is in use by {_holder(path)}; wait for that run "
                          "to end (or stop it), or use another --workdir") from None
      raise
    # The previous holder may have unlinked the file between our open and flock: then we hold
    # a lock on a file nobody else sees; start over on the file that is there now.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
  os.ftruncate(fd, 0)
  os.write(fd, record.encode())
  return fd


@contextlib.contextmanager
def hold(workdir, *, enabled: bool = True):
  """Holds the workdir's lock (making the directory first); a directory this call created is
  removed again if the run ends with nothing else written into it."""
  workdir = pathlib.Path(workdir)
  if not enabled:    # the other processes of a multi-process run: process 0 holds it
    yield workdir
    return
  created = prepare(workdir)
  fd = _lock(workdir)
  try:
    yield workdir
  finally:
    with contextlib.suppress(OSError):
      (workdir / LOCK_FILE).unlink()
    os.close(fd)
    if created:
      with contextlib.suppress(OSError):
        workdir.rmdir()          # only if empty: the run was refused before writing anything


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` to a temporary file beside `path` and renames it: readers never see half."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _history(workdir: pathlib.Path) -> list[dict]:
  path = workdir / HISTORY_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def current_config(workdir) -> dict | None:
  """The config of the latest accepted start (config.json amended by the history), or None."""
  workdir = pathlib.Path(workdir)
  history = _history(workdir)
  if history:
    return history[-1]["config"]
  path = workdir / CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def applied_restores(workdir) -> set[int]:
  """The restore_step fallbacks earlier starts of this run applied."""
  return {h["restored_from"] for h in _history(pathlib.Path(workdir))
          if h.get("restored_from") is not None}


def flat_changes(old: dict, new: dict, prefix: str = "") -> dict[str, list[Any]]:
  """{'optim.learning_rate': [old, new], ...}: the leaves where two config trees differ."""
  out = {}
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    path = f"{prefix}{key}"
    if isinstance(a, dict) and isinstance(b, dict) and key not in ("router_options",
                                                                   "aux_loss_weights"):
      out.update(flat_changes(a, b, path + "."))
    elif a != b:
      out[path] = [a, b]
  return out


def record_start(workdir, tree: dict, *, start_step: int, restored_from: int | None) -> dict:
  """Records an accepted start; returns the fields that changed since the previous one."""
  workdir = pathlib.Path(workdir)
  previous = current_config(workdir)
  if previous is None:
    write_atomic(workdir / CONFIG_FILE, json.dumps(tree, indent=2, sort_keys=True))
    return {}
  changes = flat_changes(previous, tree)
  entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "start_step": start_step,
           "restored_from": restored_from, "changes": changes, "config": tree}
  with open(workdir / HISTORY_FILE, "a") as f:
    f.write(json.dumps(entry, sort_keys=True) + "\n")
  return changes


SEEDING_FILE = "seeding.json"
CHECKPOINTS_DIR = "checkpoints"


def _has_complete_checkpoint(workdir: pathlib.Path) -> bool:
  """Whether checkpoints/ lists a step: Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames
  it to `<step>` when complete, so only all-digit names are complete checkpoints."""
  ckpts = workdir / CHECKPOINTS_DIR
  return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def _has_temporary_checkpoint(workdir: pathlib.Path) -> bool:
  ckpts = workdir / CHECKPOINTS_DIR
  return ckpts.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())


def unfinished_seed(workdir) -> str | None:
  """Why `workdir` must not be trained as it is, or None: a seeding (upcycle, hf import) that
  did not complete (its `seeding.json` is there), or, from before that file existed, a
  checkpoints/ with only a temporary (cut-short) checkpoint and no run record."""
  workdir = pathlib.Path(workdir)
  marker = workdir / SEEDING_FILE
  if marker.exists():
    try:
      info = json.loads(marker.read_text())
      verb, command = str(info["verb"]), str(info["command"])
    except (OSError, ValueError, KeyError, TypeError):
      verb, command = "seeding", "the command that seeded it"
    return (f"--workdir {workdir} holds an unfinished {verb} (interrupted before its first "
            f"checkpoint was complete, see {SEEDING_FILE}); rerun it to finish: {command}")
  if (current_config(workdir) is None and _has_temporary_checkpoint(workdir)
      and not _has_complete_checkpoint(workdir)):
    return (f"--workdir {workdir} holds only an incomplete first checkpoint in "
            f"{workdir / CHECKPOINTS_DIR} and no run record: the upcycle or hf import that "
            "wrote it was interrupted; rerun that command to finish it, or move "
            f"{workdir / CHECKPOINTS_DIR} aside to train from scratch")
  return None


def check_not_unfinished(workdir) -> None:
  """Raises WorkdirError (one line, with the command that finishes it) for a workdir whose
  seeding did not complete; `train` calls it before reading or writing anything."""
  reason = unfinished_seed(workdir)
  if reason is not None:
    raise WorkdirError(reason)


@contextlib.contextmanager
def seeding(workdir, *, verb: str, command: str, outputs: tuple[str, ...],
            keep: tuple[str, ...] = ()):
  """Around the writes of a command that seeds a new run in `workdir` (the caller holds it).

  Accepted: an empty workdir; one whose seeding by a command like this one did not complete
  (`seeding.json` there, nothing but `outputs` beside it); or one that holds no run record,
  no complete checkpoint and nothing but `outputs` (a seed from before seeding.json existed,
  or the empty checkpoints/ a refused `train` left). What such a workdir holds is cleared,
  `seeding.json` written, and removed when the block completes; if the block fails (or the
  process dies) it stays, and `check_not_unfinished` refuses `train` there. Anything else in
  the workdir refuses the seeding (WorkdirError) before anything is touched. `outputs`: the
  names the seeding writes (checkpoints/ always among them)."""
  workdir = pathlib.Path(workdir)
  allowed = set(outputs) | {CHECKPOINTS_DIR, SEEDING_FILE, LOCK_FILE}
  with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):   # no or bad marker
    allowed |= set(json.loads((workdir / SEEDING_FILE).read_text()).get("outputs", ()))
  allowed |= {f".{name}.tmp" for name in allowed}      # write_atomic's, cut short
  present = sorted(p.name for p in workdir.iterdir() if p.name not in {LOCK_FILE, *keep})
  interrupted = (workdir / SEEDING_FILE).exists() or (
      current_config(workdir) is None and not _has_complete_checkpoint(workdir))
  other = [name for name in present if name not in allowed]
  if present and (other or not interrupted):
    raise WorkdirError(f"--workdir {workdir} already holds a run; {verb} into a new directory "
                       f"(it holds {(other or present)[0]})")
  for name in present:   # what an interrupted seeding wrote: none of it is complete
    path = workdir / name
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    elif name != SEEDING_FILE:
      path.unlink()
  write_atomic(workdir / SEEDING_FILE, json.dumps(
      {"verb": verb, "command": command, "outputs": sorted(set(outputs)), "pid": os.getpid(),
       "host": socket.gethostname(), "since": time.time()}, indent=2))
  yield workdir
  (workdir / SEEDING_FILE).unlink()
