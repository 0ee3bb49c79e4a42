"""`sort`: the default dispatcher. Rank assignments within their expert by a stable sort, drop
those past capacity, gather tokens into an [E,C,D] buffer, run all experts in one batched
matmul per projection, and scatter-add the weighted outputs back. Memory is O(E*C*D + N*D):
no [T,E,C] tensor.

The layer hands it every routing group at once (`merge_groups`): capacity stays per group,
because each (expert, group) pair is a bucket of the one sort, and bucket e*G + g lies in
expert e's rows, so the [E*G*C, D] buffer is the experts' [E, G*C, D] input with no transpose.
One dispatch instead of one per group under vmap, whose batched gathers and scatter-adds cost
the backward half as much again as the whole unbatched layer on CPU (benchmarks/README.md).

`pack` and `unpack` are the two halves around the experts; the expert-parallel dispatcher puts
its all-to-all exchange between them.

Axis letters: T tokens, D model dim, E experts (or buckets), G groups, C capacity per group,
N assignments.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.dispatch.base import (Dispatcher, dropped_fraction, expert_capacity,
                                   position_in_expert)


class Plan(NamedTuple):
  """Where each assignment went: slot_N (E*C if dropped), kept_N, and the assignment filling
  each slot (N for an empty slot)."""
  slot_N: jax.Array
  kept_N: jax.Array
  assignment_of_slot: jax.Array


def plan(bucket_N, valid_N, num_buckets: int, capacity: int) -> Plan:
  """Slots of a [num_buckets, capacity] buffer in priority order; late arrivals are dropped."""
  position_N = position_in_expert(bucket_N, valid_N, num_buckets)
  kept_N = valid_N & (position_N < capacity)
  num_slots = num_buckets * capacity
  slot_N = jnp.where(kept_N, bucket_N * capacity + position_N, num_slots)
  num = bucket_N.shape[0]
  assignment_of_slot = jnp.full((num_slots + 1,), num, jnp.int32).at[slot_N].set(
      jnp.arange(num, dtype=jnp.int32))[:num_slots]
  return Plan(slot_N, kept_N, assignment_of_slot)


class GroupedPlan(NamedTuple):
  """A plan over (expert, group) buckets: `plan` fills each expert's G*capacity rows."""
  plan: Plan
  capacity: int            # per (expert, group)
  group_N: jax.Array


def grouped_plan(routing, num_groups: int, capacity_factor: float) -> GroupedPlan:
  """Slots for a routing of `num_groups` equal consecutive token groups, each expert holding
  C = ceil(capacity_factor * N_group / E) assignments of every group (as if each group were
  dispatched alone: the same slots kept, the same dropped)."""
  num_experts = routing.num_experts
  if routing.num_tokens % num_groups or routing.num_assignments % num_groups:
    raise ValueError(f"sort: {routing.num_tokens} tokens / {routing.num_assignments} "
                     f"assignments do not split into {num_groups} equal groups")
  capacity = expert_capacity(routing.num_assignments // num_groups, num_experts,
                             capacity_factor)
  group_N = routing.token // (routing.num_tokens // num_groups)
  bucket_N = routing.expert * num_groups + group_N
  return GroupedPlan(plan(bucket_N, routing.valid, num_experts * num_groups, capacity),
                     capacity, group_N)


def grouped_dropped_fraction(routing, grouped: GroupedPlan, num_groups: int):
  """The mean over groups of each group's dropped fraction (what dispatching each group alone
  and averaging reports)."""
  count = lambda m: jnp.zeros((num_groups,), jnp.int32).at[grouped.group_N].add(
      m.astype(jnp.int32))
  valid_G, kept_G = count(routing.valid), count(grouped.plan.kept_N)
  return ((valid_G - kept_G).astype(jnp.float32)
          / jnp.maximum(valid_G, 1).astype(jnp.float32)).mean()


def gather_slots(values_N, plan_: Plan, fill):
  """Per-slot copy of a per-assignment array ([N, ...] -> [slots, ...]); `fill` in empty slots."""
  pad = jnp.full((1,) + values_N.shape[1:], fill, values_N.dtype)
  return jnp.concatenate([values_N, pad])[plan_.assignment_of_slot]


def pack(routing, x_TD, plan_: Plan):
  """The tokens each slot holds, [slots, D] (zero rows for empty slots): a gather."""
  x_pad = jnp.concatenate([x_TD, jnp.zeros((1, x_TD.shape[1]), x_TD.dtype)])
  token_N = jnp.where(plan_.kept_N, routing.token, routing.num_tokens)
  return x_pad[gather_slots(token_N, plan_, routing.num_tokens)]


def unpack(routing, y_slots_D, plan_: Plan, out_dtype):
  """y_t = sum of weight_n * y[slot_n] over the kept assignments n of token t: a scatter-add."""
  y_pad = jnp.concatenate([y_slots_D, jnp.zeros((1, y_slots_D.shape[-1]), y_slots_D.dtype)])
  weight_N = jnp.where(plan_.kept_N, routing.weight, 0).astype(y_pad.dtype)
  y_TD = jnp.zeros((routing.num_tokens, y_slots_D.shape[-1]), out_dtype)
  return y_TD.at[routing.token].add((y_pad[plan_.slot_N] * weight_N[:, None]).astype(out_dtype))


def check_sparse(routing, name: str):
  if routing.is_soft:
    raise ValueError(f"dispatcher {name!r} cannot run soft MoE routings (tokens are mixed into "
                     "slots); use dispatcher='einsum'")


def run(routing, x_TD, expert_params, experts, *, capacity_factor: float = 1.25,
        num_groups: int = 1):
  """num_groups: the routing's tokens are that many equal consecutive groups (the layer's
  merged routing groups), each with its own capacity."""
  check_sparse(routing, "sort")
  num_experts = routing.num_experts
  grouped = grouped_plan(routing, num_groups, capacity_factor)
  rows = num_groups * grouped.capacity
  x_ECD = pack(routing, x_TD, grouped.plan).reshape(num_experts, rows, -1)
  y_ECD = experts.apply(expert_params, x_ECD)
  y_TD = unpack(routing, y_ECD.reshape(num_experts * rows, -1), grouped.plan, x_TD.dtype)
  dropped = (dropped_fraction(routing.valid, grouped.plan.kept_N) if num_groups == 1 else
             grouped_dropped_fraction(routing, grouped, num_groups))
  return y_TD, {"dropped_fraction": dropped}


DISPATCHER = Dispatcher("sort", run, supports_soft=False, drops_tokens=True, merge_groups=True)
