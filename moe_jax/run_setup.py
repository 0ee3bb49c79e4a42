"""What training and evaluation share before their first step: the run's model and optimizer on
the mesh, its tokenizer, its checkpoints, and which checkpoint to restore.

    model, optimizer = build(run, mesh)                 # or nnx.eval_shape(lambda: build(...))
    session = open_training(run, workdir, say)          # data, state, restored step
    graphdef, state, step = restore_for_eval(run, workdir, mesh, step=None)

Both `moe_jax.train` and `moe_jax.evaluate` import this module and neither imports the other.
Every refusal (missing data, a checkpoint of another model, a corrupt checkpoint) is raised
here, before the run is accepted and anything is written into its workdir.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax import config as config_lib, tasks, workdir as workdir_lib
from moe_jax.checkpoint import Checkpoints
from moe_jax.data import datasets
from moe_jax.models.transformer import TransformerConfig
from moe_jax.moe_config import MoEConfig
from moe_jax.parallel.mesh import make_mesh
from moe_jax.train_step import make_optimizer


def build(run: config_lib.RunConfig, mesh):
  """(model, optimizer), params placed on `mesh` (or a jax.sharding.AbstractMesh under
  nnx.eval_shape, which builds shapes and shardings without allocating)."""
  model = tasks.get(run.task).build_model(run, mesh, nnx.Rngs(run.seed))
  return model, optimizer_for(run, model)


def optimizer_for(run: config_lib.RunConfig, model) -> nnx.Optimizer:
  """The run's optimizer (config.optim) over what its task trains."""
  return nnx.Optimizer(model, make_optimizer(run.optim), wrt=tasks.get(run.task).trainable)


def step_meta(run: config_lib.RunConfig, step: int, key) -> dict:
  """What a checkpoint of `run` records beside its state: the run's meta, the step and the
  base PRNG key the steps fold their step number into."""
  return {**checkpoint_meta(run), "step": step, "rng": np.asarray(key).tolist()}


def seed_checkpoint(run: config_lib.RunConfig, workdir: pathlib.Path, step: int, model,
                    optimizer, iterator, mesh) -> None:
  """The first checkpoint of a run that does not start from random init (an upcycled MoE,
  an imported checkpoint): `model` and `optimizer` placed on `mesh`, saved at `step` with
  the data position of `iterator`, written before this returns. `train` then resumes it as
  any run."""
  state = place_on_mesh(nnx.state((model, optimizer)), mesh)
  ckpts = Checkpoints(workdir / "checkpoints", keep=run.checkpoint.keep)
  try:
    ckpts.save(step, state, iterator, step_meta(run, step, jax.random.PRNGKey(run.seed)))
    ckpts.wait()
  finally:
    ckpts.close()


def place_on_mesh(state, mesh):
  """Every array of `state` on `mesh`: annotated params keep their sharding, the rest (norm
  scales, optimizer counters) are replicated. Then the jitted step always sees one placement,
  also for arrays a checkpoint restores (which would otherwise land on one device)."""
  return jax.tree.map(
      lambda a: a if _is_annotated(a) else jax.device_put(a, _sharding_on(a, mesh)), state)


def _is_annotated(a) -> bool:
  return isinstance(getattr(a, "sharding", None), NamedSharding)


def _sharding_on(a, mesh) -> NamedSharding:
  """Where `place_on_mesh` puts `a`: its own NamedSharding if annotated, else replicated."""
  return a.sharding if _is_annotated(a) else NamedSharding(mesh, P())


