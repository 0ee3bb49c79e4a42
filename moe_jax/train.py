"""Train an MoE model: python -m moe_jax.train --config configs/X.py --workdir DIR [--config.a.b=v].

    python -m moe_jax.train --config configs/lm_tiny.py --workdir runs/tiny --cpu_devices 8 \\
        --config.steps=200 --config.model.num_experts=16

or from Python: `moe_jax.train.train(config_dict, workdir, overrides=["steps=200"])`.

The loop: validate the config (every error before anything compiles) -> hold the workdir (one
run at a time) -> the task's data, the model and optimizer on the mesh, restored from the newest
(or `restore_step`) checkpoint -> accept the run (config.json, or a line in
config_history.jsonl for a resume) -> for each step: the next batch (this process's shard), one
jitted step, a finiteness check, log, evaluate, save -> the final validation, logged.

Never loses a run: a step whose loss, gradients or updated state is not finite stops the run
before anything of it is saved, naming the newest (finite) checkpoint; SIGINT / SIGTERM finish
the current step, save it, and exit saying how to resume; a kill during the final validation is
redone by the rerun. Everything that decides the numbers is in the checkpoint or derived from
the step (the step's RNG key is fold_in(PRNGKey(seed), step), the data position is the
iterator's state), so a run stopped at any point and resumed logs exactly the losses of an
uninterrupted run.

Multi-host: run the same command on every host (TPU pods), or one process per host/GPU with
--coordinator_address / --num_processes / --process_id (or MOE_JAX_* environment variables);
each process reads its own shard of the data and process 0 writes the logs.
"""
from __future__ import annotations

import contextlib
import math
import pathlib
import sys
import time

import jax
import numpy as np

from moe_jax import config as config_lib, run_setup, run_workdir, workdir as workdir_lib
from moe_jax.eval_step import evaluate_split, make_eval_step
from moe_jax.interrupts import Interrupts
from moe_jax.parallel.distributed import host_local_to_global
from moe_jax.run_log import RunLog, read_metrics
from moe_jax.train_step import learning_rate_schedule, make_state_train_step


class NonFiniteState(FloatingPointError):
  """A step produced a NaN/Inf loss, gradient or state; nothing of it was saved."""


def train(config, workdir, *, overrides=(), progress: bool = True) -> dict:
  """Trains (or resumes) the run of `config` (a ConfigDict, completed from the schema) with
  `overrides` ('a.b=v') in `workdir`; returns the last logged and the final validation
  metrics."""
  run = config_lib.validate(config, num_devices=jax.device_count(),
                            num_processes=jax.process_count(), overrides=overrides)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  is_main = jax.process_index() == 0
  say = (lambda text: print(text, flush=True)) if is_main else (lambda text: None)
  with Interrupts() as interrupts, run_workdir.hold_workdir(workdir):
    read_metrics(workdir)   # a corrupt metrics.jsonl: refused, naming the line, before any write
    s = run_setup.open_training(run, workdir, say)
    try:
      if s.start >= run.steps and _final_eval_logged(workdir, run.steps):
        say(f"{workdir} already holds the finished run ({run.steps} steps); raise "
            "config.steps to train on, or use a new --workdir")
        return {"train": {}, "eval": {}}
      _accept(s, workdir, say, is_main)
      loop = _Loop(s, workdir, say, progress=progress, enabled=is_main)
      try:
        with interrupts.deferred():
          for step in range(s.start + 1, run.steps + 1):
            loop.step(step)
            if _stop_requested(interrupts):
              loop.save(step)
              s.ckpts.wait()
              raise interrupts.stop(f"interrupted at step {step}; rerun the same command to "
                                    "resume")
          s.ckpts.wait()
        # From here a signal stops at once: the last step's checkpoint is complete.
        interrupts.message = (f"interrupted during the final validation (checkpoint "
                              f"{run.steps} is complete); rerun the same command to redo it")
        evaluation = loop.final_validation()
      finally:
        _close(loop.log.close)
    finally:
      _close(s.ckpts.close)
  return {"train": loop.last, "eval": evaluation}


