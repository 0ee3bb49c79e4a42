"""Verdicts that say how sure they are: paired differences over seeds, 95 % intervals, classes.

    c = stats.compare(treatment={0: 1.83, 1: 1.85, 2: 1.84},    # seed -> metric
                      baseline={0: 1.88, 1: 1.89, 2: 1.90},
                      expected=-1, bound=0.01)                  # the paper: lower, by > 0.01
    c.delta, c.interval, c.verdict          # -0.05, (-0.068, -0.032), 'reproduced'
    stats.describe(c)                       # 'Δ -0.0500 [-0.0680, -0.0320] (paired, 3 seeds) ...'

A sweep runs every point with the same seeds, and the same seed gives the same data order and
the same initialisation of everything the points share (tests/experiments/test_stats.py checks
it), so the points of one seed differ only in what the sweep varies: the per-seed differences
d_s = treatment_s - baseline_s remove the seed-to-seed variation both points share. Their mean
is the effect estimate Δ, and its 95 % interval is Student's t on the n differences
(Δ ± t_{0.975, n-1} · sd(d) / √n). A second, unpaired interval from the pooled σ of the two
points (df = 2n - 2) is printed beside it; it ignores the pairing and so is wider whenever the
seeds' shared variation is real.

Verdict classes, with `expected` the paper's sign of Δ (-1: the treatment lowers the metric) and
`bound` the effect size the paper would predict at this scale (stated by the sweep; a paper that
claims "no worse" is tested by `bound` alone):
- reproduced: the interval excludes 0 on the paper's side;
- reversed: the interval excludes 0 on the other side;
- equivalent: the interval lies inside ± bound (an effect, if any, smaller than predicted);
- inconclusive: none of these (underpowered); the minimum detectable |Δ| at 80 % power,
  (t_{0.975, n-1} + t_{0.80, n-1}) · sd(d) / √n, is printed with it, and the seeds that would
  detect `bound`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
POWER = 0.80
CLASSES = ("reproduced", "reversed", "equivalent", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Comparison:
  n: int                                  # paired seeds
  delta: float                            # mean of treatment - baseline over the seeds
  sd: float                               # sd of the per-seed differences
  interval: tuple[float, float]           # paired 95 % t-interval for delta
  pooled_interval: tuple[float, float]    # unpaired: pooled sigma of the two points, df 2n-2
  detectable: float                       # |delta| detectable at 80 % power with these seeds
  verdict: str                            # one of CLASSES
  expected: int                           # the paper's sign of delta: -1 lower, +1 higher
  bound: float | None                     # equivalence bound (the paper's effect here)
  seeds_needed: int | None = None         # seeds to detect `bound` at 80 % power (estimate)


def _t(q: float, df: int) -> float:
  return float(scipy_stats.t.ppf(q, df))


def paired_differences(treatment: Mapping[int, float], baseline: Mapping[int, float]
                       ) -> np.ndarray:
  """treatment_s - baseline_s over the seeds both have, in seed order."""
  seeds = sorted(set(treatment) & set(baseline))
  return np.array([treatment[s] - baseline[s] for s in seeds], float)


def seeds_to_detect(effect: float, sd: float, *, limit: int = 1000) -> int | None:
  """The fewest paired seeds whose 80 %-power detectable difference is below |effect|."""
  if not effect or not math.isfinite(sd):
    return None
  if sd == 0:
    return 2
  for n in range(2, limit + 1):
    if (_t(1 - (1 - LEVEL) / 2, n - 1) + _t(POWER, n - 1)) * sd / math.sqrt(n) < abs(effect):
      return n
  return None


def compare(treatment: Mapping[int, float], baseline: Mapping[int, float], *,
            expected: int = -1, bound: float | None = None) -> Comparison:
  """The paired comparison of two points' per-seed values (see the module docstring)."""
  if expected not in (-1, 1):
    raise ValueError(f"expected must be -1 (the paper: lower) or +1 (higher), got "
                     f"{expected!r}")
  d = paired_differences(treatment, baseline)
  n = len(d)
  if n < 2:
    raise ValueError(f"a paired interval needs at least 2 seeds that both points ran, got {n}")
  delta, sd = float(d.mean()), float(d.std(ddof=1))
  t = _t(1 - (1 - LEVEL) / 2, n - 1)
  half = t * sd / math.sqrt(n)
  seeds = sorted(set(treatment) & set(baseline))
  a = np.array([treatment[s] for s in seeds])
  b = np.array([baseline[s] for s in seeds])
  pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
  pooled_half = _t(1 - (1 - LEVEL) / 2, 2 * n - 2) * pooled * math.sqrt(2 / n)
  lo, hi = delta - half, delta + half
  detectable = (t + _t(POWER, n - 1)) * sd / math.sqrt(n)
  if lo > 0 or hi < 0:
    verdict = "reproduced" if (1 if lo > 0 else -1) == expected else "reversed"
  elif bound is not None and -bound < lo and hi < bound:
    verdict = "equivalent"
  else:
    verdict = "inconclusive"
  return Comparison(n=n, delta=delta, sd=sd, interval=(lo, hi),
                    pooled_interval=(delta - pooled_half, delta + pooled_half),
                    detectable=detectable, verdict=verdict, expected=expected, bound=bound,
                    seeds_needed=seeds_to_detect(bound, sd) if bound else None)


def describe(c: Comparison, digits: int = 4) -> str:
  """One line: Δ, the paired interval, the pooled one, the class (and what it would take)."""
  f = lambda x: f"{x:+.{digits}f}"
  text = (f"Δ {f(c.delta)} [{f(c.interval[0])}, {f(c.interval[1])}] (95 %, paired over "
          f"{c.n} seeds; pooled-σ interval [{f(c.pooled_interval[0])}, "
          f"{f(c.pooled_interval[1])}]): **{c.verdict}**")
  if c.verdict == "inconclusive":
    text += f" (detectable at 80 % power with {c.n} seeds: |Δ| ≥ {c.detectable:.{digits}f}"
    if c.bound:
      text += (f"; the predicted {c.bound:.{digits}f} needs ~{c.seeds_needed} seeds"
               if c.seeds_needed else f"; the predicted {c.bound:.{digits}f} is out of reach")
    text += ")"
  return text


def by_seed(records, field: str = "eval_loss") -> dict[int, float]:
  """{seed: value} of one point's records."""
  return {int(r["seed"]): float(r[field]) for r in records if r.get(field) is not None}


def compare_points(groups: Mapping[str, list], treatment: str, baseline: str, *,
                   field: str = "eval_loss", expected: int = -1,
                   bound: float | None = None) -> Comparison:
  """compare() of two points of a sweep's records grouped by point (report.groups)."""
  return compare(by_seed(groups[treatment], field), by_seed(groups[baseline], field),
                 expected=expected, bound=bound)


def table(rows: list[tuple[str, Comparison]], digits: int = 4) -> list[str]:
  """A markdown table: comparison, Δ, 95 % interval, pooled interval, class, detectable Δ."""
  f = lambda x: f"{x:+.{digits}f}"
  out = ["| comparison | seeds | Δ | 95 % interval (paired) | pooled-σ interval | verdict | "
         "detectable Δ (80 %) |", "|---|---|---|---|---|---|---|"]
  for name, c in rows:
    out.append(f"| {name} | {c.n} | {f(c.delta)} | [{f(c.interval[0])}, {f(c.interval[1])}] | "
               f"[{f(c.pooled_interval[0])}, {f(c.pooled_interval[1])}] | {c.verdict} | "
               f"{c.detectable:.{digits}f} |")
  return out
