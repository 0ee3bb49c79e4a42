"""A sweep on every host of a multi-host (jax.distributed) job: one decides, one writes.

JAX is multi-controller: every host runs `python -m experiments.run ...` and every host takes
part in each point's training. What the harness reads from disk (is this run finished? does it
have a checkpoint?) decides which collectives come next, so every host must decide alike, and
what it writes (settings, records, results, plots) must be written once. The rules:

    if hosts.agree(path.exists()): ...      # process 0's answer, on every process
    hosts.main_writes(lambda: ..., "what")  # process 0 writes, the others wait for it

The sweep's directory must be storage every host sees (NFS, a mounted bucket), as the
checkpoints of a multi-host run must be anyway. In a single process every helper is the plain
operation: no collective runs.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def multihost() -> bool:
  return jax.process_count() > 1


def is_main() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (no-op in one process)."""
  if multihost():
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"moe_jax.sweep:{name}")


def agree(value: bool) -> bool:
  """Process 0's `value` on every process: a decision read from shared storage, where another
  process may already have written what process 0 has not yet seen (or the other way)."""
  if not multihost():
    return bool(value)
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))


def main_writes(write: Callable[[], T], name: str) -> T | None:
  """Runs `write` on process 0, then a barrier: when any process goes on, it is written.
  Returns what `write` returned (None on the other processes)."""
  result = write() if is_main() else None
  barrier(name)
  return result
