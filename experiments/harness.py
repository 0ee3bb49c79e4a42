"""Runs a sweep: every (point, seed) through the public train + evaluate, one workdir each.

    records = run_sweep(sweep, out_dir)      # out_dir/runs/<point>/seed<s>/, results.csv, ...

Each run is an ordinary moe_jax run (`moe_jax.train.train(base, workdir, overrides=...)`, then
`moe_jax.evaluate.evaluate`), so everything that protects a single run protects a sweep: a
point killed mid-run resumes from its newest checkpoint when the sweep is rerun, exactly; a
point whose `record.json` exists is finished and skipped. Before a run is started, resumed or
reused, the config it will run with (the sweep's base, the command's overrides and the point's,
resolved over the schema) is compared with the one its directory was started with
(`sweep_config.json`): any difference is refused, naming the fields, so a rerun with other
settings never reuses or resumes a run made with the old ones. A run's record
(experiments/records.py) is its row of results.csv / results.json.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import pathlib
import statistics
import time
from typing import Callable

import jax

from experiments import hosts
from experiments.records import (RECORD, RECORD_VERSION, SWEEP_CONFIG, finished_record,
                                 make_record, write_record)
from experiments.sweep import Point, Sweep, override_flags
from moe_jax import config as config_lib
from moe_jax.evaluate import evaluate
from moe_jax.train import train

TRAIN_LOG = "train.log"              # the run's own output (the sweep's terminal: one line each)
OWN_FILES = (SWEEP_CONFIG, TRAIN_LOG)   # what the harness writes in a run's workdir


class SettingsChanged(ValueError):
  """A run directory holds a run made with other settings than the sweep asks for now."""


def expected_config(base, flags) -> dict:
  """The complete config tree `train(base, ..., overrides=flags)` runs with."""
  tree, _ = config_lib.resolve(base, flags)
  return json.loads(config_lib.to_json(tree))     # as it reads back from a file


def _completed(recorded: dict) -> dict:
  """A recorded config completed with the schema as it is now: a field added to the schema
  since the run was recorded reads as its default, which is what the run had (otherwise every
  schema addition would orphan every finished sweep run). A field the schema no longer has
  stays, and shows as a change."""
  try:
    tree, _ = config_lib.resolve(recorded)
  except ValueError:
    return recorded
  return json.loads(config_lib.to_json(tree))


def check_settings(workdir: pathlib.Path, base, flags) -> dict:
  """The resolved config of (base, flags); raises SettingsChanged if `workdir` already holds a
  run started with another one (or by an older harness that did not record it)."""
  tree = expected_config(base, flags)
  path = workdir / SWEEP_CONFIG
  if path.exists():
    changes = config_lib.flat_changes(_completed(json.loads(path.read_text())), tree)
    if changes:
      listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changes.items())
      raise SettingsChanged(f"{workdir} holds a run made with other settings ({listed}); "
                            "give these settings their own --workdir (or delete that run)")
  elif workdir.is_dir() and any(workdir.iterdir()):
    raise SettingsChanged(f"{workdir} holds a run whose settings were not recorded (an older "
                          "harness made it); give this sweep its own --workdir (or delete "
                          "that run)")
  return tree


def train_checked(base, workdir: pathlib.Path, flags, **kwargs) -> dict:
  """`moe_jax.train.train` into `workdir` after `check_settings`; the first start records the
  settings. A sweep's helper runs (a dense source, a teacher) go through this too."""
  workdir = pathlib.Path(workdir)
  tree = _claim(workdir, base, flags)
  train(base, workdir, overrides=list(flags), progress=False, **kwargs)
  return tree


def _claim(workdir: pathlib.Path, base, flags) -> dict:
  """check_settings, then records them for a run not started before (every host checks; the
  first writes once all have read)."""
  tree = check_settings(workdir, base, flags)
  hosts.barrier(f"read {workdir}")

  def record():
    if not (workdir / SWEEP_CONFIG).exists():
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / SWEEP_CONFIG).write_text(json.dumps(tree, indent=1, sort_keys=True))
  hosts.main_writes(record, f"claim {workdir}")
  return tree


def run_dirs(out_dir: pathlib.Path, p: Point, seed: int) -> pathlib.Path:
  return pathlib.Path(out_dir) / "runs" / p.name / f"seed{seed}"


def selected(sweep: Sweep, only: str | None) -> list[Point]:
  """The sweep's points whose name matches the glob `only` (all without one)."""
  points = [p for p in sweep.points if only is None or fnmatch.fnmatch(p.name, only)]
  if not points:
    names = ", ".join(p.name for p in sweep.points)
    raise ValueError(f"--only {only!r} matches none of the sweep's points: {names}")
  return points


def point_flags(p: Point, seed: int, overrides=()) -> list[str]:
  """The overrides a (point, seed) trains with: the command's, then the point's own."""
  return [*overrides, *override_flags(p, seed)]