def abstract_on_mesh(state, mesh):
  """The restore target of `state` (arrays, or shapes from nnx.eval_shape): every leaf's shape
  and dtype with the sharding `place_on_mesh` gives it. Without a sharding orbax restores onto
  the topology the checkpoint was saved from, which fails when it was written on another
  number of devices (e.g. trained on 8, evaluated in a notebook on 1)."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=_sharding_on(a, mesh)), state)


def _as_meta(model: dict) -> dict:
  model = {k: (str(np.dtype(v)) if k.endswith("dtype") else v) for k, v in model.items()}
  return json.loads(json.dumps(model, default=str))


def checkpoint_meta(run: config_lib.RunConfig) -> dict:
  """What a checkpoint records of its run: what must match to restore it at all (`restore_meta`:
  the model's shape-determining config, the seed) and what it was trained on (`data_meta`:
  must match to resume training, `check_same_data`; evaluating on other data is fine)."""
  return {**restore_meta(run), "data": data_meta(run)}


def restore_meta(run: config_lib.RunConfig) -> dict:
  return {"model": _as_meta(dataclasses.asdict(run.model)), "seed": run.seed}


# What a run trains on: a resume that changes one of these is refused (data_meta).
DATA_FIELDS = ("corpus", "dataset", "tokenizer", "vocab_size", "seq_len")
# what else names the data of a corpus of local files (compared only for such a run, so the
# checkpoints of other runs, which do not record them, compare as before)
FILES_FIELDS = ("files", "validation_files", "text_field")


def data_meta(run: config_lib.RunConfig) -> dict:
  """{config field: value} of what the run trains on (the vocab size as validation resolves
  it)."""
  fields = DATA_FIELDS + (FILES_FIELDS if run.data.corpus == "files" else ())
  return {"task": run.task, **{f"data.{f}": getattr(run.data, f) for f in fields}}


def _recorded_data(tree: dict) -> dict:
  """`data_meta` of a recorded config (for checkpoints written before the meta had it)."""
  data = dict(tree.get("data", {}))
  if data.get("tokenizer") == "sentencepiece":
    data["vocab_size"] = data.get("vocab_size") or tree.get("model", {}).get("vocab_size")
  fields = DATA_FIELDS + (FILES_FIELDS if data.get("corpus") == "files" else ())
  return {"task": tree.get("task"), **{f"data.{f}": data.get(f) for f in fields}}


def check_same_data(run, workdir: pathlib.Path, meta: dict, step: int) -> None:
  """Refuses (one line) resuming checkpoint `step` on other data than it was trained on: a
  changed corpus / dataset / tokenizer / vocab size / sequence length / task would restore one
  data set's iterator position into another's and train the model on a mix."""
  saved = meta.get("data")
  if saved is None:                      # written before checkpoints recorded their data
    tree = workdir_lib.current_config(workdir)
    if tree is None:
      return
    saved = _recorded_data(tree)
  now = data_meta(run)
  changed = [k for k in now if k in saved and saved[k] != now[k]]
  if not changed:
    return
  what = ", ".join(f"config.{k}={now[k]!r} but it was {saved[k]!r}" for k in changed)
  flags = " ".join(f"--config.{k}={saved[k]}" for k in changed)
  raise ValueError(f"{what} when checkpoint {step} in {workdir / 'checkpoints'} was trained: "
                   f"resuming on other data is refused; resume with {flags}, or train on the "
                   "new data in a new --workdir")


def keep_choices_made_at_start(run, task, workdir: pathlib.Path) -> None:
  """On resume, a field the task chose at the first start (`Task.chosen_at_start`) and the
  command leaves None keeps its recorded value, so the record does not list it as changed."""
  recorded = workdir_lib.current_config(workdir) or {}
  for path in task.chosen_at_start:
    *parents, leaf = path.split(".")
    now, before = run.record, recorded
    for key in parents:
      now, before = (now or {}).get(key), (before or {}).get(key)
    if isinstance(now, dict) and now.get(leaf) is None and (before or {}).get(leaf) is not None:
      now[leaf] = before[leaf]


def check_tokenizer_kept(run, workdir: pathlib.Path, step: int) -> None:
  """Refuses resuming a SentencePiece run whose tokenizer file is gone: training a new one
  would silently change what every token id means (it can come out different)."""
  if run.data.tokenizer == "byte":
    return
  if datasets.is_tokenizer_json(run.data.tokenizer):
    path = workdir / datasets.HF_TOKENIZER_FILES[0]
    if not path.exists():
      raise FileNotFoundError(
          f"{path} is missing: checkpoint {step} was trained with the tokenizer copied there "
          "when it started; put the file back (from a copy of this workdir or "
          f"{run.data.tokenizer}), or start the run over in a new --workdir")
    return
  path = workdir / datasets.TOKENIZER_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} is missing: checkpoint {step} was trained with the SentencePiece tokenizer "
        "saved there, and a retrained one can differ; put the file back (from a copy of "
        "this workdir), or start the run over in a new --workdir")


def _field_defaults(cls) -> dict:
  return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
          for f in dataclasses.fields(cls)
          if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def checkpoint_meta_defaults() -> dict:
  """The model fields' defaults, for checkpoints written before a field existed: a field added
  later defaults to the old behaviour, so such a checkpoint still resumes."""
  return {"model": {**_as_meta(_field_defaults(TransformerConfig)),
                    "moe": _as_meta(_field_defaults(MoEConfig))}}


def tokenizer(run, workdir: pathlib.Path | None, *, may_train: bool):
  """The run's tokenizer. A SentencePiece model is trained and saved by process 0 only (the
  workdir is shared, as checkpointing needs); the other processes wait and load it."""
  source = tasks.get(run.task).data.text_source(run.data)

  def load(train):
    tok = datasets.load_or_train_tokenizer(run.data, source, workdir, may_train=train)
    if tok.vocab_size > run.model.vocab_size:
      raise ValueError(f"config.model.vocab_size={run.model.vocab_size} is smaller than the "
                       f"tokenizer's {tok.vocab_size} tokens ({run.data.tokenizer})")
    return tok
  if not may_train or run.data.tokenizer == "byte" or jax.process_count() == 1:
    return load(may_train)
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    load(True)
  multihost_utils.sync_global_devices("moe_jax tokenizer saved")
  return load(False)


def run_config(workdir) -> Any:
  """The ConfigDict of the run in `workdir`: its latest accepted config."""
  tree = workdir_lib.current_config(workdir)
  if tree is None:
    raise FileNotFoundError(f"{pathlib.Path(workdir) / workdir_lib.CONFIG_FILE} not found: "
                            f"is {workdir} a training workdir?")
  return config_lib.from_json(json.dumps(tree))


def open_run(workdir, overrides=(), *, num_devices: int | None = None) -> Any:
  """The validated RunConfig of the run in `workdir` (its latest accepted config), on this
  machine's devices and processes unless `num_devices` says otherwise; `overrides` ('a.b=v')
  apply on top. The one way a command opens an existing run (evaluate, upcycle's source, hf
  export, the distill task's teacher, the sweep harness's records)."""
  return config_lib.validate(run_config(workdir),
                             num_devices=jax.device_count() if num_devices is None
                             else num_devices,
                             num_processes=jax.process_count(), overrides=overrides)


def _restore_step(run, ckpts: Checkpoints, workdir, say) -> tuple[int | None, int | None]:
  """(the step to restore or None, the restore_step fallback applied or None). A
  restore_step this run already fell back to is not applied again: rerunning the fallback
  command (after an interruption, say) resumes the newer checkpoints it has written since."""
  latest = ckpts.latest_step()
  if run.restore_step is None:
    return latest, None
  if run.restore_step not in ckpts.steps():
    raise ValueError(f"config.restore_step={run.restore_step}: no such checkpoint in "
                     f"{ckpts.directory}; available: {ckpts.steps() or 'none'}")
  if run.restore_step in workdir_lib.applied_restores(workdir) and latest != run.restore_step:
    say(f"note: config.restore_step={run.restore_step} was applied when this run fell back "
        f"to it earlier; resuming from its newest checkpoint, step {latest} (to fall back "
        "again, move the newer checkpoints out of the checkpoints directory)")
    return latest, None
  return run.restore_step, run.restore_step


class Session(NamedTuple):
  """A training run ready for its first step (nothing written into the workdir yet)."""
  run: Any
  task: Any
  mesh: Any
  graphdef: Any
  state: Any
  iterator: Any
  tokenizer: Any
  ckpts: Checkpoints
  start: int                      # the step restored (0: a fresh run)
  restored_from: int | None       # the restore_step fallback applied, if any


def train_iterator(run, tok):
  """The run's training batches from the start: this process's shard of the global batch."""
  processes = jax.process_count()
  return tasks.get(run.task).data.train_iterator(
      run, tok, batch_size=run.data.batch_size // processes, seed=run.seed,
      shard_index=jax.process_index(), shard_count=processes)


def open_training(run, workdir: pathlib.Path, say) -> Session:
  """The data, the model and optimizer state on the mesh, restored from the chosen
  checkpoint. The caller holds the workdir and closes `session.ckpts`."""
  task = tasks.get(run.task)
  # An upcycle / hf import cut short: its rerun finishes it; training it would start over.
  workdir_lib.check_not_unfinished(workdir)
  created = not (workdir / "checkpoints").exists()
  if created:
    # A fresh run's data first, before the checkpoint manager exists: bad data is refused with
    # nothing to clean up (the manager's background thread would race the removal of an
    # empty checkpoints/), and before anything compiles.
    tok = tokenizer(run, workdir, may_train=True)
    iterator = train_iterator(run, tok)
  ckpts = Checkpoints(workdir / "checkpoints", keep=run.checkpoint.keep,
                      async_save=run.checkpoint.async_save)
  try:
    step, restored_from = _restore_step(run, ckpts, workdir, say)
    if step is not None:        # a resume: on the data and tokenizer it was trained with
      check_same_data(run, workdir, ckpts.read_meta(step), step)
      check_tokenizer_kept(run, workdir, step)
      keep_choices_made_at_start(run, task, workdir)
    if not created:   # the data before anything compiles: a missing dataset, a bad tokenizer
      tok = tokenizer(run, workdir, may_train=step is None)
      iterator = train_iterator(run, tok)
    mesh = make_mesh(**dataclasses.asdict(run.mesh))
    model, optimizer = build(run, mesh)     # a model it cannot build fails before any write
    if step is None:
      task.initialize(run, model, mesh)
    graphdef, state = nnx.split((model, optimizer))
    state = place_on_mesh(state, mesh)
    if step is not None:
      state, _ = ckpts.restore(step, abstract_on_mesh(state, mesh), iterator,
                               expect_meta=restore_meta(run),
                               meta_defaults=checkpoint_meta_defaults())
  except BaseException:
    ckpts.close()
    if created and jax.process_index() == 0:   # a refused run leaves no empty checkpoints/
      with contextlib.suppress(OSError):
        (workdir / "checkpoints").rmdir()
    raise
  return Session(run, task, mesh, graphdef, state, iterator, tok, ckpts, step or 0,
                 restored_from)


def abandon_newer(session: Session, workdir: pathlib.Path, say) -> None:
  """After a restore_step fallback is accepted: newer checkpoints are moved aside, kept."""
  if session.restored_from is None:
    return
  moved = session.ckpts.abandon_after(session.start, workdir)
  if moved:
    say(f"restore_step={session.start}: newer checkpoints {moved} moved to "
        f"{workdir / 'abandoned_checkpoints'}")


def restore_for_eval(run, workdir: pathlib.Path, mesh, step: int | None):
  """(graphdef, state, step) of checkpoint `step` (default: the newest), without allocating
  a fresh model first."""
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: train first")
  ckpts = Checkpoints(workdir / "checkpoints", keep=run.checkpoint.keep, read_only=True)
  try:
    step = ckpts.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpts.directory}: train first")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(run, mesh)))
    state, _ = ckpts.restore(step, abstract_on_mesh(abstract, mesh),
                             expect_meta=restore_meta(run),
                             meta_defaults=checkpoint_meta_defaults())
  finally:
    ckpts.close()
  return graphdef, state, step


# The tasks sit below run setup and never import it: a task that opens another run (distill's
# teacher) gets these services instead (moe_jax/tasks/base.py).
tasks.provide_run_services(tasks.RunServices(open_run=open_run,
                                             restore_for_eval=restore_for_eval))
