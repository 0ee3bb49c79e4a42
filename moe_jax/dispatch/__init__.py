"""Dispatchers by name: `get(name)` -> Dispatcher(name, run, supports_soft).

    y_TD, metrics = dispatcher.run(routing, x_TD, expert_params, experts, capacity_factor=1.25)
"""
from __future__ import annotations

from moe_jax.dispatch import dropless, einsum, sort
from moe_jax.dispatch.base import Dispatcher, expert_capacity, position_in_expert

_DISPATCHERS = {d.name: d for d in (dropless.DISPATCHER, einsum.DISPATCHER, sort.DISPATCHER)}
DEFAULT = "sort"


def names() -> list[str]:
  return sorted(_DISPATCHERS)


def get(name: str) -> Dispatcher:
  if name not in _DISPATCHERS:
    raise ValueError(f"unknown dispatcher {name!r}; allowed: {', '.join(names())}")
  return _DISPATCHERS[name]


__all__ = ["DEFAULT", "Dispatcher", "expert_capacity", "get", "names", "position_in_expert"]
