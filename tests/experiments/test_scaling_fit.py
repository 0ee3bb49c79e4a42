"""experiments/scaling_fit.py on synthetic sweeps with known coefficients (numpy/scipy only)."""
from __future__ import annotations

import numpy as np
import pytest

from experiments import scaling_fit as sf

ROUTED_TRUE = {"a": -0.07, "b": -0.03, "c": 0.004, "d": 1.9}
N_GRID = (1e5, 3e5, 1e6, 3e6)
E_GRID = (1, 2, 4, 8, 16, 32)
SEEDS = 3


def routed_sweep(coeffs, *, e_grid=E_GRID, noise=0.002, seed=0, config_noise=0.0):
  """One point per (N, E, seed); group id per (N, E) config. config_noise is shared by a
  config's seeds (a systematic per-config offset), noise is drawn per point."""
  rng = np.random.default_rng(seed)
  N, E, groups, L = [], [], [], []
  for i, n in enumerate(N_GRID):
    for j, e in enumerate(e_grid):
      offset = config_noise * rng.standard_normal()
      for _ in range(SEEDS):
        N.append(n)
        E.append(e)
        groups.append(i * len(e_grid) + j)
        L.append(sf.predict_routed(coeffs, n, e) * np.exp(offset + noise * rng.standard_normal()))
  return np.array(N), np.array(E), np.array(L), np.array(groups)


def inside(ci, value):
  return ci[0] <= value <= ci[1]


# --- routed law ------------------------------------------------------------------------------


def test_routed_recovers_coefficients_and_cis_cover_them():
  N, E, L, _ = routed_sweep(ROUTED_TRUE, seed=1)
  fit = sf.fit_routed_law(N, E, L, bootstrap=200, rng=0)
  tol = {"a": 0.003, "b": 0.01, "c": 0.001, "d": 0.03}
  for k, v in ROUTED_TRUE.items():
    assert fit[k] == pytest.approx(v, abs=tol[k])
    assert inside(fit["ci"][k], v), (k, fit["ci"][k])
  assert fit["n_points"] == len(N_GRID) * len(E_GRID) * SEEDS
  assert fit["n_bootstrap"] == 200
  assert fit["r2"] > 0.99
  # Residuals are the injected log-noise, so their std should come back near 0.002.
  assert 0.001 < fit["residual_std"] < 0.004
  np.testing.assert_allclose(sf.predict_routed(fit, N, E), L, rtol=0.01)


def test_routed_ci_coverage_over_datasets():
  # A 95% interval misses now and then on any one dataset; over 20 it should mostly cover.
  hits = {k: 0 for k in ROUTED_TRUE}
  for seed in range(20):
    N, E, L, _ = routed_sweep(ROUTED_TRUE, seed=100 + seed)
    fit = sf.fit_routed_law(N, E, L, bootstrap=200, rng=seed)
    for k, v in ROUTED_TRUE.items():
      hits[k] += inside(fit["ci"][k], v)
  assert all(h >= 15 for h in hits.values()), hits


def test_bootstrap_indices_keep_groups_whole():
  groups = np.repeat(np.arange(8), 3)
  units = sf._group_index(groups, groups.size)
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = sf.bootstrap_indices(units, rng)
    assert idx.size == groups.size
    counts = np.bincount(idx, minlength=groups.size).reshape(8, 3)
    # Every point of a group is drawn as often as its siblings.
    assert np.all(counts == counts[:, :1])


def test_groups_of_one_equal_point_resampling():
  N, E, L, _ = routed_sweep(ROUTED_TRUE, seed=2)
  by_point = sf.fit_routed_law(N, E, L, bootstrap=50, rng=3)
  by_singleton = sf.fit_routed_law(N, E, L, groups=np.arange(N.size), bootstrap=50, rng=3)
  assert by_point["ci"] == by_singleton["ci"]


def test_group_resampling_widens_cis_when_seeds_share_noise():
  # The noise is per config, so a config's three seeds are one observation, not three:
  # resampling points overstates the evidence, resampling configs does not.
  N, E, L, groups = routed_sweep(ROUTED_TRUE, noise=0.0005, config_noise=0.003, seed=4)
  by_point = sf.fit_routed_law(N, E, L, bootstrap=300, rng=0)
  by_group = sf.fit_routed_law(N, E, L, groups=groups, bootstrap=300, rng=0)
  width = lambda fit, k: fit["ci"][k][1] - fit["ci"][k][0]
  for k in ROUTED_TRUE:
    assert width(by_group, k) > 1.3 * width(by_point, k), k
  # Point estimates do not depend on the resampling.
  assert all(by_point[k] == by_group[k] for k in ROUTED_TRUE)


