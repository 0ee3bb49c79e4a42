"""The simplest correct MoE layer, the floor the library's layer is held against.

softmax top-k -> stable argsort of the assignments by expert -> gather into an [E, C, D]
capacity buffer -> every expert in one batched matmul per projection -> weighted scatter-add.
One routing group of all tokens, no telemetry, no aux losses. Assignments are in moe_jax's
priority order (k-major: every token's first choice before any second choice), so with the
same parameters it computes what `moe_layer` with the topk router and the sort dispatcher
computes in one group (tests/test_naive_moe.py checks it, forward and gradients).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def naive_moe(params, x_TD, *, k: int, capacity_factor: float):
  """params: moe_layer's variables (topk router, gelu FFN experts w_in / w_out)."""
  num_tokens, d_model = x_TD.shape
  w_in, w_out = params["experts"]["w_in"], params["experts"]["w_out"]
  num_experts = w_in.shape[0]
  probs_TE = jax.nn.softmax(x_TD @ params["router"]["params"]["w"], axis=-1)
  weight_TK, expert_TK = jax.lax.top_k(probs_TE, k)
  expert_N, weight_N = expert_TK.T.reshape(-1), weight_TK.T.reshape(-1)      # k-major
  token_N = jnp.tile(jnp.arange(num_tokens), k)
  capacity = max(1, math.ceil(capacity_factor * num_tokens * k / num_experts))
  order = jnp.argsort(expert_N, stable=True)
  expert_sorted = expert_N[order]
  first_of_expert = jnp.searchsorted(expert_sorted, jnp.arange(num_experts))
  position = jnp.arange(expert_N.shape[0]) - first_of_expert[expert_sorted]
  keep = position < capacity
  slot = jnp.where(keep, expert_sorted * capacity + position, num_experts * capacity)
  token_sorted = token_N[order]
  x_ECD = (jnp.zeros((num_experts * capacity + 1, d_model), x_TD.dtype)
           .at[slot].set(x_TD[token_sorted])[:-1].reshape(num_experts, capacity, d_model))
  h_ECF = jax.nn.gelu(jnp.einsum("ecd,edf->ecf", x_ECD, w_in))
  y_ECD = jnp.einsum("ecf,efd->ecd", h_ECF, w_out)
  y_slot = jnp.concatenate([y_ECD.reshape(-1, d_model), jnp.zeros((1, d_model), y_ECD.dtype)])
  weight = jnp.where(keep, weight_N[order], 0.0)[:, None]
  return jnp.zeros_like(x_TD).at[token_sorted].add(y_slot[slot] * weight)
