"""Where a jitted step's time goes: per-op time from a `jax.profiler` trace, and how busy the
CPU cores were. Used by `train_step.py --profile`.

XLA:CPU records every executed op (thunk) of every device as a trace event, so summing event
durations by op kind gives device-thread time per step, summed over the (simulated) devices.
Collectives count the time a device waits in them for its peers; with 8 simulated devices on
2 cores that waiting, not the copying, is most of an all-to-all's time.
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import resource
import tempfile
import time

import jax

_WAITS = re.compile(r"^(Wait: pending_threads|Rendezvous|InvokeRendezvous|Wait for rendezvous)")
# An executed op's event is its HLO name ('ynn_fusion.123', 'all-to-all.4'); the rest are
# host-side or whole-program events that contain the ops and would count them twice.
_OP = re.compile(r"^[a-z][a-z0-9_\-]*([._]\d+)*$")


def op_kind(event_name: str) -> str | None:
  """'ynn_fusion.123' -> 'ynn_fusion'; every rendezvous wait -> 'collective wait'; None for an
  event that is not one op."""
  if _WAITS.match(event_name):
    return "collective wait"
  if not _OP.match(event_name):
    return None
  return re.sub(r"([._]\d+)+$", "", event_name)


def cores_busy(run, steps: int) -> float:
  """CPU seconds per wall second while `run(steps)` runs (2.0 = both of 2 cores busy)."""
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  run(steps)
  after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return cpu / wall


def op_ms_per_step(run, steps: int) -> dict[str, float]:
  """{op kind: ms per step, summed over devices}, largest first, from a trace of `run(steps)`."""
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      run(steps)
    trace = next(pathlib.Path(directory).rglob("*.trace.json.gz"))
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
  total = collections.Counter()
  for event in events:
    kind = op_kind(event.get("name", "")) if event.get("ph") == "X" else None
    if kind is not None:
      total[kind] += event["dur"] / 1e3 / steps
  return dict(total.most_common())


def compare(profiles: dict[str, dict[str, float]], baseline: str, top: int = 12) -> list[str]:
  """Lines of a table: the op kinds where each profile differs most from `baseline`'s."""
  base = profiles[baseline]
  kinds = set().union(*profiles.values())
  names = [n for n in profiles if n != baseline]
  def gap(kind):
    return max(abs(profiles[n].get(kind, 0.0) - base.get(kind, 0.0)) for n in names)
  lines = [f"{'op kind':<28}" + "".join(f"{n:>16}" for n in profiles)]
  for kind in sorted(kinds, key=gap, reverse=True)[:top]:
    lines.append(f"{kind[:27]:<28}" + "".join(f"{profiles[n].get(kind, 0.0):>16.1f}"
                                              for n in profiles))
  lines.append(f"{'all ops':<28}" + "".join(f"{sum(p.values()):>16.1f}"
                                           for p in profiles.values()))
  return lines