def test_groups_length_mismatch_raises():
  N, E, L, groups = routed_sweep(ROUTED_TRUE)
  with pytest.raises(ValueError, match="groups has"):
    sf.fit_routed_law(N, E, L, groups=groups[:-1], bootstrap=5)


def test_bootstrap_zero_gives_nan_cis():
  N, E, L, _ = routed_sweep(ROUTED_TRUE)
  fit = sf.fit_routed_law(N, E, L, bootstrap=0)
  assert fit["n_bootstrap"] == 0
  assert all(np.isnan(lo) and np.isnan(hi) for lo, hi in fit["ci"].values())


@pytest.mark.parametrize("N, E, message", [
    ([1e5, 1e6, 1e5, 1e6], [1, 1, 8, 8], "at least 5 points"),
    ([1e6] * 6, [1, 2, 4, 8, 16, 32], "at least 2 distinct N"),
    ([1e5, 3e5, 1e6, 3e6, 1e7, 3e7], [8] * 6, "at least 2 distinct E"),
    # E doubles each time N grows tenfold: one line in log space, so log E carries no
    # information beyond log N and the interaction is not identified.
    ([1e5, 1e6, 1e7, 1e8] * 2, [1, 2, 4, 8] * 2, "rank-deficient"),
])
def test_routed_rank_deficient_design_raises(N, E, message):
  L = np.full(len(N), 2.0)
  with pytest.raises(ValueError, match=message):
    sf.fit_routed_law(N, E, L, bootstrap=0)


def test_routed_rejects_bad_values():
  N, E, L, _ = routed_sweep(ROUTED_TRUE)
  with pytest.raises(ValueError, match="positive"):
    sf.fit_routed_law(N, E, -L, bootstrap=0)
  with pytest.raises(ValueError, match=">= 1"):
    sf.fit_routed_law(N, E - 1, L, bootstrap=0)
  with pytest.raises(ValueError, match="expected"):
    sf.fit_routed_law(N, E[:-1], L, bootstrap=0)


# --- saturating routed law --------------------------------------------------------------------

SATURATING_TRUE = {"a": -0.07, "b": -0.10, "c": 0.003, "d": 1.9, "e_start": 2.0, "e_max": 64.0}


def test_effective_experts_limits():
  e_hat = sf.effective_experts(np.array([1.0, 1e9]), e_start=2.0, e_max=64.0)
  np.testing.assert_allclose(e_hat, [2.0, 64.0], rtol=1e-6)


def test_saturating_improves_on_saturating_data():
  N, E, L, _ = routed_sweep(SATURATING_TRUE, e_grid=(1, 2, 4, 8, 16, 32, 64, 128), seed=5)
  fit = sf.fit_routed_law_saturating(N, E, L)
  assert fit["ok"], fit
  assert fit["improves"]
  assert fit["aic"] < fit["aic_plain"] and fit["rss"] < fit["rss_plain"]
  assert fit["e_start"] == pytest.approx(2.0, abs=0.5)
  assert fit["e_max"] == pytest.approx(64.0, rel=0.3)
  assert fit["at_bound"] == []
  np.testing.assert_allclose(sf.predict_routed(fit, N, E), L, rtol=0.01)


def test_saturating_on_plain_data_returns_and_does_not_improve():
  N, E, L, _ = routed_sweep(ROUTED_TRUE, seed=6)
  fit = sf.fit_routed_law_saturating(N, E, L)
  assert fit["ok"], fit
  # The plain law is the limit E_start -> 1, E_max -> inf; two extra parameters should not pay.
  assert not fit["improves"]
  assert fit["rss"] <= fit["rss_plain"] * (1 + 1e-9)


def test_saturating_converges_when_experts_saturate_at_once():
  # Like the committed routed_scaling sweep: the gain stops after E ~ 3, so E_start sits near 1
  # in a flat valley that took least_squares past its default 200 evaluations.
  early = {**SATURATING_TRUE, "b": -0.05, "c": 0.011, "e_start": 1.0005, "e_max": 3.2}
  N, E, L, _ = routed_sweep(early, e_grid=(1, 2, 4, 8, 16), noise=0.01, seed=1)
  fit = sf.fit_routed_law_saturating(N, E, L)
  assert fit["ok"], fit
  assert fit["rss"] <= fit["rss_plain"] * (1 + 1e-9)


