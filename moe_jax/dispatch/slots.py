"""Slots: the capacity and drop rule, and the gather/scatter between tokens and expert buffers.

Neutral ground for every dispatcher, the expert-parallel exchange and the layer (NLLB's
renormalisation after drops), so the rule that decides which assignment is dropped is written
once, here:

    C = ceil(capacity_factor * N / E), at least 1; an expert keeps its first C valid
    assignments in the Routing's priority (list) order and drops the later ones.

A `Plan` places each kept assignment in a slot of a [buckets, C] buffer (a bucket is an expert,
or an (expert, routing group) pair); `pack_slots` gathers the tokens into it and
`unpack_slots` scatter-adds the weighted outputs back. No [T, E, C] tensor: O(N log N) to plan,
O(E*C*D + N*D) memory.

Axis letters: T tokens, D model dim, E experts (or buckets), G groups, C capacity per group,
N assignments.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.validation import check_float


def expert_capacity(num_assignments: int, num_experts: int, capacity_factor: float) -> int:
  """C = ceil(capacity_factor * N / E), at least 1."""
  check_float("capacity_factor", capacity_factor, low=0.0, low_inclusive=False)
  return max(1, math.ceil(capacity_factor * num_assignments / num_experts))


def position_in_expert(expert_N, valid_N, num_experts: int):
  """Rank of each valid assignment among the earlier valid assignments to the same expert.

  By a stable sort on the expert id: O(N log N), no [N, E] tensor. Invalid entries get -1.
  """
  num = expert_N.shape[0]
  key_N = jnp.where(valid_N, expert_N, num_experts)       # invalid sort last
  order_N = jnp.argsort(key_N, stable=True)
  counts_E = jnp.zeros((num_experts + 1,), jnp.int32).at[key_N].add(1)
  starts_E = jnp.cumsum(counts_E) - counts_E
  rank_sorted_N = jnp.arange(num, dtype=jnp.int32) - starts_E[key_N[order_N]]
  rank_N = jnp.zeros((num,), jnp.int32).at[order_N].set(rank_sorted_N)
  return jnp.where(valid_N, rank_N, -1)


def kept_within_capacity(bucket_N, valid_N, num_buckets: int, capacity: int):
  """(position of each assignment in its bucket, whether it is kept): the drop rule."""
  position_N = position_in_expert(bucket_N, valid_N, num_buckets)
  return position_N, valid_N & (position_N < capacity)


def kept_assignments(routing, capacity_factor: float):
  """Which of the routing's assignments its experts' capacity keeps (one routing group)."""
  capacity = expert_capacity(routing.num_assignments, routing.num_experts, capacity_factor)
  return kept_within_capacity(routing.expert, routing.valid, routing.num_experts, capacity)[1]


def dropped_fraction(valid_N, kept_N):
  n_valid = valid_N.sum()
  n_dropped = n_valid - kept_N.sum()   # integer counts: exactly 0 when nothing drops
  return n_dropped.astype(jnp.float32) / jnp.maximum(n_valid, 1).astype(jnp.float32)


class Plan(NamedTuple):
  """Where each assignment went: slot_N (E*C if dropped), kept_N, and the assignment filling
  each slot (N for an empty slot)."""
  slot_N: jax.Array
  kept_N: jax.Array
  assignment_of_slot: jax.Array


def plan(bucket_N, valid_N, num_buckets: int, capacity: int) -> Plan:
  """Slots of a [num_buckets, capacity] buffer in priority order; late arrivals are dropped."""
  position_N, kept_N = kept_within_capacity(bucket_N, valid_N, num_buckets, capacity)
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
  dispatched alone: the same slots kept, the same dropped). Bucket e*G + g lies in expert e's
  rows, so the [E*G*C, D] buffer is the experts' [E, G*C, D] input with no transpose."""
  num_experts = routing.num_experts
  if routing.num_tokens % num_groups or routing.num_assignments % num_groups:
    raise ValueError(f"dispatch: {routing.num_tokens} tokens / {routing.num_assignments} "
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
  if num_groups == 1:
    return dropped_fraction(routing.valid, grouped.plan.kept_N)
  count = lambda m: jnp.zeros((num_groups,), jnp.int32).at[grouped.group_N].add(
      m.astype(jnp.int32))
  valid_G, kept_G = count(routing.valid), count(grouped.plan.kept_N)
  return ((valid_G - kept_G).astype(jnp.float32)
          / jnp.maximum(valid_G, 1).astype(jnp.float32)).mean()


def gather_slots(values_N, plan_: Plan, fill):
  """Per-slot copy of a per-assignment array ([N, ...] -> [slots, ...]); `fill` in empty slots."""
  pad = jnp.full((1,) + values_N.shape[1:], fill, values_N.dtype)
  return jnp.concatenate([values_N, pad])[plan_.assignment_of_slot]


def pack_slots(routing, x_TD, plan_: Plan):
  """The tokens each slot holds, [slots, D] (zero rows for empty slots): a gather."""
  x_pad = jnp.concatenate([x_TD, jnp.zeros((1, x_TD.shape[1]), x_TD.dtype)])
  token_N = jnp.where(plan_.kept_N, routing.token, routing.num_tokens)
  return x_pad[gather_slots(token_N, plan_, routing.num_tokens)]


def unpack_slots(routing, y_slots_D, plan_: Plan, out_dtype):
  """y_t = sum of weight_n * y[slot_n] over the kept assignments n of token t: a scatter-add."""
  y_pad = jnp.concatenate([y_slots_D, jnp.zeros((1, y_slots_D.shape[-1]), y_slots_D.dtype)])
  weight_N = jnp.where(plan_.kept_N, routing.weight, 0).astype(y_pad.dtype)
  y_TD = jnp.zeros((routing.num_tokens, y_slots_D.shape[-1]), out_dtype)
  return y_TD.at[routing.token].add((y_pad[plan_.slot_N] * weight_N[:, None]).astype(out_dtype))


def check_sparse(routing, name: str):
  if routing.is_soft:
    raise ValueError(f"dispatcher {name!r} cannot run soft MoE routings (tokens are mixed into "
                     "slots); use dispatcher='einsum'")
