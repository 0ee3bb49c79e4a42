"""Task `distill`: a student LM trained to match a frozen teacher (an MoE LM, say) as well as
the data (Hinton et al. 2015; the Switch Transformer's MoE -> dense distillation).

    python -m moe_jax.train --config configs/lm_tiny.py --workdir runs/student --cpu_devices 8 \\
        --config.task=distill --config.distill.teacher_workdir=runs/lm_tiny \\
        --config.model.num_experts=0 [--config.distill.alpha=0.5 --config.distill.temperature=2]

The Switch Transformer's recipe (Fedus et al. 2021, Sec. 5, Table 6: ~30 % of the MoE's gain
kept) adds `--config.distill.init_from_teacher=True --config.distill.alpha=0.25`.

Loss per target token: (1 - alpha) * CE(student, data) + alpha * T^2 * KL(p_teacher,T ||
p_student,T), with p_.,T = softmax(logits / T) (the T^2 keeps the soft term's gradients at
the CE's scale as T grows). `config.model` is the student; the teacher is the run in
`config.distill.teacher_workdir` (its newest checkpoint, or `teacher_step`), restored onto this
run's mesh (its experts stay sharded over 'expert') and run in the same jitted step with
train=False and no gradient: the optimizer trains `student` only (`trainable` below). Its
weights are part of this run's state, so resume and `evaluate` read only the teacher's
config.json (to build its shape), not its checkpoints. Teacher and student must share the
tokenizer and vocabulary. Evaluation reports the student's loss and bits per byte, as `lm`, and
its KL to the teacher (T = 1) on validation.

At the student's first start (step 0; never on resume):
- The teacher's checkpoint is `teacher_step`, or its newest. The step used is written into the
  student's config record (`config.json`: `distill.teacher_step`), so the record names the
  teacher it was distilled from. A resume that leaves teacher_step unset keeps the recorded
  step (`Task.chosen_at_start`); the teacher's weights come from the student's own checkpoint
  on resume, whatever the flag says.
- A teacher whose workdir is held by a live process (moe_jax/workdir.py's lock: it is still
  being trained) is refused in one line when `teacher_step` is unset, since its newest
  checkpoint is a moving target; with `teacher_step` set, that (complete) checkpoint is used.
- A corrupt teacher checkpoint is refused in one line with the command that distills from the
  teacher's newest older checkpoint (`--config.distill.teacher_step=N`).
- `init_from_teacher=True` (`copy_from_teacher`): every student Param with the same path and
  shape as a teacher Param is set to the teacher's value, except those in an MoE layer of
  either model (`blocks.i.ffn` where layer i is MoE in the teacher or the student: experts,
  router, shared/null experts). So the embeddings, attention, norms, the FFNs of layers dense
  in both, the final norm and an untied output head are copied; the student's dense FFN where
  the teacher has experts (and any param the teacher lacks or shapes differently) keeps the
  student's own init. One line says what was copied and what kept; a student none of whose
  params match (another d_model, say) is refused.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import pathlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from moe_jax.models import DecoderLM
from moe_jax.tasks import lm
from moe_jax.tasks.base import EvalContext, Section, Task, TaskEval, run_services
from moe_jax.tasks.registry import register
from moe_jax.validation import check_float, check_int


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """`config.distill.*`: the frozen teacher and the loss (1 - alpha) CE + alpha T^2 KL."""
  teacher_workdir: str = ""            # a trained run's workdir (an MoE LM, say)
  teacher_step: int | None = None      # its checkpoint (None: the newest)
  alpha: float = 0.5                   # weight of the KL term; 0: plain training
  temperature: float = 2.0             # T: both distributions softened by it
  # At the student's first start: its params outside MoE layers (embeddings, attention, norms,
  # the teacher's dense FFNs, the head) copied from the teacher where path and shape match
  # (Switch Transformer, Sec. 5); the rest keeps the student's init (see above)
  init_from_teacher: bool = False


def check_options(distill: DistillConfig) -> DistillConfig:
  owner = "config.distill"
  check_float("alpha", distill.alpha, low=0.0, high=1.0, owner=owner)
  check_float("temperature", distill.temperature, low=0.0, low_inclusive=False, owner=owner)
  if distill.teacher_step is not None:
    check_int("teacher_step", distill.teacher_step, low=0, owner=owner)
  if not isinstance(distill.init_from_teacher, bool):
    raise ValueError(f"{owner}.init_from_teacher must be True or False, got "
                     f"{distill.init_from_teacher!r}")
  return distill


class Distillation(nnx.Module):
  """The student and its frozen teacher, with the loss's constants (static)."""

  def __init__(self, student: DecoderLM, teacher: DecoderLM, *, alpha: float,
               temperature: float):
    self.student, self.teacher = student, teacher
    self.alpha, self.temperature = float(alpha), float(temperature)


