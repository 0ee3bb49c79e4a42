"""Evaluate a trained run: python -m moe_jax.evaluate --workdir DIR [--step N] [--text GLOB]
[--config.a.b=v ...]

Loads the run's latest accepted config (DIR/config.json and config_history.jsonl) and its
newest (or step N's) checkpoint, runs the task's validation pass and its extras, prints the
report, then writes DIR/eval.json and the plots: expert_load.png (load by layer and expert)
for every MoE model, and the task's own (language models: loss_curve.png from metrics.jsonl;
classifiers: confusion.png, class_expert_load.png). What each task reports is in
moe_jax/tasks/.

`--config.a.b=v` changes the run's config for this evaluation only (config.json is not
touched), e.g. `--config.mesh.data=1 --config.mesh.expert=1` to evaluate on one device a run
trained on eight, or `--config.data.eval_max_batches=0` for the whole validation split. A
change to the model is refused, naming the field, by the checkpoint's own check.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np

from moe_jax import config as config_lib, interrupts, run_setup, tasks
from moe_jax.eval_step import evaluate_split, make_eval_step, nest_layers
from moe_jax.parallel.mesh import make_mesh
from moe_jax.tasks.base import EvalContext


def evaluate(config=None, workdir=".", *, step: int | None = None, plots: bool = True,
             write: bool = True, overrides=()) -> dict:
  """Evaluates checkpoint `step` (default: newest) of the run in `workdir`; `config` defaults
  to the run's own, `overrides` ('a.b=v') apply on top of it for this evaluation. With
  `write`, writes eval.json (and the plots) there."""
  interrupts.raise_if_pending()     # a Ctrl-C Python dropped (moe_jax/interrupts.py)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  run = (run_setup.open_run(workdir, overrides) if config is None else
         config_lib.validate(config, num_devices=jax.device_count(),
                             num_processes=jax.process_count(), overrides=overrides))
  task = tasks.get(run.task)
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  graphdef, state, step = run_setup.restore_for_eval(run, workdir, mesh, step)
  tokenizer = run_setup.tokenizer(run, workdir, may_train=False)
  data = task.data.validation(run, tokenizer)
  eval_step = make_eval_step(graphdef, task)   # compiled once, used by every pass
  result = {"step": step, "task": run.task,
            **evaluate_split(eval_step, state, run, task, mesh, tokenizer, data)}
  result.update(task.eval.extras(EvalContext(run, graphdef, state, mesh, tokenizer, data,
                                                 eval_step)))
  result = nest_layers(result)
  interrupts.raise_if_pending()
  if write and jax.process_index() == 0:
    write_results(workdir, result, plots=plots)
  return result


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


def write_results(workdir: pathlib.Path, result: dict, *, plots: bool = True) -> list[str]:
  """eval.json and the plots; returns the names written."""
  from moe_jax import plots as plot_lib
  from moe_jax.run_log import read_metrics
  from moe_jax.workdir import write_atomic
  write_atomic(workdir / "eval.json", json.dumps(_jsonable(result), indent=2))
  written = ["eval.json"]
  if not plots:
    return written
  layers = [i for i, m in result["layers"].items() if "expert_load" in m]
  if layers:
    plot_lib.expert_load_heatmap(
        np.stack([np.asarray(result["layers"][i]["expert_load"]) for i in layers]),
        [int(i) for i in layers], workdir / "expert_load.png",
        title=f"expert load, validation, step {result['step']}")
    written.append("expert_load.png")
  return written + tasks.get(result["task"]).eval.plots(result, workdir, read_metrics(workdir))


def text_overrides(text: str) -> list[str]:
  """`--text GLOB`: the run's validation pass on the documents of those files (.txt blocks,
  .jsonl / .parquet field `text`: moe_jax/data/local_files.py), all of them, with the run's
  own tokenizer."""
  return ["data.corpus=files", f"data.files={text}", f"data.validation_files={text}",
          "data.eval_max_batches=0"]


def main(argv):
  del argv
  from moe_jax import cli
  cli.init_runtime()
  workdir = pathlib.Path(cli.FLAGS.workdir).expanduser().absolute()
  overrides = cli.config_overrides()
  if cli.FLAGS.text:
    overrides = text_overrides(cli.FLAGS.text) + overrides
  result = cli.run_reporting_errors(evaluate, None, workdir, step=cli.FLAGS.step, write=False,
                                    overrides=overrides)
  if jax.process_index() != 0:
    return
  print(tasks.get(result["task"]).eval.report(result, workdir), flush=True)   # before any file
  if cli.FLAGS.text:
    print(f"evaluated on {cli.FLAGS.text!r} (documents in full); the run's eval.json and plots "
          "are left as they are")
    return
  written = cli.run_reporting_errors(write_results, workdir, result)
  print(f"wrote {', '.join(written)} in {workdir}; TensorBoard: tensorboard --logdir "
        f"{workdir / 'tensorboard'}")


if __name__ == "__main__":
  from absl import flags

  from moe_jax import cli
  cli.define_flags(with_config=False)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
  flags.DEFINE_string("text", None, "Evaluate on these files instead of the run's validation "
                      "split: a glob of .txt/.jsonl/.parquet (docs/evaluation.md); prints loss "
                      "and bits per byte, writes nothing into the workdir.")
  cli.run(main)
