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

The workdir appears complete or not at all: everything is written into a scratch directory
beside it, `.W.hf-import` (locked, and marked as an import's scratch), which is renamed to W
(absent or empty) at the end. An import killed before that leaves W untouched and the
scratch directory behind; rerunning the same command clears that scratch and imports again.
A failed import removes its scratch directory.

Nothing from the checkpoint directory is used as a path or as code: shard names must be plain
file names (safetensors_io), only plain files are carried (a symbolic link is left behind,
with a note), and the paths in imported_config.py are written as string literals that read
back as exactly those paths.

The checkpoint's tokenizer: a `tokenizer.json` beside the weights (and its
`tokenizer_config.json`) is copied into the workdir and becomes the run's tokenizer
(config.data.tokenizer = W/tokenizer.json; moe_jax/data/hf_tokenizer.py), so training,
evaluation, sampling and the routing-anatomy notebook read text as the model was trained to.
A checkpoint without one (or with --config.data.tokenizer set) keeps moe_jax's tokenizer
(bytes, or a SentencePiece model it trains): byte ids 0-255 are valid ids of these
vocabularies, but not the checkpoint's tokens for those bytes, so its evaluation losses are
those of a model reading an unfamiliar encoding, and fine-tuning teaches it one.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import pprint
import shlex
import shutil
import textwrap

import jax
from flax import nnx

from moe_jax import config as config_lib, run_setup, run_workdir, workdir as workdir_lib
from moe_jax.data import datasets
from moe_jax.hf import convert, model_io
from moe_jax.parallel.mesh import make_mesh

RECORD_FILE = "imported_from.json"
CONFIG_PY = "imported_config.py"
SOURCE_DIR = "hf_source"
SCRATCH_MARK = ".hf-import-scratch"     # in the scratch directory, while an import writes it
# The config.model.* fields an import may set: how the model runs, not what it computes.
RUN_FIELDS = ("dtype", "param_dtype", "remat", "dispatcher", "capacity_factor", "group_size",
              "exchange", "max_len")
TOKENIZER_NOTE = ("the data pipeline uses moe_jax's tokenizer (config.data.tokenizer), not the "
                  "checkpoint's: byte ids 0-255 are valid ids of its vocabulary, but not its "
                  "tokens for those bytes")
OWN_TOKENIZER_NOTE = ("the data pipeline reads text with the checkpoint's own tokenizer.json, "
                      "copied into the workdir")
HF_TOKENIZER = "tokenizer.json"


def _tokenizer_note_of(tree: dict) -> str:
  own = tree.get("data", {}).get("tokenizer", "").endswith(HF_TOKENIZER)
  return OWN_TOKENIZER_NOTE if own else TOKENIZER_NOTE


def _tokenizer_note(run) -> str:
  return _tokenizer_note_of({"data": {"tokenizer": run.data.tokenizer}})


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


def _train_command(workdir: pathlib.Path) -> str:
  return shlex.join(["python", "-m", "moe_jax.train", "--config", str(workdir / CONFIG_PY),
                     "--workdir", str(workdir)])


def _py_string(text: str) -> str:
  """`text` as a triple-quoted Python string literal that reads back as exactly `text`,
  whatever it holds (quotes, backslashes, control characters, undecodable bytes of a path),
  so no path in it can end the string and run as code."""
  out = []
  for ch in text:
    if ch in '\\"':
      out.append("\\" + ch)
    elif ch == "\n" or (ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF):
      out.append(ch)
    else:
      out.append(ascii(ch)[1:-1])          # \x1b, \u2028, \udcff, ...
  return '"""' + "".join(out) + '"""'


