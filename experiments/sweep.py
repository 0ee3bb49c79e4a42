"""What a sweep file declares: a base config, a grid of points, seeds, and how to read the results.

A sweep is a Python file in experiments/ (big_vision style) with a docstring (the command, the
paper trend it reproduces, the measured runtime) and

    def get_sweep(quick: bool) -> Sweep

    Sweep(name="num_experts", base=lambda: lm_base(steps=300),
          points=product(point("E{}", E=[1, 2, 4]), ...), seeds=3, analyze=analyze)

A point is a name, the swept quantities (`values`, the table's columns: E=8, G=2) and the config
overrides that realise them ('model.num_experts': 8). Grids compose: `product` crosses axes,
`zipped` ties axes that move together (granularity: experts, width and k), `concat` joins
grids. Seeds are an axis the harness adds (`seed=s` on every point), so every point runs with
`seeds` seeds unless the command line says otherwise.
"""
from __future__ import annotations

import importlib.util
import itertools
import pathlib
import re
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections


class Point(NamedTuple):
  name: str                     # a file-system-safe id: 'E8', 'G2-shared'
  values: dict[str, Any]        # the swept quantities, as the results table shows them
  overrides: dict[str, Any]     # config path -> value, applied as --config.PATH=VALUE
  # (base, workdir, overrides, seed) -> more overrides (or None): runs before the point
  # trains, every time (also when it resumes), so it must be idempotent: it may train a run
  # the point starts from (a dense source, a teacher) and prepare the workdir's first
  # checkpoint (an upcycled run), or name such a run in the overrides it returns.
  setup: Callable[..., Any] | None = None
  # This point's seed count where the sweep's is too few: a comparison whose predicted effect
  # is under 0.02 nats needs ~5 paired seeds (issue 27 §3), and its partner point as many.
  # A command's --seeds sets every point's count.
  seeds: int | None = None


class Sweep(NamedTuple):
  name: str
  base: Callable[[], ml_collections.ConfigDict]
  points: list[Point]
  seeds: int = 3
  # (records, out_dir) -> the summary's markdown lines; draws the sweep's plots into out_dir.
  analyze: Callable[[list[dict], Any], list[str]] | None = None
  metric: str = "eval_loss"      # the record field the progress line and tables lead with
  description: str = ""
  # What each job asks a cluster for under --launcher=slurm (experiments/launch.py): nodes,
  # gpus_per_node, timeout_min, partition, cpus_per_task; experiments.run's flags win.
  resources: dict[str, Any] = {}


def _name(values: dict[str, Any]) -> str:
  text = "-".join(f"{k}{v}" for k, v in values.items())
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def point(values: dict[str, Any], overrides: dict[str, Any], name: str | None = None,
          seeds: int | None = None) -> Point:
  return Point(name or _name(values), dict(values), dict(overrides), seeds=seeds)


def axis(quantity: str, path: str | Sequence[str], values: Sequence[Any],
         transform: Callable[[Any], Any] | None = None) -> list[Point]:
  """One swept quantity: each value sets `path` (or each of several paths) to
  `transform(value)` (default: the value itself)."""
  paths = [path] if isinstance(path, str) else list(path)
  transform = transform or (lambda v: v)
  return [point({quantity: v}, {p: transform(v) for p in paths}) for v in values]


def product(*grids: Sequence[Point]) -> list[Point]:
  """Every combination of one point from each grid (values and overrides merged; the most
  seeds any of them asks for)."""
  out = []
  for combo in itertools.product(*grids):
    values, overrides = {}, {}
    for p in combo:
      values.update(p.values)
      overrides.update(p.overrides)
    seeds = max((p.seeds for p in combo if p.seeds is not None), default=None)
    out.append(point(values, overrides, "-".join(p.name for p in combo), seeds=seeds))
  return out


def zipped(*grids: Sequence[Point]) -> list[Point]:
  """The i-th points of equally long grids, merged: quantities that move together."""
  if len({len(g) for g in grids}) > 1:
    raise ValueError(f"zipped() needs grids of one length, got {[len(g) for g in grids]}")
  return [product(*[[p] for p in combo])[0] for combo in zip(*grids)]


def concat(*grids: Sequence[Point]) -> list[Point]:
  out = [p for g in grids for p in g]
  names = [p.name for p in out]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"points with the same name: {duplicates}")
  return out


def override_flags(p: Point, seed: int) -> list[str]:
  """The point as `train(..., overrides=...)` takes it ('a.b=v'): strings as they are (as on
  the command line), other values as Python literals."""
  text = lambda v: v if isinstance(v, str) else repr(v)
  return [f"{path}={text(value)}" for path, value in p.overrides.items()] + [f"seed={seed}"]


def load(path, quick: bool, config_file: str | None = None, grid: str = "cpu"):
  """(the Sweep of the sweep file at `path`, its module); with `config_file`, the sweep's base
  config replaced by that config file's; grid='gpu': the file's accelerator-sized grid
  (`get_gpu_sweep()`), for the sweeps whose question a CPU cannot reach."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(2, "No such sweep file", str(path))
  spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(quick) function")
  if grid == "gpu":
    if not hasattr(module, "get_gpu_sweep"):
      raise ValueError(f"{path} has no GPU-sized grid (--grid gpu); the sweeps that have one: "
                       + ", ".join(gpu_sweeps(path.parent)))
    if quick:
      raise ValueError("--grid gpu and --quick: the quick setting is the CPU grid's")
    sweep = module.get_gpu_sweep()
  else:
    sweep = module.get_sweep(quick)
  if config_file:
    from moe_jax import config as config_lib
    sweep = sweep._replace(base=lambda: config_lib.load_file(config_file))
  return sweep, module


def gpu_sweeps(directory) -> list[str]:
  """The sweep files in `directory` that define an accelerator-sized grid."""
  return sorted(f"{p.parent.name}/{p.name}" for p in pathlib.Path(directory).glob("*.py")
                if re.search(r"^def get_gpu_sweep\(", p.read_text(), re.M))
