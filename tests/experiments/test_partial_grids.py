"""A sweep run in parts (one --only command per point, as the committed sweeps are) writes a
summary after each part: its analysis must read any subset of its grid."""
from experiments import capacity_factor


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
