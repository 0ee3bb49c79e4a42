"""Scaling-law fits for MoE sweeps, from per-run final validation losses (pure numpy + scipy).

Fits:

* ``fit_routed_law`` -- Clark et al. 2022, "Unified Scaling Laws for Routed Language Models",
  bilinear law in the base (dense) parameter count N and the number of experts E:
      log L = a log N + b log E + c log N log E + d
  fitted by ordinary least squares on all points (natural logs; E = 1 is the dense model).
* ``fit_routed_law_saturating`` -- the same paper's saturating form: E is replaced by
      1/Ê = 1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max,
  with E_start > 1 and E_max > E_start fitted alongside a, b, c, d, and compared with the
  plain form by AIC.
* ``fit_granularity`` -- Krajewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of
  Experts": at fixed N (and tokens), L(G) = c + g / G^gamma in the expert granularity G.

Confidence intervals are 95% bootstrap percentile intervals: the points are resampled with
replacement and refitted; with ``groups`` (one id per point, e.g. one per (N, E) config) whole
groups are resampled instead, so seeds of one config stay together and their shared noise is
not counted as independent evidence.

Whether two configs differ is not decided here: experiments/stats.py compares them paired over
seeds, with a 95 % interval and a verdict class.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize

ROUTED_PARAMS = ("a", "b", "c", "d")
GRANULARITY_PARAMS = ("c", "g", "gamma")
_GAMMA_MAX = 5.0


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _as_1d(name: str, x: Any, n: int | None = None) -> np.ndarray:
  arr = np.asarray(x, dtype=float).reshape(-1)
  if n is not None and arr.shape[0] != n:
    raise ValueError(f"{name} has {arr.shape[0]} values, expected {n} (one per point)")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains non-finite values")
  return arr


def _r2(y: np.ndarray, fitted: np.ndarray) -> float:
  tss = float(np.sum((y - y.mean()) ** 2))
  rss = float(np.sum((y - fitted) ** 2))
  return 1.0 - rss / tss if tss > 0 else float("nan")


def _residual_std(resid: np.ndarray, n_params: int) -> float:
  dof = resid.shape[0] - n_params
  return float(np.sqrt(np.sum(resid ** 2) / dof)) if dof > 0 else float("nan")


def _aic(rss: float, n: int, n_params: int) -> float:
  # Gaussian-likelihood AIC up to a constant; the floor keeps an exact fit from giving -inf.
  return n * float(np.log(max(rss, 1e-300) / n)) + 2 * n_params


def _group_index(groups: Any, n: int) -> list[np.ndarray]:
  """Point indices of each resampling unit: every point alone, or every group's points."""
  if groups is None:
    return [np.array([i]) for i in range(n)]
  ids = np.asarray(groups).reshape(-1)
  if ids.shape[0] != n:
    raise ValueError(f"groups has {ids.shape[0]} ids, expected {n} (one per point)")
  _, inverse = np.unique(ids, return_inverse=True)
  return [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]


def bootstrap_indices(units: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
  """One resample: draw as many units as there are, with replacement, and join their points."""
  picks = rng.integers(0, len(units), size=len(units))
  return np.concatenate([units[k] for k in picks])


def _percentile_ci(samples: np.ndarray, names: Sequence[str]) -> dict[str, tuple[float, float]]:
  if samples.shape[0] == 0:
    return {k: (float("nan"), float("nan")) for k in names}
  lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
  return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(names)}


def _bootstrap(fit_one, n: int, groups: Any, bootstrap: int, rng: Any,
               names: Sequence[str]) -> tuple[dict[str, tuple[float, float]], int]:
  """Percentile CIs from refits on resamples; resamples whose refit fails are skipped."""
  units = _group_index(groups, n)
  gen = np.random.default_rng(rng)
  samples = []
  for _ in range(bootstrap):
    est = fit_one(bootstrap_indices(units, gen))
    if est is not None:
      samples.append(est)
  arr = np.asarray(samples, dtype=float).reshape(-1, len(names))
  return _percentile_ci(arr, names), arr.shape[0]


# ---------------------------------------------------------------------------------------------
# Routed law (Clark et al. 2022)


def _routed_design(log_n: np.ndarray, log_e: np.ndarray) -> np.ndarray:
  return np.column_stack([log_n, log_e, log_n * log_e, np.ones_like(log_n)])


