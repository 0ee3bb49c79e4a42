"""The dispatcher contract and the pieces every dispatcher shares.

A dispatcher moves tokens to experts and back; it never decides routing.
    run(routing, x_TD, expert_params, experts, *, capacity_factor[, num_groups]) -> (y_TD, metrics)
y_t = sum over kept assignments n of token t: weight_n * FFN_{expert_n}(x_t).

Capacity: an expert holds C = ceil(capacity_factor * N / E) assignments; past that the *later*
assignments in the Routing's priority order are dropped (and counted in `dropped_fraction`).

Axis letters: T tokens, D model dim, E experts, C capacity, N assignments.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax.numpy as jnp

from moe_jax.validation import check_float


class Dispatcher(NamedTuple):
  """A dispatcher and what it can do: the layer and the expert-parallel code ask these
  capabilities, never the name."""
  name: str
  run: Callable
  supports_soft: bool  # only the einsum reference takes soft MoE's dense weights
  # True: the layer hands `run` every routing group at once (merged into one routing of G
  # equal consecutive token groups) with `num_groups=G`, instead of vmapping it over groups; a
  # capacity must then stay per group (sort: (expert, group) buckets). Batched gathers and
  # scatter-adds under vmap are slow (sort's backward: 1.5x on CPU, even for G = 1), vmap of
  # ragged_dot with unbatched weights is unavailable (jax<=0.10), and an expert-parallel
  # exchange per group costs G collectives instead of one.
  merge_groups: bool = False
  drops_tokens: bool = False   # has a capacity: assignments past it are dropped and counted
  # The factory of its version for inside shard_map with experts split over the expert axis:
  # (ep=, expert_axis=, model_axis=, exchange=) -> Dispatcher. None: not expert-parallel.
  expert_parallel: Callable | None = None


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


def dropped_fraction(valid_N, kept_N):
  n_valid = valid_N.sum()
  n_dropped = n_valid - kept_N.sum()   # integer counts: exactly 0 when nothing drops
  return n_dropped.astype(jnp.float32) / jnp.maximum(n_valid, 1).astype(jnp.float32)
