"""Routers by name: `register(name)` decorates a factory, `get(name, **options)` builds one."""
from __future__ import annotations

import inspect
from typing import Callable

from moe_jax.routing.base import Router

_FACTORIES: dict[str, Callable[..., Router]] = {}


def register(name: str):
  """Decorator: registers `factory(*, num_experts, **options) -> Router` under `name`."""
  def decorate(factory):
    if name in _FACTORIES and _FACTORIES[name] is not factory:
      raise ValueError(f"router {name!r} is already registered")
    _FACTORIES[name] = factory
    return factory
  return decorate


def names() -> list[str]:
  """Registered router names, sorted."""
  return sorted(_FACTORIES)


def options(name: str) -> dict[str, object]:
  """The options a router takes, with their defaults (inspect.Parameter.empty if required)."""
  params = inspect.signature(_factory(name)).parameters
  return {p.name: p.default for p in params.values() if p.kind == p.KEYWORD_ONLY}


def _factory(name: str):
  if name not in _FACTORIES:
    raise ValueError(f"unknown router {name!r}; allowed: {', '.join(names())}")
  return _FACTORIES[name]


def get(name: str, **kwargs) -> Router:
  """Builds router `name`; unknown names and options raise ValueError listing what is allowed."""
  allowed = options(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"router {name!r} got unknown option(s) {unknown}; allowed: "
                     + ", ".join(allowed))
  missing = [k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in kwargs]
  if missing:
    raise ValueError(f"router {name!r} needs option(s) {missing}")
  return _FACTORIES[name](**kwargs)
