"""Pilot of the CPU protocol: can an MoE's gain over dense show at 2 CPU cores' budget, and at
which settings does it show most clearly? (issue 27 §3)

    python -m experiments.run experiments/pilot.py          # default: 8 points x 3 seeds
    python -m experiments.run experiments/pilot.py --quick  # seconds, for tests

Every point trains experiments/bases.py's `lm_protocol` model (byte-level decoder, d_model 64,
4 layers, MoE FFNs in layers 1 and 3, top-1, dropless) for 2,000 steps of 16 x 128 tokens:
~20 tokens per active non-embedding parameter, ten times the earlier sweeps' 1.8. Each setting
is run dense (E = 1: a plain FFN of the experts' width) and with E = 8 experts, 3 paired seeds:
- the peak learning rate 1.5e-3, 3e-3 (the centre) and 6e-3, on bytes;
- bytes against a 1,024-piece SentencePiece vocabulary (trained per run on 2 MB of the
  training split), at 3e-3; the two compare in bits per byte.
The base for the LM sweeps is the setting whose E8 - dense difference is largest against its
paired seed-to-seed σ (the difference a given number of seeds can resolve), stated in the
summary with the reason.

Run time: 24 runs, 125.6 min of runs summed (2026-12-05, 2 CPU cores, jax 0.10.2; the
summary's "Runs" line).
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report, stats
from experiments.sweep import Sweep, point

ARMS = {   # name -> (values shown, overrides)
    "bytes-lr3e-3": ({"tokens": "bytes", "lr": 3e-3}, {"optim.learning_rate": 3e-3}),
    "bytes-lr1.5e-3": ({"tokens": "bytes", "lr": 1.5e-3}, {"optim.learning_rate": 1.5e-3}),
    "bytes-lr6e-3": ({"tokens": "bytes", "lr": 6e-3}, {"optim.learning_rate": 6e-3}),
    "spm1024-lr3e-3": ({"tokens": "spm1024", "lr": 3e-3},
                       {"optim.learning_rate": 3e-3, "data.tokenizer": "sentencepiece",
                        "model.vocab_size": 1024, "data.tokenizer_train_bytes": 2_000_000}),
}
MODELS = {"dense": 0, "E8": 8}


def _points(quick: bool):
  arms = dict(list(ARMS.items())[:1] + list(ARMS.items())[-1:]) if quick else ARMS
  out = []
  for arm, (values, overrides) in arms.items():
    for model, experts in MODELS.items():
      extra = {"model.num_experts": experts}
      if quick and "model.vocab_size" in overrides:   # the quick base's tokenizer budget
        overrides = {**overrides, "data.tokenizer_train_bytes": 200_000}
      out.append(point({**values, "model": model}, {**overrides, **extra},
                       name=f"{arm}-{model}"))
  return out


def _arms(records):
  g = report.groups(records)
  for arm in ARMS:
    if f"{arm}-dense" in g and f"{arm}-E8" in g:
      yield arm, g[f"{arm}-E8"], g[f"{arm}-dense"]


def analyze(records, out) -> list[str]:
  report.plot_curves(records, "point", out / "loss_vs_steps.png",
                     title="training loss (50-step means) against steps, one line per point")
  rows, ratios = [], {}
  for arm, moe, dense in _arms(records):
    if len(stats.by_seed(moe, "bits_per_byte")) < 2:
      continue
    c = stats.compare(stats.by_seed(moe, "bits_per_byte"), stats.by_seed(dense,
                                                                       "bits_per_byte"))
    rows.append((f"{arm}: E8 - dense (bits/byte)", c))
    # Every seed's difference the same: the ratio is unbounded in Δ's direction (0 if Δ is 0)
    ratios[arm] = (-c.delta / c.sd if c.sd > 0
                   else 0.0 if c.delta == 0 else float("inf") * -np.sign(c.delta))
  lines = ["## Reading", "",
           "E8 against dense at each setting, in validation bits per byte (the whole split), "
           "paired over seeds; Switch's direction is negative (the MoE is better):", "",
           *stats.table(rows), ""]
  if ratios:
    best = max(ratios, key=ratios.get)
    lines += ["Signal to noise, -Δ / σ of the per-seed differences (how many paired seeds "
              "resolve the gain): " + ", ".join(f"{a} {r:.1f}" for a, r in ratios.items())
              + ".", "",
              f"**Base chosen: {best}**, the largest gain against its own seed-to-seed σ: "
              "at a fixed number of seeds it gives the narrowest interval relative to the "
              "effect, so the sweeps built on it can decide the smallest effects."]
  speeds = {a: np.median(report.values(m + d, "tokens_per_sec")) for a, m, d in _arms(records)}
  if speeds:
    lines += ["", "Median tokens/s per setting (the machine was shared while the pilot ran, "
              "so these are rough): " + ", ".join(f"{a} {v:.0f}" for a, v in speeds.items())
              + "."]
  return lines


def get_sweep(quick: bool) -> Sweep:
  return Sweep(name="pilot", base=lambda: bases.lm_protocol(quick=quick),
               points=_points(quick), seeds=2 if quick else 3, analyze=analyze,
               metric="bits_per_byte", description=__doc__.split("\n\n")[2])
