"""Dispatchers by name, with what each can do: `get(name)` -> Dispatcher; `register(d)` adds one.

    y_TD, metrics = dispatcher.run(routing, x_TD, expert_params, experts, capacity_factor=1.25)
    x_ECD, carry = dispatcher.pack(routing, x_TD, capacity_factor=1.25)   # where it has halves
    dispatcher.drops_tokens, dispatcher.supports_soft, dispatcher.merge_groups
    expert_parallel.make(dispatcher, ep=4)   # its exchange, inside shard_map

An open registry like the routers': a dispatcher registered here can be chosen by name in a
config (`config.model.dispatcher`), and its capabilities, not its name, decide how the layer
and the expert-parallel code use it.
"""
from __future__ import annotations

from moe_jax.dispatch import dropless, einsum, expert_parallel, sort
from moe_jax.dispatch.base import Dispatcher
from moe_jax.dispatch.slots import expert_capacity, position_in_expert
from moe_jax.registry import Registry

_DISPATCHERS: Registry[Dispatcher] = Registry("dispatcher")
DEFAULT = "sort"


def register(dispatcher: Dispatcher) -> Dispatcher:
  """Registers `dispatcher` under its name; another one under a taken name is an error."""
  if not isinstance(dispatcher, Dispatcher):
    raise ValueError(f"register() takes a Dispatcher, got {dispatcher!r}")
  return _DISPATCHERS.add(dispatcher.name, dispatcher)


def names() -> list[str]:
  return _DISPATCHERS.names()


def get(name: str) -> Dispatcher:
  return _DISPATCHERS.get(name)


# The built-in ones. sort and einsum are halves, so their expert-parallel version is the one
# exchange between them; dropless (ragged rows, no [E, C, D] buffer) brings its own.
register(sort.DISPATCHER)
register(einsum.DISPATCHER)
register(dropless.DISPATCHER._replace(expert_parallel=expert_parallel.dropless_exchange))

__all__ = ["DEFAULT", "Dispatcher", "expert_capacity", "get", "names", "position_in_expert",
           "register"]
