"""The routed scaling law (Clark et al. 2022, "Unified Scaling Laws for Routed Language
Models"): the number-of-experts sweep at three base model sizes, and the fitted law.

    python -m experiments.run experiments/routed_scaling.py          # 9 points x 3 seeds
    python -m experiments.run experiments/routed_scaling.py --quick  # seconds, for tests
    python -m experiments.run experiments/routed_scaling.py --grid gpu --estimate  # c: 77 GPU-h

Base sizes d_model in {48, 64, 96} (4 layers, d_ff = expert_d_ff = 4 d_model, MoE in layers 1
and 3), each with E in {1 = dense, 4, 16} experts top-1, on the CPU protocol
(experiments/bases.py `lm_protocol`: byte-level LM on stdlib_py, dropless, 2,000 steps of
16 x 128 tokens at every size, so ~40 to ~9 tokens per active non-embedding parameter from the
smallest to the largest), 3 paired seeds. N is the dense model's non-embedding parameter count
(the base size), E the experts. Fit: log L = a log N + b log E + c log N log E + d by least
squares over every run, with 95% bootstrap intervals resampling whole (N, E) configs; Clark's
saturating form (E replaced by E-hat) needs at least 4 values of E and is fitted only then.
Per size, each E against dense as a paired comparison (b < 0 at that size). c > 0 needs a range
of N that a CPU cannot train: Clark's law is fitted over 15 M to 1.3 B parameters, a factor of
90; here N spans a factor of 4 at 110 k to 440 k, where the interval of c is expected to
include 0, so c is reported, not decided. Paper: b < 0 (experts lower the loss) and c > 0 (their benefit shrinks as N grows).

Measured so far (2026-12-06, 2 CPU cores shared with other work, jax 0.10.2): d_model 48 at
E = 1, 4, 16 (runs at a10081f-era code and e603e82), 9 runs, 72 min summed (6 to 16 min a run,
by the load beside it): E4 and E16 below dense at that size, Δ -0.055 [-0.082, -0.028] and
-0.101 [-0.120, -0.081], reproduced. d64 and d96 are queued (their runs cost about 1.7x and
3.5x d48's FLOPs); no law is fitted until a second size has run.
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report, scaling_fit
from experiments.sweep import Sweep, axis, point, product

SIZES = (48, 64, 96)
EXPERTS = (1, 4, 16)


def _sizes(sizes):
  return [point({"d_model": d}, {"model.d_model": d, "model.d_ff": 4 * d,
                                 "model.expert_d_ff": 4 * d}, name=f"d{d}") for d in sizes]


def _experts(experts):
  return axis("E", "model.num_experts", experts, lambda e: 0 if e == 1 else e)


def analyze(records, out) -> list[str]:
  dense_n = {r["d_model"]: r["non_embedding_params"] for r in records if r["E"] == 1}
  rows = [r for r in records if r["d_model"] in dense_n]
  for r in rows:
    r["N"] = dense_n[r["d_model"]]
  report.plot_lines(rows, "E", "eval_loss", out / "loss_vs_experts_by_size.png",
                    series="d_model", logx=True, xticks=sorted({r["E"] for r in rows}),
                    xlabel="experts E (1 = dense), top-1", ylabel="validation loss (nats/byte)",
                    title="loss against experts, one line per base size")
  per_size = ["Per base size, each E against that size's dense model (b < 0 at that size):",
              *_gain_per_size(rows)]
  lines = ["## Reading", ""]
  try:
    fit = scaling_fit.fit_routed_law([r["N"] for r in rows], [r["E"] for r in rows],
                                     [r["eval_loss"] for r in rows],
                                     groups=[f"{r['N']}-{r['E']}" for r in rows],
                                     bootstrap=1000)
  except ValueError as e:
    return lines + [f"No fit: {e}.", "", *per_size]
  ci = fit["ci"]
  lines.append("Fit log L = a log N + b log E + c log N log E + d over "
               f"{fit['n_points']} runs (R^2 {fit['r2']:.3f}, residual std "
               f"{fit['residual_std']:.4f} in log L):")
  lines.append("")
  lines.append("| coefficient | value | 95% bootstrap interval |")
  lines.append("|---|---|---|")
  for k in ("a", "b", "c", "d"):
    lines.append(f"| {k} | {fit[k]:.5f} | {ci[k][0]:.5f} .. {ci[k][1]:.5f} |")
  lines.append("")
  b_neg = ci["b"][1] < 0
  c_pos = ci["c"][0] > 0
  lines.append(f"b < 0 (experts help): {'reproduced' if b_neg else 'not established'} "
               f"(b = {fit['b']:.4f}, interval {ci['b'][0]:.4f} .. {ci['b'][1]:.4f}).")
  lines.append("c > 0 (the benefit shrinks with N): "
               + ("reproduced" if c_pos else "not established at this scale: the interval "
                  "includes 0 or lies below it")
               + f" (c = {fit['c']:.4f}, interval {ci['c'][0]:.4f} .. {ci['c'][1]:.4f}; N spans "
               f"a factor of {max(r['N'] for r in rows) / min(r['N'] for r in rows):.1f} here, "
               "Clark et al.'s about 90: a CPU cannot decide c).")
  sat = scaling_fit.fit_routed_law_saturating([r["N"] for r in rows], [r["E"] for r in rows],
                                              [r["eval_loss"] for r in rows]) \
      if len({r["E"] for r in rows}) >= 4 and len(rows) >= 7 else {"ok": False,
                                                                  "reason": "too few E values"}
  if sat.get("ok"):
    lines.append(f"Saturating form: E_start {sat['e_start']:.2f}, E_max {sat['e_max']:.3g}; AIC "
                 f"{sat['aic']:.1f} vs {sat['aic_plain']:.1f} for the plain form: "
                 + ("preferred" if sat["improves"] else "not preferred (the data do not "
                                                         "support saturation here)") + ".")
  else:
    lines.append(f"Saturating form not fitted: {sat.get('reason')}.")
  lines += ["", *per_size]
  _plot_fit(rows, fit, out / "routed_law_fit.png")
  return lines


def _gain_per_size(rows) -> list[str]:
  """Per N: each E against dense, paired over seeds (the fit's b is the slope at log N = 0,
  far outside the data, so the per-size comparisons say what b cannot; they need one size
  only, so they are read before a second size has run)."""
  lines = []
  for n in sorted({r["N"] for r in rows}):
    by_e = report.groups([r for r in rows if r["N"] == n], key="E")
    dense = by_e.get(1)
    for e in sorted(e for e in by_e if e != 1) if dense else ():
      gain = 1 - np.mean(report.values(by_e[e], "eval_loss")) / np.mean(
          report.values(dense, "eval_loss"))
      lines.append(f"- N = {n / 1e3:.0f}k: E = {e}, loss {abs(100 * gain):.1f} % "
                   f"{'below' if gain >= 0 else 'above'} dense "
                   f"({report.compared(by_e[e], dense, 'dense')})")
  return lines


def _plot_fit(rows, fit, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for n in sorted({r["N"] for r in rows}):
    pts = [r for r in rows if r["N"] == n]
    es = np.array(sorted({r["E"] for r in pts}), float)
    line, = ax.plot(es, scaling_fit.predict_routed(fit, np.full_like(es, n), es), "--")
    ax.scatter([r["E"] for r in pts], [r["eval_loss"] for r in pts], s=12,
               color=line.get_color(), label=f"N = {n / 1e3:.0f}k")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("experts E")
  ax.set_ylabel("validation loss (nats/byte)")
  ax.set_title("fitted routed scaling law (dashed) over every run", fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def get_sweep(quick: bool) -> Sweep:
  sizes, experts = ((32, 48), (1, 2, 4)) if quick else (SIZES, EXPERTS)
  return Sweep(name="routed_scaling", base=lambda: bases.lm_protocol(quick=quick),
               points=product(_sizes(sizes), _experts(experts)), seeds=2 if quick else 3,
               analyze=analyze, description=__doc__.split("\n\n")[2])


# The accelerator-sized grid (--grid gpu): N from 8 M to 268 M (a factor of 32; Clark et al.'s
# is 90), so that c's interval can exclude 0. Each size trains on 20 tokens per dense
# non-embedding parameter, at every E (Clark's fixed token budget per size).
GPU_SIZES = ((256, 8), (512, 8), (768, 12), (1024, 16))     # (d_model, num_layers)
GPU_EXPERTS = (1, 8, 32, 64)


def get_gpu_sweep() -> Sweep:
  """python -m experiments.run experiments/routed_scaling.py --grid gpu [--estimate]: the law
  over 4 sizes x E in {1, 8, 32, 64} (top-1, every other layer), 2 paired seeds, on lm1b (the
  data prepared as configs/lm_lm1b.py says). Not run here; 77 GPU-hours by --estimate
  (docs/experiments.md, "What a CPU cannot reach")."""
  sizes = [point({"d_model": d, "layers": n},
                 {"model.d_model": d, "model.num_layers": n, "model.num_heads": d // 64,
                  "model.d_ff": 4 * d, "model.expert_d_ff": 4 * d,
                  "steps": bases.gpu_steps(d, n)}, name=f"d{d}") for d, n in GPU_SIZES]
  # Experts over the node's 8 devices (expert=8); the dense model as plain data parallelism.
  experts = [point({"E": e}, {"model.num_experts": 0 if e == 1 else e,
                              "model.router_options": {"k": 1},
                              "mesh.data": 8 if e == 1 else 1,
                              "mesh.expert": 1 if e == 1 else 8}, name=f"E{e}")
             for e in GPU_EXPERTS]
  return Sweep(name="routed_scaling-gpu", base=lambda: bases.lm_gpu(d_model=256, num_layers=8),
               points=product(sizes, experts), seeds=2, analyze=analyze,
               description=get_gpu_sweep.__doc__)
