"""Dispatchers by name, with what each can do: `get(name)` -> Dispatcher; `register(d)` adds one.

    y_TD, metrics = dispatcher.run(routing, x_TD, expert_params, experts, capacity_factor=1.25)
    dispatcher.drops_tokens, dispatcher.supports_soft, dispatcher.merge_groups
    dispatcher.expert_parallel(ep=4, expert_axis="expert", model_axis="model", exchange="auto")

An open registry like the routers': a dispatcher registered here can be chosen by name in a
config (`config.model.dispatcher`), and its capabilities, not its name, decide how the layer
and the expert-parallel code use it.
"""
from __future__ import annotations

from moe_jax.dispatch import dropless, einsum, expert_parallel, sort
from moe_jax.dispatch.base import Dispatcher, expert_capacity, position_in_expert

_DISPATCHERS: dict[str, Dispatcher] = {}
DEFAULT = "sort"


def register(dispatcher: Dispatcher) -> Dispatcher:
  """Registers `dispatcher` under its name; another one under a taken name is an error."""
  if not isinstance(dispatcher, Dispatcher):
    raise ValueError(f"register() takes a Dispatcher, got {dispatcher!r}")
  taken = _DISPATCHERS.get(dispatcher.name)
  if taken is not None and taken is not dispatcher:
    raise ValueError(f"dispatcher {dispatcher.name!r} is already registered")
  _DISPATCHERS[dispatcher.name] = dispatcher
  return dispatcher


def names() -> list[str]:
  return sorted(_DISPATCHERS)


def get(name: str) -> Dispatcher:
  if name not in _DISPATCHERS:
    raise ValueError(f"unknown dispatcher {name!r}; allowed: {', '.join(names())}")
  return _DISPATCHERS[name]


# The built-in ones, with their expert-parallel versions.
register(sort.DISPATCHER._replace(expert_parallel=expert_parallel.capacity_exchange("sort")))
register(einsum.DISPATCHER._replace(expert_parallel=expert_parallel.capacity_exchange("einsum")))
register(dropless.DISPATCHER._replace(expert_parallel=expert_parallel.dropless_exchange))

__all__ = ["DEFAULT", "Dispatcher", "expert_capacity", "get", "names", "position_in_expert",
           "register"]
