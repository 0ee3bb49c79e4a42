"""Which keys each query may attend to, as a boolean [B or 1, 1, L, S] mask, and the masked
softmax both attentions (`attention.Attention`, `mla.LatentAttention`) apply to their
scores [B, H, L, S]."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def allowed_keys(length: int, *, causal: bool, mask_BL=None, window: int | None = None):
  """Over one sequence: every key, or the key's position <= the query's when `causal`; with a
  `window` (causal only), also > the query's - window (the window's last `window` positions,
  the query's own included, as transformers' sliding windows); padding keys (mask_BL 0)
  never. -> bool [1 or B, 1, L, L]."""
  allowed = jnp.ones((length, length), bool)
  if causal:
    allowed = jnp.tril(allowed)
  if window is not None:
    allowed = allowed & jnp.triu(jnp.ones((length, length), bool), k=1 - window)
  allowed = allowed[None, None]
  if mask_BL is not None:
    allowed = allowed & mask_BL[:, None, None, :].astype(bool)
  return allowed


def cached_keys(cache_length: int, positions_L, window: int | None = None):
  """Decoding over a cache of `cache_length` slots: the query at position p reads slots 0..p
  (later slots are unwritten), and with a `window` only those > p - window. -> bool
  [1, 1, L, S]."""
  slots = jnp.arange(cache_length)[None, :]
  allowed = slots <= positions_L[:, None]
  if window is not None:
    allowed = allowed & (slots > positions_L[:, None] - window)
  return allowed[None, None]


def softmax(scores_BHLS, allowed, dtype, sinks_H=None):
  """Softmax over the allowed keys, in float32, cast to `dtype`. With `sinks_H`, each head's
  sink logit joins the denominator (it takes probability mass, and attends to nothing)."""
  scores = jnp.where(allowed, scores_BHLS.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  if sinks_H is None:
    return jax.nn.softmax(scores, axis=-1).astype(dtype)
  sink = jnp.broadcast_to(sinks_H.astype(jnp.float32)[None, :, None, None],
                          scores.shape[:-1] + (1,))
  return jax.nn.softmax(jnp.concatenate([scores, sink], -1), axis=-1)[..., :-1].astype(dtype)
