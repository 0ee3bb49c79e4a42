"""`sort`: the default dispatcher. Rank assignments within their expert by a stable sort, drop
those past capacity, gather tokens into an [E,C,D] buffer, run all experts in one batched
matmul per projection, and scatter-add the weighted outputs back. Memory is O(E*C*D + N*D):
no [T,E,C] tensor.

Axis letters: T tokens, D model dim, E experts, C capacity, N assignments.
"""
from __future__ import annotations

import jax.numpy as jnp

from moe_jax.dispatch.base import (Dispatcher, dropped_fraction, expert_capacity,
                                   position_in_expert)


def slots(routing, capacity: int):
  """Buffer slot of every assignment (E*C for dropped ones) and which are kept."""
  position_N = position_in_expert(routing.expert, routing.valid, routing.num_experts)
  kept_N = routing.valid & (position_N < capacity)
  slot_N = jnp.where(kept_N, routing.expert * capacity + position_N,
                     routing.num_experts * capacity)
  return slot_N, kept_N


def run(routing, x_TD, expert_params, experts, *, capacity_factor: float = 1.25):
  if routing.is_soft:
    raise ValueError("dispatcher 'sort' cannot run soft MoE routings (tokens are mixed into "
                     "slots); use dispatcher='einsum'")
  num_tokens, num_experts = routing.num_tokens, routing.num_experts
  capacity = expert_capacity(routing.num_assignments, num_experts, capacity_factor)
  slot_N, kept_N = slots(routing, capacity)
  # Which token fills each slot (T = a zero row for empty slots): a gather, not a scatter.
  num_slots = num_experts * capacity
  token_of_slot = jnp.full((num_slots + 1,), num_tokens, jnp.int32).at[slot_N].set(routing.token)
  x_pad = jnp.concatenate([x_TD, jnp.zeros((1, x_TD.shape[1]), x_TD.dtype)])
  x_ECD = x_pad[token_of_slot[:num_slots]].reshape(num_experts, capacity, -1)
  y_ECD = experts.apply(expert_params, x_ECD)
  y_pad = jnp.concatenate([y_ECD.reshape(num_slots, -1), jnp.zeros((1, y_ECD.shape[-1]),
                                                                   y_ECD.dtype)])
  weight_N = jnp.where(kept_N, routing.weight, 0).astype(y_pad.dtype)
  y_TD = jnp.zeros_like(x_TD).at[routing.token].add(y_pad[slot_N] * weight_N[:, None])
  return y_TD, {"dropped_fraction": dropped_fraction(routing.valid, kept_N)}


DISPATCHER = Dispatcher("sort", run, supports_soft=False)
