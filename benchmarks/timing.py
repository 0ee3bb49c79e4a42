"""Round-robin timing, the method every benchmark here shares: each round times every call
once, in turn, so the machine's drift (tens of percent within minutes) is shared by all."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import jax


def round_robin_ms(calls: Sequence[Callable[[], object]], rounds: int,
                   say: Callable[..., None] | None = None) -> list[list[float]]:
  """ms of each call in each round: [call][round]. Every call is compiled (run) before."""
  times = [[] for _ in calls]
  for r in range(rounds):
    for i, call in enumerate(calls):
      # One untimed call first: the call right after a different, bigger case (the
      # expert-parallel ones above all) ran up to 1.7x slower (memory handed back and faulted
      # in again), so each timed call is a repeated one, as in a training loop.
      jax.block_until_ready(call())
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[i].append(1e3 * (time.perf_counter() - start))
    if say is not None:
      say(f"  round {r + 1}/{rounds}", end="\r" if r + 1 < rounds else "\n", flush=True)
  return times


def settings(args) -> dict:
  """The benchmark's settings as recorded beside its rows: the parsed flags without the output
  path (a machine's absolute path says nothing about the measurement)."""
  return {k: v for k, v in vars(args).items() if k != "out"}
