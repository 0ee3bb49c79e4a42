"""Sparse upcycling and Drop-Upcycling against continuing the dense model and an MoE from scratch
(Komatsuzaki et al. 2022, *Sparse Upcycling*; Nakamura et al. 2025, *Drop-Upcycling*).

    python -m experiments.run experiments/upcycling.py          # default: 4 x 2 seeds
    python -m experiments.run experiments/upcycling.py --quick  # seconds, for tests
Measured (2026-12-03, 2 CPU cores, jax 0.10.2): 8 runs + 2 dense sources, 39.2 min summed
run time, the machine shared with test runs.

One dense byte-level LM per seed is trained for 300 steps on stdlib_py (experiments/bases.py's
model with num_experts=0), then continued for 300 more steps as (a) `dense`: the same dense
model, its optimizer state kept; (b) `upcycled`: 8 experts per MoE layer (layers 1 and 3), each
a copy of the layer's dense FFN, a fresh router, top-2 renormalised (Mixtral's order, so the
upcycled model starts as exactly the dense function, up to capacity drops), fresh Adam state;
(c) `drop0.5`: the same with half of each expert's hidden units re-drawn (Drop-Upcycling,
r = 0.5); against (d) `scratch`: the same MoE trained from random init for all 600 steps. Every
run's learning-rate schedule is the 600-step one (the continuations start at its step 300).
Papers: the upcycled model beats the continued dense one early in the continuation; Drop-
Upcycling beats plain upcycling over longer continuations; the scratch MoE needs far more
compute to catch up.
"""
from __future__ import annotations

import functools
import shutil

import numpy as np

from experiments import bases, harness, report, scaling_fit, stats
from experiments.sweep import Point, Sweep

DENSE_STEPS, EXTRA_STEPS = 300, 300
QUICK_STEPS = 6            # --quick: dense and extra steps each
SOURCE = "_dense_source"   # runs/_dense_source/seed<s>: the dense run every point starts from


def _steps(quick: bool) -> tuple[int, int]:
  return (QUICK_STEPS, QUICK_STEPS) if quick else (DENSE_STEPS, EXTRA_STEPS)


def _base(quick: bool):
  dense, extra = _steps(quick)
  c = bases.lm(quick=quick)
  c.steps = dense + extra          # (--quick's base would otherwise be 6 steps in all)
  c.model.router_options = {"k": 2, "order": "topk_softmax"}
  return c


def _source(base, workdir, flags, quick: bool):
  """The seed's dense run (trained once, by the first point that needs it)."""
  source = workdir.parent.parent / SOURCE / workdir.name
  dense, _ = _steps(quick)
  harness.train_checked(base, source, [*flags, "model.num_experts=0", f"steps={dense}"])
  return source


def _continue_dense(base, workdir, flags, seed, *, quick: bool):
  if harness.has_checkpoint(workdir):
    return
  source = _source(base, workdir, [f for f in flags if not f.startswith("model.num_experts")],
                   quick)
  shutil.copytree(source / "checkpoints", workdir / "checkpoints")
  for name in ("config.json", "metrics.jsonl"):
    shutil.copy2(source / name, workdir / name)


def _upcycle(base, workdir, flags, seed, *, quick: bool, drop_ratio: float):
  from moe_jax.upcycle import UpcycleOptions, upcycle
  if harness.has_checkpoint(workdir):
    return
  source = _source(base, workdir, flags, quick)
  upcycle(base, workdir, source, overrides=flags, keep_step=True, say=print,
          options=UpcycleOptions(drop_ratio=drop_ratio, seed=seed),
          keep_files=harness.OWN_FILES)


def _points(quick: bool) -> list[Point]:
  up = functools.partial(_upcycle, quick=quick)
  return [Point("dense", {"init": "dense"}, {"model.num_experts": 0},
                functools.partial(_continue_dense, quick=quick)),
          Point("upcycled", {"init": "upcycled"}, {}, functools.partial(up, drop_ratio=0.0)),
          Point("drop0.5", {"init": "drop-upcycled r=0.5"}, {},
                functools.partial(up, drop_ratio=0.5)),
          Point("scratch", {"init": "MoE from scratch"}, {})]


