"""`soft`: Soft MoE (Puigcerver et al. 2023). Every slot is a convex mixture of all tokens in
the group and every token a convex mixture of all slot outputs. No token is dropped, nothing is
discrete; but a slot mixes later tokens into earlier ones, so it is not causal-safe.

Its Routing carries dense dispatch/combine weights instead of an assignment list (see base.py).

Axis letters: T tokens, D model dim, E experts, S slots per expert.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing.base import Router, Routing, compute_dtype, logit_metrics, soft_metrics
from moe_jax.routing.linear import check_common, init_linear
from moe_jax.routing.registry import register
from moe_jax.validation import check_int


def _l2_normalize(x, axis):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-6)


@register("soft")
def soft(*, num_experts: int, slots_per_expert: int = 1, normalize: bool = True,
         init_scale: float = 1.0) -> Router:
  """normalize: L2-normalise tokens and slot embeddings and learn a scalar scale, which the
  paper found necessary to keep the softmaxes from saturating as D grows."""
  owner = "router 'soft'"
  check_common(owner, num_experts, init_scale=init_scale)
  check_int("slots_per_expert", slots_per_expert, low=1, owner=owner)
  num_slots = num_experts * slots_per_expert

  def init(rng, d_model):
    params = {"phi": init_linear(rng, d_model, num_slots, init_scale)}
    if normalize:
      params["scale"] = jnp.ones((), jnp.float32)
    return {"params": params, "state": {}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng, train
    params = variables["params"]
    dtype = compute_dtype(x_TD)
    x_TD = x_TD.astype(dtype)
    phi_DX = params["phi"].astype(dtype)  # X = E*S slots
    if normalize:
      x_TD = _l2_normalize(x_TD, axis=-1)
      phi_DX = params["scale"].astype(dtype) * _l2_normalize(phi_DX, axis=0)
    logits_TX = x_TD @ phi_DX
    num_tokens = x_TD.shape[0]
    shape = (num_tokens, num_experts, slots_per_expert)
    dispatch_TES = jax.nn.softmax(logits_TX, axis=0).reshape(shape)  # each slot: mix of tokens
    combine_TES = jax.nn.softmax(logits_TX, axis=1).reshape(shape)   # each token: mix of slots
    return Routing(num_tokens=num_tokens, num_experts=num_experts,
                   dispatch_weights=dispatch_TES, combine_weights=combine_TES,
                   aux_losses={}, metrics={**soft_metrics(dispatch_TES, combine_TES),
                                                    **logit_metrics(logits_TX)},
                   new_state=variables.get("state", {}))

  return Router(init, route, "soft", num_experts, causal_safe=False,
                soft=True, loss_weights={})