def _accept(s, workdir, say, is_main: bool) -> None:
  """The run is accepted: record its config, move abandoned checkpoints aside, say notes."""
  for note in s.run.notes:
    say(f"note: {note}")
  run_setup.abandon_newer(s, workdir, say)
  if is_main:
    changes = workdir_lib.record_start(workdir, s.run.record, start_step=s.start,
                                       restored_from=s.restored_from)
    if changes:
      say(f"config changed since the last start: {', '.join(sorted(changes))} (recorded in "
          f"{workdir / workdir_lib.HISTORY_FILE})")
  if s.start:
    say(f"resumed from checkpoint step {s.start} in {s.ckpts.directory}")


def _close(close) -> None:
  """Calls `close`; while an error is already propagating (a full disk, say), a second one
  from closing must not replace it."""
  if sys.exc_info()[0] is None:
    close()
    return
  with contextlib.suppress(Exception):
    close()


def _dead_at(records: list[dict], step: int, vocab_size: int) -> str | None:
  """Why the state saved at `step` is already dead, judged by the last step logged up to it: a
  gradient norm of 0 (nothing trains it any more) or a cross-entropy of ln V (it predicts the
  uniform distribution); None if neither."""
  logged = [r for r in records if r["step"] <= step and "grad_norm" in r]
  if not logged:
    return None
  last = logged[-1]
  if last["grad_norm"] == 0:
    return f"gradient norm 0 at its last logged step, {last['step']}"
  ce = last.get("ce", last.get("loss"))
  if vocab_size and ce is not None and abs(ce - math.log(vocab_size)) < 5e-3:
    return (f"cross-entropy {ce:.4f} = ln {vocab_size} at its last logged step, {last['step']}: "
            "it predicts the uniform distribution")
  return None


def _final_eval_logged(workdir, steps: int) -> bool:
  return any(r["step"] == steps and "eval/loss" in r for r in read_metrics(workdir))


def _stop_requested(interrupts) -> bool:
  """Whether any process got a signal: all of them must stop at the same step."""
  if jax.process_count() == 1:
    return interrupts.requested
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.int32(interrupts.requested))
  return bool(np.any(flags))


LOG_INTERVAL = "log_interval"     # checkpoint meta: the open logging interval's loss sums