def _teacher_run(run):
  """The teacher's validated run config; errors name config.distill / the mismatching field.
  Opening a run is run setup's job, above the tasks: its services do it (tasks/base.py)."""
  if not run.options['distill'].teacher_workdir:
    raise ValueError("config.task='distill' needs config.distill.teacher_workdir: the workdir "
                     "of the trained teacher run")
  workdir = pathlib.Path(run.options['distill'].teacher_workdir).expanduser().absolute()
  try:
    teacher = run_services().open_run(workdir, [f"mesh.{k}={v}" for k, v in
                                                dataclasses.asdict(run.mesh).items()])
  except FileNotFoundError as e:
    raise ValueError(f"config.distill.teacher_workdir: {e}") from e
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


def _in_moe_layer(path: tuple, layers: set[int]) -> bool:
  return (len(path) > 3 and path[:2] == ("transformer", "blocks") and path[2] in layers
          and path[3] == "ffn")


def _moe_layers(model_config) -> set[int]:
  return {i for i in range(model_config.num_layers) if model_config.is_moe_layer(i)}


def _name(path: tuple) -> str:
  return ".".join(str(k) for k in path)


def copy_from_teacher(student: DecoderLM, teacher: DecoderLM, student_config,
                      teacher_config) -> tuple[list[str], list[str]]:
  """Sets every Param of `student` to the teacher's Param of the same path and shape, outside
  the MoE layers of either model (`blocks.i.ffn` with layer i MoE in one of them); returns
  (copied, kept): the student's param paths ('transformer.embed', ...) set from the teacher
  and those left at the student's init. Values are copied (no array is shared) in the
  student's dtype."""
  excluded = _moe_layers(student_config) | _moe_layers(teacher_config)
  theirs = {path: var for path, var in nnx.to_flat_state(nnx.state(teacher, nnx.Param))}
  updates, copied, kept = {}, [], []
  for path, var in nnx.to_flat_state(nnx.state(student, nnx.Param)):
    mine, source = var.get_value(), theirs.get(path)
    if (source is not None and not _in_moe_layer(path, excluded)
        and source.get_value().shape == mine.shape):
      updates[path] = jnp.array(source.get_value(), dtype=mine.dtype, copy=True)
      copied.append(_name(path))
    else:
      kept.append(_name(path))
  if updates:
    nnx.update(student, nnx.from_flat_state(updates))
  return copied, kept


def _teacher_steps(teacher_run, workdir: pathlib.Path) -> list[int]:
  from moe_jax.checkpoint import Checkpoints
  if not (workdir / "checkpoints").is_dir():
    return []
  ckpts = Checkpoints(workdir / "checkpoints", keep=teacher_run.checkpoint.keep, read_only=True)
  try:
    return ckpts.steps()
  finally:
    ckpts.close()


def _teacher_holder(workdir: pathlib.Path) -> str | None:
  """Who holds the teacher's workdir lock (a run still training it), or None. Probes the
  flock with a shared, non-blocking lock released at once (moe_jax/workdir.py)."""
  from moe_jax import workdir as workdir_lib
  path = workdir / workdir_lib.LOCK_FILE
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None             # no lock file: nobody holds it (or it cannot be read: not known)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
      return workdir_lib._holder(path)  # noqa: SLF001 - the lock's own description of its holder
    return None
  else:
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _teacher_step(run, teacher_run, workdir: pathlib.Path) -> int:
  """The teacher checkpoint to distill from: config.distill.teacher_step or the newest; refuses
  a missing one, and a teacher still being trained when the step is not pinned."""
  steps = _teacher_steps(teacher_run, workdir)
  step = run.options['distill'].teacher_step
  if step is not None and step not in steps:
    raise ValueError(f"config.distill.teacher_step={step}: no such checkpoint in "
                     f"{workdir / 'checkpoints'}; available: {steps or 'none'}")
  if step is None:
    holder = _teacher_holder(workdir)
    if holder is not None:
      pin = (f"or pin one of its complete checkpoints with --config.distill.teacher_step="
             f"{steps[-1]} (available: {steps})" if steps else "it has no checkpoint yet")
      raise ValueError(f"config.distill.teacher_workdir={workdir} is in use by {holder}: the "
                       f"teacher is still being trained; wait for that run to end, {pin}")
    if not steps:
      raise ValueError(f"config.distill.teacher_workdir: no checkpoint in "
                       f"{workdir / 'checkpoints'}: train the teacher first")
    step = steps[-1]
  return step


