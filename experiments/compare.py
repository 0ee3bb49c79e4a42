"""A new gating function against its baselines in one call, for notebooks: paired runs through
the sweep harness (resumable, one workdir per router and seed) and a table of Δ, 95 % intervals
and verdicts from experiments/stats.py.

    from experiments.compare import compare
    result = compare(router=("top_p", {"p": 0.6, "max_k": 2}),
                     against={"topk k=2": ("topk", {"k": 2})},
                     seeds=3, steps=500, workdir="runs/compare/top_p")
    result            # renders as a markdown table in a notebook; print(result) in a terminal
    result.comparisons["topk k=2"].detectable   # the smallest |Δ| these seeds detect at 80 %

A router is a registered name or (name, options). It may be registered in the calling process
(a notebook cell): the runs train in-process. The default base is the CPU protocol
(experiments/bases.py `lm_protocol`); `base` takes any config (or a function returning one),
`overrides` ('a.b=v') apply to every run. Rerunning with the same settings reuses the finished
runs; with other settings the harness refuses and names what changed (use another workdir).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from experiments import bases, harness, report, stats
from experiments.sweep import Point, Sweep
from moe_jax import routing

@dataclasses.dataclass(frozen=True)
class Result:
  """What compare() measured: every run's record, the arms' means, and one Comparison per
  baseline (treatment - baseline, paired over seeds)."""
  router: str
  records: list[dict]
  comparisons: dict[str, stats.Comparison]
  field: str
  steps: int

  def arm(self, label: str) -> list[dict]:
    return [r for r in self.records if r["arm"] == label]

  def lines(self) -> list[str]:
    means = ["| arm | seeds | " + self.field + " | experts/token | MaxVio |", "|---|---|---|---|---|"]
    for label in dict.fromkeys(r["arm"] for r in self.records):
      rs = self.arm(label)
      mean, std = report.mean_std(report.values(rs, self.field))
      ept = report.values(rs, "experts_per_token")
      vio = report.values(rs, "max_vio")
      means.append(f"| {label} | {len(rs)} | {report.fmt(mean, std)} | "
                   f"{np.mean(ept):.2f} | {np.mean(vio):.3f} |" if ept and vio else
                   f"| {label} | {len(rs)} | {report.fmt(mean, std)} | - | - |")
    rows = [(f"{self.router} - {name}", c) for name, c in self.comparisons.items()]
    return [f"{self.steps} steps per run", "", *means, "", *stats.table(rows)]

  def __str__(self) -> str:
    return "\n".join(self.lines())

  def _repr_markdown_(self) -> str:
    return str(self)


def _spec(spec) -> tuple[str, dict]:
  if isinstance(spec, str):
    return spec, {}
  if (isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str)
      and isinstance(spec[1], Mapping)):
    return spec[0], dict(spec[1])
  raise ValueError(f"a router is a registered name or (name, options), got {spec!r}")


def _label(spec) -> str:
  name, options = _spec(spec)
  return name + "".join(f" {k}={v}" for k, v in options.items())


def _point(label: str, spec) -> Point:
  name, options = _spec(spec)
  overrides: dict[str, Any] = {"model.router": name}
  if options:
    overrides["model.router_options"] = options
  safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
  return Point(safe, {"arm": label}, overrides)


def compare(router, against: Mapping[str, Any] | Sequence[Any], *, workdir, seeds: int = 3,
            steps: int | None = None,
            base: Callable[[], Any] | Any | None = None, overrides: Sequence[str] = (),
            field: str = "eval_loss", expected: int = -1, bound: float | None = None,
            say: Callable[[str], None] = print) -> Result:
  """Trains `router` and every router of `against` for `seeds` paired seeds (the same seed
  gives the same data order and non-router initial weights in every arm) and compares each
  baseline with `router` on `field` (default validation loss: `expected=-1`, lower is the
  new router's win). `bound`: the smallest difference that would matter; a comparison whose
  interval lies inside ±bound is called equivalent, and the table says how many seeds would
  detect it."""
  if seeds < 2:
    raise ValueError(f"a paired interval needs at least 2 seeds, got seeds={seeds}")
  baselines = (dict(against) if isinstance(against, Mapping)
               else {_label(spec): spec for spec in against})
  if not baselines:
    raise ValueError("against names no baseline router")
  label = _label(router)
  if label in baselines:
    raise ValueError(f"the router {label!r} is also one of its baselines")
  arms = {label: router, **baselines}
  make_base = base if callable(base) else (lambda: base) if base is not None else (
      lambda: bases.lm_protocol(quick=False))
  num_experts = make_base().model.num_experts or 8
  for spec in arms.values():          # unknown names and bad options fail before any run
    name, options = _spec(spec)
    routing.get(name, num_experts=num_experts, **options)
  flags = [*overrides, *([f"steps={steps}"] if steps is not None else [])]
  sweep = Sweep(name=f"compare-{_point(label, router).name}", base=make_base,
                points=[_point(name, spec) for name, spec in arms.items()], seeds=seeds)
  records = harness.run_sweep(sweep, pathlib.Path(workdir), overrides=flags, say=say)
  g = {name: [r for r in records if r["arm"] == name] for name in arms}
  comparisons = {name: stats.compare(stats.by_seed(g[label], field),
                                     stats.by_seed(g[name], field),
                                     expected=expected, bound=bound)
                 for name in baselines}
  return Result(router=label, records=records, comparisons=comparisons, field=field,
                steps=int(records[0]["steps"]))