def _check_routed_design(N: np.ndarray, E: np.ndarray) -> None:
  """Raise a ValueError naming what the (N, E) design lacks to identify a, b, c, d."""
  if N.shape[0] < 5:
    raise ValueError(f"routed law needs at least 5 points, got {N.shape[0]}")
  if np.any(N <= 0):
    raise ValueError("N (base parameter count) must be positive")
  if np.any(E < 1):
    raise ValueError("E (number of experts) must be >= 1 (E = 1 is the dense model)")
  distinct_n, distinct_e = np.unique(N), np.unique(E)
  if distinct_n.size < 2:
    raise ValueError(f"routed law needs at least 2 distinct N (base parameter counts), "
                     f"got only N={distinct_n.tolist()}")
  if distinct_e.size < 2:
    raise ValueError(f"routed law needs at least 2 distinct E (numbers of experts), "
                     f"got only E={distinct_e.tolist()}")
  X = _routed_design(np.log(N), np.log(E))
  if np.linalg.matrix_rank(X) < 4:
    configs = np.unique(np.column_stack([N, E]), axis=0).shape[0]
    raise ValueError(
        f"routed law design is rank-deficient: {configs} distinct (N, E) configs cannot separate "
        f"log N, log E and the log N * log E interaction; needs at least 4 distinct configs not "
        f"on one line in log space (e.g. 2 N values each at the same 2 E values)")


def _ols(X: np.ndarray, y: np.ndarray) -> np.ndarray | None:
  coef, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
  return coef if rank == X.shape[1] else None


def fit_routed_law(N: Any, E: Any, L: Any, *, groups: Any = None, bootstrap: int = 1000,
                   rng: Any = 0) -> dict[str, Any]:
  """OLS fit of log L = a log N + b log E + c log N log E + d (natural logs).

  N: base (dense) parameter count per point; E: number of experts (1 = dense); L: validation
  loss. groups: optional id per point; bootstrap resamples whole groups when given.
  Returns a, b, c, d, "ci" ({name: (lo, hi)}, 95% percentile; NaN when bootstrap=0),
  "n_bootstrap" (resamples that refitted), "r2" and "residual_std" (both on log L), "n_points".
  Raises ValueError when the design cannot identify the four coefficients.
  """
  N = _as_1d("N", N)
  E, L = _as_1d("E", E, N.shape[0]), _as_1d("L", L, N.shape[0])
  if np.any(L <= 0):
    raise ValueError("L (validation loss) must be positive to take its log")
  _check_routed_design(N, E)
  X, y = _routed_design(np.log(N), np.log(E)), np.log(L)
  coef = _ols(X, y)
  fitted = X @ coef
  ci, used = _bootstrap(lambda idx: _ols(X[idx], y[idx]), N.shape[0], groups, bootstrap, rng,
                        ROUTED_PARAMS)
  out: dict[str, Any] = {k: float(v) for k, v in zip(ROUTED_PARAMS, coef)}
  out.update(ci=ci, n_bootstrap=used, r2=_r2(y, fitted), n_points=int(N.shape[0]),
             residual_std=_residual_std(y - fitted, 4))
  return out


def effective_experts(E: Any, e_start: float, e_max: float) -> np.ndarray:
  """Clark et al.'s saturating expert count Ê (E_start at E = 1, tends to E_max as E grows)."""
  E = np.asarray(E, dtype=float)
  shift = 1.0 / (1.0 / e_start - 1.0 / e_max)
  return 1.0 / (1.0 / (E - 1.0 + shift) + 1.0 / e_max)


def predict_routed(coeffs: Mapping[str, float], N: Any, E: Any) -> np.ndarray:
  """Loss from fit_routed_law (or, when coeffs has e_start and e_max, the saturating fit)."""
  log_n = np.log(np.asarray(N, dtype=float))
  if "e_start" in coeffs and "e_max" in coeffs:
    log_e = np.log(effective_experts(E, coeffs["e_start"], coeffs["e_max"]))
  else:
    log_e = np.log(np.asarray(E, dtype=float))
  a, b, c, d = (coeffs[k] for k in ROUTED_PARAMS)
  return np.exp(a * log_n + b * log_e + c * log_n * log_e + d)


def _saturation_from_theta(theta: np.ndarray) -> tuple[float, float]:
  # Logs of the gaps keep E_start > 1 and E_max > E_start with plain box bounds.
  e_start = 1.0 + float(np.exp(theta[0]))
  return e_start, e_start + float(np.exp(theta[1]))


