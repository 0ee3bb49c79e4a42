"""Model building blocks as Flax NNX modules, wrapping the pure functions of moe_jax.layer.

    from moe_jax.models import DecoderLM, MoE, TransformerConfig
"""
from moe_jax.models.moe import MoE, RouterState
from moe_jax.models.transformer import DecoderLM, Transformer, TransformerConfig

__all__ = ["DecoderLM", "MoE", "RouterState", "Transformer", "TransformerConfig"]
