"""A sweep run's record (`record.json` in its directory): the row results.csv / results.json
hold for it. It holds the final validation metrics, the parameter / FLOP accounting
(experiments/accounting.py), tokens seen, wall time, tokens/s, the routing telemetry, the loss
curve and the resolved config the run was started with (`sweep_config.json`, which the harness
compares before it starts, resumes or reuses a run)."""
from __future__ import annotations

import csv
import io
import json
import pathlib
import statistics

import numpy as np

from experiments import accounting
from experiments.sweep import Point
from moe_jax import run_setup
from moe_jax.run_log import read_metrics

RECORD = "record.json"
# Bumped when make_record gains or changes a field: a finished run's older record is rebuilt
# from its run directory (nothing is retrained) the next time its sweep runs.
RECORD_VERSION = 4
SWEEP_CONFIG = "sweep_config.json"   # the resolved config the harness started the run with


def read_record(out_dir: pathlib.Path, point_name: str, seed: int) -> dict:
  return json.loads((pathlib.Path(out_dir) / "runs" / point_name / f"seed{seed}" /
                     RECORD).read_text())


def _mean_over_layers(layers: dict, key: str):
  values = [float(np.mean(m[key])) for m in layers.values() if key in m]
  return float(np.mean(values)) if values else None


def _interval_ce(line: dict) -> float:
  for name in ("ce_mean", "loss_mean", "ce", "loss"):   # older logs have one batch's only
    if name in line:
      return line[name]


def make_record(workdir: pathlib.Path, p: Point, seed: int, wall_s: float) -> dict:
  """One run's row: what the sweep varied, the final validation and the accounting."""
  run = run_setup.open_run(workdir, ["mesh.data=1", "mesh.expert=1", "mesh.model=1"],
                           num_devices=1)
  result = json.loads((workdir / "eval.json").read_text())
  layers = result.get("layers", {})
  per_token = {int(k): float(m["experts_per_token"]) for k, m in layers.items()
               if "experts_per_token" in m}
  train_lines = [r for r in read_metrics(workdir) if "loss" in r]
  # Tokens as train.py counts them for tokens_per_sec (a classifier's patches / bytes too),
  # so step_ms and train_flops (FLOPs per token x tokens) are per the same token.
  tokens_per_step = run.tokens_per_step
  speeds = [r["tokens_per_sec"] for r in train_lines[1:] if "tokens_per_sec" in r]
  tps = statistics.median(speeds) if speeds else None
  # What the z-loss lowers: mean logsumexp(router logits)^2 (ST-MoE), over the last logged
  # steps. mean |logit| cannot show it: the z-loss drives logsumexp to 0, so with E experts
  # the logits settle near -log E, and their magnitude need not shrink.
  z_losses = [r["aux/z_loss"] for r in train_lines[-10:] if "aux/z_loss" in r]
  record = {
      "point": p.name, "seed": seed, "record_version": RECORD_VERSION, **p.values,
      "eval_loss": result["loss"],
      "bits_per_byte": result.get("bits_per_byte"), "accuracy": result.get("accuracy"),
      "kl_to_teacher": result.get("kl_to_teacher"),     # task distill only
      # The mean over the last logging interval (one batch's loss in older runs' logs).
      "train_loss": (train_lines[-1].get("loss_mean", train_lines[-1]["loss"])
                     if train_lines else None),
      **accounting.account(run, per_token),
      "steps": run.steps, "tokens_seen": run.steps * tokens_per_step,
      "wall_s": round(wall_s, 2), "tokens_per_sec": tps,
      "step_ms": 1000.0 * tokens_per_step / tps if tps else None,
      "max_vio": _mean_over_layers(layers, "max_vio"),
      "dropped_fraction": _mean_over_layers(layers, "dropped_fraction"),
      "router_logit_abs": _mean_over_layers(layers, "router_logit_abs"),
      "router_z_loss": float(np.mean(z_losses)) if z_losses else None,
      "experts_per_token": _mean_over_layers(layers, "experts_per_token"),
      # (step, training cross-entropy, mean over the logging interval) at every logged step:
      # each batch is unseen (a run sees under one epoch), so it tracks the held-out loss.
      "loss_curve": [[r["step"], round(float(_interval_ce(r)), 5)] for r in train_lines],
      "expert_load": {k: list(np.asarray(m["expert_load"], float).round(4))
                      for k, m in layers.items() if "expert_load" in m},
  }
  record["train_flops"] = 3 * record["flops_per_token"] * record["tokens_seen"]
  path = workdir / SWEEP_CONFIG
  record["config"] = json.loads(path.read_text()) if path.exists() else None
  return record


def write_record(workdir: pathlib.Path, record: dict) -> dict:
  _replace(workdir / RECORD, json.dumps(record, indent=1))   # exists only for a finished run
  return record


def finished_record(workdir: pathlib.Path, p: Point, seed: int) -> dict:
  """A finished run's record, rebuilt from its run directory if an older harness wrote it."""
  record = json.loads((workdir / RECORD).read_text())
  if record.get("record_version", 1) == RECORD_VERSION:
    return record
  return write_record(workdir, make_record(workdir, p, seed, record["wall_s"]))


COLUMNS_FIRST = ("point", "seed")


def write_results(records: list[dict], out_dir) -> list[pathlib.Path]:
  """results.json (every field) and results.csv (the scalar fields, one row per run), each
  written whole or not at all: results.json is what a later command adopts runs from, so a
  kill mid-write must leave the previous one."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  _replace(out_dir / "results.json", json.dumps(records, indent=1))
  columns = list(COLUMNS_FIRST)
  for r in records:
    columns += [k for k, v in r.items() if k not in columns and not isinstance(v, (dict, list))]
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, columns, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(records)
  _replace(out_dir / "results.csv", text.getvalue())
  return [out_dir / "results.json", out_dir / "results.csv"]


def _replace(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    f.write(text)
  tmp.replace(path)
