"""Number of experts at fixed active compute (Switch Transformer, Fedus et al. 2021, Fig. 4).

    python -m experiments.run experiments/num_experts.py          # default: 4 E x 3 seeds
    python -m experiments.run experiments/num_experts.py --quick  # seconds, for tests

E in {1 = the dense model, 4, 8, 16} experts, top-1, every expert as wide as the dense FFN, so
every point spends the same FLOPs per token (plus the router's 2*d*E) while total parameters
grow with E. Paper: at fixed compute the loss falls as experts are added, with diminishing
returns. The CPU protocol (experiments/bases.py `lm_protocol`, chosen by experiments/pilot.py):
a byte-level LM on stdlib_py, d_model 64, 4 layers, MoE in layers 1 and 3, dropless (no token
dropped, so E is not confounded with capacity), 2,000 steps of 16 x 128 tokens (~20 tokens per
active non-embedding parameter), evaluated on the whole validation split; 3 seeds paired.
Measured (2026-12-05, commit 389acc7, 2 CPU cores, jax 0.10.2): 12 runs, 63 min summed on a
machine shared with other work (about 4 to 8 min a run).
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report, stats
from experiments.sweep import Sweep, point

EXPERTS = (1, 4, 8, 16)


def _point(e: int):
  # E = 1 is the dense model (num_experts=0: a plain FFN of the experts' width, no router).
  return point({"E": e}, {"model.num_experts": 0 if e == 1 else e}, name=f"E{e}")


def analyze(records, out) -> list[str]:
  report.plot_lines(records, "E", "eval_loss", out / "loss_vs_experts.png", logx=True,
                    xticks=EXPERTS, xlabel="experts E (1 = dense), top-1",
                    ylabel="validation loss (nats/byte)",
                    title="validation loss against experts at fixed active FLOPs")
  report.plot_lines(records, "total_params", "eval_loss", out / "loss_vs_total_params.png",
                    xlabel="total parameters", ylabel="validation loss (nats/byte)",
                    title="the same points against total parameters")
  report.plot_curves(records, "E", out / "loss_vs_steps.png",
                     title="training loss against steps and FLOPs, one line per E (seed band)")
  g = report.groups(records)
  names = list(g)
  rows = []
  for name in names[1:]:      # every E against dense, then each doubling against the last
    for other in dict.fromkeys(["E1", names[names.index(name) - 1]]):
      c = report.comparison(g[name], g[other])
      if c:
        rows.append((f"{name} - {other}", c))
  dropped = {n: np.mean(report.values(g[n], "dropped_fraction") or [0.0]) for n in names}
  verdicts = {n: c.verdict for n, c in rows}
  against_dense = [n for n in names[1:] if verdicts.get(f"{n} - E1") == "reproduced"]
  lines = ["## Reading", "",
           "Validation loss differences, paired over seeds (the paper's sign: negative, more "
           "experts at the same active compute give a lower loss):", "", *stats.table(rows), "",
           "Paper's direction (loss falls with E at fixed compute): "
           + (f"resolved against dense at {', '.join(against_dense)}" if against_dense else
              "not resolved against dense at any E") + "; per doubling: "
           + ", ".join(f"{n} {verdicts[n]}" for n in verdicts if not n.endswith("- E1"))
           + "."]
  if any(dropped[n] > 0.01 for n in names):
    lines.append("Dropped fraction of assignments (a confound the paper did not have): "
                 + ", ".join(f"{n} {dropped[n]:.3f}" for n in names[1:]) + ".")
  return lines


def get_sweep(quick: bool) -> Sweep:
  experts = (1, 2, 4) if quick else EXPERTS
  return Sweep(name="num_experts", base=lambda: bases.lm_protocol(quick=quick),
               points=[_point(e) for e in experts], seeds=2 if quick else 3,
               analyze=analyze, description=__doc__.split("\n\n")[2])