def fit_routed_law_saturating(N: Any, E: Any, L: Any) -> dict[str, Any]:
  """The routed law in log Ê, with E_start and E_max fitted by scipy.optimize.least_squares.

  a, b, c, d are profiled out by OLS for each (E_start, E_max), so the optimiser only searches
  those two, from a few starts. Returns "ok"; when ok: a, b, c, d, e_start, e_max, "at_bound"
  (names of saturation parameters stuck at a search bound: not identified by the data), "rss"
  and "rss_plain", "aic" and "aic_plain", "improves" (AIC below the plain form's, i.e. the
  two extra parameters pay for themselves), "r2", "residual_std", "n_points". When the fit
  fails it returns {"ok": False, "reason": ...} instead of raising. Raises ValueError for the
  same design problems as fit_routed_law, and for fewer than 4 distinct E.
  """
  N = _as_1d("N", N)
  E, L = _as_1d("E", E, N.shape[0]), _as_1d("L", L, N.shape[0])
  if np.any(L <= 0):
    raise ValueError("L (validation loss) must be positive to take its log")
  _check_routed_design(N, E)
  if np.unique(E).size < 4:
    raise ValueError("saturating routed law needs at least 4 distinct E to fit E_start and E_max, "
                     f"got E={np.unique(E).tolist()}")
  n = N.shape[0]
  if n < 7:
    raise ValueError(f"saturating routed law needs at least 7 points for 6 parameters, got {n}")
  log_n, y = np.log(N), np.log(L)
  X_plain = _routed_design(log_n, np.log(E))
  rss_plain = float(np.sum((y - X_plain @ _ols(X_plain, y)) ** 2))

  def residuals(theta: np.ndarray) -> np.ndarray:
    X = _routed_design(log_n, np.log(effective_experts(E, *_saturation_from_theta(theta))))
    coef = _ols(X, y)
    return y - X @ coef if coef is not None else np.full_like(y, 1e3)

  # E_start - 1 in [1e-4, 1e3 max E]; E_max - E_start in [1e-2, 1e4 max E] (beyond: no saturation).
  e_top = float(E.max())
  lower = np.log([1e-4, 1e-2])
  upper = np.log([1e3 * e_top, 1e4 * e_top])
  starts = [np.clip(np.log([e_start0 - 1.0, e_max_gap0]), lower + 1e-9, upper - 1e-9)
            for e_start0 in (1.5, 2.0, 4.0) for e_max_gap0 in (e_top, 4 * e_top, 100 * e_top)]
  best, reason = _best_of_starts(
      # When the gain stops after a few experts, E_start lies near 1 in a flat valley that
      # least_squares crawls along past its default 200 evaluations. Stop on a relative cost
      # change of 1e-7 (it moves AIC by n * 1e-7, nothing) and allow 2000 evaluations.
      lambda theta0: optimize.least_squares(residuals, theta0, bounds=(lower, upper),
                                            method="trf", ftol=1e-7, max_nfev=2000), starts)
  if best is None:
    return {"ok": False, "reason": reason}

  e_start, e_max = _saturation_from_theta(best.x)
  X = _routed_design(log_n, np.log(effective_experts(E, e_start, e_max)))
  coef = _ols(X, y)
  if coef is None:
    return {"ok": False, "reason": "design in log Ê is rank-deficient at the optimum"}
  resid = y - X @ coef
  rss = float(np.sum(resid ** 2))
  near = lambda i, bound: abs(best.x[i] - bound[i]) < 1e-3
  at_bound = [name for i, name in enumerate(("e_start", "e_max"))
              if near(i, lower) or near(i, upper)]
  aic, aic_plain = _aic(rss, n, 6), _aic(rss_plain, n, 4)
  out: dict[str, Any] = {"ok": True}
  out.update({k: float(v) for k, v in zip(ROUTED_PARAMS, coef)})
  out.update(e_start=e_start, e_max=e_max, at_bound=at_bound, rss=rss, rss_plain=rss_plain,
             aic=aic, aic_plain=aic_plain, improves=bool(aic < aic_plain), r2=_r2(y, X @ coef),
             residual_std=_residual_std(resid, 6), n_points=int(n))
  return out


