"""`dense`: the classical mixture of experts (Jacobs et al. 1991) — every token goes to every
expert, weighted by a softmax over experts. N = T*E, listed expert-major.

Axis letters: T tokens, D model dim, E experts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing import losses
from moe_jax.routing.base import ST_MOE_Z_LOSS, Router, sparse_routing
from moe_jax.routing.linear import check_common, init_linear, linear_logits
from moe_jax.routing.registry import register


@register("dense")
def dense(*, num_experts: int, init_scale: float = 1.0) -> Router:
  """Softmax gate over all experts; every expert runs on every token."""
  check_common("router 'dense'", num_experts, init_scale=init_scale)

  def init(rng, d_model):
    return {"params": {"w": init_linear(rng, d_model, num_experts, init_scale)}, "state": {}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng, train
    logits_TE = linear_logits(variables["params"]["w"], x_TD)
    probs_TE = jax.nn.softmax(logits_TE, axis=-1)
    num_tokens = x_TD.shape[0]
    routing = sparse_routing(
        jnp.tile(jnp.arange(num_tokens), num_experts),
        jnp.repeat(jnp.arange(num_experts), num_tokens),
        probs_TE.T.reshape(-1), jnp.ones((num_tokens * num_experts,), bool),
        num_tokens=num_tokens, num_experts=num_experts, probs_TE=probs_TE, logits_TE=logits_TE,
        aux_losses={"z_loss": losses.router_z_loss(logits_TE),
                    "importance": losses.importance_loss(probs_TE)},
        new_state=variables.get("state", {}))
    return routing

  return Router(init, route, "dense", num_experts, causal_safe=True,
                loss_weights={"z_loss": ST_MOE_Z_LOSS, "importance": 0.0})
