"""A workdir held by every process of a run: the lock and the seeding mark (moe_jax.workdir)
taken by process 0, with every process learning whether it got them before any goes on, so a
busy or refused workdir stops a multi-process run on every host, not just the first.

    with hold_workdir(workdir):                      # train, evaluate, upcycle, hf import
      with seeding_workdir(workdir, verb=..., command=..., outputs=...):
        ...                                          # write the first checkpoint
"""
from __future__ import annotations

import contextlib
import pathlib

import jax
import numpy as np

from moe_jax import workdir as workdir_lib


@contextlib.contextmanager
def _process_zero_enters(context, errors, failure):
  """Process 0 enters `context()`; every process learns whether it failed (raising
  `failure`, or process 0 its own error of type `errors`) before any runs the block."""
  if jax.process_count() == 1:
    with context():
      yield
    return
  from jax.experimental import multihost_utils
  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(context())
      except errors as e:
        error = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if error is not None:
      raise error
    if failed:
      raise failure
    yield


@contextlib.contextmanager
def hold_workdir(workdir: pathlib.Path):
  """One run per workdir. Process 0 takes the lock and tells the others whether it got it,
  so a busy workdir stops every process of a multi-process run, not just the first."""
  with _process_zero_enters(
      lambda: workdir_lib.hold(workdir), (workdir_lib.WorkdirBusy, workdir_lib.WorkdirError),
      workdir_lib.WorkdirBusy(f"process 0 could not take --workdir {workdir} (see its "
                              "output)")):
    yield


@contextlib.contextmanager
def seeding_workdir(workdir: pathlib.Path, *, verb: str, command: str, outputs: tuple[str, ...],
                    keep: tuple[str, ...] = ()):
  """`workdir_lib.seeding` for every process of a run (inside `hold_workdir`): process 0
  checks, clears and marks the workdir, the others wait for it and stop if it refused; the
  mark is removed once every process has finished the block."""
  with _process_zero_enters(
      lambda: workdir_lib.seeding(workdir, verb=verb, command=command, outputs=outputs,
                                  keep=keep),
      workdir_lib.WorkdirError,
      workdir_lib.WorkdirError(f"process 0 refused --workdir {workdir} (see its output)")):
    yield
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("moe_jax seeded")