class _Loop:
  """The pieces of one training run's loop: step, check, log, evaluate, save."""

  def __init__(self, s, workdir, say, *, progress: bool, enabled: bool):
    self.s, self.run, self.say = s, s.run, say
    self.log = RunLog(workdir, start_step=s.start, total_steps=s.run.steps, enabled=enabled,
                      progress=progress)
    self.train_step = make_state_train_step(
        s.graphdef, aux_loss_weights=s.run.aux_loss_weights,
        schedule=learning_rate_schedule(s.run.optim), mesh=s.mesh,
        state_sharding=jax.tree.map(lambda a: a.sharding, s.state), task_loss=s.task.loss,
        trainable=s.task.trainable)
    self.eval_step = make_eval_step(s.graphdef, s.task)
    self.state, self.validation, self.last = s.state, None, {}
    self.base_key = jax.random.PRNGKey(s.run.seed)
    self.saved = s.start
    self.tick, self.tick_step = time.perf_counter(), s.start
    # Summed per-step losses since the last logged step, and that step: saved with each
    # checkpoint, so a resumed run logs the same interval means as one never interrupted.
    self.interval, self.interval_start = self._interval_at_start()

  def step(self, step: int) -> None:
    batch = host_local_to_global(next(self.s.iterator), self.s.mesh)
    self.state, metrics = self.train_step(self.state, batch,
                                          jax.random.fold_in(self.base_key, step))
    metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
    self._check_finite(step, metrics)
    run = self.run
    for name in ("loss", "ce"):       # one batch is noisy: log the interval's mean beside it
      if name in metrics:
        self.interval[name] = self.interval.get(name, 0.0) + float(metrics[name])
    if step % run.log_every == 0 or step == run.steps:
      for name, total in self.interval.items():
        metrics[f"{name}_mean"] = total / (step - self.interval_start)
      self.interval, self.interval_start = {}, step
      now = time.perf_counter()
      metrics["tokens_per_sec"] = run.tokens_per_step * (step - self.tick_step) / (now - self.tick)
      self.tick, self.tick_step = now, step
      if run.eval_every and step % run.eval_every == 0 and step != run.steps:
        metrics.update({f"eval/{k}": v for k, v in self.validate().items() if np.ndim(v) == 0})
        self.tick = time.perf_counter()   # don't count evaluation time as training time
      self.log.write(step, metrics)
      self.last = {"step": step, **metrics}
      self.log.progress(step, loss=float(metrics["loss"]),
                        tok_s=float(metrics["tokens_per_sec"]))
    if step % run.checkpoint.every == 0 or step == run.steps:
      self.save(step)

  def _check_finite(self, step: int, metrics: dict) -> None:
    if metrics.pop("finite") == 1.0:
      return
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    what = ("the loss" if not math.isfinite(loss) else "the gradients"
            if not math.isfinite(grad_norm) else "the updated parameters")
    latest = self.saved or None
    where = (f"The newest checkpoint, step {latest} in {self.s.ckpts.directory}, is from "
             "before that and finite: " if latest else "No checkpoint was saved yet: ")
    then = "resume from it" if latest else "start over"
    records = read_metrics(self.log.workdir) if latest else []
    dead = latest and _dead_at(records, latest, self.run.model.vocab_size)
    if dead:     # finite, but resuming it will not train (issue 28: grad norm 0 ever after)
      alive = [c for c in self.s.ckpts.steps()
               if c < latest and not _dead_at(records, c, self.run.model.vocab_size)]
      where = (f"The newest checkpoint, step {latest} in {self.s.ckpts.directory}, is finite "
               f"but was already dead ({dead}), so resuming from it will not train: ")
      then = (f"fall back to step {alive[-1]} with --config.restore_step={alive[-1]}" if alive
              else "start over in a new --workdir")
    raise NonFiniteState(
        f"training diverged at step {step}: {what} went non-finite (loss {loss:.4g}, "
        f"grad_norm {grad_norm:.4g}); nothing of this step was saved. {where}lower "
        f"config.optim.learning_rate (now {self.run.optim.learning_rate:g}) or raise "
        f"config.optim.warmup_steps, then rerun to {then}")

  def save(self, step: int) -> None:
    if step == self.saved:
      return
    meta = run_setup.step_meta(self.run, step, self.base_key)
    meta[LOG_INTERVAL] = {"start": self.interval_start, "sums": dict(self.interval)}
    self.s.ckpts.save(step, self.state, self.s.iterator, meta)
    self.saved = step

  def _interval_at_start(self) -> tuple[dict, int]:
    """The logging interval the restored checkpoint was saved in (none for a fresh run, or a
    checkpoint written without it: an upcycled or imported run's first, an older run's)."""
    if self.s.start:
      saved = self.s.ckpts.read_meta(self.s.start).get(LOG_INTERVAL)
      if saved:
        return {k: float(v) for k, v in saved["sums"].items()}, int(saved["start"])
    return {}, self.s.start

  def validate(self) -> dict:
    s = self.s
    if self.validation is None:   # read (and tokenized) once, at the first evaluation
      self.validation = s.task.data.validation(s.run, s.tokenizer)
    return evaluate_split(self.eval_step, self.state, s.run, s.task, s.mesh, s.tokenizer,
                          self.validation)

  def final_validation(self) -> dict:
    evaluation = self.validate()
    self.log.write(self.run.steps, {f"eval/{k}": v for k, v in evaluation.items()
                                    if k != "confusion"})
    self.log.message(f"step {self.run.steps}: validation loss {evaluation['loss']:.4f}, "
                     f"{self.s.task.eval.headline(evaluation)}")
    return evaluation


def main(argv):
  del argv
  from moe_jax import cli
  cli.init_runtime()
  cfg = cli.run_reporting_errors(cli.load_config)
  cli.run_reporting_errors(train, cfg, cli.FLAGS.workdir, overrides=cli.config_overrides())


if __name__ == "__main__":
  from moe_jax import cli
  cli.define_flags(with_config=True)
  cli.run(main)
