"""Tasks by name, as `moe_jax.routing.registry` holds routers: a task module registers its
`Task` here, and `moe_jax.tasks` (the package) loads the built-in ones.

Its own module, not the package's `__init__`: the built-in task modules import `register` from
here, so they never import the package that imports them (tests/test_layering.py).
"""
from __future__ import annotations

from moe_jax.registry import Registry
from moe_jax.tasks.base import Section, Task

_TASKS: Registry[Task] = Registry("task")


def register(task: Task) -> Task:
  """Registers `task` under `task.name`; another task under a taken name is an error, as is a
  config section another task declares with a different schema."""
  taken = sections()
  for section in task.sections:
    if section.name in taken and taken[section.name].schema is not section.schema:
      raise ValueError(f"task {task.name!r}: config section {section.name!r} is already "
                       "declared by another task with another schema")
  return _TASKS.add(task.name, task)


def names() -> list[str]:
  return _TASKS.names()


def get(name: str) -> Task:
  return _TASKS.get(name)


def sections() -> dict[str, Section]:
  """Every registered task's config sections by name (tasks may share one, e.g. a variant of
  a task declaring its parent's)."""
  return {s.name: s for task in _TASKS.values() for s in task.sections}
