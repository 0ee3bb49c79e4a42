"""top-k and router type at the same active compute: every registered router, one sweep.

    python -m experiments.run experiments/routers.py
    python -m experiments.run experiments/routers.py --quick
Measured (2026-12-02, 2 CPU cores, jax 0.10.2): 22 runs (11 points x 2 seeds), 53.7 min summed
run time, the first 30 min shared with a full test run (later runs: 71-84 s each).

Top-k routing with k in {1, 2, 4} (Shazeer et al. 2017; Switch: k=1; GShard / Mixtral: k=2),
then every router in moe_jax's registry with its default options and, where it takes one,
k=1 (the experiments/bases.py LM: 8 experts in layers 1 and 3). A router added with
`routing.register` joins this sweep without an edit. Routers that are not causal-safe (expert
choice, soft MoE, Sinkhorn: a token's routing depends on later tokens of its group) are run
as flagged ablations: in a decoder they leak the future, so their loss is not comparable and
is marked as such. Reported: loss, balance (MaxVio), experts per token as measured, step time,
and the expert loads of every router. Papers: k=2 beats k=1 at some extra compute (Shazeer;
GShard); learned balanced routers (bias / Sinkhorn / expert choice) balance load better than
top-k with an aux loss; hash routing is a strong baseline with no learned router (Roller 2021).
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report
from experiments.sweep import Sweep, point
from moe_jax import routing

KS = (1, 2, 4)


def _refused(name: str, **options) -> bool:
  try:
    routing.get(name, num_experts=8, **options)
    return False
  except ValueError:
    return True


def router_points(names=None):
  """One point per registered router (k=1 where it takes k); non-causal ones flagged."""
  points = []
  for name in names or routing.names():
    router = routing.get(name, num_experts=8)
    overrides = {"model.router": name}
    if not router.causal_safe:
      overrides["model.allow_non_causal_router"] = True
    if router.soft:
      overrides["model.dispatcher"] = "einsum"   # the only dispatcher taking soft weights
    if name == "hash":
      overrides["model.router_options"] = {}      # hashes token ids: nothing to set
    elif "renormalize" in routing.options(name) and _refused(name, k=1):
      # k=1 with renormalised weights is a constant gate (refused): the raw score weighs.
      overrides["model.router_options"] = {"k": 1, "renormalize": False}
    points.append(point({"router": name, "k": router.options.get("k"),
                         "causal_safe": router.causal_safe}, overrides, name=name))
  return points


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
  base = g.get("topk-k1") or g.get("topk")
  for name, rs in g.items():
    if name in topk or name == "topk":
      continue
    flag = " [not causal-safe: leaks the future, loss not comparable]" if name in leaky else ""
    lines.append(f"- {name}: loss {report.fmt(*report.mean_std(report.values(rs, 'eval_loss')))}"
                 f" ({report.compared(rs, base, 'top-1', bound=0.01) if base else '-'}), MaxVio "
                 f"{np.mean(report.values(rs, 'max_vio')):.3f}, experts/token "
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
  points += router_points(names)
  return Sweep(name="routers", base=lambda: bases.lm(quick=quick), points=points,
               seeds=2, analyze=analyze, description=__doc__.split("\n\n")[2])
