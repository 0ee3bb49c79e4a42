"""Token-choice top-k routers: `topk` (Switch k=1, GShard/Mixtral k=2) and `bias_balanced`
(DeepSeek-V3's auxiliary-loss-free balancing).

Axis letters: T tokens, D model dim, E experts, K experts per token.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from moe_jax.routing import deepseek, losses
from moe_jax.routing.base import (ST_MOE_Z_LOSS, SWITCH_BALANCE, Router, compute_dtype,
                                  token_choice_routing)
from moe_jax.routing.linear import (check_common, check_weight_learns, init_linear,
                                    linear_logits, require_rng)
from moe_jax.routing.registry import register
from moe_jax.routing.wrappers import with_input_jitter
from moe_jax.validation import check_choice, check_float

ORDERS = ("softmax_topk", "topk_softmax")


@register("topk")
def topk(*, num_experts: int, k: int = 1, order: str = "softmax_topk",
         renormalize: bool = False, jitter_eps: float = 0.0, noisy_gating: bool = False,
         init_scale: float = 1.0, batch_prioritized: bool = False,
         bias: bool = False) -> Router:
  """Token-choice top-k (Shazeer et al. 2017; GShard k=2; Switch k=1; Mixtral).

  order: 'softmax_topk' takes the k largest softmax probabilities as weights (Switch, GShard;
    `renormalize` rescales them to sum to 1); 'topk_softmax' takes the softmax over the k largest
    logits (Mixtral; equal to softmax_topk with renormalisation).
  jitter_eps: Switch's multiplicative jitter, x * U(1-eps, 1+eps), in training only (the
    `with_input_jitter` wrapper, which composes with any router).
  noisy_gating: Shazeer's noisy top-k, logits + N(0,1) * softplus(x @ w_noise), in training only.
  batch_prioritized: V-MoE's batch-prioritised routing (Riquelme et al. 2021): under a capacity,
    the tokens with the highest top-1 probability keep their slots first (at every rank k)
    instead of the earliest ones. A token's drops then depend on later tokens: not causal-safe.
  bias: logits = x @ w + b (a learned per-expert bias, zero at init; some checkpoints have one).
  """
  owner = "router 'topk'"
  check_common(owner, num_experts, k, init_scale)
  check_choice("order", order, ORDERS, owner=owner)
  check_weight_learns(owner, k, renormalize, order=order)
  check_float("jitter_eps", jitter_eps, low=0.0, high=1.0, owner=owner)   # before tracing

  def init(rng, d_model):
    params = {"w": init_linear(rng, d_model, num_experts, init_scale)}
    if bias:
      params["b"] = jnp.zeros((num_experts,), jnp.float32)
    if noisy_gating:  # Shazeer et al. initialise the noise weights to zero
      params["w_noise"] = jnp.zeros_like(params["w"])
    return {"params": params, "state": {}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids
    params = variables["params"]
    if train and noisy_gating:
      require_rng("topk", rng, "noisy_gating is set")
    x_TD = x_TD.astype(compute_dtype(x_TD))
    logits_TE = linear_logits(params["w"], x_TD)
    if bias:
      logits_TE = logits_TE + params["b"]
    if train and noisy_gating:
      noise_std_TE = jax.nn.softplus(linear_logits(params["w_noise"], x_TD))
      logits_TE = logits_TE + noise_std_TE * jax.random.normal(rng, logits_TE.shape,
                                                               logits_TE.dtype)
    probs_TE = jax.nn.softmax(logits_TE, axis=-1)
    if order == "softmax_topk":
      weight_TK, expert_TK = jax.lax.top_k(probs_TE, k)
      if renormalize:
        weight_TK = weight_TK / weight_TK.sum(-1, keepdims=True)
    else:
      top_logits_TK, expert_TK = jax.lax.top_k(logits_TE, k)
      weight_TK = jax.nn.softmax(top_logits_TK, axis=-1)
    routing = token_choice_routing(
        expert_TK, weight_TK, num_experts=num_experts, probs_TE=probs_TE, logits_TE=logits_TE,
        priority_T=probs_TE.max(-1) if batch_prioritized else None)
    aux = {
        "load_balancing": losses.load_balancing_loss(probs_TE, routing.expert, routing.valid),
        "z_loss": losses.router_z_loss(logits_TE),
        "importance": losses.importance_loss(routing.combine_matrix()),
    }
    return routing.replace(aux_losses=aux, new_state=variables.get("state", {}))

  router = Router(init, route, "topk", num_experts, causal_safe=not batch_prioritized,
                  loss_weights={"load_balancing": SWITCH_BALANCE, "z_loss": ST_MOE_Z_LOSS,
                                "importance": 0.0})
  return with_input_jitter(router, jitter_eps)


@register("bias_balanced")
def bias_balanced(*, num_experts: int, k: int = 2, score: str = "sigmoid",
                  bias_update_rate: float = 1e-3, renormalize: bool = True,
                  init_scale: float = 1.0) -> Router:
  """Top-k with auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-V3).

  A per-expert bias is added to the scores for *selection only*; the combine weights are the
  unbiased scores (renormalised over the chosen k by default, as DeepSeek-V3 does with sigmoid
  scores). After each training step the bias moves by `bias_update_rate` towards balance:
  down for experts above the mean load, up for those below. The bias is router state.
  """
  owner = "router 'bias_balanced'"
  check_common(owner, num_experts, k, init_scale)
  check_weight_learns(owner, k, renormalize)
  check_choice("score", score, ("sigmoid", "softmax"), owner=owner)
  check_float("bias_update_rate", bias_update_rate, low=0.0, owner=owner)

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng
    routing, _, probs_TE = deepseek.biased_topk(
        variables, x_TD, k=k, score=score, num_groups=1, top_groups=1, renormalize=renormalize,
        routed_scaling_factor=1.0, bias_update_rate=bias_update_rate, train=train)
    aux = {"load_balancing": losses.load_balancing_loss(probs_TE, routing.expert, routing.valid)}
    return routing.replace(aux_losses=aux)

  init = partial(deepseek.init_biased, num_experts=num_experts, init_scale=init_scale)
  return Router(init, route, "bias_balanced", num_experts, causal_safe=True,
                # auxiliary-loss-free: the Switch loss is reported, not trained on
                loss_weights={"load_balancing": 0.0})
