"""experiments/stats.py: paired intervals that cover, verdict classes that mean what they say."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import stats


def _pairs(rng, n, effect, shared_sd=0.05, noise_sd=0.01):
  """Per-seed (treatment, baseline): a seed effect both points share, plus their own noise."""
  seed_effect = rng.normal(0, shared_sd, n)
  base = 2.0 + seed_effect + rng.normal(0, noise_sd, n)
  treat = 2.0 + effect + seed_effect + rng.normal(0, noise_sd, n)
  return dict(enumerate(treat)), dict(enumerate(base))


def test_the_interval_is_students_t_on_the_paired_differences():
  treatment, baseline = {0: 1.80, 1: 1.86, 2: 1.83}, {0: 1.85, 1: 1.90, 2: 1.89}
  c = stats.compare(treatment, baseline, expected=-1)
  d = np.array([-0.05, -0.04, -0.06])
  lo, hi = scipy_stats.t.interval(0.95, 2, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(3))
  assert c.n == 3 and c.delta == pytest.approx(-0.05)
  assert c.interval == pytest.approx((lo, hi))
  assert c.verdict == "reproduced"
  # The pooled interval ignores the pairing: wider here, where the seeds' shared part is large.
  assert c.pooled_interval[1] - c.pooled_interval[0] > hi - lo
  assert stats.compare(baseline, treatment, expected=-1).verdict == "reversed"


@pytest.mark.parametrize("n", [3, 5])
def test_the_95_percent_interval_covers_the_true_effect_95_percent_of_the_time(n):
  rng = np.random.default_rng(0)
  trials, effect = 4000, -0.02
  covered = 0
  for _ in range(trials):
    c = stats.compare(*_pairs(rng, n, effect))
    covered += c.interval[0] <= effect <= c.interval[1]
  assert abs(covered / trials - 0.95) < 0.015, covered / trials


def test_a_zero_effect_is_rarely_called_reproduced_and_a_real_one_usually_is():
  rng = np.random.default_rng(1)
  null = [stats.compare(*_pairs(rng, 3, 0.0)).verdict for _ in range(4000)]
  assert null.count("reproduced") / len(null) < 0.035     # one side of a 95 % interval
  # An effect of 4 noise sd's with 5 seeds: well above the 80 %-power detectable size.
  real = [stats.compare(*_pairs(rng, 5, -0.04), expected=-1).verdict for _ in range(1000)]
  assert real.count("reproduced") / len(real) > 0.9


def test_the_detectable_difference_has_the_power_it_claims():
  rng = np.random.default_rng(2)
  c = stats.compare(*_pairs(rng, 3, 0.0, noise_sd=0.01))
  # Simulate differences with exactly the detectable size and the same sd: ~80 % detected.
  hits = 0
  for _ in range(4000):
    d = rng.normal(-c.detectable, c.sd, 3)
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(3))
    hits += hi < 0
  # The formula uses the noncentral t's normal approximation: close to 80 % at n=3.
  assert 0.70 < hits / 4000 < 0.90, hits / 4000


def test_equivalent_and_inconclusive():
  tight = stats.compare({0: 2.000, 1: 2.011, 2: 2.020}, {0: 2.001, 1: 2.010, 2: 2.020},
                        bound=0.01)
  assert tight.verdict == "equivalent"
  loose = stats.compare({0: 1.95, 1: 2.05, 2: 2.00}, {0: 2.00, 1: 2.00, 2: 2.01}, bound=0.01)
  assert loose.verdict == "inconclusive" and loose.detectable > 0.1
  assert loose.seeds_needed is None or loose.seeds_needed > 3
  text = stats.describe(loose)
  assert "**inconclusive**" in text and "detectable at 80 % power with 3 seeds" in text


def test_it_pairs_by_seed_and_refuses_one_seed():
  c = stats.compare({0: 1.0, 1: 2.0, 7: 9.0}, {1: 1.5, 0: 0.5})      # seed 7 unpaired
  assert c.n == 2 and c.delta == pytest.approx(0.5) and c.sd == 0
  with pytest.raises(ValueError, match="at least 2 seeds"):
    stats.compare({0: 1.0}, {0: 2.0})
  with pytest.raises(ValueError, match="expected must be -1"):
    stats.compare({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}, expected=0)
