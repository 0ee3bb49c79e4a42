"""Number of experts and router type on the embedded classification tasks.

    python -m experiments.run experiments/classification.py
    python -m experiments.run experiments/classification.py --quick
Measured (2026-12-02, 2 CPU cores, jax 0.10.2): 24 runs (12 points x 2 seeds), 31.9 min summed
run time, machine otherwise idle (2 min over the 30-min target).

The encoder classifiers of configs/classify_digits.py (8x8 digits as 2x2 patches) and
configs/classify_text.py (which stdlib package a 256-byte snippet is from; 150 steps here
instead of 300) on one device: E in {1 = dense, 4, 8, 16} with top-2, and at E = 8 the
routers an encoder may use that a decoder may not (expert choice, soft MoE), which see the
whole sequence. Validation accuracy with its spread over seeds. The papers' direction (V-MoE,
Riquelme et al. 2021; Soft MoE, Puigcerver et al. 2023): more experts and soft routing help
image classification at scale; at this size the question is whether they help at all.
"""
from __future__ import annotations

from experiments import bases, report
from experiments.sweep import Sweep, concat, point, product

TASKS = {"digits": "classify_digits.py", "text": "classify_text.py"}
EXPERTS = (1, 4, 8, 16)


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
                      xlabel="experts E (1 = dense), top-2", ylabel="validation accuracy",
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


def get_sweep(quick: bool) -> Sweep:
  experts = (1, 4) if quick else EXPERTS
  tasks = ("digits",) if quick else ("digits", "text")
  by_e = [point({"E": e, "router": "topk"}, {"model.num_experts": 0 if e == 1 else e},
                name=f"E{e}-topk") for e in experts]
  routers = [] if quick else [
      point({"E": 8, "router": "expert_choice"}, {"model.router": "expert_choice"},
            name="E8-expert_choice"),
      point({"E": 8, "router": "soft"}, {"model.router": "soft", "model.dispatcher": "einsum"},
            name="E8-soft")]
  points = []
  for task in tasks:
    task_points = product([_task(task)], concat(by_e, routers))
    if task == "text":
      task_points = [p._replace(overrides={**p.overrides, **_TEXT}) for p in task_points]
    points += task_points
  return Sweep(name="classification",
               base=lambda: bases.classifier(quick=quick, config=TASKS["digits"]),
               points=points, seeds=2, analyze=analyze, metric="accuracy",  # 3 seeds: > 30 min
               description=__doc__.split("\n\n")[2])


# The text task's model, from configs/classify_text.py, on top of the digits base.
_TEXT = {"model.max_len": 257, "classifier.patch_size": 1, "model.d_model": 64,
         "model.d_ff": 128, "model.expert_d_ff": 128, "data.batch_size": 32, "steps": 150}
