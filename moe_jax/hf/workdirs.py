r"""A moe_jax workdir from a transformers checkpoint, and a checkpoint back from a workdir.

    python -m moe_jax.hf import --from HF_DIR --workdir W [--config configs/X.py] [--config.a.b=v]
    python -m moe_jax.train --config W/imported_config.py --workdir W [--config.steps=N ...]
    python -m moe_jax.evaluate --workdir W
    python -m moe_jax.hf export --workdir W --to OUT [--step N] [--dtype bfloat16]

or from Python: `import_workdir(hf_dir, workdir, config=None, overrides=[...])` and
`export_workdir(workdir, out_dir, step=None)`.

Import writes an ordinary moe_jax workdir, as `moe_jax.upcycle` does: config.json (a full run
config whose model section describes the checkpoint's model: every field of it comes from
config.json, and `--config.model.*` may change only how it runs, RUN_FIELDS), checkpoint 0
with the imported params and a fresh optimizer state, and
  imported_config.py  that run config as a config file, for the train command (the model
                      section of any other config file would not match the checkpoint);
  imported_from.json  the source, its architecture, tensor layout and dtypes;
  hf_source/          the source's config.json and small files (tokenizer, generation config),
                      which export writes back.
The rest of the run (data, optimizer, steps, mesh) is --config's, or the schema's defaults.
Every check of the source, the config and the workdir runs before anything is written.

The data pipeline tokenizes with moe_jax's tokenizer (config.data.tokenizer: bytes, or a
SentencePiece model it trains), not the checkpoint's: byte ids 0-255 are valid ids of all of
these vocabularies, but not the checkpoint's tokens for those bytes, so evaluation losses of
an import are those of a model reading an unfamiliar encoding, and fine-tuning teaches it one.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import pprint
import shutil
import textwrap

import jax
import numpy as np
from flax import nnx

from moe_jax import config as config_lib, run_setup, tasks, workdir as workdir_lib
from moe_jax.checkpoint import Checkpoints
from moe_jax.hf import model_io
from moe_jax.parallel.mesh import make_mesh
from moe_jax.train_step import make_optimizer

RECORD_FILE = "imported_from.json"
CONFIG_PY = "imported_config.py"
SOURCE_DIR = "hf_source"
# The config.model.* fields an import may set: how the model runs, not what it computes.
RUN_FIELDS = ("dtype", "param_dtype", "remat", "dispatcher", "capacity_factor", "group_size",
              "exchange", "max_len")
TOKENIZER_NOTE = ("the data pipeline uses moe_jax's tokenizer (config.data.tokenizer), not the "
                  "checkpoint's: byte ids 0-255 are valid ids of its vocabulary, but not its "
                  "tokens for those bytes")


def run_tree(config, overrides, section: dict) -> dict:
  """The complete run config: `config` (or the defaults) with `overrides`, its model section
  replaced by the imported model's `section` (+ the RUN_FIELDS the overrides set)."""
  tree, explicit = config_lib.resolve(config if config is not None else config_lib.defaults(),
                                      overrides)
  defaults, _ = config_lib.resolve(config_lib.defaults())
  runs = {}
  for path in sorted(explicit):
    key = path.split(".")[1] if path.startswith("model.") else None
    if key is None:
      continue
    if key not in RUN_FIELDS:
      raise ValueError(f"config.model.{key}: the imported checkpoint sets the model; an import "
                       f"can change only {', '.join(RUN_FIELDS)}")
    runs[key] = tree["model"][key]
  if tree["task"] != "lm":
    raise ValueError(f"config.task={tree['task']!r}: an imported causal LM trains as task 'lm'")
  tree["model"] = {**defaults["model"], **section, **runs}
  return tree


def _config_file(tree: dict, source: str, workdir: pathlib.Path) -> str:
  """A config file holding `tree`: the model section describes the checkpoint, so the train
  command takes this file (or a copy with other data or optimizer settings)."""
  doc = "\n\n".join([
      f"The run config of the model imported from {source} by `python -m moe_jax.hf import`.",
      f"    python -m moe_jax.train --config {workdir / CONFIG_PY} --workdir {workdir} "
      "[--config.steps=N ...]",
      textwrap.fill("Keep the model section: it describes the checkpoint. Note: "
                    f"{TOKENIZER_NOTE}.", width=96)])
  return (f'"""{doc}\n"""\nimport ml_collections\n\n'
          f"CONFIG = {pprint.pformat(tree, indent=1, width=100, sort_dicts=True)}\n\n\n"
          "def get_config():\n  return ml_collections.ConfigDict(CONFIG)\n")


