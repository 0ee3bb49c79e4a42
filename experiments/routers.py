"""top-k and router type at the same active compute: every registered router, one sweep.

    python -m experiments.run experiments/routers.py          # 9 points, 3 or 5 seeds
    python -m experiments.run experiments/routers.py --quick  # seconds, for tests

Top-k routing with k in {1, 2, 4} (Shazeer et al. 2017; Switch: k=1; GShard / Mixtral: k=2),
then every causal-safe router in moe_jax's registry at its default options (bias_balanced and
deepseek at k=2, as DeepSeek-V3 routes more than one expert; relu with its L1 penalty active
and its target of 2 experts per token; hash and cluster at k=1), each compared, paired over
seeds, with the top-k point of its own k. The CPU protocol (experiments/bases.py
`lm_protocol`: byte-level LM on stdlib_py, d_model 64, 8 experts in layers 1 and 3, dropless,
2,000 steps), 5 paired seeds for the points whose comparison is a close call (every router
against its top-k, where the papers predict |Δ| of about 0.01 nats: 3 seeds resolve ~0.016),
3 for top-4. A router added with `routing.register` joins this sweep without an
edit. Routers that are not causal-safe (expert choice, soft MoE, Sinkhorn: a token's routing
depends on later tokens of its group) leak the future in a decoder, so their loss here would
not be comparable: the full grid leaves them to experiments/classification.py (an encoder,
where they are valid); --quick keeps expert choice as a flagged ablation so that path stays
tested. Reported: loss, balance (MaxVio), experts per token as measured, step time, and the
expert loads of every router. Papers: k=2 beats k=1 at some extra compute (Shazeer; GShard);
learned balanced routers (bias / DeepSeek's aux-loss-free) balance load better than top-k with
an aux loss at no loss cost (DeepSeek-V3); ReMoE matches or beats top-k at the same active
count (Wang et al. 2024); hash routing is a strong baseline with no learned router (Roller
2021).

Measured so far (2026-12-06, runs at commits e47ee1b to e603e82, 2 CPU cores shared with other
work, one --only command each, jax 0.10.2): topk-k1 and relu at 3 seeds, topk-k2,
bias_balanced, deepseek and hash at 5, 26 runs, 291 min summed (relu's dispatch computes all 8
experts, zero gates included, so its step is slower than top-2's by this implementation): k=2
below k=1 (reproduced); bias_balanced, deepseek and relu against topk-k2 inconclusive (each
Δ about -0.005, intervals reaching +0.002 to +0.005); hash (k=1) below topk-k1 by 0.036
(reproduced). Seeds 3-4 of topk-k1 and relu and the other three points are queued
(experiments/results/routers/summary.md).
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report
from experiments.sweep import Sweep, point
from moe_jax import routing

KS = (1, 2, 4)
CLOSE_CALL_SEEDS = 5    # a predicted |Δ| under 0.02 needs ~5 paired seeds (experiments/stats.py)


def router_points(names=None, *, non_causal: bool = True):
  """One point per registered router at its default options; non-causal ones flagged (or
  left out with non_causal=False)."""
  points = []
  for name in names or routing.names():
    router = routing.get(name, num_experts=8)
    if not router.causal_safe and not non_causal:
      continue
    # {}: the router's own defaults, not the base's router_options (k=1 for top-k)
    overrides = {"model.router": name, "model.router_options": {}}
    if not router.causal_safe:
      overrides["model.allow_non_causal_router"] = True
    if router.soft:
      overrides["model.dispatcher"] = "einsum"   # the only dispatcher taking soft weights
    points.append(point({"router": name, "k": router.options.get("k"),
                         "causal_safe": router.causal_safe}, overrides, name=name))
  return points


def _same_k_topk(groups: dict, records: list[dict]):
  """The top-k point to compare a router with: the one of its k, else top-1."""
  k = records[0].get("k")
  name = f"topk-k{k}" if f"topk-k{k}" in groups else "topk-k1"
  return name, groups.get(name)


def analyze(records, out) -> list[str]:
  leaky = sorted({r["point"] for r in records if not r["causal_safe"]})
  report.plot_bars(records, "eval_loss", out / "loss_by_router.png", hatch_points=leaky,
                   ylabel="validation loss (nats/byte)",
                   title="validation loss by router (hatched: not causal-safe, leaks the future)")
  report.plot_bars(records, "max_vio", out / "maxvio_by_router.png", hatch_points=leaky,
                   ylabel="MaxVio (max load / mean load - 1)", title="load imbalance by router")
  report.plot_bars(records, "step_ms", out / "step_time_by_router.png", hatch_points=leaky,
                   ylabel="median train step (ms)", title="step time by router")
  report.plot_loads(records, out / "expert_load_by_router.png")
  g = report.groups(records)
  topk = [n for n in g if n.startswith("topk-k")]
  lines = ["## Reading", ""]
  if len(topk) > 1:
    lines.append("top-k: " + ", ".join(
        f"{n} {report.fmt(*report.mean_std(report.values(g[n], 'eval_loss')))}" for n in topk))
    lines.append(f"k={topk[-1][6:]} (the papers: lower loss, at k times the expert compute): "
                 f"{report.compared(g[topk[-1]], g[topk[0]], 'k=' + topk[0][6:])}.")
  for name, rs in g.items():
    if name in topk or name == "topk":
      continue
    flag = " [not causal-safe: leaks the future, loss not comparable]" if name in leaky else ""
    ref_name, ref = _same_k_topk(g, rs)
    lines.append(f"- {name}: loss {report.fmt(*report.mean_std(report.values(rs, 'eval_loss')))}"
                 f" ({report.compared(rs, ref, ref_name, bound=0.01) if ref else '-'}), MaxVio "
                 f"{np.mean(report.values(rs, 'max_vio')):.3f} ({ref_name} "
                 f"{np.mean(report.values(ref, 'max_vio')) if ref else np.nan:.3f}), "
                 f"experts/token "
                 f"{np.mean(report.values(rs, 'experts_per_token') or [np.nan]):.2f}{flag}")
  return lines


def get_sweep(quick: bool) -> Sweep:
  ks = (1, 2) if quick else KS
  points = [point({"router": "topk", "k": k, "causal_safe": True},
                  {"model.router": "topk", "model.router_options.k": k}, name=f"topk-k{k}")
            for k in ks]
  names = [n for n in routing.names() if n != "topk"]
  if quick:   # one causal and one flagged router keep the quick sweep short
    names = [n for n in names if n in ("hash", "expert_choice")]
  points += router_points(names, non_causal=quick)
  if not quick:   # the routers and the top-k points they are compared with
    points = [p if p.name == f"topk-k{KS[-1]}" else p._replace(seeds=CLOSE_CALL_SEEDS)
              for p in points]
  return Sweep(name="routers", base=lambda: bases.lm_protocol(quick=quick), points=points,
               seeds=2 if quick else 3, analyze=analyze, description=__doc__.split("\n\n")[2])
