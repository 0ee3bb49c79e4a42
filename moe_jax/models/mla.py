"""Multi-head latent attention (MLA; DeepSeek-V2, DeepSeek-AI 2024, §2.1): keys and values
come from one small latent per position, so a decoder caches the latent, not the heads.

    q = W_q x                            (or W_qb RMSNorm(W_qa x): a low-rank query, q_lora_rank)
    c, k_rope = split(W_kva x)           c: the latent [kv_lora_rank], k_rope: [qk_rope_head_dim]
    k_nope, v = split(W_kvb RMSNorm(c))  per head: [qk_nope_head_dim], [v_head_dim]
    q_nope, q_rope = split(q)            per head
    k = [k_nope, RoPE(k_rope)] (k_rope shared by every head), q = [q_nope, RoPE(q_rope)]
    out = W_o softmax(q k^T * scale) v   scale = 1/sqrt(nope + rope), times YaRN's mscale^2

The latent norms' epsilon is 1e-6 (DeepSeek's; transformers' DeepseekV2/V3 RMSNorm default),
whatever `norm_eps` says for the blocks' norms. The cache per layer: the normed latent
[B, S, kv_lora_rank] and the rotated shared key [B, S, qk_rope_head_dim].

Axis letters: B batch, L length, S cache length, D model dim, H heads, C latent dim, R rope
dim, N no-rope dim, V value dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.models import attention_mask, rope as rope_lib
from moe_jax.models.linear import Linear
from moe_jax.validation import check_int

LATENT_NORM_EPS = 1e-6


def validate(config, owner: str) -> None:
  """The MLA fields of a TransformerConfig with attention='mla'; errors name the field."""
  for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
    if getattr(config, name) is None:
      raise ValueError(f"{owner}: attention='mla' needs {name}")
    check_int(name, getattr(config, name), low=1, owner=owner)
  if config.qk_rope_head_dim % 2:
    raise ValueError(f"{owner}: qk_rope_head_dim={config.qk_rope_head_dim} must be even (RoPE "
                     "rotates pairs)")
  if config.q_lora_rank is not None:
    check_int("q_lora_rank", config.q_lora_rank, low=1, owner=owner)
  for name, off in (("num_kv_heads", None), ("head_dim", None), ("qk_norm", "none"),
                    ("qkv_bias", False), ("rope_fraction", 1.0), ("out_bias", False),
                    ("attention_sinks", False), ("sliding_window", None)):
    if getattr(config, name) != off:
      raise ValueError(f"{owner}: {name}={getattr(config, name)!r} does not apply to "
                       f"attention='mla' (leave it {off!r})")
  if not isinstance(config.rope_interleave, bool):
    raise ValueError(f"{owner}: rope_interleave must be True or False")
  rope_lib.check_scaling(config.rope_scaling, owner=f"{owner}")


class LatentAttention(nnx.Module):
  def __init__(self, config, *, causal: bool, rngs: nnx.Rngs, mesh=None):
    d, kw = config.d_model, dict(rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    heads = config.num_heads
    self.num_heads, self.causal = heads, causal
    self.nope, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
    self.v_dim, self.latent = config.v_head_dim, config.kv_lora_rank
    self.interleaved = config.rope_interleave
    inv_freq, self.rope_factor = rope_lib.frequencies(self.rope_dim, config.rope_theta,
                                                      config.rope_scaling)
    self.inv_freq = tuple(float(f) for f in inv_freq)     # static, not a param
    self.scale = rope_lib.softmax_scale(self.nope + self.rope_dim, config.rope_scaling)
    norm = lambda n: nnx.RMSNorm(n, epsilon=LATENT_NORM_EPS, rngs=rngs,
                                 param_dtype=config.param_dtype)
    q_out = heads * (self.nope + self.rope_dim)
    if config.q_lora_rank is None:
      self.q = Linear(d, q_out, ("embed", "heads"), **kw)
      self.q_a = self.q_a_norm = self.q_b = None
    else:
      self.q = None
      self.q_a = Linear(d, config.q_lora_rank, ("embed", None), **kw)
      self.q_a_norm = norm(config.q_lora_rank)
      self.q_b = Linear(config.q_lora_rank, q_out, (None, "heads"), **kw)
    self.kv_a = Linear(d, self.latent + self.rope_dim, ("embed", None), **kw)
    self.kv_a_norm = norm(self.latent)
    self.kv_b = Linear(self.latent, heads * (self.nope + self.v_dim), (None, "heads"), **kw)
    self.out = Linear(heads * self.v_dim, d, ("heads", "embed"), **kw)

  def _rope(self, x, positions):
    return rope_lib.apply(x, positions, jnp.asarray(self.inv_freq, jnp.float32),
                          self.rope_factor, interleaved=self.interleaved)

  def _query_latent(self, x_BLD, positions):
    """q [B,L,H,N+R] (rope part rotated), the normed latent [B,L,C], the rotated shared key
    [B,L,R]."""
    batch, length, _ = x_BLD.shape
    q = self.q(x_BLD) if self.q is not None else self.q_b(self.q_a_norm(self.q_a(x_BLD)))
    q = q.reshape(batch, length, self.num_heads, self.nope + self.rope_dim)
    q = jnp.concatenate([q[..., :self.nope], self._rope(q[..., self.nope:], positions)], -1)
    c_kr = self.kv_a(x_BLD)
    latent = self.kv_a_norm(c_kr[..., :self.latent])
    k_rope = self._rope(c_kr[..., None, self.latent:], positions)[:, :, 0]
    return q, latent, k_rope

  def _attend(self, q, latent_BSC, k_rope_BSR, allowed, dtype):
    batch, length = q.shape[:2]
    kv = self.kv_b(latent_BSC).reshape(*latent_BSC.shape[:2], self.num_heads,
                                       self.nope + self.v_dim)
    k_nope, v = kv[..., :self.nope], kv[..., self.nope:]
    scores = (jnp.einsum("blhn,bshn->bhls", q[..., :self.nope], k_nope)
              + jnp.einsum("blhr,bsr->bhls", q[..., self.nope:], k_rope_BSR))
    attn = attention_mask.softmax(scores.astype(jnp.float32) * self.scale, allowed, dtype)
    return self.out(jnp.einsum("bhls,bshv->blhv", attn, v).reshape(batch, length, -1))

  def __call__(self, x_BLD, mask_BL=None):
    length = x_BLD.shape[1]
    q, latent, k_rope = self._query_latent(x_BLD, jnp.arange(length))
    allowed = attention_mask.allowed_keys(length, causal=self.causal, mask_BL=mask_BL)
    return self._attend(q, latent, k_rope, allowed, x_BLD.dtype)

  def cache_shapes(self, batch: int, length: int):
    return (batch, length, self.latent), (batch, length, self.rope_dim)

  def decode(self, x_BLD, cache, start):
    """As Attention.decode, with the cache (latent [B,S,C], rotated shared key [B,S,R])."""
    length = x_BLD.shape[1]
    positions = start + jnp.arange(length)
    q, latent, k_rope = self._query_latent(x_BLD, positions)
    c_cache, r_cache = cache
    c_cache = jax.lax.dynamic_update_slice_in_dim(c_cache, latent.astype(c_cache.dtype), start, 1)
    r_cache = jax.lax.dynamic_update_slice_in_dim(r_cache, k_rope.astype(r_cache.dtype), start, 1)
    allowed = attention_mask.cached_keys(c_cache.shape[1], positions)
    out = self._attend(q, c_cache.astype(q.dtype), r_cache.astype(q.dtype), allowed,
                       x_BLD.dtype)
    return out, (c_cache, r_cache)
