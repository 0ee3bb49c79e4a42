"""Tasks by name, as `moe_jax.routing.registry` holds routers: a task module registers its
`Task` here, and `moe_jax.tasks` (the package) loads the built-in ones.

Its own module, not the package's `__init__`: the built-in task modules import `register` from
here, so they never import the package that imports them (tests/test_layering.py).
"""
from __future__ import annotations

from moe_jax.tasks.base import Section, Task

_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Registers `task` under `task.name`; another task under a taken name is an error, as is a
  config section another task declares with a different schema."""
  if task.name in _TASKS and _TASKS[task.name] is not task:
    raise ValueError(f"task {task.name!r} is already registered")
  taken = sections()
  for section in task.sections:
    if section.name in taken and taken[section.name].schema is not section.schema:
      raise ValueError(f"task {task.name!r}: config section {section.name!r} is already "
                       "declared by another task with another schema")
  _TASKS[task.name] = task
  return task


def names() -> list[str]:
  return sorted(_TASKS)


def get(name: str) -> Task:
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; allowed: {', '.join(names())}")
  return _TASKS[name]


def sections() -> dict[str, Section]:
  """Every registered task's config sections by name (tasks may share one, e.g. a variant of
  a task declaring its parent's)."""
  return {s.name: s for task in _TASKS.values() for s in task.sections}
