"""The dispatcher contract. A dispatcher moves tokens to experts and back; it never decides
routing.

    run(routing, x_TD, expert_params, experts, *, capacity_factor[, num_groups]) -> (y_TD, metrics)
    y_t = sum over kept assignments n of token t: weight_n * FFN_{expert_n}(x_t).

Most dispatchers are two halves around the experts (vmoe's dispatch / combine):

    x_ECD, carry = pack(routing, x_TD, *, capacity_factor, num_groups)   # tokens -> buffers
    y_ECD = experts.apply(expert_params, x_ECD)                           # or: exchanged first
    y_TD, metrics = unpack(routing, y_ECD, carry, out_dtype)              # buffers -> tokens

`x_ECD` holds each expert's rows (E experts, any row count C, D model dim); `carry` is what
unpack needs (a slot plan, combine weights). A dispatcher made `from_halves` gets `run` from
them, and expert parallelism from them too: moe_jax.dispatch.expert_parallel cuts the [E, C, D]
buffer into one piece per device and puts its all-to-all between the halves, for any such
dispatcher through one code path. A dispatcher whose experts do not see an [E, C, D] buffer
(dropless's ragged rows) brings `run` and its own `expert_parallel` factory instead.

Capacity and the drop rule: moe_jax.dispatch.slots.
"""
from __future__ import annotations

from typing import Callable, NamedTuple


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
  # A factory of its version for inside shard_map with experts split over the expert axis:
  # (ep=, expert_axis=, model_axis=, exchange=) -> Dispatcher. None: the exchange between its
  # halves if it has them (moe_jax.dispatch.expert_parallel.make), else not expert-parallel.
  expert_parallel: Callable | None = None
  # The halves (see above); None for a dispatcher that is only `run`.
  pack: Callable | None = None
  unpack: Callable | None = None

  @classmethod
  def from_halves(cls, name: str, pack: Callable, unpack: Callable, **capabilities):
    """A dispatcher whose `run` is pack -> experts -> unpack."""
    def run(routing, x_TD, expert_params, experts, **options):
      x_ECD, carry = pack(routing, x_TD, **options)
      return unpack(routing, experts.apply(expert_params, x_ECD), carry, x_TD.dtype)
    return cls(name, run, pack=pack, unpack=unpack, **capabilities)
