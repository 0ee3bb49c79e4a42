"""Task `distill`: a student LM trained to match a frozen teacher (an MoE LM, say) as well as
the data (Hinton et al. 2015; the Switch Transformer's MoE -> dense distillation).

    python -m moe_jax.train --config configs/lm_tiny.py --workdir runs/student --cpu_devices 8 \\
        --config.task=distill --config.distill.teacher_workdir=runs/lm_tiny \\
        --config.model.num_experts=0 [--config.distill.alpha=0.5 --config.distill.temperature=2]

Loss per target token: (1 - alpha) * CE(student, data) + alpha * T^2 * KL(p_teacher,T ||
p_student,T), with p_.,T = softmax(logits / T) (the T^2 keeps the soft term's gradients at
the CE's scale as T grows). `config.model` is the student; the teacher is the run in
`config.distill.teacher_workdir` (its newest checkpoint, or `teacher_step`), restored onto this
run's mesh (its experts stay sharded over 'expert') and run in the same jitted step with
train=False and no gradient: the optimizer trains `student` only (`trainable` below). Its
weights are part of this run's state, so resume and `evaluate` read only the teacher's
config.json (to build its shape), not its checkpoints. Teacher and student must share the tokenizer and vocabulary. Evaluation reports the
student's loss and bits per byte, as `lm`, and its KL to the teacher (T = 1) on validation.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from moe_jax.models import DecoderLM
from moe_jax.tasks import lm, register
from moe_jax.tasks.base import EvalContext, Task


class Distillation(nnx.Module):
  """The student and its frozen teacher, with the loss's constants (static)."""

  def __init__(self, student: DecoderLM, teacher: DecoderLM, *, alpha: float,
               temperature: float):
    self.student, self.teacher = student, teacher
    self.alpha, self.temperature = float(alpha), float(temperature)


def _teacher_run(run):
  """The teacher's validated run config; errors name config.distill / the mismatching field."""
  from moe_jax import config as config_lib, run_setup
  if not run.distill.teacher_workdir:
    raise ValueError("config.task='distill' needs config.distill.teacher_workdir: the workdir "
                     "of the trained teacher run")
  workdir = pathlib.Path(run.distill.teacher_workdir).expanduser().absolute()
  try:
    tree = run_setup.run_config(workdir)
  except FileNotFoundError as e:
    raise ValueError(f"config.distill.teacher_workdir: {e}") from e
  teacher = config_lib.validate(tree, num_devices=jax.device_count(),
                                num_processes=jax.process_count(),
                                overrides=[f"mesh.{k}={v}" for k, v in
                                           dataclasses.asdict(run.mesh).items()])
  if teacher.task != "lm":
    raise ValueError(f"config.distill.teacher_workdir: the teacher must be an 'lm' run, got "
                     f"task {teacher.task!r}")
  for field, mine, theirs in (
      ("model.vocab_size", run.model.vocab_size, teacher.model.vocab_size),
      ("data.tokenizer", run.data.tokenizer, teacher.data.tokenizer),
      ("data.vocab_size", run.data.vocab_size, teacher.data.vocab_size)):
    if mine != theirs:
      raise ValueError(f"config.{field}={mine!r} but the teacher's is {theirs!r}: teacher and "
                       "student must share the tokenizer and vocabulary")
  if run.data.tokenizer == "sentencepiece":
    raise ValueError("config.task='distill' with config.data.tokenizer='sentencepiece' is not "
                     "supported yet (the student would train its own tokenizer): use 'byte'")
  return teacher, workdir


def build_model(run, mesh, rngs):
  teacher_run, _ = _teacher_run(run)
  student = DecoderLM(run.model, rngs=rngs, mesh=mesh)
  teacher = DecoderLM(teacher_run.model, rngs=nnx.Rngs(0), mesh=mesh)
  return Distillation(student, teacher, alpha=run.distill.alpha,
                      temperature=run.distill.temperature)


def initialize(run, model: Distillation, mesh) -> None:
  """A fresh run: the teacher's weights from its checkpoint (on this run's mesh)."""
  from moe_jax import run_setup
  teacher_run, workdir = _teacher_run(run)
  graphdef, state, _ = run_setup.restore_for_eval(teacher_run, workdir, mesh,
                                                  run.distill.teacher_step)
  restored, _ = nnx.merge(graphdef, state)
  nnx.update(model.teacher, nnx.state(restored))


def _masked_mean(x_BL, mask_BL):
  return jnp.sum(x_BL * mask_BL) / jnp.maximum(jnp.sum(mask_BL), 1.0)


def _kl_BL(teacher_BLV, student_BLV, temperature: float):
  """KL(softmax(teacher / T) || softmax(student / T)) per position, in nats."""
  log_p = jax.nn.log_softmax(teacher_BLV / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_BLV / temperature, axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def loss(model: Distillation, batch, *, train, rngs=None):
  logits_BLV, routings = model.student(batch["inputs"], train=train, rngs=rngs)
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
  mask_BL = batch.get("mask", jnp.ones_like(nll_BL))
  ce = _masked_mean(nll_BL, mask_BL)
  if model.alpha == 0:     # plain training: the teacher is not run at all
    return ce, {"ce": ce}, routings
  teacher_BLV = jax.lax.stop_gradient(model.teacher(batch["inputs"], train=False)[0])
  t = model.temperature
  kl = _masked_mean(_kl_BL(teacher_BLV, logits_BLV, t), mask_BL)
  total = (1 - model.alpha) * ce + model.alpha * t * t * kl
  return total, {"ce": ce, "kl": kl}, routings


def eval_sums(model: Distillation, batch):
  student_BLV, routings = model.student(batch["inputs"], train=False)
  sums = lm.sums_of(student_BLV, batch)
  teacher_BLV, _ = model.teacher(batch["inputs"], train=False)
  sums["kl_sum"] = jnp.sum(_kl_BL(teacher_BLV, student_BLV, 1.0) * batch["mask"])
  return sums, routings


def summarize(sums: dict) -> dict:
  return {**lm.summarize(sums), "kl_to_teacher": float(sums["kl_sum"] / sums["count"])}


def headline(metrics: dict) -> str:
  return f"{lm.headline(metrics)}, KL to the teacher {metrics['kl_to_teacher']:.4f} nats/token"


def evaluate_extras(ctx: EvalContext) -> dict:
  """lm's extras (the unigram baseline, samples) for the student alone."""
  model, _ = nnx.merge(ctx.graphdef, ctx.state)
  graphdef, state = nnx.split((model.student,))
  return lm.evaluate_extras(ctx._replace(graphdef=graphdef, state=state))


def report(result: dict, workdir) -> str:
  return (lm.report(result, workdir) + f"\nKL(teacher || student) on validation "
          f"{result['kl_to_teacher']:.4f} nats/token (T = 1)")


TASK = register(Task(
    name="distill", causal=True, check_data=lm.check_data, text_source=lm.TASK.text_source,
    build_model=build_model, train_iterator=lm.train_iterator,
    validation_data=lm.validation_data, eval_batches=lm.eval_batches, loss=loss,
    eval_sums=eval_sums, summarize=summarize, headline=headline,
    evaluate_extras=evaluate_extras, report=report, plots=lm.plots,
    trainable=nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher"))),
    initialize=initialize))
