"""How to spend a CPU's cores on a sweep: one run using every core, or one run per core side by
side? Each arm trains the sweeps' protocol model (experiments/bases.py `lm_protocol`, E = 8)
in fresh processes; the measure is tokens/s summed over the arm's processes, the median of
each process's logging intervals after the first (which holds the compile).

    .venv/bin/python benchmarks/concurrent_runs.py [--steps 200] [--rounds 2]
    # -> results/concurrent_runs.json

Arms, alternated round-robin: `one run, all cores` (one process, unpinned), `a run per core`
(one process per core, each pinned to its core with os.sched_setaffinity). Linux only (CPU
affinity). Run with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_WORKER = """
import json, os, statistics, sys
sys.path.insert(0, {repo!r})
core = {core}
if core is not None:
  os.sched_setaffinity(0, {{core}})
from experiments import bases
from moe_jax.train import train
c = bases.lm_protocol(quick=False)
c.model.num_experts = 8
c.steps, c.log_every = {steps}, {log_every}
train(c, {workdir!r}, overrides=["data.eval_max_batches=1"], progress=False)
lines = [json.loads(l) for l in open(os.path.join({workdir!r}, "metrics.jsonl"))]
speeds = [l["tokens_per_sec"] for l in lines if "tokens_per_sec" in l][1:]
print(json.dumps({{"tokens_per_sec": statistics.median(speeds)}}))
"""


def _start(core, steps: int, log_every: int, workdir: str):
  code = _WORKER.format(repo=str(REPO), core=core, steps=steps, log_every=log_every,
                        workdir=workdir)
  return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          cwd=REPO)


def _arm(cores, steps: int, log_every: int) -> float:
  """tokens/s summed over one process per entry of `cores` (None: unpinned), run together."""
  with tempfile.TemporaryDirectory() as tmp:
    procs = [_start(core, steps, log_every, os.path.join(tmp, f"run{i}"))
             for i, core in enumerate(cores)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
      raise RuntimeError(f"a worker failed: {outs}")
  return sum(json.loads(o.strip().splitlines()[-1])["tokens_per_sec"] for o in outs)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--log_every", type=int, default=25)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                         "concurrent_runs.json"))
  args = parser.parse_args(argv)
  cores = sorted(os.sched_getaffinity(0))
  arms = {"one run, all cores": [None], "a run per core": cores}
  speeds = {name: [] for name in arms}
  for r in range(args.rounds):
    for name, arm in arms.items():
      speeds[name].append(_arm(arm, args.steps, args.log_every))
      print(f"round {r + 1}: {name}: {speeds[name][-1]:.0f} tokens/s", flush=True)
  one, per_core = (statistics.median(speeds[n]) for n in arms)
  result = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
            "cores": len(cores), "tokens_per_sec": speeds,
            "median_tokens_per_sec": {"one run, all cores": one, "a run per core": per_core},
            "x_per_core": per_core / one}
  print(f"{len(cores)} cores: one run {one:.0f} tokens/s, a run per core {per_core:.0f} "
        f"tokens/s in all: x{result['x_per_core']:.2f}")
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
