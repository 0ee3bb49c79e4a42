"""Rotary position embeddings: the frequencies (plain, or YaRN-scaled) and their application.

    inv_freq, factor = frequencies(dim, base=1e4, scaling=None)   # [dim / 2], cos/sin factor
    x = apply(x_BLHK, positions_L, inv_freq, factor, interleaved=False)

Pairs: "rotate half" pairs (x_i, x_{i+K/2}) (the Llama family, moe_jax's own models);
`interleaved` pairs (x_{2i}, x_{2i+1}) (DeepSeek's checkpoints). An interleaved x is returned
with its pairs de-interleaved (evens then odds): attention only reads dot products of q and k,
which the same permutation of both leaves unchanged, so a model applies it to both (and keeps
the keys so in its cache).

YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension"), as DeepSeek-V2/V3 use it
(`rope_scaling` with factor, original_max_position_embeddings, beta_fast, beta_slow, mscale,
mscale_all_dim): frequencies whose wavelength is short against the original context are kept,
long ones divided by `factor`, a linear ramp between; cos/sin scaled by
mscale(factor, mscale) / mscale(factor, mscale_all_dim); and `softmax_scale` multiplies the
attention's 1/sqrt(K) by mscale(factor, mscale_all_dim)^2.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate")


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  """YaRN's Eq. 21: 0.1 * mscale * ln(scale) + 1 (1 for scale <= 1)."""
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def check_scaling(scaling, owner: str = "model") -> None:
  """`rope_scaling`: None or a YaRN dict with a factor > 0 and the original context."""
  if scaling is None:
    return
  if not isinstance(scaling, dict):
    raise ValueError(f"{owner}: rope_scaling must be a dict of YaRN parameters or None, got "
                     f"{scaling!r}")
  unknown = sorted(set(scaling) - set(YARN_KEYS))
  if unknown:
    raise ValueError(f"{owner}: rope_scaling has no key {unknown[0]!r}; YaRN's are: "
                     + ", ".join(YARN_KEYS))
  for key in ("factor", "original_max_position_embeddings"):
    value = scaling.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      raise ValueError(f"{owner}: rope_scaling.{key} must be a number > 0, got {value!r}")


def frequencies(dim: int, base: float, scaling: dict | None = None) -> tuple[np.ndarray, float]:
  """(inverse frequencies [dim / 2] float32, the factor cos and sin are scaled by)."""
  exponents = np.arange(0, dim, 2, dtype=np.float32) / dim
  pos_freqs = np.float32(base) ** exponents
  extrapolation = (1.0 / pos_freqs).astype(np.float32)
  if scaling is None:
    return extrapolation, 1.0
  factor = float(scaling["factor"])
  original = scaling["original_max_position_embeddings"]
  beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

  def correction_dim(rotations):   # the dim whose wavelength fits `rotations` times
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if scaling.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  keep = (1 - ramp).astype(np.float32)            # 1: the original frequency, 0: interpolated
  interpolation = (1.0 / (np.float32(factor) * pos_freqs)).astype(np.float32)
  inv_freq = (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32)
  mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
  if mscale and mscale_all:
    attention = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
  else:
    attention = yarn_mscale(factor)
  return inv_freq, float(attention)


def softmax_scale(head_dim: int, scaling: dict | None = None) -> float:
  """The attention logits' scale: 1/sqrt(head_dim), times YaRN's mscale_all_dim^2 term."""
  scale = head_dim ** -0.5
  if scaling is not None and scaling.get("mscale_all_dim"):
    scale *= yarn_mscale(float(scaling["factor"]), scaling["mscale_all_dim"]) ** 2
  return scale


def apply(x_BLHK, positions_L, inv_freq, factor: float = 1.0, *, interleaved: bool = False):
  """x rotated by position: pair i by positions * inv_freq[i]; cos and sin times `factor`."""
  if interleaved:       # (x0, x1), (x2, x3), ... -> evens then odds, then rotate-half pairs
    x_BLHK = jnp.concatenate([x_BLHK[..., 0::2], x_BLHK[..., 1::2]], axis=-1)
  half = x_BLHK.shape[-1] // 2
  angle_L1K = (positions_L.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq))[:, None, :]
  cos = (jnp.cos(angle_L1K) * factor).astype(x_BLHK.dtype)
  sin = (jnp.sin(angle_L1K) * factor).astype(x_BLHK.dtype)
  x1, x2 = x_BLHK[..., :half], x_BLHK[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
