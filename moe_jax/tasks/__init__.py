"""Tasks by name: `get(name)` -> Task; `register(task)` adds one (see tasks/base.py).

    task = moe_jax.tasks.get(run.task)
    model = task.build_model(run, mesh, nnx.Rngs(run.seed))

Importing this package registers every built-in task (moe_jax/tasks/registry.py).
"""
from __future__ import annotations

from moe_jax.tasks.base import (EvalContext, RunServices, Section, Task, TaskData, TaskEval,
                                provide_run_services, run_services)
from moe_jax.tasks.registry import get, names, register, sections

# Built-in tasks register themselves on import.
from moe_jax.tasks import classification, distill, lm  # noqa: F401

__all__ = ["EvalContext", "RunServices", "Section", "Task", "TaskData", "TaskEval", "get",
           "names", "provide_run_services", "register", "run_services", "sections"]