def _config_file(tree: dict, source: str, workdir: pathlib.Path) -> str:
  """A config file holding `tree`: the model section describes the checkpoint, so the train
  command takes this file (or a copy with other data or optimizer settings). The paths are
  only ever inside string literals (checked: the file parses to this docstring, one import,
  CONFIG and get_config)."""
  doc = "\n\n".join([
      f"The run config of the model imported from {source} by `python -m moe_jax.hf import`.",
      f"    {_train_command(workdir)} [--config.steps=N ...]",
      textwrap.fill("Keep the model section: it describes the checkpoint. Note: "
                    f"{_tokenizer_note_of(tree)}.", width=96)]) + "\n"
  text = (f"{_py_string(doc)}\nimport ml_collections\n\n"
          f"CONFIG = {pprint.pformat(tree, indent=1, width=100, sort_dicts=True)}\n\n\n"
          "def get_config():\n  return ml_collections.ConfigDict(CONFIG)\n")
  module = ast.parse(text)
  kinds = [type(node).__name__ for node in module.body]
  if (ast.get_docstring(module, clean=False) != doc
      or kinds != ["Expr", "Import", "Assign", "FunctionDef"]):
    raise AssertionError(f"{CONFIG_PY} would not read back as written: {kinds}")
  return text


def import_workdir(hf_dir, workdir, *, config=None, overrides=(), say=print) -> int:
  """Writes checkpoint 0 of a run of the checkpoint in `hf_dir` into the new `workdir`;
  returns 0 (its step)."""
  source, checkpoint = model_io.open_source(hf_dir)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  own_tokenizer = (HF_TOKENIZER in model_io.carried_files(source.directory)
                   and not any(o.startswith("data.tokenizer=") for o in overrides))
  if own_tokenizer:      # the run reads the workdir's copy, written before it is first opened
    overrides = [*overrides, f"data.tokenizer={workdir / HF_TOKENIZER}"]
  tree = run_tree(config, overrides, source.section)
  run = config_lib.validate(tree, num_devices=jax.device_count(),
                            num_processes=jax.process_count())
  hf_path = pathlib.Path(source.directory)
  if workdir == hf_path or hf_path in workdir.parents:
    raise ValueError(f"--workdir {workdir} is inside --from {hf_path}: import into a directory "
                     "of its own")
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  _check_target(workdir)
  scratch = workdir.with_name(f".{workdir.name}.hf-import")
  skipped: list[str] = []
  with run_workdir.hold_workdir(scratch):
    lead = jax.process_index() == 0
    if lead:
      _clear_scratch(scratch, workdir)
    try:
      if lead:
        workdir_lib.write_atomic(scratch / SCRATCH_MARK, json.dumps(
            {"workdir": str(workdir), "from": str(hf_path), "pid": os.getpid()}))
      if lead and own_tokenizer:
        for name in datasets.HF_TOKENIZER_FILES:
          if name in model_io.carried_files(source.directory):
            model_io.copy_plain(hf_path / name, scratch / name, source.directory)
      _sync("moe_jax hf import: scratch ready")
      _write_run(scratch, workdir, run, source, checkpoint, mesh, skipped)
      _sync("moe_jax hf import: written")
      if lead:
        _check_target(workdir)         # again: nothing took it meanwhile
        (scratch / workdir_lib.LOCK_FILE).unlink()
        try:
          os.rename(scratch, workdir)    # W: absent or empty, so this is all-or-nothing
        except OSError as e:
          raise workdir_lib.WorkdirError(f"cannot move the import into --workdir {workdir}: "
                                         f"{e.strerror}") from e
        (workdir / SCRATCH_MARK).unlink()
    except BaseException:
      if lead:
        shutil.rmtree(scratch, ignore_errors=True)
      raise
  for note in skipped:
    say(f"note: not carried along from {hf_path}: {note}")
  if source.mtp_tensors:
    say(f"note: the {source.mtp_tensors} tensors of the multi-token-prediction layers (after "
        f"layer {run.model.num_layers - 1}) are not imported: neither moe_jax's model nor "
        "transformers' uses them, and an export will not hold them")
  say(f"imported {source.architecture} from {hf_path} ({source.layout} layout, "
      f"{source.dtype}) into checkpoint 0 of {workdir}: {run.model.num_layers} layers, "
      f"{run.model.num_experts} experts, the optimizer state starts fresh. Note: "
      f"{_tokenizer_note(run)}. Train it with: {_train_command(workdir)}")
  return 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _check_target(workdir: pathlib.Path) -> None:
  """The workdir is absent or an empty directory (a lock file left by a dead run aside)."""
  if workdir.exists() and not workdir.is_dir():
    raise workdir_lib.WorkdirError(f"--workdir {workdir} is a file, not a directory")
  if not workdir.is_dir():
    return
  used = sorted(p.name for p in workdir.iterdir())
  if used == [workdir_lib.LOCK_FILE]:
    with workdir_lib.hold(workdir):    # WorkdirBusy if a live run holds it; else the stale
      pass                             # lock file goes with the hold
    used = sorted(p.name for p in workdir.iterdir())
  if used:
    raise workdir_lib.WorkdirError(f"--workdir {workdir} is not empty (it holds {used[0]}); "
                                   "import into a new directory")


