"""`relu`: ReLU routing with an adaptively weighted L1 penalty (ReMoE, Wang et al. 2024).

Gates are relu(x @ w): a token uses the experts whose gate is positive, weighted by the gate —
fully differentiable, no top-k. An L1 penalty pushes gates to zero; its coefficient lambda is
router state and moves multiplicatively after every training step,
    lambda <- lambda * alpha ** sign(target_sparsity - sparsity),
so the fraction of zero gates settles at target_sparsity = 1 - k/E (k active experts on
average). `max_active` optionally caps the experts per token (top-m of the positive gates).

The aux loss `l1_sparsity` is reported already multiplied by the adaptive lambda, and the router
declares its training weight 1 (a config's aux_loss_weights.l1_sparsity overrides it); with `balanced_l1` each expert's L1 term is weighted by its share of
active gates, as ReMoE does, which also balances load.

Axis letters: T tokens, D model dim, E experts, M experts kept per token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing.base import Router, sparse_routing, token_choice_routing
from moe_jax.routing.linear import check_common, init_linear, linear_logits
from moe_jax.routing.registry import register
from moe_jax.validation import check_float, check_int


def l1_penalty(gates_TE, k: int, balanced: bool):
  """ReMoE's L1 term: mean over tokens of sum_e f_e * gate_te, f_e = E/(kT) * #active(e)."""
  num_tokens, num_experts = gates_TE.shape
  if balanced:
    active_E = jax.lax.stop_gradient((gates_TE > 0).sum(0).astype(gates_TE.dtype))
    f_E = num_experts / (k * num_tokens) * active_E
  else:
    f_E = jnp.ones((num_experts,), gates_TE.dtype)
  return jnp.sum(gates_TE * f_E) / num_tokens


@register("relu")
def relu(*, num_experts: int, k: int = 2, max_active: int | None = None,
         l1_init: float = 1e-8, l1_update_rate: float = 1.2, balanced_l1: bool = True,
         init_scale: float = 1.0) -> Router:
  """k: target active experts per token (sets target sparsity 1 - k/E). l1_init and
  l1_update_rate (alpha) are the paper's 1e-8 and 1.2."""
  owner = "router 'relu'"
  check_common(owner, num_experts, k, init_scale)
  if max_active is not None:
    check_int("max_active", max_active, low=1, high=num_experts, owner=owner)
  check_float("l1_init", l1_init, low=0.0, low_inclusive=False, owner=owner)
  check_float("l1_update_rate", l1_update_rate, low=1.0, low_inclusive=False, owner=owner)
  target_sparsity = 1.0 - k / num_experts

  def init(rng, d_model):
    return {"params": {"w": init_linear(rng, d_model, num_experts, init_scale)},
            "state": {"l1_coef": jnp.asarray(l1_init, jnp.float32)}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng
    logits_TE = linear_logits(variables["params"]["w"], x_TD)
    gates_TE = jax.nn.relu(logits_TE)
    num_tokens = gates_TE.shape[0]
    coef = variables["state"]["l1_coef"]
    sparsity = jnp.mean((gates_TE <= 0).astype(jnp.float32))
    if train:
      coef = coef * l1_update_rate ** jnp.sign(target_sparsity - sparsity)
    fields = dict(num_experts=num_experts, new_state={"l1_coef": coef}, logits_TE=logits_TE,
                  aux_losses={"l1_sparsity": variables["state"]["l1_coef"]
                              * l1_penalty(gates_TE, k, balanced_l1)})
    if max_active is None:
      routing = sparse_routing(
          jnp.tile(jnp.arange(num_tokens), num_experts),
          jnp.repeat(jnp.arange(num_experts), num_tokens), gates_TE.T.reshape(-1),
          gates_TE.T.reshape(-1) > 0, num_tokens=num_tokens, **fields)
    else:
      weight_TM, expert_TM = jax.lax.top_k(gates_TE, max_active)
      routing = token_choice_routing(expert_TM, weight_TM, valid_TK=weight_TM > 0, **fields)
    routing.metrics["sparsity"] = sparsity
    return routing

  return Router(init, route, "relu", num_experts, causal_safe=True,
                # lambda adapts in the router state; the loss enters the training loss at 1
                loss_weights={"l1_sparsity": 1.0})
