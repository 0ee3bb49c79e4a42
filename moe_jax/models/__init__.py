"""Model building blocks as Flax NNX modules, wrapping the pure functions of moe_jax.layer.

    from moe_jax.models import DecoderLM, EncoderClassifier, MoE, TransformerConfig
"""
from moe_jax.models.classifier import EncoderClassifier
from moe_jax.models.moe import MoE, MoEConfig, RouterState
from moe_jax.models.transformer import DecoderLM, Transformer, TransformerConfig, make_config

__all__ = ["DecoderLM", "EncoderClassifier", "MoE", "MoEConfig", "RouterState", "Transformer", "TransformerConfig",
           "make_config"]