def _log_name() -> str:
  """Process 0 logs to train.log; another host of a multi-host sweep to its own file."""
  return TRAIN_LOG if hosts.is_main() else f"train.process{jax.process_index()}.log"


def _run_point(base, workdir: pathlib.Path, p: Point, seed: int, overrides=()) -> dict | None:
  """Trains and evaluates one run; its record (None on the other hosts of a multi-host sweep,
  which take part in the training only)."""
  flags = point_flags(p, seed, overrides)
  _claim(workdir, base, flags)
  start = time.perf_counter()
  # The run's own output (resume notes, validation lines) goes to its log, so the sweep's
  # terminal keeps one line per point.
  with open(workdir / _log_name(), "a") as log, contextlib.redirect_stdout(log), \
      contextlib.redirect_stderr(log):
    # A setup's extra flags (a teacher's workdir) follow from the checked ones.
    extra = (p.setup(base, workdir, flags, seed) or []) if p.setup is not None else []
    train(base, workdir, overrides=[*flags, *extra], progress=False)
    evaluate(None, workdir, plots=False)
  wall_s = time.perf_counter() - start
  return hosts.main_writes(
      lambda: write_record(workdir, make_record(workdir, p, seed, wall_s)), f"record {workdir}")


def has_checkpoint(workdir: pathlib.Path) -> bool:
  """A complete checkpoint (Orbax names it by its step; a save in progress has a longer name);
  process 0's answer on every host of a multi-host sweep."""
  ckpts = workdir / "checkpoints"
  return hosts.agree(ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()))


def is_finished(workdir: pathlib.Path) -> bool:
  """The run has its record (process 0's answer on every host)."""
  return hosts.agree((workdir / RECORD).exists())


def _describe(record: dict, metric: str) -> str:
  value = record.get(metric)
  text = f"{metric} {value:.4f}" if isinstance(value, float) else f"{metric} {value}"
  if record.get("bits_per_byte") is not None and metric != "bits_per_byte":
    text += f" ({record['bits_per_byte']:.3f} bits/byte)"
  return text


def seeds_of(sweep: Sweep, p: Point, seeds: int | None = None) -> int:
  """How many seeds point `p` runs: the command's --seeds if given, else the point's own count
  if it has one, else the sweep's."""
  if seeds is not None:
    n, where = seeds, "--seeds"
  elif p.seeds is not None:
    n, where = p.seeds, f"sweep {sweep.name}: point {p.name}'s seeds"
  else:
    n, where = sweep.seeds, f"sweep {sweep.name}: seeds"
  if n < 1:
    raise ValueError(f"{where} must be at least 1, got {n}")
  return n


def runs_of(sweep: Sweep, seeds: int | None = None,
            only: str | None = None) -> list[tuple[Point, int]]:
  """The sweep's (point, seed) runs in order: the selected points, each crossed with its seeds
  (seeds_of)."""
  return [(p, s) for p in selected(sweep, only) for s in range(seeds_of(sweep, p, seeds))]


def grid_text(todo) -> str:
  """'9 runs (3 points x 3 seeds)', or '13 runs (3 points, 3 to 5 seeds each)'."""
  counts = {}
  for p, _ in todo:
    counts[p.name] = counts.get(p.name, 0) + 1
  low, high = min(counts.values(), default=0), max(counts.values(), default=0)
  each = f" x {low} seeds" if low == high else f", {low} to {high} seeds each"
  return f"{len(todo)} runs ({len(counts)} points{each})"


def check_all_settings(sweep: Sweep, out_dir: pathlib.Path, todo, overrides=()) -> None:
  """Every run's settings before any is started: a sweep is refused as a whole."""
  base = sweep.base()
  for p, seed in todo:
    check_settings(run_dirs(out_dir, p, seed), base, point_flags(p, seed, overrides))


def run_sweep(sweep: Sweep, out_dir, *, seeds: int | None = None, only: str | None = None,
              overrides=(), say: Callable[[str], None] = print) -> list[dict]:
  """Runs every unfinished (point, seed) of `sweep` into `out_dir`; returns all records.
  `overrides` ('a.b=v') apply to every run, before the point's own.

  In a multi-host job (jax.distributed) every host calls this with the same arguments and
  trains every run with the others; process 0 alone writes and says anything, and the other
  processes return no records (see experiments/hosts.py)."""
  out_dir = pathlib.Path(out_dir)
  if not hosts.is_main():
    say = lambda line: None
  todo = runs_of(sweep, seeds, only)
  done = sum((run_dirs(out_dir, p, s) / RECORD).exists() for p, s in todo)
  say(f"sweep {sweep.name}: {grid_text(todo)} in {out_dir}"
      + (f"; {done} finished earlier, skipped" if done else ""))
  check_all_settings(sweep, out_dir, todo, overrides)
  return run_runs(sweep, out_dir, todo, overrides, say)


