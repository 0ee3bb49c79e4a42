"""Which keys each query may attend to, as a boolean [B or 1, 1, L, S] mask, and the masked
softmax both attentions (`transformer.Attention`, `mla.LatentAttention`) apply to their
scores [B, H, L, S]."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def allowed_keys(length: int, *, causal: bool, mask_BL=None):
  """Over one sequence: every key, or the key's position <= the query's when `causal`; padding
  keys (mask_BL 0) never. -> bool [1 or B, 1, L, L]."""
  allowed = jnp.ones((length, length), bool)
  if causal:
    allowed = jnp.tril(allowed)
  allowed = allowed[None, None]
  if mask_BL is not None:
    allowed = allowed & mask_BL[:, None, None, :].astype(bool)
  return allowed


def cached_keys(cache_length: int, positions_L):
  """Decoding over a cache of `cache_length` slots: the query at position p reads slots 0..p
  (later slots are unwritten). -> bool [1, 1, L, S]."""
  return (jnp.arange(cache_length)[None, :] <= positions_L[:, None])[None, None]


def softmax(scores_BHLS, allowed, dtype):
  """Softmax over the allowed keys, in float32, cast to `dtype`."""
  scores = jnp.where(allowed, scores_BHLS.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)
