"""Ctrl-C (SIGINT) and preemption (SIGTERM) end a run cleanly instead of losing it.

    with Interrupts() as interrupts:           # setup: a signal ends the run at once
      ...
      with interrupts.deferred():             # training: a signal is noted, the step finishes
        for step in ...:
          ...
          if interrupts.requested: save; raise interrupts.stop(f"interrupted at step {step}")

A signal during setup raises `Interrupted` where the program is (nothing was saved yet). In a
deferred block the first signal only sets `requested`; the loop finishes its step, saves a
checkpoint and raises `Interrupted`. A second signal exits the process at once (status
128 + signal): Orbax writes a checkpoint into a temporary directory and renames it when
complete, so a save cut short this way is never listed as a checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run was stopped by a signal; `exit_code` is the conventional 128 + signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class Interrupts:
  def __init__(self):
    self.signum: int | None = None
    self._deferred = False
    # What a signal outside a deferred block reports (the caller updates it as it goes).
    self.message = ("interrupted before training started; nothing was saved; rerun the same "
                    "command to start")
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def stop(self, message: str) -> Interrupted:
    name = signal.Signals(self.signum).name
    return Interrupted(f"{message} ({name})", self.signum)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:       # the second signal: no more waiting
      self._say(f"{signal.Signals(signum).name} again: exiting now; the newest complete "
                "checkpoint is kept")
      os._exit(128 + signum)
    self.signum = signum
    if not self._deferred:
      raise self.stop(self.message)
    self._say(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to exit at once)")

  def _say(self, text: str) -> None:
    # To the terminal the run started with, not to whatever file descriptor 2 is now: a
    # checkpoint save points it at /dev/null while it runs (checkpoint._quiet_stderr_on_failure),
    # and a signal often lands in a save. A bare os.write: no buffered stream's lock to re-enter.
    os.write(self._terminal, f"\n{text}\n".encode())

  def __enter__(self):
    self._terminal = os.dup(2)
    if threading.current_thread() is threading.main_thread():   # only it can take signals
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    os.close(self._terminal)
    return False

  @contextlib.contextmanager
  def deferred(self):
    self._deferred = True
    try:
      yield self
    finally:
      self._deferred = False
