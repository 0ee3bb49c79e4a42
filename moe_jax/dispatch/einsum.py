"""`einsum`: the reference dispatcher. One-hot dispatch/combine tensors [T,E,C], two einsums.

Simplest and obviously correct; memory and time grow with T*E*C, so it is for tests, small
models and soft MoE (whose dense weights are already [T,E,S]). Every other path is tested
against it. Its priority rule is a cumulative count in list order, written independently of
moe_jax.dispatch.slots' stable sort (which every other path uses), so that the two check each
other.

Axis letters: T tokens, D model dim, E experts, C capacity (S slots for soft MoE), N assignments.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.dispatch.base import Dispatcher
from moe_jax.dispatch.slots import dropped_fraction, expert_capacity


def dense_weights(routing, capacity_factor: float):
  """(dispatch_TEC, combine_TEC, metrics) for any Routing; soft MoE passes its own through."""
  if routing.is_soft:
    return routing.dispatch_weights, routing.combine_weights, {"dropped_fraction": jnp.zeros(())}
  num_tokens, num_experts = routing.num_tokens, routing.num_experts
  capacity = expert_capacity(routing.num_assignments, num_experts, capacity_factor)
  onehot_NE = jax.nn.one_hot(routing.expert, num_experts, dtype=jnp.int32) * routing.valid[:, None]
  position_N = jnp.sum((jnp.cumsum(onehot_NE, axis=0) - 1) * onehot_NE, axis=1)
  kept_N = routing.valid & (position_N < capacity)
  slot_NEC = (onehot_NE[:, :, None] * jax.nn.one_hot(position_N, capacity, dtype=jnp.int32)[:, None]
              * kept_N[:, None, None]).astype(routing.weight.dtype)
  token_NT = jax.nn.one_hot(routing.token, num_tokens, dtype=slot_NEC.dtype)
  dispatch_TEC = jnp.einsum("nt,nec->tec", token_NT, slot_NEC)
  combine_TEC = jnp.einsum("nt,nec->tec", token_NT, slot_NEC * routing.weight[:, None, None])
  return dispatch_TEC, combine_TEC, {"dropped_fraction": dropped_fraction(routing.valid, kept_N)}


def pack(routing, x_TD, *, capacity_factor: float = 1.25):
  dispatch_TEC, combine_TEC, metrics = dense_weights(routing, capacity_factor)
  x_ECD = jnp.einsum("tec,td->ecd", dispatch_TEC.astype(x_TD.dtype), x_TD)
  return x_ECD, (combine_TEC, metrics)


def unpack(routing, y_ECD, carry, out_dtype):
  del routing
  combine_TEC, metrics = carry
  y_TD = jnp.einsum("tec,ecd->td", combine_TEC.astype(y_ECD.dtype), y_ECD)
  return y_TD.astype(out_dtype), metrics


DISPATCHER = Dispatcher.from_halves("einsum", pack, unpack, supports_soft=True, drops_tokens=True)
run = DISPATCHER.run
