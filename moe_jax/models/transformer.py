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
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.experts import ACTIVATIONS, check_activation, glu_hidden
from moe_jax.models.linear import Linear
from moe_jax.models import mla, rope as rope_lib
from moe_jax.models.attention import Attention, rope, rotary_dim  # noqa: F401 (re-exported)
from moe_jax.models.moe import MoE, MoEConfig
from moe_jax.parallel.mesh import sharded_param
from moe_jax.parallel.mesh import BATCH_AXES
from moe_jax.validation import check_choice, check_float, check_int

QK_NORMS = ("none", "head", "full")
ATTENTIONS = ("mha", "mla")
MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
              "v_head_dim", "rope_interleave")


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
  out_bias: bool = False              # mha: the output projection with a bias (GPT-OSS)
  attention_sinks: bool = False       # mha: a learned per-head sink logit in the softmax (GPT-OSS)
  sliding_window: int | None = None   # mha, decoders: attend to the last `sliding_window` keys
  sliding_every: int = 1              # ... on layers 0, e, 2e, ... (GPT-OSS: 2); others: all
  # 'mha' (multi-head / grouped-query) or 'mla' (DeepSeek-V2/V3's multi-head latent attention,
  # moe_jax.models.mla: the five sizes below; head_dim, num_kv_heads, qk_norm do not apply)
  attention: str = "mha"
  q_lora_rank: int | None = None      # mla: the low-rank query's rank; None: a full q projection
  kv_lora_rank: int | None = None     # mla: the key/value latent's size
  qk_nope_head_dim: int | None = None  # mla: per head, the query/key part without RoPE
  qk_rope_head_dim: int | None = None  # mla: per head, the RoPE part (the key's is shared)
  v_head_dim: int | None = None       # mla: per head, the value size
  rope_interleave: bool = False       # mla: RoPE pairs (x0, x1), (x2, x3) (DeepSeek's layout)
  rope_scaling: dict | None = None    # YaRN (moe_jax.models.rope); None: plain RoPE

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
  check_activation(config.activation, config.glu, owner=owner)
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
  if config.attention == "mha":
    rope_lib.check_scaling(config.rope_scaling, owner=owner)
  check_int("sliding_every", config.sliding_every, low=1, owner=owner)
  if config.sliding_window is not None:
    check_int("sliding_window", config.sliding_window, low=1, owner=owner)
    if not causal:
      raise ValueError(f"{owner}: sliding_window={config.sliding_window} is for decoders "
                       "(a causal window); this model is an encoder")
  if causal and config.moe is not None and not config.allow_non_causal_router:
    router = config.moe.built_router
    if not router.causal_safe:
      raise ValueError(f"{owner}: router {router.name!r} is not causal-safe (a token's routing "
                       "depends on later tokens), so a decoder would see the future; set "
                       f"{owner}.allow_non_causal_router=True to run it anyway for an ablation")


class DenseFFN(nnx.Module):
  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, mesh=None):
    d, f = config.d_model, config.d_ff or 4 * config.d_model
    kw = dict(rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    self.activation, self.glu = config.activation, config.glu
    self.w_in = Linear(d, f, ("embed", "mlp"), **kw)
    self.w_up = Linear(d, f, ("embed", "mlp"), **kw) if config.glu else None
    self.w_out = Linear(f, d, ("mlp", "embed"), **kw)

  def __call__(self, x):
    if self.glu:
      return self.w_out(glu_hidden(self.activation, self.w_in(x), self.w_up(x)))
    return self.w_out(ACTIVATIONS[self.activation](self.w_in(x)))


class Block(nnx.Module):
  def __init__(self, config: TransformerConfig, layer: int, *, causal: bool, rngs: nnx.Rngs,
               mesh=None):
    d, eps = config.d_model, config.norm_eps
    self.norm_attn = nnx.RMSNorm(d, epsilon=eps, rngs=rngs, param_dtype=config.param_dtype)
    attention = (mla.LatentAttention if config.attention == "mla"
                 else functools.partial(Attention, layer=layer))
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
