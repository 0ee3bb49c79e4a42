"""An encoder classifier from the shared transformer block: text (tokens) or images (patches).

    model = EncoderClassifier(config, num_classes=4, rngs=nnx.Rngs(0))           # tokens [B,L]
    model = EncoderClassifier(config, num_classes=10, patch_size=2,
                              image_shape=(8, 8, 1), pool="cls", rngs=nnx.Rngs(0))  # [B,H,W,C]
    logits_BC, routings = model(inputs, train=True, rngs=nnx.Rngs(router=key), mask_BL=mask)

Attention is bidirectional, so every router works here, the non-causal ones (expert choice,
soft MoE, Sinkhorn) included: a classifier sees the whole input at once. Images are cut into
non-overlapping p x p patches, each flattened and projected to d_model (ViT); positions come
from the blocks' RoPE over the patch sequence. `pool='mean'` averages the final hidden states
over unmasked positions; `pool='cls'` prepends a learned token and reads its final state.

Axis letters: B batch, L length (tokens or patches), D model dim, C classes, H/W image size.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from moe_jax.parallel.mesh import sharded_param
from moe_jax.models.transformer import Linear, Transformer, TransformerConfig
from moe_jax.validation import check_choice, check_int

POOLS = ("mean", "cls")


def patchify(images_BHWC, patch_size: int):
  """[B,H,W,C] -> [B, (H/p)(W/p), p*p*C], patches in row-major order."""
  b, h, w, c = images_BHWC.shape
  p = patch_size
  x = images_BHWC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class EncoderClassifier(nnx.Module):
  """Bidirectional transformer + pooled linear head -> logits [B, num_classes] (float32) and
  one Routing (or None) per layer."""

  def __init__(self, config: TransformerConfig, *, num_classes: int, pool: str = "mean",
               patch_size: int | None = None, image_shape: tuple[int, int, int] | None = None,
               rngs: nnx.Rngs, mesh: Mesh | None = None):
    owner = "classifier"
    check_int("num_classes", num_classes, low=2, owner=owner)
    check_choice("pool", pool, POOLS, owner=owner)
    self.pool, self.patch_size = pool, patch_size
    self.images = patch_size is not None
    extra = 1 if pool == "cls" else 0
    if self.images:
      check_int("patch_size", patch_size, low=1, owner=owner)
      if image_shape is None or len(image_shape) != 3:
        raise ValueError(f"{owner}: image inputs need image_shape=(H, W, C), got {image_shape}")
      h, w, c = image_shape
      if h % patch_size or w % patch_size:
        raise ValueError(f"{owner}: image {h}x{w} is not divisible into {patch_size}x"
                         f"{patch_size} patches")
      length = (h // patch_size) * (w // patch_size) + extra
      if length > config.max_len:
        raise ValueError(f"{owner}: {length} patches exceed max_len={config.max_len}")
      if config.moe is not None and config.moe.built_router.needs_token_ids:
        raise ValueError(f"{owner}: router {config.moe.built_router.name!r} routes by token "
                         "id and image patches have none; pick another router")
      self.patch_embed = Linear(patch_size * patch_size * c, config.d_model, (None, "embed"),
                                rngs=rngs, mesh=mesh, param_dtype=config.param_dtype)
    self.transformer = Transformer(config, causal=False, rngs=rngs, mesh=mesh,
                                   embed_tokens=not self.images)
    self.cls_token = (sharded_param(jnp.zeros((config.d_model,), config.param_dtype),
                                    ("embed",), mesh) if pool == "cls" else None)
    self.head = Linear(config.d_model, num_classes, ("embed", None), rngs=rngs, mesh=mesh,
                       param_dtype=config.param_dtype)

  def __call__(self, inputs, *, train: bool = False, rngs: nnx.Rngs | None = None,
               mask_BL=None):
    """inputs: int tokens [B,L] (mask_BL: 1 = real token) or images [B,H,W,C]."""
    dtype = self.transformer.config.dtype
    if self.images:
      x_BLD = patchify(inputs.astype(dtype), self.patch_size) @ self.patch_embed.kernel[
          ...].astype(dtype)
      token_ids_BL = None
    else:
      x_BLD = self.transformer.embed[...][inputs].astype(dtype)
      token_ids_BL = inputs
    batch = x_BLD.shape[0]
    if self.pool == "cls":
      cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (batch, 1, x_BLD.shape[-1]))
      x_BLD = jnp.concatenate([cls, x_BLD], axis=1)
      if token_ids_BL is not None:
        token_ids_BL = jnp.pad(token_ids_BL, ((0, 0), (1, 0)))
      if mask_BL is not None:
        mask_BL = jnp.pad(mask_BL, ((0, 0), (1, 0)), constant_values=1)
    h_BLD, routings = self.transformer.encode(x_BLD, train=train, rngs=rngs,
                                              token_ids_BL=token_ids_BL,
                                              mask_BL=None if mask_BL is None
                                              else mask_BL.astype(bool))
    if self.pool == "cls":
      pooled_BD = h_BLD[:, 0]
    else:
      weights = (jnp.ones(h_BLD.shape[:2], h_BLD.dtype) if mask_BL is None
                 else mask_BL.astype(h_BLD.dtype))
      pooled_BD = (jnp.einsum("bld,bl->bd", h_BLD, weights)
                   / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0))
    return self.head(pooled_BD).astype(jnp.float32), routings
