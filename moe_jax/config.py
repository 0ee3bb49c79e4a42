"""A run's config: a ConfigDict completed from one schema and validated into frozen dataclasses.

    cfg = config_lib.load_file("configs/lm_tiny.py")
    run = config_lib.validate(cfg, num_devices=jax.device_count(),
                              overrides=["--config.steps=50", "model.router=dense"])
    run.model.d_model, run.mesh.expert, run.optim.learning_rate, run.data.seq_len, run.notes

`validate` is the only place that reads the raw ConfigDict; everything after it takes the typed
`RunConfig`. The schema is the dataclasses below, `ModelSection` (the flat `config.model.*`
keys, with their checks: moe_jax/model_section.py) and each registered task's own sections
(its options: moe_jax/tasks/base.py `Section`): a config file sets only what it changes, every
field can be overridden from the command line whether or not the file sets it
(`moe_jax.overrides`), and an unknown key is an error naming the closest known one. Every
check runs here, before anything is built or compiled; every error names the field as it is
spelled on the command line (`config.model.num_experts`) and what is allowed. The task
(`config.task`) adds its own checks of `config.data` (`moe_jax.tasks`).

Forgiving where the intent is clear, and saying so once (`RunConfig.notes`): a warmup longer
than the run is clipped to it; router options from the config file that the chosen router does
not take are dropped (so `--config.model.router=dense` works on a top-k config), while such an
option set on the command line is an error.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
from typing import Sequence, get_type_hints

import ml_collections

# Layering (tests/test_layering.py): config sits above the tasks and below run setup. It
# imports `tasks` because validation checks config.task and the task's data (TaskData.check,
# Task.causal) against the registered tasks, and `validate` must do that whoever calls it (the
# CLIs, the sweep harness, tests that import only this module), so the built-in tasks must be
# loaded by this import. The edge points down: no task imports config or run setup; the
# distill task validates its teacher's config through the run services that run setup
# provides (moe_jax/tasks/base.py).
from moe_jax import model_section, overrides as overrides_lib, tasks
from moe_jax.data.sentencepiece_tokenizer import MIN_VOCAB_SIZE
from moe_jax.model_section import DTYPES, ModelSection, build_model_config  # noqa: F401
from moe_jax.models.transformer import TransformerConfig
from moe_jax.parallel.mesh import resolve_axis_sizes
from moe_jax.train_step import OptimConfig
from moe_jax.validation import check_choice, check_float, check_int
# flat_changes lives with the config record it diffs (workdir.py); re-exported for callers
from moe_jax.workdir import flat_changes  # noqa: F401

TOKENIZERS = ("byte", "sentencepiece")
BYTE_VOCAB = 256


@dataclasses.dataclass(frozen=True)
class DataConfig:
  corpus: str = "pydoc_topics"         # task 'lm': an embedded corpus, a tfds LM dataset or 'files'
  files: str = ""                      # corpus 'files': globs of .txt/.jsonl/.parquet (data.md)
  validation_files: str = ""           # corpus 'files': '' = ~1/10 of documents held out
  text_field: str = "text"             # corpus 'files': the .jsonl field / .parquet column
  dataset: str = "digits"              # task 'classification': embedded or tfds
  data_dir: str = ""                   # tfds datasets: '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  tokenizer: str = "byte"              # 'byte', 'sentencepiece' (trained into the workdir) or
                                       # a checkpoint's tokenizer.json (copied into the workdir)
  vocab_size: int = 0                  # sentencepiece: 0 = config.model.vocab_size
  tokenizer_train_bytes: int = 10_000_000   # sentencepiece: training text read
  seq_len: int = 128
  batch_size: int = 16                 # global: summed over processes
  eval_batch_size: int = 16            # global
  eval_max_batches: int = 0            # 0: the whole validation split; N: its first N batches
                                       # in the fixed shuffled order (a sample of the split)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  expert: int = 1
  model: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 100                     # steps between saves (the last step is always saved)
  keep: int = 3                        # the newest `keep` checkpoints are kept
  async_save: bool = False             # write in a background thread while training goes on


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  prompt: str = "The "
  sample_tokens: int = 200
  temperature: float = 0.8             # 0: greedy
  top_k: int = 40                      # 0: the whole vocabulary


@dataclasses.dataclass(frozen=True)
class TopLevel:
  """The fields outside any section."""
  task: str = "lm"
  seed: int = 0
  steps: int = 1000
  log_every: int = 10
  eval_every: int = 0                  # 0: evaluate at the end only
  restore_step: int | None = None      # None: resume from the newest checkpoint, if any
  aux_loss_weights: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: TransformerConfig
  optim: OptimConfig
  data: DataConfig
  mesh: MeshConfig                     # sizes resolved against the device count (no -1 left)
  checkpoint: CheckpointConfig
  eval: EvalConfig
  steps: int
  task: str = "lm"
  # every registered task's section (config.classifier, config.distill, ...), checked
  options: dict = dataclasses.field(default_factory=dict)
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0
  restore_step: int | None = None
  aux_loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
  positions: int = 0                   # positions one example fills (0: data.seq_len)
  notes: tuple[str, ...] = ()          # what validation adjusted, said once when a run starts
  record: dict = dataclasses.field(default_factory=dict, compare=False)  # -> config.json

  @property
  def tokens_per_step(self) -> int:
    """Positions the model processes per step: a classifier's patches (+ CLS) or bytes, which
    need not be data.seq_len (the LM window)."""
    return self.data.batch_size * (self.positions or self.data.seq_len)


def _schema_of(cls, exclude=()) -> dict[str, overrides_lib.Field]:
  hints = get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in exclude:
      continue
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    out[f.name] = overrides_lib.Field(hints[f.name], default)
  return out


# The run layer's sections; the registered tasks add theirs (moe_jax/tasks/base.py Section).
SECTIONS = {"model": ModelSection, "optim": OptimConfig, "data": DataConfig,
            "mesh": MeshConfig, "checkpoint": CheckpointConfig, "eval": EvalConfig}


def schema() -> dict:
  """Every known field (overrides_lib.Field) by section: built on each call, so a task
  registered after this module was imported has its section in it."""
  sections = {**{n: s.schema for n, s in tasks.sections().items()}, **SECTIONS}
  return {**_schema_of(TopLevel),
          **{name: _schema_of(cls, exclude=("total_steps",)) for name, cls in sections.items()}}


def defaults() -> ml_collections.ConfigDict:
  """Every known field at its default: what a config file's fields are laid over."""
  return ml_collections.ConfigDict(overrides_lib.defaults(schema()))


