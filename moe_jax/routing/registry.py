"""Routers by name: `register(name)` decorates a factory, `get(name, **options)` builds one."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from moe_jax.registry import Registry
from moe_jax.routing.base import Router

_FACTORIES: Registry[Callable[..., Router]] = Registry("router")


def register(name: str):
  """Decorator: registers `factory(*, num_experts, **options) -> Router` under `name`. The
  Router it returns carries its resolved options (every keyword of the factory's signature
  but num_experts, at the value given or its default) unless it sets them itself, so a
  factory does not write its options twice."""
  def decorate(factory):
    @functools.wraps(factory)
    def build(**kwargs):
      router = factory(**kwargs)
      if router.options is None:
        params = inspect.signature(factory).parameters.values()
        router = router._replace(options={
            p.name: kwargs.get(p.name, p.default) for p in params
            if p.kind == p.KEYWORD_ONLY and p.name != "num_experts"})
      return router
    return _FACTORIES.add(name, build)
  return decorate


def names() -> list[str]:
  """Registered router names, sorted."""
  return _FACTORIES.names()


def options(name: str) -> dict[str, object]:
  """The options a router takes, with their defaults (inspect.Parameter.empty if required)."""
  params = inspect.signature(_FACTORIES.get(name)).parameters
  return {p.name: p.default for p in params.values() if p.kind == p.KEYWORD_ONLY}


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
  return _FACTORIES.get(name)(**kwargs)
