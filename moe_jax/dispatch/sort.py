"""`sort`: the default dispatcher. Rank assignments within their expert by a stable sort, drop
those past capacity, gather tokens into an [E,C,D] buffer, run all experts in one batched
matmul per projection, and scatter-add the weighted outputs back. Memory is O(E*C*D + N*D):
no [T,E,C] tensor. (The plan, the gather and the scatter are moe_jax.dispatch.slots.)

The layer hands it every routing group at once (`merge_groups`): capacity stays per group,
because each (expert, group) pair is a bucket of the one sort, and bucket e*G + g lies in
expert e's rows, so the [E*G*C, D] buffer is the experts' [E, G*C, D] input with no transpose.
One dispatch instead of one per group under vmap, whose batched gathers and scatter-adds cost
the backward half as much again as the whole unbatched layer on CPU (benchmarks/README.md).

Axis letters: T tokens, D model dim, E experts, G groups, C capacity per group, N assignments.
"""
from __future__ import annotations

from moe_jax.dispatch import slots
from moe_jax.dispatch.base import Dispatcher


def pack(routing, x_TD, *, capacity_factor: float = 1.25, num_groups: int = 1):
  """num_groups: the routing's tokens are that many equal consecutive groups (the layer's
  merged routing groups), each with its own capacity. -> (x [E, G*C, D], the plan)."""
  slots.check_sparse(routing, "sort")
  grouped = slots.grouped_plan(routing, num_groups, capacity_factor)
  x_ECD = slots.pack_slots(routing, x_TD, grouped.plan).reshape(
      routing.num_experts, num_groups * grouped.capacity, -1)
  return x_ECD, (grouped, num_groups)


def unpack(routing, y_ECD, carry, out_dtype):
  grouped, num_groups = carry
  y_TD = slots.unpack_slots(routing, y_ECD.reshape(-1, y_ECD.shape[-1]), grouped.plan,
                            out_dtype)
  return y_TD, {"dropped_fraction": slots.grouped_dropped_fraction(routing, grouped,
                                                                   num_groups)}


DISPATCHER = Dispatcher.from_halves("sort", pack, unpack, supports_soft=False,
                                    drops_tokens=True, merge_groups=True)
run = DISPATCHER.run
