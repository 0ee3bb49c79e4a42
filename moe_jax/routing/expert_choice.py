"""`expert_choice`: each expert picks its top-C tokens (Zhou et al. 2022). N = E*C.

Perfectly balanced by construction, but a token's experts depend on the other tokens in the
group, including later ones: not causal-safe (a decoder can learn to cheat through it).

Axis letters: T tokens, D model dim, E experts, C tokens per expert.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from moe_jax.routing import losses
from moe_jax.routing.base import ST_MOE_Z_LOSS, Router, sparse_routing
from moe_jax.routing.linear import check_common, init_linear, linear_logits
from moe_jax.routing.registry import register
from moe_jax.validation import check_float


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float) -> int:
  """C = ceil(capacity_factor * T / E), at least 1 and at most T."""
  return max(1, min(num_tokens, math.ceil(capacity_factor * num_tokens / num_experts)))


@register("expert_choice")
def expert_choice(*, num_experts: int, capacity_factor: float = 2.0,
                  init_scale: float = 1.0) -> Router:
  """capacity_factor c: each expert takes C = ceil(c*T/E) tokens, so a token gets c experts on
  average (the paper's default c=2 matches top-2 compute)."""
  owner = "router 'expert_choice'"
  check_common(owner, num_experts, init_scale=init_scale)
  check_float("capacity_factor", capacity_factor, low=0.0, low_inclusive=False, owner=owner)

  def init(rng, d_model):
    return {"params": {"w": init_linear(rng, d_model, num_experts, init_scale)}, "state": {}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng, train
    num_tokens = x_TD.shape[0]
    capacity = expert_capacity(num_tokens, num_experts, capacity_factor)
    logits_TE = linear_logits(variables["params"]["w"], x_TD)
    probs_TE = jax.nn.softmax(logits_TE, axis=-1)
    weight_EC, token_EC = jax.lax.top_k(probs_TE.T, capacity)
    return sparse_routing(
        token_EC.reshape(-1), jnp.repeat(jnp.arange(num_experts), capacity),
        weight_EC.reshape(-1), jnp.ones((num_experts * capacity,), bool),
        num_tokens=num_tokens, num_experts=num_experts, probs_TE=probs_TE, logits_TE=logits_TE,
        aux_losses={"z_loss": losses.router_z_loss(logits_TE)},
        new_state=variables.get("state", {}))

  return Router(init, route, "expert_choice", num_experts, causal_safe=False,
                loss_weights={"z_loss": ST_MOE_Z_LOSS})
