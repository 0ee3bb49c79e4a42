"""Number of experts at fixed active compute (Switch Transformer, Fedus et al. 2021, Fig. 4).

    python -m experiments.run experiments/num_experts.py          # default: 6 x 3 seeds
    python -m experiments.run experiments/num_experts.py --quick  # seconds, for tests
Measured (2026-12-02, 2 CPU cores, jax 0.10.2): 18 runs (6 E x 3 seeds), 33.4 min summed
run time, shared with benchmark probes and tests (an earlier, more shared run: 55.6 min); the
rerun reproduced that run's losses to within 1e-3.

E in {1 = the dense model, 2, 4, 8, 16, 32} experts, top-1, every expert as wide as the dense
FFN, so every point spends the same FLOPs per token (plus the router's 2*d*E) while total
parameters grow with E. Paper: at fixed compute the loss falls as experts are added, with
diminishing returns. Byte-level LM on stdlib_py (experiments/bases.py: d_model 96, 4 layers, MoE in
layers 1 and 3, 300 steps of 16 x 128 tokens, less than one epoch).
"""
from __future__ import annotations

import numpy as np

from experiments import bases, report, stats
from experiments.sweep import Sweep, point

EXPERTS = (1, 2, 4, 8, 16, 32)


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
  return Sweep(name="num_experts", base=lambda: bases.lm(quick=quick),
               points=[_point(e) for e in experts], seeds=2 if quick else 3,
               analyze=analyze, description=__doc__.split("\n\n")[2])