def _clear_scratch(scratch: pathlib.Path, workdir: pathlib.Path) -> None:
  """Empties the scratch directory an interrupted import into `workdir` left (it is marked);
  anything else found there is refused, untouched."""
  left = sorted(p for p in scratch.iterdir() if p.name != workdir_lib.LOCK_FILE)
  if left and not (scratch / SCRATCH_MARK).is_file():
    raise workdir_lib.WorkdirError(
        f"{scratch}, where an import into --workdir {workdir} is written before it is moved "
        f"into place, holds {left[0].name} and is not an import's: move it away")
  for path in left:
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink()


def _write_run(scratch: pathlib.Path, workdir: pathlib.Path, run, source: model_io.HFSource,
               checkpoint, mesh, skipped: list[str]) -> None:
  """Checkpoint 0 and the records of the run `workdir` will be, written into `scratch`."""
  model = model_io.fill_model(run.model, source.table(), checkpoint, mesh=mesh, cast=True)
  optimizer = run_setup.optimizer_for(run, model)
  tok = run_setup.tokenizer(run, scratch, may_train=True)
  iterator = run_setup.train_iterator(run, tok)
  run_setup.seed_checkpoint(run, scratch, 0, model, optimizer, iterator, mesh)
  if jax.process_index() == 0:
    _write_records(scratch, workdir, run, source, skipped)


def _write_records(scratch: pathlib.Path, workdir: pathlib.Path, run,
                   source: model_io.HFSource, skipped: list[str]) -> None:
  kept = scratch / SOURCE_DIR
  kept.mkdir()
  carried = model_io.carried_files(source.directory, skipped)
  for name in [model_io.CONFIG_FILE, *carried]:
    model_io.copy_plain(pathlib.Path(source.directory) / name, kept / name, source.directory)
  workdir_lib.write_atomic(scratch / CONFIG_PY,
                           _config_file(run.record, source.directory, workdir))
  workdir_lib.record_start(scratch, run.record, start_step=0, restored_from=None)
  workdir_lib.write_atomic(scratch / RECORD_FILE, json.dumps({
      "source": source.directory, "architecture": source.architecture,
      "layout": source.layout, "dtype": source.dtype, "tensor_dtypes": source.tensor_dtypes,
      "carried_files": carried, "step": 0, "optimizer_state": "fresh",
      "tokenizer": _tokenizer_note(run)}, indent=2, sort_keys=True))


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
  run = run_setup.open_run(workdir)
  model_io.check_exportable(run.model, source)
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  graphdef, state, step = run_setup.restore_for_eval(run, workdir, mesh, step)
  model, _ = nnx.merge(graphdef, state)
  files = []
  if jax.process_index() == 0:
    files = model_io.export(model, source, out_dir, dtype=dtype)
  say(f"exported checkpoint {step} of {workdir} as {source.architecture} "
      f"({convert.export_layout(source.layout)} "
      f"layout, {dtype or source.dtype}) into {out_dir}: {', '.join(files)}")
  return files
