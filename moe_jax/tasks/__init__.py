"""Tasks by name: `get(name)` -> Task; `register(task)` adds one (see tasks/base.py).

    task = moe_jax.tasks.get(run.task)
    model = task.build_model(run, mesh, nnx.Rngs(run.seed))
"""
from __future__ import annotations

from moe_jax.tasks.base import EvalContext, Task

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


# Built-in tasks register themselves on import.
from moe_jax.tasks import classification, distill, lm  # noqa: E402,F401

__all__ = ["EvalContext", "Task", "get", "names", "register"]