def resolve(cfg, overrides: Sequence[str] = ()) -> tuple[dict, frozenset[str]]:
  """(the complete config tree with `overrides` applied, the paths the overrides set)."""
  fields = schema()
  tree = overrides_lib.complete(cfg, fields)
  return overrides_lib.apply(tree, overrides, fields)


def _data(section: dict, model: TransformerConfig, mesh: MeshConfig, num_processes: int, task,
          options: dict) -> DataConfig:
  data = DataConfig(**section)
  owner = "config.data"
  if not data.tokenizer.endswith(".json"):      # else a tokenizer.json (data/hf_tokenizer.py)
    check_choice("tokenizer", data.tokenizer, TOKENIZERS + ("PATH/tokenizer.json",),
                 owner=owner)
  check_int("eval_max_batches", data.eval_max_batches, low=0, owner=owner)
  if data.tokenizer == "byte" and model.vocab_size < BYTE_VOCAB:
    raise ValueError(f"config.model.vocab_size={model.vocab_size} is smaller than the byte "
                     f"tokenizer's {BYTE_VOCAB} tokens")
  if data.tokenizer == "sentencepiece":
    if model.vocab_size < MIN_VOCAB_SIZE:
      raise ValueError(f"config.model.vocab_size={model.vocab_size} is too small for "
                       f"config.data.tokenizer='sentencepiece' (at least {MIN_VOCAB_SIZE}: 256 "
                       "byte-fallback pieces, the special ids and some merges)")
    vocab = check_int("vocab_size", data.vocab_size or model.vocab_size, low=MIN_VOCAB_SIZE,
                      high=model.vocab_size, owner=owner)
    check_int("tokenizer_train_bytes", data.tokenizer_train_bytes, low=1, owner=owner)
    data = dataclasses.replace(data, vocab_size=vocab)
  length = task.data.check(data, model, options)   # positions of one example
  shards = mesh.data * mesh.expert   # the batch is split over both
  for name in ("batch_size", "eval_batch_size"):
    value = check_int(name, getattr(data, name), low=1, owner=owner)
    for divisor, why in ((shards, f"config.mesh.data x config.mesh.expert = {shards}"),
                         (num_processes, f"the {num_processes} processes")):
      if value % divisor:
        raise ValueError(f"config.data.{name}={value} is not divisible by {why}")
  per_device_tokens = data.batch_size // shards * length
  group = (model.moe and model.moe.group_size) or length
  if per_device_tokens % group:
    raise ValueError(f"config.model.group_size={group} does not divide the {per_device_tokens} "
                     "tokens each device routes per step")
  return data, length


