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

Python drops an exception raised inside a garbage-collection callback (jax registers one) or a
`__del__`, printing "Exception ignored in ..." and going on: a Ctrl-C landing there would be
lost. So a signal is also noted, and raised again where it is safe: an `Interrupts` block whose
signal's exception was lost raises it when it ends, and under `sigint_noted()` (the CLI's
`run_reporting_errors`, which sweeps run in too) a Ctrl-C outside any such block is re-raised by
`raise_if_pending()` at the next `Interrupts` block, the start and end of `evaluate`, and when
the CLI's function returns.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PENDING: list[int] = []   # SIGINTs noted by sigint_noted's handler, not yet delivered
_ALSO: list[int] = []      # more signals that stop a run, for as long as `also_on` holds


class Interrupted(Exception):
  """The run was stopped by a signal; `exit_code` is the conventional 128 + signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
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
    if self.signum is None:   # a multi-host run stops together when one process is signalled
      return Interrupted(f"{message} (a signal to another process)", signal.SIGTERM)
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
    raise_if_pending()
    self._terminal = os.dup(2)
    if threading.current_thread() is threading.main_thread():   # only it can take signals
      for s in (*SIGNALS, *_ALSO):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, kind, value, tb):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    os.close(self._terminal)
    if self.signum is None or isinstance(value, (Interrupted, KeyboardInterrupt)):
      return False
    if value is None:              # the signal's exception was dropped (gc callback, __del__)
      raise self.stop(self.message)
    interrupted = _interrupted_in_chain(value)
    if interrupted is not None:    # turned into another error by an `except Exception`
      raise interrupted from None
    return False

  @contextlib.contextmanager
  def deferred(self):
    self._deferred = True
    try:
      yield self
    finally:
      self._deferred = False


@contextlib.contextmanager
def also_on(signum: int):
  """Inside, `Interrupts` blocks stop the run on `signum` too, as on SIGTERM (a cluster's
  warning before preemption or the time limit: submitit's SIGUSR2); outside them, `signum`'s
  own handler stays in charge."""
  _ALSO.append(signum)
  try:
    yield
  finally:
    _ALSO.remove(signum)


def _interrupted_in_chain(error: BaseException) -> Interrupted | None:
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, Interrupted):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def raise_if_pending() -> None:
  """Raises KeyboardInterrupt if `sigint_noted`'s handler saw a SIGINT whose exception has not
  reached its caller (it was raised where Python drops exceptions)."""
  if _PENDING:
    raise KeyboardInterrupt


def _note_and_raise(signum, frame):
  del frame
  _PENDING.append(signum)
  raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_noted():
  """SIGINT raises KeyboardInterrupt, as Python's default handler does, and is also noted, so
  that `raise_if_pending` raises it again where Python dropped it. Only replaces Python's own
  default handler, and only in the main thread."""
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield
    return
  _PENDING.clear()
  signal.signal(signal.SIGINT, _note_and_raise)
  try:
    yield
    raise_if_pending()
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _PENDING.clear()
