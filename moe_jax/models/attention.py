"""Multi-head / grouped-query attention (`attention='mha'`) and its RoPE.

Fused q|k|v projection [D, (H + 2G) K] (q's H heads, then k's G, then v's G), optional q/k/v
biases (`qkv_bias`) and output bias (`out_bias`), q/k RMSNorms (`qk_norm`), RoPE on the
leading `rope_fraction` of each head (YaRN-scaled with `rope_scaling`), softmax attention over
the causal (or bidirectional) keys, within `sliding_window` positions on the layers that
`sliding_every` picks, optionally with a learned per-head sink logit in the softmax's
denominator (`attention_sinks`: GPT-OSS; the sink takes probability mass and gives no value).

Axis letters: B batch, L length, S cache length, D model dim, H heads, G key/value heads,
K head dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.models import attention_mask, rope as rope_lib
from moe_jax.models.linear import Linear
from moe_jax.parallel.mesh import sharded_param


def rotary_dim(config) -> int:
  """How many leading dims of each head RoPE rotates (Hugging Face's int(head_dim *
  partial_rotary_factor))."""
  return int(config.head_size * config.rope_fraction)


def window_of(config, layer: int) -> int | None:
  """The sliding window of layer `layer` (None: full attention): layers 0, e, 2e, ... with
  e = sliding_every slide, as GPT-OSS's even layers do."""
  if config.sliding_window is None or layer % config.sliding_every:
    return None
  return config.sliding_window


def rope(x_BLHK, positions_L, base: float = 10000.0, rotary: int | None = None):
  """Rotary position embedding: rotates pairs (x_i, x_{i+R/2}) of the first R = `rotary` dims
  (default: all K) by position-dependent angles (pair i at frequency base^(-2i/R): the "rotate
  half" pairing of Hugging Face's Llama family, not GPT-J's interleaved pairs); dims R..K pass
  unrotated (partial rotary, GPT-NeoX / GLM-4.5)."""
  rotary = x_BLHK.shape[-1] if rotary is None else rotary
  half = rotary // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_L1K = (positions_L.astype(jnp.float32)[:, None] * freq)[:, None, :]
  cos, sin = jnp.cos(angle_L1K).astype(x_BLHK.dtype), jnp.sin(angle_L1K).astype(x_BLHK.dtype)
  x1, x2, rest = x_BLHK[..., :half], x_BLHK[..., half:rotary], x_BLHK[..., rotary:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


class Attention(nnx.Module):
  """Multi-head / grouped-query attention of one layer (the module docstring)."""

  def __init__(self, config, *, causal: bool, rngs: nnx.Rngs, mesh=None, layer: int = 0):
    d, kw = config.d_model, dict(rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    heads, kv, size = config.num_heads, config.kv_heads, config.head_size
    self.num_heads, self.num_kv_heads, self.causal = heads, kv, causal
    self.rope_theta, self.qk_norm = config.rope_theta, config.qk_norm
    self.rotary = rotary_dim(config)
    self.window = window_of(config, layer)
    self.scaling = config.rope_scaling
    if self.scaling is not None:    # YaRN: its frequencies, and cos / sin times its factor
      inv_freq, self.rope_factor = rope_lib.frequencies(self.rotary, config.rope_theta,
                                                        self.scaling)
      self.inv_freq = tuple(float(f) for f in inv_freq)     # static, not a param
    self.qkv = Linear(d, (heads + 2 * kv) * size, ("embed", "heads"), **kw)
    self.qkv_bias = (sharded_param(jnp.zeros(((heads + 2 * kv) * size,), config.param_dtype),
                                   ("heads",), mesh) if config.qkv_bias else None)
    self.out = Linear(heads * size, d, ("heads", "embed"), **kw)
    self.out_bias = (sharded_param(jnp.zeros((d,), config.param_dtype), ("embed",), mesh)
                     if config.out_bias else None)
    self.sinks = (sharded_param(jnp.zeros((heads,), config.param_dtype), ("heads",), mesh)
                  if config.attention_sinks else None)
    if config.qk_norm != "none":
      norm = lambda n: nnx.RMSNorm(n, epsilon=config.norm_eps, rngs=rngs,
                                   param_dtype=config.param_dtype)
      full = config.qk_norm == "full"
      self.q_norm = norm(heads * size if full else size)
      self.k_norm = norm(kv * size if full else size)

  def _project(self, x_BLD):
    """q [B,L,H,K], k and v [B,L,G,K]; q and k normed as `qk_norm` says (before RoPE)."""
    batch, length, _ = x_BLD.shape
    heads, kv = self.num_heads, self.num_kv_heads
    qkv = self.qkv(x_BLD)
    if self.qkv_bias is not None:
      qkv = qkv + self.qkv_bias[...].astype(qkv.dtype)
    size = qkv.shape[-1] // (heads + 2 * kv)
    q, k, v = jnp.split(qkv, [heads * size, (heads + kv) * size], axis=-1)
    if self.qk_norm == "full":   # OLMoE: over all of q's (k's) features, before the head split
      q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = (a.reshape(batch, length, -1, size) for a in (q, k, v))
    if self.qk_norm == "head":   # Qwen3: over each head's K
      q, k = self.q_norm(q), self.k_norm(k)
    return q, k, v

  def _rope(self, q, k, positions):
    if self.scaling is None:
      return (rope(q, positions, self.rope_theta, self.rotary),
              rope(k, positions, self.rope_theta, self.rotary))
    r = self.rotary
    turn = lambda x: jnp.concatenate(
        [rope_lib.apply(x[..., :r], positions, self.inv_freq, self.rope_factor), x[..., r:]],
        axis=-1)
    return turn(q), turn(k)

  def __call__(self, x_BLD, mask_BL=None):
    length = x_BLD.shape[1]
    q, k, v = self._project(x_BLD)
    q, k = self._rope(q, k, jnp.arange(length))
    allowed = attention_mask.allowed_keys(length, causal=self.causal, mask_BL=mask_BL,
                                          window=self.window)
    return self._attend(q, k, v, allowed, x_BLD.dtype)

  def _attend(self, q, k, v, allowed, dtype):
    """softmax(q k^T / sqrt K) v over the allowed keys (and the sink), then the output
    projection."""
    batch, length = q.shape[:2]
    if self.num_kv_heads != self.num_heads:   # query head h reads key/value head h // group
      group = self.num_heads // self.num_kv_heads
      k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("blhk,bmhk->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    sinks = None if self.sinks is None else self.sinks[...]
    attn = attention_mask.softmax(scores, allowed, dtype, sinks_H=sinks)
    out = self.out(jnp.einsum("bhlm,bmhk->blhk", attn, v).reshape(batch, length, -1))
    return out if self.out_bias is None else out + self.out_bias[...].astype(out.dtype)

  def decode(self, x_BLD, cache, start):
    """Causal attention of L new positions start .. start+L-1 over the cached keys and values
    of the positions before them: -> (output, the cache with theirs written in). `cache` is
    (k, v), each [B, S, G, K] (S >= start + L); entries at S's later positions are unused."""
    length = x_BLD.shape[1]
    q, k, v = self._project(x_BLD)
    positions = start + jnp.arange(length)
    q, k = self._rope(q, k, positions)
    k_cache, v_cache = cache
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, 1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, 1)
    allowed = attention_mask.cached_keys(k_cache.shape[1], positions, window=self.window)
    out = self._attend(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), allowed,
                       x_BLD.dtype)
    return out, (k_cache, v_cache)
