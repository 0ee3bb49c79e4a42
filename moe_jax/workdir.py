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
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time

from moe_jax.config import flat_changes

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
