"""Tables, plots and the summary of a sweep, from its records (one per run).

Seeds are part of every number shown: a point's value is the mean over its seeds with the
spread (sample std, and the min-max range in plots); a comparison of two points is paired over
their seeds and stated as Δ with its 95 % interval and verdict class (experiments/stats.py).
"""
from __future__ import annotations

import datetime
import os
import pathlib
import platform
from typing import Sequence

import numpy as np

from experiments import stats


def groups(records: list[dict], key: str = "point") -> dict:
  """{point: [records of its seeds]}, in the sweep's order."""
  out: dict = {}
  for r in records:
    out.setdefault(r[key], []).append(r)
  return out


def values(records: list[dict], field: str) -> list[float]:
  return [float(r[field]) for r in records if r.get(field) is not None]


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  xs = np.asarray(xs, float)
  if xs.size == 0:
    return float("nan"), float("nan")
  return float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else 0.0


def fmt(mean: float, std: float, digits: int = 4) -> str:
  if np.isnan(mean):
    return "-"
  if std == 0 and digits == 0:   # counts that do not vary with the seed
    return f"{mean:.0f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(records: list[dict], columns: Sequence[tuple[str, str, int]],
          first: Sequence[str] = ()) -> list[str]:
  """A markdown table, one row per point: the `first` fields (swept values, taken from the
  first seed) then mean ± std over seeds of each (field, header, digits) column; columns no
  record has are left out."""
  columns = [c for c in columns if values(records, c[0])]
  head = list(first) + [c[1] for c in columns] + ["seeds"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for _, rs in groups(records).items():
    cells = [str(rs[0].get(f, "")) for f in first]
    for field, _, digits in columns:
      vs = values(rs, field)
      cells.append(fmt(*mean_std(vs), digits) if vs else "-")
    lines.append("| " + " | ".join(cells + [str(len(rs))]) + " |")
  return lines


def comparison(records_a: list[dict], records_b: list[dict], field: str = "eval_loss", *,
               expected: int = -1, bound: float | None = None) -> stats.Comparison | None:
  """a - b paired over the seeds both points ran (experiments/stats.py); None under 2."""
  a, b = stats.by_seed(records_a, field), stats.by_seed(records_b, field)
  if len(set(a) & set(b)) < 2:
    return None
  return stats.compare(a, b, expected=expected, bound=bound)


def trend(records_a: list[dict], records_b: list[dict], field: str = "eval_loss", *,
          expected: int = -1, bound: float | None = None) -> str:
  """The verdict class of a against b (reproduced / reversed / equivalent / inconclusive),
  with `expected` the paper's sign of a - b; 'single seed' without two paired seeds."""
  c = comparison(records_a, records_b, field, expected=expected, bound=bound)
  return c.verdict if c else "single seed"


def compared(records_a: list[dict], records_b: list[dict], other: str,
             field: str = "eval_loss", *, expected: int = -1, bound: float | None = None,
             digits: int = 4) -> str:
  """'against OTHER: Δ ... [lo, hi] (95 %, paired ...): **class**' (stats.describe)."""
  c = comparison(records_a, records_b, field, expected=expected, bound=bound)
  if c is None:
    return f"against {other}: a single seed, no interval"
  return f"against {other}: {stats.describe(c, digits)}"


def plot_lines(records: list[dict], x: str, y: str, path, *, series: str | None = None,
               logx: bool | int = False, xlabel: str | None = None, ylabel: str | None = None,
               title: str = "", xticks: Sequence | None = None) -> pathlib.Path:
  """Mean over seeds of `y` against `x` (one line per value of `series`), a band from the
  seeds' min to max, and every seed as a dot."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  by_series: dict = {}
  for r in records:
    if r.get(y) is not None and r.get(x) is not None:
      by_series.setdefault(r.get(series) if series else None, []).append(r)
  for name, rs in by_series.items():
    xs = sorted({r[x] for r in rs})
    ys = [[float(r[y]) for r in rs if r[x] == v] for v in xs]
    mean = [np.mean(v) for v in ys]
    line, = ax.plot(xs, mean, marker="o", label=None if name is None else f"{series}={name}")
    ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], alpha=0.2,
                    color=line.get_color())
    for v, vals in zip(xs, ys):
      ax.scatter([v] * len(vals), vals, s=8, color=line.get_color(), alpha=0.6)
  if logx:   # True: base 2 (doublings), or the base to use
    ax.set_xscale("log", base=2 if logx is True else logx)
  if xticks is not None:
    ax.set_xticks(list(xticks))
    ax.set_xticklabels([str(t) for t in xticks])
  ax.set_xlabel(xlabel or x)
  ax.set_ylabel(ylabel or y)
  ax.set_title(title, fontsize=10)
  if series and by_series:      # nothing drawn (no record has the fields yet): no legend
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_curves(records: list[dict], series: str, path, *, title: str = "") -> pathlib.Path:
  """The training loss curves (`loss_curve`), mean over seeds per value of `series`, against
  steps (left) and against training FLOPs, 3 x FLOPs/token x tokens (right)."""
  by_series: dict = {}
  for r in records:
    if r.get("loss_curve"):
      by_series.setdefault(r[series], []).append(r)
  curves = {}
  for name, rs in by_series.items():
    steps = sorted(set.intersection(*({s for s, _ in r["loss_curve"]} for r in rs)))
    if not steps:
      continue
    loss = np.array([[dict(map(tuple, r["loss_curve"]))[s] for s in steps] for r in rs])
    flops_per_step = np.mean([r["train_flops"] / r["steps"] for r in rs])
    curves[f"{series}={name}"] = (np.array(steps), loss, flops_per_step * np.array(steps))
  return draw_curves(curves, path, title=title)


def draw_curves(curves: dict, path, *, title: str = "", step_label: str = "training step",
                flops_label: str = "training FLOPs (3 x forward FLOPs/token x tokens)",
                ylim=None, vline=None) -> pathlib.Path:
  """{label: (steps [N], loss [seeds, N], flops [N])} as mean lines with the seeds' min-max
  band, against steps (left) and FLOPs (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (by_step, by_flops) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for name, (steps, loss, flops) in curves.items():
    for ax, xs in ((by_step, steps), (by_flops, flops)):
      line, = ax.plot(xs, loss.mean(0), label=name)
      ax.fill_between(xs, loss.min(0), loss.max(0), alpha=0.15, color=line.get_color())
  if vline is not None:
    by_step.axvline(vline, color="gray", lw=0.8)
  by_step.set_xlabel(step_label)
  by_flops.set_xlabel(flops_label)
  by_step.set_ylabel("training cross-entropy (unseen batches)")
  by_flops.legend(fontsize=8)
  for ax in (by_step, by_flops):
    ax.grid(alpha=0.3)
  if ylim is not None:
    by_step.set_ylim(*ylim)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_bars(records: list[dict], y: str, path, *, ylabel: str | None = None,
              title: str = "", hatch_points: Sequence[str] = ()) -> pathlib.Path:
  """One bar per point: mean over seeds of `y`, the seeds' min-max as an error bar; points in
  `hatch_points` are hatched (flagged ablations)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  g = groups(records)
  names = [n for n, rs in g.items() if values(rs, y)]
  means = [np.mean(values(g[n], y)) for n in names]
  lo = [m - min(values(g[n], y)) for m, n in zip(means, names)]
  hi = [max(values(g[n], y)) - m for m, n in zip(means, names)]
  fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 4))
  bars = ax.bar(range(len(names)), means, yerr=[lo, hi], capsize=3, color="tab:blue",
                alpha=0.8)
  for bar, n in zip(bars, names):
    if n in hatch_points:
      bar.set_hatch("//")
      bar.set_color("tab:orange")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
  if means:
    span = max(means) - min(means)
    ax.set_ylim(min(means) - max(lo + [0]) - 0.3 * span - 1e-3,
                max(means) + max(hi + [0]) + 0.3 * span + 1e-3)
  ax.set_ylabel(ylabel or y)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_loads(records: list[dict], path, *, title: str = "") -> pathlib.Path:
  """Expert load x E of every point's MoE layers (first seed), one heat-map row per layer."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows, labels = [], []
  for name, rs in groups(records).items():
    for layer, load in sorted(rs[0].get("expert_load", {}).items(), key=lambda kv: int(kv[0])):
      rows.append(np.asarray(load) * len(load))
      labels.append(f"{name} L{layer}")
  width = max((len(r) for r in rows), default=1)
  grid = np.full((max(len(rows), 1), width), np.nan)
  for i, r in enumerate(rows):
    grid[i, :len(r)] = r
  fig, ax = plt.subplots(figsize=(max(5, 0.35 * width + 3), 0.3 * len(rows) + 1.5))
  im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(2.0, np.nanmax(grid)
                                                                         if rows else 2.0))
  ax.set_yticks(range(len(labels)))
  ax.set_yticklabels(labels, fontsize=7)
  ax.set_xlabel("expert")
  ax.set_title(title or "expert load x E (1 = balanced), first seed", fontsize=10)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def timing_spread(records: list[dict]) -> float:
  """The largest (max - min) / mean of step_ms among the seeds of one point (0 with one)."""
  worst = 0.0
  for rs in groups(records).values():
    t = values(rs, "step_ms")
    if len(t) > 1:
      worst = max(worst, (max(t) - min(t)) / np.mean(t))
  return worst


def write_summary(sweep, records: list[dict], out_dir, *, command: str,
                  seconds: float, earlier=()) -> list[pathlib.Path]:
  """summary.md: the sweep's description, how it was run, its analysis (which also draws the
  plots) and the table of every point."""
  import jax
  out_dir = pathlib.Path(out_dir)
  analysis = sweep.analyze(records, out_dir) if sweep.analyze else []
  train_s = sum(float(r.get("wall_s") or 0) for r in records)
  lines = [f"# Sweep `{sweep.name}`", "", sweep.description.strip(), "",
           f"Command: `{command}`  ",
           f"Runs: {len(records)}; training + evaluation {train_s / 60:.1f} min of run time "
           f"(this invocation {seconds / 60:.1f} min); {datetime.date.today()}, jax "
           f"{jax.__version__}, {platform.python_version()}, {os.cpu_count()} CPU cores, "
           f"backend {jax.default_backend()}."
           + (f" With the runs of {', '.join(earlier)}, finished earlier with these settings "
              "(another --only, or the results.json these results replace)." if earlier else ""),
           "", *analysis, "", "## Every point", "",
           *table(records, first=["point"], columns=[("eval_loss", "validation loss", 4),
                            ("bits_per_byte", "bits/byte", 4), ("accuracy", "accuracy", 4),
                            ("active_params", "active params", 0),
                            ("total_params", "total params", 0),
                            ("flops_per_token", "FLOPs/token", 0),
                            ("max_vio", "MaxVio", 3), ("dropped_fraction", "dropped", 3),
                            ("router_logit_abs", "mean abs logit", 3),
                            ("router_z_loss", "router z-loss", 3),
                            ("step_ms", "step ms", 1)]), ""]
  spread = timing_spread(records)
  if spread > 0.2:
    lines.insert(lines.index("## Every point"),
                 f"Timing: the step time of one point varies by up to {100 * spread:.0f} % "
                 "between its seeds, so the machine was shared while this sweep ran: read no "
                 "speed comparison from the step and wall times here.\n")
  path = out_dir / "summary.md"
  path.write_text("\n".join(lines))
  return [path, *sorted(out_dir.glob("*.png"))]
