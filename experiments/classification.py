"""Number of experts and router type on the embedded classification tasks.

    python -m experiments.run experiments/classification.py          # 8 points x 3 seeds
    python -m experiments.run experiments/classification.py --quick  # seconds, for tests

The encoder classifiers of configs/classify_digits.py (8x8 digits as 2x2 patches: 17 tokens
with CLS) and configs/classify_text.py (which stdlib package a 256-byte snippet is from: 257
tokens; 150 steps here instead of 300) on one device, every point at the dense model's FLOPs
per token: the dense model (E = 1), 8 experts top-1 as wide as the dense FFN (dropless), and
at E = 8 the routers an encoder may use that a decoder may not, which see the whole sequence:
expert choice at capacity factor 1 (each expert takes T/8 tokens, so one expert per token on
average) and soft MoE with as many slots as tokens (2 per expert on digits, 32 on text).
Validation accuracy, 3 paired seeds, each MoE point against dense. The papers' direction
(V-MoE, Riquelme et al. 2021; Soft MoE, Puigcerver et al. 2023): experts and soft routing help
image classification at the same compute, at scale; at this size the question is whether they
help at all.

Measured (2026-12-06, runs at commit e47ee1b, E8 top-1 with this file at f72dabe; 2 CPU cores
shared with other work, jax 0.10.2): 24 runs, 23 min summed; every MoE point is inconclusive
against dense (experiments/results/classification/summary.md).
"""
from __future__ import annotations

from experiments import bases, report
from experiments.sweep import Sweep, point, product

TASKS = {"digits": "classify_digits.py", "text": "classify_text.py"}


def _task(name: str):
  overrides = {"data.dataset": "digits" if name == "digits" else "stdlib_package"}
  return point({"task": name}, overrides, name=name)


def analyze(records, out) -> list[str]:
  lines = ["## Reading", ""]
  for task in sorted({r["task"] for r in records}):
    rs = [r for r in records if r["task"] == task]
    e_rows = [r for r in rs if r["router"] == "topk"]
    report.plot_lines(e_rows, "E", "accuracy", out / f"{task}_accuracy_vs_experts.png",
                      logx=True, xticks=sorted({r["E"] for r in e_rows}),
                      xlabel="experts E (1 = dense), top-1", ylabel="validation accuracy",
                      title=f"{task}: accuracy against experts")
    report.plot_bars([r for r in rs if r["E"] in (8,)], "accuracy",
                     out / f"{task}_accuracy_by_router.png", ylabel="validation accuracy",
                     title=f"{task}: accuracy by router at E = 8")
    g = report.groups(rs)
    lines.append(f"**{task}**: " + ", ".join(
        f"{n.split('-', 1)[1]} {report.fmt(*report.mean_std(report.values(v, 'accuracy')), 3)}"
        for n, v in g.items()))
    dense = g.get(f"{task}-E1-topk")
    for n, v in g.items():
      if dense and n != f"{task}-E1-topk":
        lines.append(f"- {n}: accuracy {report.compared(v, dense, 'dense', 'accuracy', expected=+1)}")
    lines.append("")
  return lines


def _points(task: str, quick: bool) -> list:
  slots = 2 if task == "digits" else 32          # as many slots as tokens (17 / 257)
  experts = (1, 4) if quick else (1, 8)
  # Top-1 dropless: the base's capacity dispatcher, over one example's 17 / 257 tokens, drops
  # a quarter of the assignments at E = 8 (measured: 23 % / 26 %), which would be the effect.
  points = [point({"E": e, "router": "topk"},
                  {"model.num_experts": 0 if e == 1 else e, "model.router_options": {"k": 1},
                   **({"model.dispatcher": "dropless"} if e > 1 else {})},
                  name=f"E{e}-topk") for e in experts]
  if not quick:
    points += [
        point({"E": 8, "router": "expert_choice"},
              {"model.router": "expert_choice",
               "model.router_options": {"capacity_factor": 1.0}}, name="E8-expert_choice"),
        point({"E": 8, "router": "soft"},
              {"model.router": "soft", "model.dispatcher": "einsum",
               "model.router_options": {"slots_per_expert": slots}}, name="E8-soft")]
  return product([_task(task)], points)


def get_sweep(quick: bool) -> Sweep:
  points = []
  for task in ("digits",) if quick else ("digits", "text"):
    task_points = _points(task, quick)
    if task == "text":
      task_points = [p._replace(overrides={**p.overrides, **_TEXT}) for p in task_points]
    points += task_points
  return Sweep(name="classification",
               base=lambda: bases.classifier(quick=quick, config=TASKS["digits"]),
               points=points, seeds=2 if quick else 3, analyze=analyze, metric="accuracy",
               description=__doc__.split("\n\n")[2])


# The text task's model, from configs/classify_text.py, on top of the digits base.
_TEXT = {"model.max_len": 257, "classifier.patch_size": 1, "model.d_model": 64,
         "model.d_ff": 128, "model.expert_d_ff": 128, "data.batch_size": 32, "steps": 150}