def _teacher_checkpoint_error(error, workdir: pathlib.Path, step: int, steps: list[int]):
  """A CheckpointError about the teacher's checkpoint, phrased for the student's command line:
  the flag that gets past a corrupt one is config.distill.teacher_step (not restore_step,
  which is the student's own)."""
  from moe_jax.checkpoint import CheckpointError, short_reason
  if "corrupt or incomplete" not in str(error):
    return CheckpointError(f"config.distill.teacher_workdir: {error}")
  reason = short_reason(error.__cause__) if error.__cause__ is not None else "unreadable"
  older = [s for s in steps if s < step]
  where = workdir / "checkpoints" / str(step)
  if not older:
    return CheckpointError(f"the teacher's checkpoint {where} is corrupt or incomplete "
                           f"({reason}) and the teacher has no older one: retrain the teacher "
                           "or use another config.distill.teacher_workdir")
  flag = f"--config.distill.teacher_step={older[-1]}"
  return CheckpointError(f"the teacher's checkpoint {where} is corrupt or incomplete "
                         f"({reason}); distill from an older one (available: {older}) with "
                         f"{flag}", retry_flags=(flag,))


def build_model(run, mesh, rngs):
  teacher_run, _ = _teacher_run(run)
  student = DecoderLM(run.model, rngs=rngs, mesh=mesh)
  teacher = DecoderLM(teacher_run.model, rngs=nnx.Rngs(0), mesh=mesh)
  return Distillation(student, teacher, alpha=run.options['distill'].alpha,
                      temperature=run.options['distill'].temperature)


def initialize(run, model: Distillation, mesh) -> None:
  """A fresh run: the teacher's weights from its checkpoint (on this run's mesh), the step used
  written into the run's config record, and with init_from_teacher the student's non-expert
  weights from the teacher (see the module docstring)."""
  from moe_jax.checkpoint import CheckpointError
  teacher_run, workdir = _teacher_run(run)
  step = _teacher_step(run, teacher_run, workdir)
  try:
    graphdef, state, _ = run_services().restore_for_eval(teacher_run, workdir, mesh, step)
  except CheckpointError as e:
    raise _teacher_checkpoint_error(e, workdir, step,
                                    _teacher_steps(teacher_run, workdir)) from e
  restored, _ = nnx.merge(graphdef, state)
  nnx.update(model.teacher, nnx.state(restored))
  if run.record.get("distill") is not None:     # config.json names the teacher step used
    run.record["distill"]["teacher_step"] = step
  if not run.options['distill'].init_from_teacher:
    return
  copied, kept = copy_from_teacher(model.student, model.teacher, run.model, teacher_run.model)
  if not copied:
    raise ValueError(
        f"config.distill.init_from_teacher=True but no parameter of the student has the path "
        f"and shape of one of the teacher's outside its MoE layers (student d_model="
        f"{run.model.d_model}, teacher's {teacher_run.model.d_model}): nothing to copy; use "
        "init_from_teacher=False or a student of the teacher's shape")
  if jax.process_index() == 0:
    values = sum(int(v.get_value().size) for p, v in
                 nnx.to_flat_state(nnx.state(model.student, nnx.Param)) if _name(p) in copied)
    print(f"init_from_teacher: copied {len(copied)} of {len(copied) + len(kept)} parameter "
          f"arrays ({values:,} values) from the teacher's step {step} (all but MoE layers' "
          f"FFNs, by path and shape); kept the student's init for "
          f"{', '.join(kept) if kept else 'none'}", flush=True)


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
    name="distill", causal=True, data=lm.TASK.data,     # the LM's data, the LM's batches
    build_model=build_model, loss=loss,
    eval=TaskEval(eval_sums, summarize, headline, evaluate_extras, report, lm.plots),
    trainable=nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher"))),
    initialize=initialize, chosen_at_start=("distill.teacher_step",),
    sections=(Section("distill", DistillConfig, check_options),)))