def run_runs(sweep: Sweep, out_dir: pathlib.Path, todo, overrides=(),
             say: Callable[[str], None] = print) -> list[dict]:
  """Trains, evaluates and records each unfinished (point, seed) of `todo` in order (a finished
  one is read back); returns the records (none on hosts other than process 0)."""
  records, times = [], []
  base = sweep.base()
  hosts.barrier("settings checked")    # no host writes before every host has read
  for i, (p, seed) in enumerate(todo, 1):
    workdir = run_dirs(out_dir, p, seed)
    tag = f"[{i:>{len(str(len(todo)))}}/{len(todo)}] {p.name} seed {seed}"
    if is_finished(workdir):
      record = hosts.main_writes(lambda: finished_record(workdir, p, seed),
                                 f"finished {workdir}")
      records += [record] if hosts.is_main() else []
      continue
    resumed = has_checkpoint(workdir)
    start = time.perf_counter()
    record = _run_point(base, workdir, p, seed, overrides)
    times.append(time.perf_counter() - start)
    if not hosts.is_main():
      continue
    records.append(record)
    left = sum(not (run_dirs(out_dir, q, s) / RECORD).exists() for q, s in todo[i:])
    eta = statistics.mean(times) * left
    say(f"{tag}: {describe_run(record, sweep.metric, resumed)}, {times[-1]:.0f} s; sweep ETA "
        f"{_minutes(eta)}")
  return records


def describe_run(record: dict, metric: str, resumed: bool = False) -> str:
  """'6 steps (resumed), eval_loss 5.5361 (7.987 bits/byte)': a finished run, in a line."""
  return (f"{record['steps']} steps{' (resumed)' if resumed else ''}, "
          f"{_describe(record, metric)}")


def collect(sweep: Sweep, out_dir, todo) -> list[dict]:
  """The records of `todo`'s runs, all of which must have finished (a sweep run as jobs)."""
  out_dir = pathlib.Path(out_dir)
  missing = [f"{p.name} seed {s}" for p, s in todo
             if not (run_dirs(out_dir, p, s) / RECORD).exists()]
  if missing:
    raise ValueError(f"{len(missing)} of {len(todo)} runs in {out_dir} have no record yet "
                     f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}): their "
                     "jobs are still running or failed (logs in "
                     f"{out_dir / 'jobs'}); rerun the sweep's command to start what is missing")
  return [finished_record(run_dirs(out_dir, p, s), p, s) for p, s in todo]


def adopt_recorded(sweep: Sweep, out_dir, results_json, *, seeds: int | None = None,
                   overrides=()) -> list[str]:
  """Gives each run of the sweep's whole grid that has no directory in `out_dir` yet the
  record a results.json (the committed one) holds for it, when that record was made with
  exactly the settings the run would have now and by this harness's record version; returns
  the adopted runs' names. The run is then finished, as if trained here, so a rerun of a
  committed sweep trains only what is new (a point added, a seed more, a run cut short in an
  earlier session) and pairs it with the committed seeds. A record with other settings is not
  adopted (its run is trained), and nothing in an existing run directory is ever replaced.
  Writes: a multi-host sweep calls it on process 0 only (hosts.main_writes)."""
  out_dir, results_json = pathlib.Path(out_dir), pathlib.Path(results_json)
  if not results_json.is_file():
    return []
  rows = {(r.get("point"), r.get("seed")): r for r in json.loads(results_json.read_text())
          if isinstance(r, dict)}
  base, adopted = sweep.base(), []
  for p, seed in runs_of(sweep, seeds):
    row, workdir = rows.get((p.name, seed)), run_dirs(out_dir, p, seed)
    if (row is None or row.get("record_version") != RECORD_VERSION
        or not isinstance(row.get("config"), dict)
        or (workdir.is_dir() and any(workdir.iterdir()))):
      continue
    expected = expected_config(base, point_flags(p, seed, overrides))
    if config_lib.flat_changes(_completed(row["config"]), expected):
      continue
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SWEEP_CONFIG).write_text(json.dumps(row["config"], indent=1, sort_keys=True))
    write_record(workdir, row)
    adopted.append(f"{p.name} seed {seed}")
  return adopted


def finished_records(sweep: Sweep, out_dir, *, seeds: int | None = None,
                     overrides=()) -> list[dict]:
  """The records of every finished run of the sweep's whole grid in `out_dir` whose settings
  are the sweep's now, in grid order: what a sweep's results and summary are written from, so
  points run by separate commands (--only) end in one table."""
  out_dir, base, records = pathlib.Path(out_dir), sweep.base(), []
  for p, seed in runs_of(sweep, seeds):
    workdir = run_dirs(out_dir, p, seed)
    if not (workdir / RECORD).exists():
      continue
    try:
      check_settings(workdir, base, point_flags(p, seed, overrides))
    except SettingsChanged:
      continue
    records.append(finished_record(workdir, p, seed))
  return records


def _minutes(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 90 else f"{math.ceil(seconds / 60)} min"