def _best_of_starts(solve, starts):
  """(the converged least_squares result of lowest cost over `starts`, None) or (None, why
  no start converged)."""
  best, reason = None, "no start tried"
  for start in starts:
    try:
      res = solve(start)
    except (ValueError, np.linalg.LinAlgError) as err:
      reason = f"least_squares raised {type(err).__name__}: {err}"
      continue
    if not (res.success and np.isfinite(res.cost) and np.all(np.isfinite(res.x))):
      reason = f"least_squares did not converge: {res.message}"
      continue
    if best is None or res.cost < best.cost:
      best = res
  return best, (None if best is not None else reason)


# ---------------------------------------------------------------------------------------------
# Granularity (Krajewski et al. 2024)


def predict_granularity(coeffs: Mapping[str, float], G: Any) -> np.ndarray:
  """L(G) = c + g / G^gamma from fit_granularity's coefficients."""
  G = np.asarray(G, dtype=float)
  return coeffs["c"] + coeffs["g"] * G ** (-coeffs["gamma"])


def _granularity_lsq(G: np.ndarray, L: np.ndarray, p0: np.ndarray):
  lower, upper = np.array([0.0, 0.0, 0.0]), np.array([np.inf, np.inf, _GAMMA_MAX])
  p0 = np.clip(p0, lower, upper)
  return optimize.least_squares(lambda p: p[0] + p[1] * G ** (-p[2]) - L, p0,
                                bounds=(lower, upper), method="trf", x_scale="jac")


def fit_granularity(G: Any, L: Any, *, groups: Any = None, bootstrap: int = 1000,
                    rng: Any = 0) -> dict[str, Any]:
  """Least-squares fit of L(G) = c + g / G^gamma at fixed N (c >= 0, g >= 0, 0 <= gamma <= 5).

  Returns "ok"; when ok: c, g, gamma, "ci" ({name: (lo, hi)}, 95% bootstrap percentile; NaN
  when bootstrap=0), "n_bootstrap", "at_bound" (parameters on a bound, e.g. gamma = 0 leaves
  c and g unseparated), "r2" and "residual_std" (on L), "n_points". When no start converges it
  returns {"ok": False, "reason": ...}. Raises ValueError for fewer than 3 distinct G.
  With groups = one id per G, a sweep of 5 G values resamples only 5 units: resamples with
  fewer than 3 distinct G are skipped, and the intervals then reflect only how well the G-means
  sit on the curve, so treat them as rough.
  """
  G = _as_1d("G", G)
  L = _as_1d("L", L, G.shape[0])
  if np.any(G <= 0):
    raise ValueError("G (granularity) must be positive")
  if np.unique(G).size < 3:
    raise ValueError(f"granularity fit needs at least 3 distinct G for c, g and gamma, "
                     f"got G={np.unique(G).tolist()}")
  spread = float(L.max() - L.min())
  # The suggested start first; other gammas guard against a local minimum on a flat valley.
  starts = [np.array([0.95 * float(L.min()), max(spread, 1e-6), gamma0])
            for gamma0 in (0.5, 0.1, 1.0, 2.0)]
  best, reason = _best_of_starts(lambda p0: _granularity_lsq(G, L, p0), starts)
  if best is None:
    return {"ok": False, "reason": reason}

  def fit_one(idx: np.ndarray) -> np.ndarray | None:
    if np.unique(G[idx]).size < 3:
      return None
    res = _granularity_lsq(G[idx], L[idx], best.x)
    return res.x if res.success else None

  ci, used = _bootstrap(fit_one, G.shape[0], groups, bootstrap, rng, GRANULARITY_PARAMS)
  coeffs = {k: float(v) for k, v in zip(GRANULARITY_PARAMS, best.x)}
  fitted = predict_granularity(coeffs, G)
  bounds = {"c": (0.0, np.inf), "g": (0.0, np.inf), "gamma": (0.0, _GAMMA_MAX)}
  at_bound = [k for k, (lo, hi) in bounds.items()
              if abs(coeffs[k] - lo) < 1e-8 or abs(coeffs[k] - hi) < 1e-8]
  out: dict[str, Any] = {"ok": True, **coeffs}
  out.update(ci=ci, n_bootstrap=used, at_bound=at_bound, r2=_r2(L, fitted),
             residual_std=_residual_std(L - fitted, 3), n_points=int(G.shape[0]))
  return out