def import_workdir(hf_dir, workdir, *, config=None, overrides=(), say=print) -> int:
  """Writes checkpoint 0 of a run of the checkpoint in `hf_dir` into the new `workdir`;
  returns 0 (its step)."""
  source, checkpoint = model_io.open_source(hf_dir)
  tree = run_tree(config, overrides, source.section)
  run = config_lib.validate(tree, num_devices=jax.device_count(),
                            num_processes=jax.process_count())
  workdir = pathlib.Path(workdir).expanduser().absolute()
  hf_path = pathlib.Path(source.directory)
  if workdir == hf_path or hf_path in workdir.parents:
    raise ValueError(f"--workdir {workdir} is inside --from {hf_path}: import into a directory "
                     "of its own")
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  with run_setup.hold_workdir(workdir):
    used = sorted(p.name for p in workdir.iterdir() if p.name != workdir_lib.LOCK_FILE)
    if used:
      raise workdir_lib.WorkdirError(f"--workdir {workdir} is not empty (it holds {used[0]}); "
                                     "import into a new directory")
    model = model_io.fill_model(run.model, source.table(), checkpoint, mesh=mesh, cast=True)
    optimizer = nnx.Optimizer(model, make_optimizer(run.optim),
                              wrt=tasks.get(run.task).trainable)
    tok = run_setup.tokenizer(run, workdir, may_train=True)
    processes = jax.process_count()
    iterator = tasks.get(run.task).train_iterator(
        run, tok, batch_size=run.data.batch_size // processes, seed=run.seed,
        shard_index=jax.process_index(), shard_count=processes)
    state = run_setup.place_on_mesh(nnx.state((model, optimizer)), mesh)
    ckpts = Checkpoints(workdir / "checkpoints", keep=run.checkpoint.keep)
    try:
      ckpts.save(0, state, iterator, {**run_setup.checkpoint_meta(run), "step": 0,
                                      "rng": np.asarray(jax.random.PRNGKey(run.seed)).tolist()})
      ckpts.wait()
    finally:
      ckpts.close()
    if jax.process_index() == 0:
      _write_records(workdir, run, source)
  say(f"imported {source.architecture} from {hf_path} ({source.layout} layout, "
      f"{source.dtype}) into checkpoint 0 of {workdir}: {run.model.num_layers} layers, "
      f"{run.model.num_experts} experts, the optimizer state starts fresh. Note: "
      f"{TOKENIZER_NOTE}. Train it with: python -m moe_jax.train --config "
      f"{workdir / CONFIG_PY} --workdir {workdir}")
  return 0


def _write_records(workdir: pathlib.Path, run, source: model_io.HFSource) -> None:
  kept = workdir / SOURCE_DIR
  kept.mkdir()
  carried = model_io.carried_files(source.directory)
  for name in [model_io.CONFIG_FILE, *carried]:
    shutil.copy2(pathlib.Path(source.directory) / name, kept / name)
  workdir_lib.write_atomic(workdir / CONFIG_PY, _config_file(run.record, source.directory, workdir))
  workdir_lib.record_start(workdir, run.record, start_step=0, restored_from=None)
  workdir_lib.write_atomic(workdir / RECORD_FILE, json.dumps({
      "source": source.directory, "architecture": source.architecture,
      "layout": source.layout, "dtype": source.dtype, "tensor_dtypes": source.tensor_dtypes,
      "carried_files": carried, "step": 0, "optimizer_state": "fresh",
      "tokenizer": TOKENIZER_NOTE}, indent=2, sort_keys=True))


def workdir_source(workdir: pathlib.Path) -> model_io.HFSource:
  """The HFSource an import recorded in `workdir`."""
  path = workdir / RECORD_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: --workdir {workdir} was not imported by "
                            "`python -m moe_jax.hf import`, so there is no source to export as")
  record = json.loads(path.read_text())
  kept = workdir / SOURCE_DIR
  return model_io.HFSource(str(kept), model_io.read_config(kept), record["architecture"],
                           record["layout"], record["dtype"], record.get("tensor_dtypes", {}))


def export_workdir(workdir, out_dir, *, step: int | None = None, dtype: str | None = None,
                   say=print) -> list[str]:
  """Writes checkpoint `step` (default: the newest) of the imported run in `workdir` as a
  transformers checkpoint directory `out_dir` (new or empty); returns the files written."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  out_dir = model_io.check_out_dir(out_dir)
  source = workdir_source(workdir)
  run = config_lib.validate(run_setup.run_config(workdir), num_devices=jax.device_count(),
                            num_processes=jax.process_count())
  model_io.check_exportable(run.model, source)
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  graphdef, state, step = run_setup.restore_for_eval(run, workdir, mesh, step)
  model, _ = nnx.merge(graphdef, state)
  files = []
  if jax.process_index() == 0:
    files = model_io.export(model, source, out_dir, dtype=dtype)
  say(f"exported checkpoint {step} of {workdir} as {source.architecture} ({source.layout} "
      f"layout, {dtype or source.dtype}) into {out_dir}: {', '.join(files)}")
  return files
