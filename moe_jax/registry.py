"""A registry of named things (routers' factories, dispatchers, tasks): one helper, so every
registry refuses a taken name and names what is allowed in the same words.

    DISPATCHERS = Registry("dispatcher")
    DISPATCHERS.add("sort", sort.DISPATCHER)
    DISPATCHERS.get("nope")   # ValueError: unknown dispatcher 'nope'; allowed: dropless, sort
"""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def add(self, name: str, item: T) -> T:
    """Registers `item` under `name`; the same item again is harmless, another one an error."""
    taken = self._items.get(name)
    if taken is not None and taken is not item:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._items[name] = item
    return item

  def names(self) -> list[str]:
    return sorted(self._items)

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
    return self._items[name]

  def values(self) -> list[T]:
    return [self._items[n] for n in self.names()]

  def remove(self, name: str) -> None:
    """Unregisters `name` (tests that register a probe clean up with this)."""
    self._items.pop(name, None)
