"""Sparse upcycling and Drop-Upcycling against continuing the dense model and an MoE from scratch
(Komatsuzaki et al. 2022, *Sparse Upcycling*; Nakamura et al. 2025, *Drop-Upcycling*).

    python -m experiments.run experiments/upcycling.py          # default: 4 x 3 seeds
    python -m experiments.run experiments/upcycling.py --quick  # seconds, for tests

On the CPU protocol (experiments/bases.py `lm_protocol`: byte-level LM on stdlib_py, d_model 64,
4 layers, MoE FFNs in layers 1 and 3, dropless), one dense LM per seed is trained for 1,500
steps of 16 x 128 tokens, then continued for 500 more steps as (a) `dense`: the same dense
model, its optimizer state kept; (b) `upcycled`: 8 experts per MoE layer, each a copy of the
layer's dense FFN, a fresh router, top-2 renormalised (Mixtral's order, so the upcycled model
starts as exactly the dense function: dropless, nothing is dropped), fresh Adam state;
(c) `drop0.5`: the same with half of each expert's hidden units re-drawn (Drop-Upcycling,
r = 0.5); against (d) `scratch`: the same MoE trained from random init for all 2,000 steps.
Every run's learning-rate schedule is the 2,000-step one, and the continuations start at its
step 1,500 (upcycle --keep_step), so no arm re-warms. The training loss is logged as the mean of
every 25-step interval of unseen batches (under one epoch: a held-out estimate). Papers: the
upcycled model beats the continued dense one early in the continuation; Drop-Upcycling beats
plain upcycling over longer continuations; the scratch MoE needs more compute to catch up.

Run time: 90 min of runs summed (12 runs and 3 dense sources; 2 CPU cores shared with other
work, 2026-12-05). Results and verdicts: experiments/results/upcycling/summary.md.
"""
from __future__ import annotations

import functools
import shutil

import numpy as np

from experiments import bases, harness, hosts, report, stats
from experiments.sweep import Point, Sweep

DENSE_STEPS, EXTRA_STEPS = 1500, 500   # the source 3x the continuation
QUICK_STEPS = 6            # --quick: dense and extra steps each
SOURCE = "_dense_source"   # runs/_dense_source/seed<s>: the dense run every point starts from


def _steps(quick: bool) -> tuple[int, int]:
  return (QUICK_STEPS, QUICK_STEPS) if quick else (DENSE_STEPS, EXTRA_STEPS)


def _base(quick: bool):
  dense, extra = _steps(quick)
  c = bases.lm_protocol(quick=quick)
  c.steps = dense + extra          # (--quick's base would otherwise be 6 steps in all)
  if not quick:
    c.log_every = 25               # 20 points of the 500-step continuation
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

  def copy():
    shutil.copytree(source / "checkpoints", workdir / "checkpoints")
    for name in ("config.json", "metrics.jsonl"):
      shutil.copy2(source / name, workdir / name)
  hosts.main_writes(copy, f"continue {workdir}")


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
  dense = {"dense_steps": _steps(quick)[0]}     # where the continuations start
  return [Point("dense", {"init": "dense", **dense}, {"model.num_experts": 0},
                functools.partial(_continue_dense, quick=quick)),
          Point("upcycled", {"init": "upcycled", **dense}, {},
                functools.partial(up, drop_ratio=0.0)),
          Point("drop0.5", {"init": "drop-upcycled r=0.5", **dense}, {},
                functools.partial(up, drop_ratio=0.5)),
          Point("scratch", {"init": "MoE from scratch", **dense}, {})]


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


def _plot(curves, path, dense_steps: int) -> None:
  lo = min(loss.mean(0)[len(loss[0]) // 4:].min() for _, loss, _ in curves.values())
  hi = max(loss.mean(0)[x >= 0][0] for x, loss, _ in curves.values() if (x >= 0).any())
  report.draw_curves(
      curves, path, vline=0, ylim=(lo - 0.05, hi + 0.15),
      step_label=f"steps after the dense run (scratch: its own steps - {dense_steps})",
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
  dense_steps = int(records[0].get("dense_steps") or min(r["steps"] for r in records) // 2)
  extra = min(r["steps"] for r in records) - dense_steps
  if "dense" not in g:
    return ["## Reading", "", "(the dense point is needed to read this sweep)"]
  dense_fps = np.mean([r["train_flops"] / r["steps"] for r in g["dense"]])
  curves = _curves(records, dense_steps, dense_fps)
  _plot(curves, out / "loss_vs_extra_steps.png", dense_steps)
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
  if "upcycled" in g and "dense" in g:
    lines.append(f"At the end of the {extra} extra steps (Komatsuzaki et al.: upcycling keeps "
                 f"the dense model's progress and ends below continuing it): upcycled "
                 f"{report.compared(g['upcycled'], g['dense'], 'dense')}.")
  if "upcycled" in g and "drop0.5" in g:
    lines.append(f"Paper's direction (Drop-Upcycling beats plain upcycling over a longer "
                 f"continuation), after {extra} extra steps: drop0.5 "
                 f"{report.compared(g['drop0.5'], g['upcycled'], 'upcycled')} (the paper's "
                 "continuations are billions of tokens; the re-drawn units need long to pay "
                 "back).")
  if "scratch" in g and "upcycled" in g:
    lines.append(f"MoE from scratch after all {dense_steps + extra} steps (the paper: scratch "
                 "needs more compute, so it is higher here): scratch "
                 f"{report.compared(g['scratch'], g['upcycled'], 'upcycled', expected=+1)}; the "
                 f"upcycled model spent its first {dense_steps} steps as the dense model "
                 "(fewer FLOPs).")
  return lines


def get_sweep(quick: bool) -> Sweep:
  return Sweep(name="upcycling", base=lambda: _base(quick), points=_points(quick),
               seeds=2 if quick else 3,
               analyze=analyze, description=__doc__.split("\n\n")[2])
