"""The transformer shared by every model: pre-norm blocks whose FFN is dense or MoE per layer.

    moe = MoEConfig(num_experts=8, expert_d_ff=512, router="topk", router_options={"k": 2})
    config = TransformerConfig(vocab_size=256, d_model=128, num_layers=4, num_heads=4, moe=moe)
    model = DecoderLM(config, rngs=nnx.Rngs(0), mesh=mesh)
    logits_BLV, routings = model(tokens_BL, train=True, rngs=nnx.Rngs(router=1))
    aux = sum(r.aux_losses["load_balancing"] for r in routings if r is not None)

Block: x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x)); attention is multi-head with rotary
position embeddings (RoPE), causal for decoders, bidirectional for encoders. Layer i's FFN is
MoE iff `moe` is set, i >= first_dense_layers and (i - first_dense_layers) % moe_every == 0;
with moe=None the same model is the dense baseline. Each MoE layer's Routing (aux
losses, metrics, new router state) is returned with the logits: no global state, no `sow`.

Params carry logical axis names ('embed', 'heads', 'mlp', 'expert', 'vocab'), mapped to the
mesh by moe_jax.parallel.LOGICAL_RULES; activations are constrained to the batch sharding at
block boundaries. `dtype` is the compute dtype (e.g. bfloat16); params stay `param_dtype`.

Axis letters: B batch, L length, D model dim, H heads, K head dim, V vocab, F hidden dim.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.experts import ACTIVATIONS
from moe_jax.models.moe import MoE, MoEConfig, sharded_param
from moe_jax.parallel.mesh import BATCH_AXES
from moe_jax.validation import check_choice, check_int


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
  if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
    raise ValueError(f"{owner}: d_model={config.d_model} must split into num_heads="
                     f"{config.num_heads} heads of even size (RoPE rotates pairs)")
  if causal and config.moe is not None and not config.allow_non_causal_router:
    router = config.moe.built_router
    if not router.causal_safe:
      raise ValueError(f"{owner}: router {router.name!r} is not causal-safe (a token's routing "
                       "depends on later tokens), so a decoder would see the future; set "
                       f"{owner}.allow_non_causal_router=True to run it anyway for an ablation")


def _init(scale=1.0):
  return jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class Linear(nnx.Module):
  """x @ W without bias, W annotated with logical axes."""

  def __init__(self, d_in: int, d_out: int, axes, *, rngs: nnx.Rngs, mesh=None,
               param_dtype=jnp.float32):
    self.kernel = sharded_param(_init()(rngs.params(), (d_in, d_out), param_dtype), axes, mesh)

  def __call__(self, x):
    return x @ self.kernel[...].astype(x.dtype)


def rope(x_BLHK, positions_L, base: float = 10000.0):
  """Rotary position embedding: rotates pairs (x_i, x_{i+K/2}) by position-dependent angles."""
  half = x_BLHK.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_L1K = (positions_L.astype(jnp.float32)[:, None] * freq)[:, None, :]
  cos, sin = jnp.cos(angle_L1K).astype(x_BLHK.dtype), jnp.sin(angle_L1K).astype(x_BLHK.dtype)
  x1, x2 = x_BLHK[..., :half], x_BLHK[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nnx.Module):
  def __init__(self, config: TransformerConfig, *, causal: bool, rngs: nnx.Rngs, mesh=None):
    d, kw = config.d_model, dict(rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    self.num_heads, self.causal = config.num_heads, causal
    self.qkv = Linear(d, 3 * d, ("embed", "heads"), **kw)
    self.out = Linear(d, d, ("heads", "embed"), **kw)

  def __call__(self, x_BLD, mask_BL=None):
    batch, length, d = x_BLD.shape
    q, k, v = jnp.split(self.qkv(x_BLD).reshape(batch, length, 3 * self.num_heads, -1), 3,
                        axis=2)
    positions = jnp.arange(length)
    q, k = rope(q, positions), rope(k, positions)
    scores = jnp.einsum("blhk,bmhk->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    allowed = jnp.ones((length, length), bool)
    if self.causal:
      allowed = jnp.tril(allowed)
    allowed = allowed[None, None]
    if mask_BL is not None:    # padding keys are never attended to
      allowed = allowed & mask_BL[:, None, None, :]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    attn = jax.nn.softmax(scores, axis=-1).astype(x_BLD.dtype)
    return self.out(jnp.einsum("bhlm,bmhk->blhk", attn, v).reshape(batch, length, d))


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
    d = config.d_model
    self.norm_attn = nnx.RMSNorm(d, rngs=rngs, param_dtype=config.param_dtype)
    self.attn = Attention(config, causal=causal, rngs=rngs, mesh=mesh)
    self.norm_ffn = nnx.RMSNorm(d, rngs=rngs, param_dtype=config.param_dtype)
    self.is_moe = config.is_moe_layer(layer)
    if self.is_moe:
      self.ffn = MoE(d, config.moe, mesh=mesh, rngs=rngs)
    else:
      self.ffn = DenseFFN(config, rngs=rngs, mesh=mesh)

  def __call__(self, x_BLD, *, train: bool, rngs, token_ids_BL, mask_BL):
    x_BLD = x_BLD + self.attn(self.norm_attn(x_BLD), mask_BL)
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
    self.blocks = nnx.List([Block(config, i, causal=causal, rngs=rngs, mesh=mesh)
                            for i in range(config.num_layers)])
    self.norm = nnx.RMSNorm(config.d_model, rngs=rngs, param_dtype=config.param_dtype)

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


class DecoderLM(nnx.Module):
  """A causal language model: logits [B,L,V] for next-token prediction, and per-layer Routing."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
    self.transformer = Transformer(config, causal=True, rngs=rngs, mesh=mesh)
    self.unembed = (None if config.tie_embeddings else
                    Linear(config.d_model, config.vocab_size, ("embed", "vocab"), rngs=rngs,
                           mesh=mesh, param_dtype=config.param_dtype))

  def __call__(self, tokens_BL, *, train: bool = False, rngs: nnx.Rngs | None = None):
    h_BLD, routings = self.transformer.hidden(tokens_BL, train=train, rngs=rngs)
    if self.unembed is None:
      embed = self.transformer.embed[...]
      logits = h_BLD @ embed.T.astype(h_BLD.dtype) / jnp.sqrt(h_BLD.shape[-1]).astype(h_BLD.dtype)
    else:
      logits = self.unembed(h_BLD)
    return logits.astype(jnp.float32), routings