def test_saturating_reports_failure_instead_of_raising(monkeypatch):
  class NotConverged:
    success, cost, message = False, np.inf, "forced failure"

  monkeypatch.setattr(sf.optimize, "least_squares", lambda *args, **kwargs: NotConverged())
  N, E, L, _ = routed_sweep(ROUTED_TRUE)
  fit = sf.fit_routed_law_saturating(N, E, L)
  assert fit == {"ok": False, "reason": "least_squares did not converge: forced failure"}


def test_saturating_needs_four_distinct_e():
  N, E, L, _ = routed_sweep(ROUTED_TRUE, e_grid=(1, 4, 16))
  with pytest.raises(ValueError, match="4 distinct E"):
    sf.fit_routed_law_saturating(N, E, L)


# --- granularity ------------------------------------------------------------------------------

GRAN_TRUE = {"c": 1.5, "g": 0.4, "gamma": 0.58}
G_GRID = (1, 2, 4, 8, 16)


def granularity_sweep(noise=0.002, seed=0):
  rng = np.random.default_rng(seed)
  G = np.repeat(np.array(G_GRID, dtype=float), SEEDS)
  L = sf.predict_granularity(GRAN_TRUE, G) * (1 + noise * rng.standard_normal(G.size))
  return G, L, np.repeat(np.arange(len(G_GRID)), SEEDS)


def test_granularity_recovers_gamma():
  G, L, _ = granularity_sweep(seed=0)
  fit = sf.fit_granularity(G, L, bootstrap=200, rng=0)
  assert fit["ok"], fit
  assert fit["gamma"] == pytest.approx(GRAN_TRUE["gamma"], abs=0.1)
  assert fit["c"] == pytest.approx(GRAN_TRUE["c"], abs=0.05)
  assert fit["g"] == pytest.approx(GRAN_TRUE["g"], abs=0.05)
  for k in GRAN_TRUE:
    assert inside(fit["ci"][k], fit[k]), (k, fit["ci"][k])
  assert fit["r2"] > 0.98 and fit["n_points"] == G.size and fit["at_bound"] == []
  np.testing.assert_allclose(sf.predict_granularity(fit, G), L, rtol=0.01)


def test_granularity_ci_width_matches_spread_over_datasets():
  # Any one 95% interval may miss (coverage measured at about 90% over 40 datasets: 15 points,
  # 3 nonlinear parameters), so check calibration instead: the bootstrap's standard error,
  # (hi - lo) / 3.92, should match how much the estimates really vary across datasets.
  estimates = {k: [] for k in GRAN_TRUE}
  std_errors = {k: [] for k in GRAN_TRUE}
  for seed in range(10):
    G, L, _ = granularity_sweep(seed=300 + seed)
    fit = sf.fit_granularity(G, L, bootstrap=100, rng=seed)
    for k in GRAN_TRUE:
      estimates[k].append(fit[k])
      std_errors[k].append((fit["ci"][k][1] - fit["ci"][k][0]) / 3.92)
  for k in GRAN_TRUE:
    ratio = np.mean(std_errors[k]) / np.std(estimates[k], ddof=1)
    assert 0.5 < ratio < 2.0, (k, ratio)


def test_granularity_group_resampling_runs():
  G, L, groups = granularity_sweep(seed=1)
  fit = sf.fit_granularity(G, L, groups=groups, bootstrap=100, rng=0)
  assert fit["ok"]
  # Resamples with fewer than 3 distinct G cannot be refitted and are skipped.
  assert 0 < fit["n_bootstrap"] <= 100
  assert fit["ci"]["gamma"][0] <= fit["gamma"] <= fit["ci"]["gamma"][1]


def test_granularity_needs_three_distinct_g():
  with pytest.raises(ValueError, match="at least 3 distinct G"):
    sf.fit_granularity([1, 1, 2, 2, 2], [2.0, 2.01, 1.9, 1.91, 1.9], bootstrap=0)


def test_granularity_reports_failure_instead_of_raising(monkeypatch):
  class NotConverged:
    success, cost, message, x = False, np.inf, "forced failure", np.zeros(3)

  monkeypatch.setattr(sf.optimize, "least_squares", lambda *args, **kwargs: NotConverged())
  G, L, _ = granularity_sweep()
  fit = sf.fit_granularity(G, L, bootstrap=10)
  assert fit == {"ok": False, "reason": "least_squares did not converge: forced failure"}
