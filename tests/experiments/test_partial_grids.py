"""A sweep run in parts (one --only command per point, as the committed sweeps are) writes a
summary after each part: every sweep's analysis must read any part of its grid. Checked on
synthetic records (a committed record's fields, each point's own values, made-up losses)."""
import json
import random

import matplotlib.figure
import pytest

from experiments import capacity_factor, routed_scaling, sweep as sweep_lib
from tests.experiments.test_harness import SWEEPS
from tests.train_helpers import REPO

# A committed LM record's fields (the first LM sweep with one: a withdrawn sweep's empty
# results must not break this test).
LM_SWEEPS = ("routers", "num_experts", "balancing", "capacity_factor", "granularity")


def _template() -> dict:
  for name in LM_SWEEPS:
    path = REPO / "experiments" / "results" / name / "results.json"
    records = json.loads(path.read_text()) if path.exists() else []
    if records:
      return records[0]
  raise AssertionError(f"no committed record in any of {LM_SWEEPS}")


def _records(sweep, points, rng):
  template = _template()
  return [{**template, **p.values, "point": p.name, "seed": seed,
           "eval_loss": 1.2 + 0.02 * rng.random(), "train_loss": 1.2 + 0.02 * rng.random()}
          for p in points for seed in range(sweep.seeds)]


@pytest.mark.parametrize("name", SWEEPS)
def test_every_analysis_reads_each_point_alone_and_the_whole_grid(name, tmp_path,
                                                                monkeypatch):
  # The figures are built but not rendered to PNG (most of the time; the harness tests render).
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: None)
  sweep = sweep_lib.load(str(REPO / "experiments" / f"{name}.py"), False, None)[0]
  rng = random.Random(0)
  parts = [[p] for p in sweep.points] + [sweep.points]
  for part in parts:
    lines = sweep.analyze(_records(sweep, part, rng), tmp_path)
    assert lines and all(isinstance(l, str) for l in lines), [p.name for p in part]


def _record(point, seed, loss, cf):
  return {"point": point, "seed": seed, "capacity": point, "cf": cf, "eval_loss": loss,
          "dropped_fraction": 0.0 if cf is None else 0.1 / cf, "step_ms": 100.0 + seed}


def test_capacity_factor_reads_the_dropless_point_alone_then_with_one_capped(tmp_path):
  dropless = [_record("dropless", s, 1.2 + 0.01 * s, None) for s in range(3)]
  alone = capacity_factor.analyze(dropless, tmp_path)
  assert "No capped point has run yet" in alone[-1]
  capped = [_record("cf1.25", s, 1.25 + 0.01 * s, 1.25) for s in range(3)]
  lines = capacity_factor.analyze(capped + dropless, tmp_path)
  assert any(l.startswith("Dropless (expected lower)") for l in lines), lines
  assert not any(l.startswith("Drops hurt quality") for l in lines)     # needs two cf values


def _sized(d, e, seed, loss):
  return {"point": f"d{d}-E{e}", "seed": seed, "d_model": d, "E": e, "eval_loss": loss,
          "non_embedding_params": 1000 * d}


def test_routed_scaling_compares_each_size_with_its_dense_model_before_a_fit_is_possible(
    tmp_path):
  # One base size (the sweep's first committed part): no law can be fitted, but each E
  # against that size's dense model is a paired comparison already.
  rng = random.Random(0)
  rows = [_sized(48, e, s, loss + 0.002 * rng.random()) for s in range(3)
          for e, loss in ((1, 1.36), (4, 1.30), (16, 1.26))]
  lines = routed_scaling.analyze(rows, tmp_path)
  assert any(l.startswith("No fit:") for l in lines), lines
  per_size = [l for l in lines if l.startswith("- N = 48k")]
  assert [l.split(",")[0] for l in per_size] == ["- N = 48k: E = 4", "- N = 48k: E = 16"]
  assert all("against dense: Δ -0." in l and "**reproduced**" in l for l in per_size), per_size


def test_balancing_compares_each_balancing_weight_with_1e_2(tmp_path):
  from experiments import balancing
  rng = random.Random(0)
  rows = [{"point": name, "seed": s, "lb": lb, "z": 1e-3, "lb_x": lb,
           "eval_loss": loss + 0.002 * rng.random(), "max_vio": vio, "router_z_loss": 1.0,
           "router_logit_abs": 2.0}
          for s in range(3) for name, lb, loss, vio in (("lb0.01-z0.001", 1e-2, 1.215, 1.0),
                                                         ("lb0.1-z0.001", 1e-1, 1.219, 0.57))]
  lines = balancing.analyze(rows, tmp_path)
  weight = [l for l in lines if l.startswith("Balancing weight 0.1 against 1e-2")]
  assert len(weight) == 1 and "MaxVio 0.570 vs 1.000" in weight[0], lines
  # 0.004 (± 0.002 of noise) higher, as a heavier weight is expected to cost
  assert "Δ +0.00" in weight[0] and "**reproduced**" in weight[0], weight
