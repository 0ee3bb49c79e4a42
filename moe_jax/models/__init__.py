"""Model building blocks as Flax NNX modules, wrapping the pure functions of moe_jax.layer.

    from moe_jax.models import MoE
"""
from moe_jax.models.moe import MoE, RouterState

__all__ = ["MoE", "RouterState"]