def _optim(section: dict, steps: int, notes: list) -> OptimConfig:
  section = dict(section)
  warmup, longest = section["warmup_steps"], max(steps - 1, 0)   # the cosine needs one step
  if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > longest:
    notes.append(f"config.optim.warmup_steps={warmup} does not fit in config.steps={steps}: "
                 f"warming up over the first {longest} steps instead")
    section["warmup_steps"] = longest
  optim = OptimConfig(total_steps=steps, **section)
  try:
    optim.validate()
  except ValueError as e:
    raise ValueError(f"config.{e}") from e
  return optim


# The overrides a mesh error suggests: all devices on the data axis, which fits any count.
FITTING_MESH = "--config.mesh.data=-1 --config.mesh.expert=1 --config.mesh.model=1"


def validate(cfg, *, num_devices: int, num_processes: int = 1,
             overrides: Sequence[str] = ()) -> RunConfig:
  """The typed, checked run config of `cfg` (a ConfigDict or dict, completed from the schema)
  with `overrides` ('--config.a.b=v' or 'a.b=v') applied; raises ValueError naming the first
  bad field."""
  tree, explicit = resolve(cfg, overrides)
  notes: list[str] = []
  steps = check_int("steps", tree["steps"], low=1, owner="config")
  task = tasks.get(check_choice("task", tree["task"], tasks.names(), owner="config"))
  options = {name: section.check(section.schema(**tree[name]))
             for name, section in tasks.sections().items()}
  try:
    mesh = MeshConfig(**resolve_axis_sizes(tree["mesh"], num_devices))
  except ValueError as e:
    raise ValueError(f"config.mesh: {e}; on CPU, --cpu_devices=N simulates N devices, or "
                     f"{FITTING_MESH} uses the {num_devices} there are") from e
  if tree["model"]["num_experts"]:   # the options the run uses are what config.json records
    tree["model"]["router_options"] = model_section.router_options(tree["model"], explicit, notes)
  model = model_section.check_model(tree["model"], mesh, causal=task.causal)
  optim = _optim(tree["optim"], steps, notes)
  checkpoint = CheckpointConfig(**tree["checkpoint"])
  check_int("every", checkpoint.every, low=1, owner="config.checkpoint")
  check_int("keep", checkpoint.keep, low=1, owner="config.checkpoint")
  evaluation = EvalConfig(**tree["eval"])
  check_int("sample_tokens", evaluation.sample_tokens, low=0, owner="config.eval")
  check_float("temperature", evaluation.temperature, low=0.0, owner="config.eval")
  check_int("top_k", evaluation.top_k, low=0, high=model.vocab_size, owner="config.eval")
  restore_step = tree["restore_step"]
  if restore_step is not None:
    check_int("restore_step", restore_step, low=0, owner="config")
  # config.json records the weights the run trains with, the router's defaults included.
  weights = tree["aux_loss_weights"] = model_section.aux_loss_weights(tree)
  data, positions = _data(tree["data"], model, mesh, num_processes, task, options)
  return RunConfig(
      model=model, optim=optim, data=data, positions=positions,
      mesh=mesh, checkpoint=checkpoint, eval=evaluation, steps=steps, task=task.name,
      options=options,
      seed=check_int("seed", tree["seed"], low=0, high=2**31 - 1, owner="config"),
      log_every=check_int("log_every", tree["log_every"], low=1, owner="config"),
      eval_every=check_int("eval_every", tree["eval_every"], low=0, owner="config"),
      restore_step=restore_step, aux_loss_weights=weights, notes=tuple(notes), record=tree)


def load_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """`get_config()` of a config file. The file's directory is importable while it loads, so
  configs/ files share `configs/common.py` by `import common`."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_moe_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(path.parent.absolute()))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(path.parent.absolute()))
    sys.modules.pop("common", None)   # another directory's common.py may be loaded next
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {str(path)!r} defines no get_config()")
  return module.get_config()


def to_json(cfg) -> str:
  tree = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
  return json.dumps(tree, indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))
