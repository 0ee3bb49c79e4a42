"""Granularity and shared experts (Krajewski et al. 2024, "Scaling Laws for Fine-Grained
Mixture of Experts"; Dai et al. 2024, DeepSeekMoE).

    python -m experiments.run experiments/granularity.py --only 'G[18]'  # first: G1 vs G8
    python -m experiments.run experiments/granularity.py          # the grid: 7 points x 3 seeds
    python -m experiments.run experiments/granularity.py --quick  # seconds, for tests
    python -m experiments.run experiments/granularity.py --grid gpu --estimate  # gamma: 17 GPU-h

Granularity G in {1, 2, 4, 8}: 4G experts of width 256/G with top-G routing, so total and
active parameters stay those of 4 experts of width 256, top-1, on the CPU protocol
(experiments/bases.py `lm_protocol`: byte-level LM on stdlib_py, d_model 64, MoE in layers 1
and 3, dropless, 2,000 steps), 3 paired seeds. With a shared expert (G >= 2): one of the 4G
experts becomes an always-on shared expert of the same width, the router picks G - 1 of the
other 4G - 1 (DeepSeekMoE's fine-grained + shared isolation at equal parameters and compute).
Staged, because the whole grid costs about 100 min here: G1 against G8 first (6 runs), and the
rest of the grid only where that difference resolves. The fit
L(G) = c + g / G^gamma over the routed-only points. Papers: finer granularity lowers the loss
(Krajewski: gamma ~ 0.58 at their scale); a shared expert helps fine-grained MoE.
Measured (2026-12-05, runs at commit 296cdb7, 2 CPU cores shared with other work, jax 0.10.2):
the first stage, G1 against G8, 6 runs, 57 min summed: G8 above G1 by 0.015 nats/byte
(reversed, see experiments/results/granularity/summary.md).
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report, scaling_fit
from experiments.sweep import Sweep, point

GS = (1, 2, 4, 8)
E, F = 4, 256


def _point(g: int, shared: bool):
  width = F // g
  overrides = {"model.num_experts": E * g - shared, "model.expert_d_ff": width,
               "model.router_options.k": g - shared}
  if shared:
    overrides["model.shared_d_ff"] = width
  return point({"G": g, "shared": shared}, overrides, name=f"G{g}" + ("-shared" * shared))


def analyze(records, out) -> list[str]:
  for r in records:
    r["variant"] = "shared expert" if r["shared"] else "routed only"
  report.plot_lines(records, "G", "eval_loss", out / "loss_vs_granularity.png",
                    series="variant", logx=True, xticks=sorted({r["G"] for r in records}),
                    xlabel="granularity G (4G experts of width 256/G, top-G)",
                    ylabel="validation loss (nats/byte)",
                    title="loss against granularity at equal total and active parameters")
  routed = [r for r in records if not r["shared"]]
  lines = ["## Reading", ""]
  try:
    fit = scaling_fit.fit_granularity([r["G"] for r in routed], [r["eval_loss"] for r in routed],
                                      groups=[r["G"] for r in routed], bootstrap=500)
    if fit.get("ok"):
      ci = fit["ci"]["gamma"]
      lines.append(f"Fit L(G) = c + g / G^gamma (routed-only, every seed): c = {fit['c']:.4f}, "
                   f"g = {fit['g']:.4f}, gamma = {fit['gamma']:.2f} (95% bootstrap over G: "
                   f"{ci[0]:.2f} - {ci[1]:.2f}); R^2 {fit['r2']:.3f}."
                   + (" gamma sits at a bound of its range." if fit.get("at_bound") else "")
                   + (" The law does not describe these points (R^2 below 0.5): the loss is "
                      "not monotone in G here, so gamma means nothing." if fit["r2"] < 0.5
                      else ""))
    else:
      lines.append(f"The granularity fit did not converge: {fit.get('reason')}.")
  except ValueError as e:
    lines.append(f"No granularity fit: {e}.")
  g = report.groups(records)
  first, last = f"G{GS[0]}", max((n for n in g if not n.endswith("shared")),
                                  key=lambda n: int(n[1:]), default=None)
  if first in g and last not in (None, first):
    lines.append(f"Finer granularity (Krajewski et al.: lower loss): {last} "
                 f"{report.compared(g[last], g[first], first)}.")
  for name in g:
    if name.endswith("-shared") and name[:-7] in g:
      lines.append(f"Shared expert at {name[:-7]} (DeepSeekMoE: lower loss): "
                   f"{report.compared(g[name], g[name[:-7]], 'routed-only')}.")
  means = {n: np.mean(report.values(rs, "eval_loss")) for n, rs in g.items()}
  lines.append("Mean validation loss: " + ", ".join(f"{n} {m:.4f}" for n, m in means.items())
               + ".")
  return lines


def get_sweep(quick: bool) -> Sweep:
  gs = (1, 2, 4) if quick else GS
  points = [_point(g, False) for g in gs] + [_point(g, True) for g in gs if g >= 2]
  return Sweep(name="granularity", base=lambda: bases.lm_protocol(quick=quick), points=points,
               seeds=2 if quick else 3, analyze=analyze, description=__doc__.split("\n\n")[2])


# The accelerator-sized grid (--grid gpu): Krajewski et al.'s gamma is how the best G moves
# with compute, so it needs the G grid at several budgets; two sizes here.
GPU_SIZES = ((512, 8), (768, 12))      # (d_model, num_layers)
GPU_GS = (1, 2, 4, 8, 16)


def get_gpu_sweep() -> Sweep:
  """python -m experiments.run experiments/granularity.py --grid gpu [--estimate]: at two sizes,
  G in {1, 2, 4, 8, 16}: 8G experts of width 4 d_model / G, top-G (the total and active
  parameters of 8 experts top-1), every other layer, 2 paired seeds, on lm1b. Not run here;
  17 GPU-hours by --estimate (docs/experiments.md, "What a CPU cannot reach")."""
  points = []
  for d, n in GPU_SIZES:
    for g in GPU_GS:
      points.append(point({"d_model": d, "G": g, "shared": False},
                          {"model.d_model": d, "model.num_layers": n, "model.num_heads": d // 64,
                           "model.d_ff": 4 * d, "model.num_experts": 8 * g,
                           "model.expert_d_ff": 4 * d // g, "model.router_options": {"k": g},
                           "steps": bases.gpu_steps(d, n), "mesh.data": 1, "mesh.expert": 8},
                          name=f"d{d}-G{g}"))
  return Sweep(name="granularity-gpu", base=lambda: bases.lm_gpu(d_model=512, num_layers=8),
               points=points, seeds=2, analyze=analyze, description=get_gpu_sweep.__doc__)