def _curves(records, dense_steps: int, dense_flops_per_step: float):
  """{point: (steps since the dense run, mean loss over seeds, total training FLOPs)}."""
  out = {}
  for name, rs in report.groups(records).items():
    steps = sorted(set.intersection(*({s for s, _ in r["loss_curve"]} for r in rs)))
    if name != "scratch":
      steps = [s for s in steps if s > dense_steps]
    if not steps:
      continue
    loss = np.array([[dict(map(tuple, r["loss_curve"]))[s] for s in steps] for r in rs])
    own = np.mean([r["train_flops"] / r["steps"] for r in rs])
    steps = np.array(steps)
    flops = (own * steps if name in ("scratch", "dense") else
             dense_flops_per_step * dense_steps + own * (steps - dense_steps))
    out[name] = (steps - dense_steps, loss, flops)
  return out


def _plot(curves, path) -> None:
  lo = min(loss.mean(0)[len(loss[0]) // 4:].min() for _, loss, _ in curves.values())
  hi = max(loss.mean(0)[x >= 0][0] for x, loss, _ in curves.values() if (x >= 0).any())
  report.draw_curves(
      curves, path, vline=0, ylim=(lo - 0.05, hi + 0.15),
      step_label="steps after the dense run (scratch: its own steps - 300)",
      flops_label="total training FLOPs, the dense run's included",
      title="continuing a dense LM: dense, upcycled, drop-upcycled, and an MoE from scratch")


def _early(records, dense_steps: int, extra: int) -> list[float]:
  """Per seed: the mean training loss over the first quarter of the continuation."""
  out = []
  for r in records:
    after = [(s, v) for s, v in r["loss_curve"] if s > dense_steps]
    window = [v for s, v in after if s <= dense_steps + extra // 4] or [v for _, v in after[:2]]
    out.append(float(np.mean(window)))
  return out


def analyze(records, out) -> list[str]:
  g = report.groups(records)
  dense_steps = min(r["steps"] for r in records) // 2
  extra = dense_steps
  if "dense" not in g:
    return ["## Reading", "", "(the dense point is needed to read this sweep)"]
  dense_fps = np.mean([r["train_flops"] / r["steps"] for r in g["dense"]])
  curves = _curves(records, dense_steps, dense_fps)
  _plot(curves, out / "loss_vs_extra_steps.png")
  lines = ["## Reading", "", "Validation loss at the end (mean ± seed std):"]
  for name, rs in g.items():
    lines.append(f"- {name}: {report.fmt(*report.mean_std(report.values(rs, 'eval_loss')))}")
  early = {n: _early(rs, dense_steps, extra) for n, rs in g.items() if n != "scratch"}
  lines += ["", f"Mean training loss over the first {extra // 4} steps of the continuation "
            "(at least two logged steps): "
            + ", ".join(f"{n} {np.mean(v):.4f}" for n, v in early.items()) + "."]
  if "upcycled" in early and "dense" in early:
    seeds = lambda n: [int(r["seed"]) for r in g[n]]
    a = dict(zip(seeds("upcycled"), early["upcycled"]))
    b = dict(zip(seeds("dense"), early["dense"]))
    c = stats.compare(a, b) if len(set(a) & set(b)) >= 2 else None
    lines.append("Paper's direction (upcycled beats continued dense early), on that early "
                 "mean: " + (stats.describe(c) if c else "a single seed, no interval") + ".")
  if "upcycled" in g and "drop0.5" in g:
    lines.append(f"Paper's direction (Drop-Upcycling beats plain upcycling over a longer "
                 f"continuation), after {extra} extra steps: drop0.5 "
                 f"{report.compared(g['drop0.5'], g['upcycled'], 'upcycled')} (the paper's "
                 "continuations are billions of tokens; the re-drawn units need long to pay "
                 "back).")
  if "scratch" in g and "upcycled" in g:
    lines.append(f"MoE from scratch after all {2 * dense_steps} steps (the paper: scratch needs "
                 f"more compute, so it is higher here): scratch "
                 f"{report.compared(g['scratch'], g['upcycled'], 'upcycled', expected=+1)}; the "
                 "upcycled model spent its first half as the dense model (fewer FLOPs).")
  return lines


def get_sweep(quick: bool) -> Sweep:
  return Sweep(name="upcycling", base=lambda: _base(quick), points=_points(quick), seeds=2,
               analyze=analyze, description=__doc__.split("\n\n")[2])
