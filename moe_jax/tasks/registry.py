"""Tasks by name, as `moe_jax.routing.registry` holds routers: a task module registers its
`Task` here, and `moe_jax.tasks` (the package) loads the built-in ones.

Its own module, not the package's `__init__`: the built-in task modules import `register` from
here, so they never import the package that imports them (tests/test_layering.py).
"""
from __future__ import annotations

from moe_jax.tasks.base import Task

_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Registers `task` under `task.name`; another task under a taken name is an error."""
  if task.name in _TASKS and _TASKS[task.name] is not task:
    raise ValueError(f"task {task.name!r} is already registered")
  _TASKS[task.name] = task
  return task


def names() -> list[str]:
  return sorted(_TASKS)


def get(name: str) -> Task:
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; allowed: {', '.join(names())}")
  return _TASKS[name]
