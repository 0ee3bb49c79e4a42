"""The task contract: what the trainer and the evaluator need to know about a kind of run.

A task is a small named tuple of pure functions, as a router is: the trainer and the evaluator
call these and never ask which task they hold. `lm` (next-token prediction) and
`classification` are the built-in ones; a new training mode (distillation, say) is one new
module that builds a `Task` and registers it.

Shapes in the batches the functions exchange: B batch, L length, C classes.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from flax import nnx


class Section(NamedTuple):
  """A config section a task owns, `config.<name>.*`: the task's options. The config schema
  is the run layer's sections plus every registered task's (moe_jax/config.py), so a task with
  options is one new module and no edit of the central schema."""
  name: str
  # a frozen dataclass: the fields, their types and defaults (the schema, written once)
  schema: type
  # (the section's dataclass instance) -> it, checked; errors name config.<name>.<field>
  check: Callable[[Any], Any] = lambda options: options


class TaskData(NamedTuple):
  """What a task reads: its checks of config.data and its batches."""
  # (data: DataConfig, model: TransformerConfig, options) -> positions of one example, where
  # options maps every task section's name to its checked dataclass; errors name the field
  check: Callable[..., int]
  # (data) -> the dataset whose training text a SentencePiece tokenizer is trained on
  text_source: Callable[..., str]
  # (run, tokenizer, *, batch_size, seed, shard_index, shard_count) -> resumable grain iterator
  train_iterator: Callable[..., Any]
  # (run, tokenizer) -> the validation split, read once per run
  validation: Callable[..., Any]
  # (run, tokenizer, data, *, batch_size, shard_index, shard_count) -> host batches
  eval_batches: Callable[..., Any]


class TaskEval(NamedTuple):
  """How a task is evaluated and reported."""
  # (model, batch) -> (sums over the batch's examples, routings); jitted by the evaluator
  sums: Callable[..., tuple]
  # (sums over the split: dict of float64 arrays) -> headline metrics (loss, accuracy, ...)
  summarize: Callable[[dict], dict]
  # (metrics) -> a few words for the final log line, e.g. 'bits/byte 2.0180'
  headline: Callable[[dict], str]
  # (context: EvalContext) -> what only `evaluate` reports (baselines, samples, ...)
  extras: Callable[..., dict]
  # (result, workdir) -> the lines `python -m moe_jax.evaluate` prints
  report: Callable[..., str]
  # (result, workdir, metrics_records) -> names of the plots written into workdir
  plots: Callable[..., list]


class Task(NamedTuple):
  name: str
  causal: bool
  data: TaskData
  # (run, mesh, rngs) -> the nnx model
  build_model: Callable[..., Any]
  # (model, batch, *, train, rngs) -> (loss, metrics, routings); the trainer adds aux losses
  loss: Callable[..., tuple]
  eval: TaskEval
  # the nnx filter of what the optimizer trains (a distilled student: not the teacher)
  trainable: Any = nnx.Param
  # (run, model, mesh) -> None: fills a freshly built model before a run's first step (a
  # distilled student's frozen teacher); not called when a checkpoint is restored
  initialize: Callable[..., None] = lambda run, model, mesh: None
  # config paths (dotted) that `initialize` chooses when the config leaves them None (the
  # teacher step distilled from); a resume that leaves them None keeps the recorded choice
  chosen_at_start: tuple[str, ...] = ()
  # the config sections this task owns (its options); a run reads them as run.options[name]
  sections: tuple[Section, ...] = ()


class EvalContext(NamedTuple):
  """What `evaluate_extras` may use: the restored run and its compiled eval step."""
  run: Any
  graphdef: Any
  state: Any
  mesh: Any
  tokenizer: Any
  data: Any            # task.data.validation(run, tokenizer)
  eval_step: Callable  # jitted (state, global batch) -> sums and per-layer routing metrics


class RunServices(NamedTuple):
  """What a task may ask of the run layer above it: opening another run (the distill task's
  teacher). Tasks sit below config and run setup and import neither (tests/test_layering.py);
  `moe_jax.run_setup` provides these when it is imported, as a task registers itself into
  the registry that run setup reads."""
  # (workdir, overrides) -> the validated RunConfig of the run in `workdir` on this machine;
  # FileNotFoundError if there is none (run_setup.open_run)
  open_run: Callable[..., Any]
  # (run, workdir, mesh, step) -> (graphdef, state, step) of a checkpoint, for inference
  # (run_setup.restore_for_eval)
  restore_for_eval: Callable[..., tuple]


_SERVICES: list[RunServices] = []


def provide_run_services(services: RunServices) -> None:
  """Called by moe_jax.run_setup on import; the latest call wins."""
  _SERVICES[:] = [services]


def run_services() -> RunServices:
  if not _SERVICES:
    raise RuntimeError("no run services: import moe_jax.run_setup (it provides them) before "
                       "building or initialising a task that opens another run")
  return _SERVICES[0]
