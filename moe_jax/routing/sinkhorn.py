"""`sinkhorn`: balanced assignment by Sinkhorn iterations (BASE layers, Lewis et al. 2021;
S-BASE, Clark et al. 2022).

In training the choice of experts is the top-k of the Sinkhorn-balanced assignment matrix (no
gradient), and the combine weights are the router's softmax probabilities of the chosen experts
(the gradient path). At evaluation it is plain top-k of the router, as the papers do. Balancing
looks at the whole group, later tokens included, so it is not causal-safe in training.

Axis letters: T tokens, D model dim, E experts, K experts per token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing import losses
from moe_jax.routing.base import ST_MOE_Z_LOSS, Router, token_choice_routing
from moe_jax.routing.linear import check_common, check_weight_learns, init_linear, linear_logits
from moe_jax.routing.registry import register
from moe_jax.validation import check_float, check_int


def sinkhorn_log(logits_TE, num_iters: int):
  """Log of the matrix exp(logits) rescaled so every expert (column) gets T/E of the mass and
  every token (row) a mass of 1, by `num_iters` alternating normalisations in log space."""
  num_tokens, num_experts = logits_TE.shape
  log_col_mass = jnp.log(num_tokens / num_experts)

  def body(_, log_p):
    log_p = log_p - jax.nn.logsumexp(log_p, axis=0, keepdims=True) + log_col_mass
    return log_p - jax.nn.logsumexp(log_p, axis=1, keepdims=True)

  return jax.lax.fori_loop(0, num_iters, body, logits_TE)


@register("sinkhorn")
def sinkhorn(*, num_experts: int, k: int = 1, num_iters: int = 20, temperature: float = 1.0,
             renormalize: bool = False, init_scale: float = 1.0) -> Router:
  """temperature: divides the logits before balancing (lower = closer to a hard assignment)."""
  owner = "router 'sinkhorn'"
  check_common(owner, num_experts, k, init_scale)
  check_int("num_iters", num_iters, low=1, owner=owner)
  check_float("temperature", temperature, low=0.0, low_inclusive=False, owner=owner)
  check_weight_learns(owner, k, renormalize)

  def init(rng, d_model):
    return {"params": {"w": init_linear(rng, d_model, num_experts, init_scale)}, "state": {}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng
    logits_TE = linear_logits(variables["params"]["w"], x_TD)
    probs_TE = jax.nn.softmax(logits_TE, axis=-1)
    if train:
      balanced_TE = sinkhorn_log(jax.lax.stop_gradient(logits_TE) / temperature, num_iters)
      _, expert_TK = jax.lax.top_k(balanced_TE, k)
    else:
      _, expert_TK = jax.lax.top_k(logits_TE, k)
    weight_TK = jnp.take_along_axis(probs_TE, expert_TK, axis=-1)
    if renormalize:
      weight_TK = weight_TK / weight_TK.sum(-1, keepdims=True)
    return token_choice_routing(expert_TK, weight_TK, num_experts=num_experts,
                                probs_TE=probs_TE, logits_TE=logits_TE,
                                aux_losses={"z_loss": losses.router_z_loss(logits_TE)},
                                new_state=variables.get("state", {}))

  return Router(init, route, "sinkhorn", num_experts, causal_safe=False,
                loss_weights={"z_loss": ST_MOE_Z_LOSS})
