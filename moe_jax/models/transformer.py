"""The transformer shared by every model: pre-norm blocks whose FFN is dense or MoE per layer.

    moe = MoEConfig(num_experts=8, expert_d_ff=512, router="topk", router_options={"k": 2})
    config = TransformerConfig(vocab_size=256, d_model=128, num_layers=4, num_heads=4, moe=moe)
    model = DecoderLM(config, rngs=nnx.Rngs(0), mesh=mesh)
    logits_BLV, routings = model(tokens_BL, train=True, rngs=nnx.Rngs(router=1))
    aux = sum(r.aux_losses["load_balancing"] for r in routings if r is not None)

Block: x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x)); attention is multi-head with rotary
position embeddings (RoPE), causal for decoders, bidirectional for encoders. Grouped-query
attention (`num_kv_heads` < num_heads: query head h reads key/value head h // (H / KV)), an
explicit `head_dim`, the RoPE base, the RMSNorm epsilon and q/k norms ('head': over each
head's K, as Qwen3; 'full': over the whole projection, H*K and KV*K, as OLMoE) are what the
Hugging Face families (moe_jax.hf) need; their defaults are the original model. Layer i's FFN is
MoE iff `moe` is set, i >= first_dense_layers and (i - first_dense_layers) % moe_every == 0;
with moe=None the same model is the dense baseline. Each MoE layer's Routing (aux
losses, metrics, new router state) is returned with the logits: no global state, no `sow`.

Params carry logical axis names ('embed', 'heads', 'mlp', 'expert', 'vocab'), mapped to the
mesh by moe_jax.parallel.LOGICAL_RULES; activations are constrained to the batch sharding at
block boundaries. `dtype` is the compute dtype (e.g. bfloat16); params stay `param_dtype`.

Axis letters: B batch, L length, D model dim, H heads, G key/value heads, K head dim, V vocab,
F hidden dim.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.experts import ACTIVATIONS
from moe_jax.models.linear import Linear
from moe_jax.models import attention_mask, mla
from moe_jax.models.moe import MoE, MoEConfig
from moe_jax.parallel.mesh import sharded_param
from moe_jax.parallel.mesh import BATCH_AXES
from moe_jax.validation import check_choice, check_float, check_int

QK_NORMS = ("none", "head", "full")
ATTENTIONS = ("mha", "mla")
MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
              "v_head_dim", "rope_interleave", "rope_scaling")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  max_len: int = 1024
  d_ff: int | None = None             # dense FFN hidden size (default 4 * d_model)
  activation: str = "gelu"           # of the dense FFNs (the MoE layers' is moe.activation)
  glu: bool = False
  moe: MoEConfig | None = None        # the MoE layers' options; None: a dense model
  moe_every: int = 1
  first_dense_layers: int = 0
  tie_embeddings: bool = True
  allow_non_causal_router: bool = False   # for ablations only: leaks future tokens in a decoder
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  num_kv_heads: int | None = None     # grouped-query attention; None: num_heads
  head_dim: int | None = None         # None: d_model // num_heads
  rope_theta: float = 10000.0         # the RoPE base
  rope_fraction: float = 1.0          # mha: the leading share of each head RoPE rotates (GLM-4.5:
                                      # 0.5); the rest of the head passes unrotated
  norm_eps: float = 1e-6              # every RMSNorm's epsilon (nnx.RMSNorm's default)
  qk_norm: str = "none"               # RMSNorm on q and k before RoPE: 'none', 'head', 'full'
  qkv_bias: bool = False              # q, k, v projections with a bias (Qwen2, Qwen2-MoE)
  # 'mha' (multi-head / grouped-query) or 'mla' (DeepSeek-V2/V3's multi-head latent attention,
  # moe_jax.models.mla: the five sizes below; head_dim, num_kv_heads, qk_norm do not apply)
  attention: str = "mha"
  q_lora_rank: int | None = None      # mla: the low-rank query's rank; None: a full q projection
  kv_lora_rank: int | None = None     # mla: the key/value latent's size
  qk_nope_head_dim: int | None = None  # mla: per head, the query/key part without RoPE
  qk_rope_head_dim: int | None = None  # mla: per head, the RoPE part (the key's is shared)
  v_head_dim: int | None = None       # mla: per head, the value size
  rope_interleave: bool = False       # mla: RoPE pairs (x0, x1), (x2, x3) (DeepSeek's layout)
  rope_scaling: dict | None = None    # mla: YaRN (moe_jax.models.rope); None: plain RoPE

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def head_size(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def num_experts(self) -> int:
    return 0 if self.moe is None else self.moe.num_experts

  def is_moe_layer(self, i: int) -> bool:
    return (self.moe is not None and i >= self.first_dense_layers
            and (i - self.first_dense_layers) % self.moe_every == 0)


# Every MoEConfig field but the two it shares with the dense FFNs (activation, glu).
MOE_KEYS = tuple(f.name for f in dataclasses.fields(MoEConfig)
                 if f.name not in ("activation", "glu"))


def make_config(**fields) -> TransformerConfig:
  """A TransformerConfig from one flat list of fields, as the run config's `config.model.*`
  lays them out: the MoE options (`MOE_KEYS`) become its `MoEConfig` (none when num_experts
  is 0 or absent), sharing the FFN's activation and glu; expert_d_ff defaults to d_ff (itself
  4 * d_model by default)."""
  model = {k: v for k, v in fields.items() if k not in MOE_KEYS}
  moe = {k: v for k, v in fields.items() if k in MOE_KEYS}
  if not moe.get("num_experts"):
    return TransformerConfig(**model)
  moe["expert_d_ff"] = (moe.get("expert_d_ff") or fields.get("d_ff")
                        or 4 * fields["d_model"])
  return TransformerConfig(moe=MoEConfig(activation=fields.get("activation", "gelu"),
                                         glu=fields.get("glu", False), **moe), **model)


def validate(config: TransformerConfig, *, causal: bool, owner: str = "model") -> None:
  """Checks before anything is built; errors name the field (prefixed by `owner`)."""
  for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_len", "moe_every"):
    check_int(name, getattr(config, name), low=1, owner=owner)
  if config.moe is not None and not isinstance(config.moe, MoEConfig):
    raise ValueError(f"{owner}: moe must be a MoEConfig or None, got {config.moe!r}")
  check_int("first_dense_layers", config.first_dense_layers, low=0, owner=owner)
  check_choice("activation", config.activation, ACTIVATIONS, owner=owner)
  check_choice("qk_norm", config.qk_norm, QK_NORMS, owner=owner)
  check_float("rope_theta", config.rope_theta, low=1.0, low_inclusive=False, owner=owner)
  check_float("norm_eps", config.norm_eps, low=0.0, low_inclusive=False, owner=owner)
  check_float("rope_fraction", config.rope_fraction, low=0.0, low_inclusive=False, high=1.0,
              owner=owner)
  if config.attention != "mha":
    pass
  elif config.head_dim is None:
    if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
      raise ValueError(f"{owner}: d_model={config.d_model} must split into num_heads="
                       f"{config.num_heads} heads of even size (RoPE rotates pairs)")
  elif check_int("head_dim", config.head_dim, low=2, owner=owner) % 2:
    raise ValueError(f"{owner}: head_dim={config.head_dim} must be even (RoPE rotates pairs)")
  if config.attention == "mha" and (rotary_dim(config) < 2 or rotary_dim(config) % 2):
    raise ValueError(f"{owner}: rope_fraction={config.rope_fraction} of head size "
                     f"{config.head_size} rotates {rotary_dim(config)} dims; RoPE needs an even "
                     "number, at least 2 (it rotates pairs)")
  check_choice("attention", config.attention, ATTENTIONS, owner=owner)
  if config.attention == "mla":
    mla.validate(config, owner)
  else:
    for name in MLA_FIELDS:
      if getattr(config, name) not in (None, False):
        raise ValueError(f"{owner}: {name}={getattr(config, name)!r} is an option of "
                         "attention='mla'; this model's attention is 'mha'")
  if config.num_kv_heads is not None:
    check_int("num_kv_heads", config.num_kv_heads, low=1, high=config.num_heads, owner=owner)
    if config.num_heads % config.num_kv_heads:
      raise ValueError(f"{owner}: num_kv_heads={config.num_kv_heads} must divide num_heads="
                       f"{config.num_heads} (each key/value head serves a group of query heads)")
  if causal and config.moe is not None and not config.allow_non_causal_router:
    router = config.moe.built_router
    if not router.causal_safe:
      raise ValueError(f"{owner}: router {router.name!r} is not causal-safe (a token's routing "
                       "depends on later tokens), so a decoder would see the future; set "
                       f"{owner}.allow_non_causal_router=True to run it anyway for an ablation")


def rotary_dim(config: TransformerConfig) -> int:
  """How many leading dims of each head RoPE rotates (Hugging Face's int(head_dim *
  partial_rotary_factor))."""
  return int(config.head_size * config.rope_fraction)


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
  """Fused q|k|v projection [D, (H + 2G) K] (q's H heads, then k's G, then v's G), RoPE,
  softmax attention, output projection [H K, D]."""

  def __init__(self, config: TransformerConfig, *, causal: bool, rngs: nnx.Rngs, mesh=None):
    d, kw = config.d_model, dict(rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    heads, kv, size = config.num_heads, config.kv_heads, config.head_size
    self.num_heads, self.num_kv_heads, self.causal = heads, kv, causal
    self.rope_theta, self.qk_norm = config.rope_theta, config.qk_norm
    self.rotary = rotary_dim(config)
    self.qkv = Linear(d, (heads + 2 * kv) * size, ("embed", "heads"), **kw)
    self.qkv_bias = (sharded_param(jnp.zeros(((heads + 2 * kv) * size,), config.param_dtype),
                                   ("heads",), mesh) if config.qkv_bias else None)
    self.out = Linear(heads * size, d, ("heads", "embed"), **kw)
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

  def __call__(self, x_BLD, mask_BL=None):
    batch, length, _ = x_BLD.shape
    q, k, v = self._project(x_BLD)
    q, k = self._rope(q, k, jnp.arange(length))
    allowed = attention_mask.allowed_keys(length, causal=self.causal, mask_BL=mask_BL)
    return self._attend(q, k, v, allowed, x_BLD.dtype)

  def _rope(self, q, k, positions):
    return (rope(q, positions, self.rope_theta, self.rotary),
            rope(k, positions, self.rope_theta, self.rotary))

  def _attend(self, q, k, v, allowed, dtype):
    """softmax(q k^T / sqrt K) v over the allowed keys, then the output projection."""
    batch, length = q.shape[:2]
    if self.num_kv_heads != self.num_heads:   # query head h reads key/value head h // group
      group = self.num_heads // self.num_kv_heads
      k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("blhk,bmhk->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    attn = attention_mask.softmax(scores, allowed, dtype)
    return self.out(jnp.einsum("bhlm,bmhk->blhk", attn, v).reshape(batch, length, -1))

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
    allowed = attention_mask.cached_keys(k_cache.shape[1], positions)
    out = self._attend(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), allowed,
                       x_BLD.dtype)
    return out, (k_cache, v_cache)


class DenseFFN(nnx.Module):
  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, mesh=None):
    d, f = config.d_model, config.d_ff or 4 * config.d_model
    kw = dict(rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    self.act, self.glu = ACTIVATIONS[config.activation], config.glu
    self.w_in = Linear(d, f, ("embed", "mlp"), **kw)
    self.w_up = Linear(d, f, ("embed", "mlp"), **kw) if config.glu else None
    self.w_out = Linear(f, d, ("mlp", "embed"), **kw)

  def __call__(self, x):
    h = self.act(self.w_in(x))
    return self.w_out(h * self.w_up(x) if self.glu else h)


class Block(nnx.Module):
  def __init__(self, config: TransformerConfig, layer: int, *, causal: bool, rngs: nnx.Rngs,
               mesh=None):
    d, eps = config.d_model, config.norm_eps
    self.norm_attn = nnx.RMSNorm(d, epsilon=eps, rngs=rngs, param_dtype=config.param_dtype)
    attention = mla.LatentAttention if config.attention == "mla" else Attention
    self.attn = attention(config, causal=causal, rngs=rngs, mesh=mesh)
    self.norm_ffn = nnx.RMSNorm(d, epsilon=eps, rngs=rngs, param_dtype=config.param_dtype)
    self.is_moe = config.is_moe_layer(layer)
    if self.is_moe:
      self.ffn = MoE(d, config.moe, mesh=mesh, rngs=rngs)
    else:
      self.ffn = DenseFFN(config, rngs=rngs, mesh=mesh)

  def __call__(self, x_BLD, *, train: bool, rngs, token_ids_BL, mask_BL, cache=None,
               start=None):
    if cache is None:
      x_BLD = x_BLD + self.attn(self.norm_attn(x_BLD), mask_BL)
    else:
      attended, cache = self.attn.decode(self.norm_attn(x_BLD), cache, start)
      x_BLD = x_BLD + attended
    y_BLD, r = self._ffn(x_BLD, train=train, rngs=rngs, token_ids_BL=token_ids_BL)
    return (y_BLD, r) if cache is None else (y_BLD, r, cache)

  def _ffn(self, x_BLD, *, train, rngs, token_ids_BL):
    h_BLD = self.norm_ffn(x_BLD)
    if self.is_moe:
      y_BLD, r = self.ffn(h_BLD, train=train, token_ids=token_ids_BL, rngs=rngs)
      return x_BLD + y_BLD.astype(x_BLD.dtype), r
    return x_BLD + self.ffn(h_BLD), None


class Transformer(nnx.Module):
  """Token embedding + blocks + final norm; `causal` picks decoder or encoder attention.
  `embed_tokens=False` leaves the input embedding to the caller (e.g. image patches), who
  then calls `encode` on embeddings directly."""

  def __init__(self, config: TransformerConfig, *, causal: bool, rngs: nnx.Rngs,
               mesh: Mesh | None = None, embed_tokens: bool = True):
    validate(config, causal=causal)
    self.config, self.mesh = config, mesh
    self.embed = (sharded_param(jax.random.normal(rngs.params(), (config.vocab_size,
                                                                  config.d_model),
                                                  config.param_dtype), ("vocab", "embed"), mesh)
                  if embed_tokens else None)
    # Each block draws its init keys from its own stream (folded from one key), so a block's
    # values do not depend on how many keys the blocks before it drew: a MoE layer draws
    # fewer than a dense FFN, and seed-paired sweeps compare dense and MoE models whose shared
    # parameters (attention, later dense FFNs, head) must start equal.
    blocks_key = rngs.params()
    self.blocks = nnx.List([Block(config, i, causal=causal, mesh=mesh,
                                  rngs=nnx.Rngs(params=jax.random.fold_in(blocks_key, i)))
                            for i in range(config.num_layers)])
    self.norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs,
                            param_dtype=config.param_dtype)

  def _constrain(self, x):
    if self.mesh is None or isinstance(self.mesh, jax.sharding.AbstractMesh):
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(BATCH_AXES)))

  def hidden(self, tokens_BL, *, train=False, rngs=None, mask_BL=None):
    """Final-norm hidden states [B,L,D] and one Routing (or None) per layer."""
    x = self.embed[...][tokens_BL].astype(self.config.dtype)
    return self.encode(x, train=train, rngs=rngs, token_ids_BL=tokens_BL, mask_BL=mask_BL)

  def encode(self, x_BLD, *, train=False, rngs=None, token_ids_BL=None, mask_BL=None):
    """The blocks and final norm on input embeddings x [B,L,D]; `token_ids_BL` only for
    routers that route by token id (hash)."""
    if x_BLD.shape[1] > self.config.max_len:
      raise ValueError(f"model: sequence length {x_BLD.shape[1]} exceeds max_len="
                       f"{self.config.max_len}")
    x = self._constrain(x_BLD.astype(self.config.dtype))
    call = lambda blk, x: blk(x, train=train, rngs=rngs, token_ids_BL=token_ids_BL,
                              mask_BL=mask_BL)
    if self.config.remat:
      call = nnx.remat(call)
    routings = []
    for block in self.blocks:
      x, r = call(block, x)
      x = self._constrain(x)
      routings.append(r)
    return self.norm(x), routings

  def decode(self, tokens_BL, caches, start):
    """The blocks on L new tokens at positions start .. start+L-1, attending to the cached
    earlier positions: -> (final-norm hidden states [B,L,D], routings, the updated caches)."""
    x = self.embed[...][tokens_BL].astype(self.config.dtype)
    routings, updated = [], []
    for block, cache in zip(self.blocks, caches):
      x, r, cache = block(x, train=False, rngs=None, token_ids_BL=tokens_BL, mask_BL=None,
                          cache=cache, start=start)
      routings.append(r)
      updated.append(cache)
    return self.norm(x), routings, updated


class DecoderLM(nnx.Module):
  """A causal language model: logits [B,L,V] for next-token prediction, and per-layer Routing."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
    self.transformer = Transformer(config, causal=True, rngs=rngs, mesh=mesh)
    self.unembed = (None if config.tie_embeddings else
                    Linear(config.d_model, config.vocab_size, ("embed", "vocab"), rngs=rngs,
                           mesh=mesh, param_dtype=config.param_dtype))

  def __call__(self, tokens_BL, *, train: bool = False, rngs: nnx.Rngs | None = None):
    h_BLD, routings = self.transformer.hidden(tokens_BL, train=train, rngs=rngs)
    return self._logits(h_BLD), routings

  def init_cache(self, batch: int, length: int, dtype=None) -> list:
    """Empty caches, one pair per layer: (k, v), each [batch, length, G, K]; with
    attention='mla' (latent [batch, length, C], rotated shared key [batch, length, R])."""
    config = self.transformer.config
    dtype = dtype or config.dtype
    if config.attention == "mla":
      shapes = self.transformer.blocks[0].attn.cache_shapes(batch, length)
    else:
      shapes = ((batch, length, config.kv_heads, config.head_size),) * 2
    return [tuple(jnp.zeros(s, dtype) for s in shapes) for _ in range(config.num_layers)]

  def decode(self, tokens_BL, caches, start):
    """Logits [B,L,V] of L new tokens at positions start .. start+L-1 given the caches of the
    positions before them (a prefill is start 0 with the whole prompt; each decoding step one
    token), and the updated caches. Equal to the full forward pass's logits at those positions
    (tests/models/test_kv_cache.py); in evaluation mode (no router noise or state update)."""
    length, room = tokens_BL.shape[1], caches[0][0].shape[1]
    if isinstance(start, int) and start + length > room:   # (a traced start is not checked)
      raise ValueError(f"model: the cache holds {room} positions; {length} tokens at position "
                       f"{start} do not fit")
    h_BLD, routings, caches = self.transformer.decode(tokens_BL, caches, start)
    return self._logits(h_BLD), routings, caches

  def _logits(self, h_BLD):
    if self.unembed is None:
      embed = self.transformer.embed[...]
      logits = h_BLD @ embed.T.astype(h_BLD.dtype) / jnp.sqrt(h_BLD.shape[-1]).astype(h_BLD.dtype)
    else:
      logits = self.unembed(h_BLD)
    return logits.astype(jnp.float32)
