"""Train an MoE LM or classifier: python -m moe_jax.train --config configs/X.py --workdir DIR.

    python -m moe_jax.train --config configs/lm_tiny.py --workdir runs/tiny --cpu_devices 8 \\
        --config.steps=200 --config.model.num_experts=16

or from Python: `moe_jax.train.train(config_dict, workdir)`.

The loop: validate the config (every error before anything compiles) -> mesh -> model and
optimizer placed on it -> resume from the newest (or `restore_step`) checkpoint in
DIR/checkpoints if there is one -> for each step: next batch from the grain iterator (this
process's shard), one jitted step on the (model, optimizer) state, log, evaluate, save. Saves
happen every `checkpoint.every` steps and at the last step, only after the step's loss was seen
to be finite; a NaN/Inf loss stops the run naming the step, with the last good checkpoint kept.

Everything that decides the numbers is in the checkpoint or derived from the step: the step's
RNG key is fold_in(PRNGKey(seed), step), the data position is the iterator's state. So a run
killed at any point and resumed logs exactly the losses of an uninterrupted run.

Multi-host: run the same command on every host (TPU pods), or one process per host/GPU with
--coordinator_address / --num_processes / --process_id (or MOE_JAX_* environment variables);
each process reads its own shard of the data and process 0 writes the logs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax import config as config_lib
from moe_jax.checkpoint import Checkpoints
from moe_jax.data import datasets
from moe_jax.evaluate import make_eval_step, validation_data, validation_metrics
from moe_jax.models import DecoderLM, EncoderClassifier
from moe_jax.parallel.distributed import host_local_to_global
from moe_jax.parallel.mesh import make_mesh
from moe_jax.run_log import RunLog
from moe_jax.train_step import (classification_loss, learning_rate_schedule, lm_loss,
                                make_optimizer, make_state_train_step)


def build(run: config_lib.RunConfig, mesh):
  """(model, optimizer), params placed on `mesh` (or a jax.sharding.AbstractMesh under
  nnx.eval_shape, which builds shapes and shardings without allocating)."""
  if run.task == "lm":
    model = DecoderLM(run.model, rngs=nnx.Rngs(run.seed), mesh=mesh)
  else:
    kind, num_classes, shape = datasets.classification_info(run.data)
    images = dict(patch_size=run.classifier.patch_size, image_shape=shape) if kind == "image" \
        else {}
    model = EncoderClassifier(run.model, num_classes=num_classes, pool=run.classifier.pool,
                              rngs=nnx.Rngs(run.seed), mesh=mesh, **images)
  optimizer = nnx.Optimizer(model, make_optimizer(run.optim), wrt=nnx.Param)
  return model, optimizer


def place_on_mesh(state, mesh):
  """Every array of `state` on `mesh`: annotated params keep their sharding, the rest (norm
  scales, optimizer counters) are replicated. Then the jitted step always sees one placement,
  also for arrays a checkpoint restores (which would otherwise land on one device)."""
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda a: a if isinstance(getattr(a, "sharding", None), NamedSharding)
      else jax.device_put(a, replicated), state)


def checkpoint_meta(run: config_lib.RunConfig) -> dict:
  """What must match for a checkpoint to be resumed (the model's shape-determining config)."""
  model = {k: (str(np.dtype(v)) if k.endswith("dtype") else v)
           for k, v in dataclasses.asdict(run.model).items()}
  return {"model": json.loads(json.dumps(model)), "seed": run.seed}


def _restore_or_start(ckpts: Checkpoints, run, workdir, state, iterator, log_fn):
  """(state, start_step): the chosen checkpoint restored, or the fresh state at step 0."""
  step = run.restore_step if run.restore_step is not None else ckpts.latest_step()
  if step is None:
    return state, 0
  if run.restore_step is not None and step not in ckpts.steps():
    raise ValueError(f"config.restore_step={step}: no such checkpoint in "
                     f"{ckpts.directory}; available: {ckpts.steps() or 'none'}")
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  state, _ = ckpts.restore(step, abstract, iterator, expect_meta=checkpoint_meta(run))
  moved = ckpts.abandon_after(step, pathlib.Path(workdir))
  if moved:
    log_fn(f"restore_step={step}: newer checkpoints {moved} moved to "
           f"{pathlib.Path(workdir) / 'abandoned_checkpoints'}")
  log_fn(f"resumed from checkpoint step {step} in {ckpts.directory}")
  return state, step


def _tokenizer(run, workdir: pathlib.Path, is_main: bool):
  """The run's tokenizer; a SentencePiece model is trained and saved by process 0 only (the
  workdir is shared, as checkpointing needs), the other processes wait and load it."""
  if run.data.tokenizer == "byte" or jax.process_count() == 1:
    return datasets.load_or_train_tokenizer(run, workdir)
  from jax.experimental import multihost_utils
  if is_main:
    datasets.load_or_train_tokenizer(run, workdir)
  multihost_utils.sync_global_devices("moe_jax tokenizer saved")
  return datasets.load_or_train_tokenizer(run, workdir, may_train=False)


def train(config, workdir, *, progress: bool = True) -> dict:
  """Trains (or resumes) the run described by `config` (a ConfigDict) in `workdir`; returns
  the last logged metrics and the final validation metrics."""
  run = config_lib.validate(config, num_devices=jax.device_count(),
                            num_processes=jax.process_count())
  workdir = pathlib.Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_lib.to_json(config))
  # The data first: a missing dataset or a bad tokenizer fails before anything compiles.
  tokenizer = _tokenizer(run, workdir, is_main)
  processes = jax.process_count()
  shard = dict(batch_size=run.data.batch_size // processes, seed=run.seed,
               shard_index=jax.process_index(), shard_count=processes)
  make_batches = (datasets.lm_train_iterator if run.task == "lm"
                  else datasets.classification_train_iterator)
  iterator = make_batches(run.data, tokenizer, **shard)
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  model, optimizer = build(run, mesh)
  graphdef, state = nnx.split((model, optimizer))
  state = place_on_mesh(state, mesh)
  del model, optimizer
  ckpts = Checkpoints(workdir / "checkpoints", keep=run.checkpoint.keep,
                      async_save=run.checkpoint.async_save)
  log_fn = (lambda text: print(text, flush=True)) if is_main else (lambda text: None)
  try:
    state, start = _restore_or_start(ckpts, run, workdir, state, iterator, log_fn)
  except BaseException:
    ckpts.close()
    raise
  log = RunLog(workdir, start_step=start, total_steps=run.steps, enabled=is_main,
               progress=progress)
  if start >= run.steps:
    log_fn(f"{workdir} already holds the finished run ({run.steps} steps); raise "
           "config.steps to train on, or use a new --workdir")
  train_step = make_state_train_step(graphdef, aux_loss_weights=run.aux_loss_weights,
                                     schedule=learning_rate_schedule(run.optim), mesh=mesh,
                                     state_sharding=jax.tree.map(lambda a: a.sharding, state),
                                     task_loss=lm_loss if run.task == "lm"
                                     else classification_loss)
  eval_step = make_eval_step(graphdef, run.task)
  validation = []   # the validation split, read (and tokenized) once, at the first evaluation

  def validate():
    if not validation:
      validation.append(validation_data(run, tokenizer))
    return validation_metrics(eval_step, state, run, mesh, tokenizer, validation[0])

  base_key = jax.random.PRNGKey(run.seed)
  meta = checkpoint_meta(run)
  last, evaluation = {}, {}
  tick, tick_step = time.perf_counter(), start
  try:
    for step in range(start + 1, run.steps + 1):
      batch = host_local_to_global(next(iterator), mesh)
      state, metrics = train_step(state, batch, jax.random.fold_in(base_key, step))
      metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
      loss = float(metrics["loss"])
      if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at step {step}; stopped without saving this step. The last good "
            f"checkpoint is step {ckpts.latest_step()} in {ckpts.directory}; lower "
            "config.optim.learning_rate or raise the warmup, and resume from it")
      if step % run.log_every == 0 or step == run.steps:
        now = time.perf_counter()
        metrics["tokens_per_sec"] = run.tokens_per_step * (step - tick_step) / (now - tick)
        tick, tick_step = now, step
        if run.eval_every and step % run.eval_every == 0 and step != run.steps:
          metrics.update({f"eval/{k}": v for k, v in validate().items() if np.ndim(v) == 0})
          tick = time.perf_counter()   # don't count evaluation time as training time
        log.write(step, metrics)
        last = {"step": step, **metrics}
        log.progress(step, loss=loss, tok_s=float(metrics["tokens_per_sec"]))
      if step % run.checkpoint.every == 0 or step == run.steps:
        ckpts.save(step, state, iterator,
                   {**meta, "step": step, "rng": np.asarray(base_key).tolist()})
    if start < run.steps:
      evaluation = validate()
      log.write(run.steps, {f"eval/{k}": v for k, v in evaluation.items()
                            if k != "confusion"})
      headline = (f"bits/byte {evaluation['bits_per_byte']:.4f}" if run.task == "lm"
                  else f"accuracy {evaluation['accuracy']:.4f}")
      log.message(f"step {run.steps}: validation loss {evaluation['loss']:.4f}, {headline}")
  finally:
    ckpts.wait()
    ckpts.close()
    log.close()
  return {"train": last, "eval": evaluation}


def main(argv):
  del argv
  from moe_jax import cli
  cli.init_runtime()
  cli.run_reporting_errors(train, cli.FLAGS.config, cli.FLAGS.workdir)


if __name__ == "__main__":
  from absl import app

  from moe_jax import cli
  cli.define_flags(with_config=True)
  app.run(main)
