"""What a sweep would cost on accelerators, before anything runs: per run, the model's
parameters and forward FLOPs per token (experiments/accounting.py, from the config alone: the
model is built abstractly), the tokens it trains on, the training FLOPs (3 x forward x tokens)
and the GPU-hours they take at an assumed utilisation.

    python -m experiments.run experiments/routed_scaling.py --grid gpu --estimate

The assumption, stated wherever a number is printed: H100 SXM bf16 dense peak 989 TFLOP/s
(NVIDIA's datasheet) at 35 % model FLOPs utilisation, a figure well-tuned JAX/Megatron
training of GPT-style models of 0.1-1 B parameters reaches and that an MoE with many small
experts may not: read the hours as a lower bound. A sweep's helper runs (a dense source, a
teacher) are not counted. Nothing is trained or written.
"""
from __future__ import annotations

import math

from experiments import accounting
from experiments.harness import point_flags, runs_of
from moe_jax import config as config_lib

PEAK_FLOPS = 989e12      # H100 SXM, bf16 dense
MFU = 0.35


def _devices(tree: dict) -> int:
  """The devices the config's mesh names (an axis of -1, 'the rest', counted as 1)."""
  return math.prod(max(int(tree["mesh"].get(a, 1)), 1) for a in ("data", "expert", "model"))


def estimate(sweep, *, seeds: int | None = None, only: str | None = None,
             overrides=()) -> list[dict]:
  """One row per (point, seed) of the selection: point, seed, active and total params,
  FLOPs per token, tokens, train FLOPs, GPU-hours."""
  base, rows, of_point = sweep.base(), [], {}
  for p, seed in runs_of(sweep, seeds, only):
    if p.name not in of_point:        # a point's seeds differ in their draws, not their sizes
      flags = point_flags(p, seed, overrides)
      tree, _ = config_lib.resolve(base, flags)
      run = config_lib.validate(base, num_devices=_devices(tree), overrides=flags)
      counts = accounting.account(run)
      tokens = run.steps * run.tokens_per_step
      flops = 3 * counts["flops_per_token"] * tokens
      of_point[p.name] = {**counts, "tokens": tokens, "train_flops": flops,
                          "gpu_hours": flops / (PEAK_FLOPS * MFU) / 3600}
    rows.append({"point": p.name, "seed": seed, **of_point[p.name]})
  return rows


def describe(rows: list[dict], name: str) -> list[str]:
  """The estimate as a table (one row per point: its seeds cost the same) and the total."""
  by_point: dict[str, list[dict]] = {}
  for r in rows:
    by_point.setdefault(r["point"], []).append(r)
  lines = [f"sweep {name}: {len(rows)} runs, estimated before running (H100 bf16 peak "
           f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s at {100 * MFU:.0f} % utilisation; helper runs "
           "not counted)", "",
           "| point | seeds | active params | total params | tokens | train FLOPs | "
           "GPU-hours per run |", "|---|---|---|---|---|---|---|"]
  for point, rs in by_point.items():
    r = rs[0]
    lines.append(f"| {point} | {len(rs)} | {r['active_params'] / 1e6:.1f} M | "
                 f"{r['total_params'] / 1e6:.1f} M | {r['tokens'] / 1e9:.2f} B | "
                 f"{r['train_flops']:.2e} | {r['gpu_hours']:.1f} |")
  total = sum(r["gpu_hours"] for r in rows)
  lines += ["", f"total: {total:.0f} GPU-hours ({total / 8:.1f} hours on one 8-GPU node)"]
  return lines
