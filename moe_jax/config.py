"""A run's config: an ml_collections ConfigDict validated into frozen dataclasses at one point.

    cfg = config_lib.load_file("configs/lm_tiny.py", overrides=["--config.steps=50"])
    run = config_lib.validate(cfg, num_devices=jax.device_count(), num_processes=1)
    run.model.num_experts, run.mesh.expert, run.optim.learning_rate, run.data.seq_len, ...

`validate` is the only place that reads the raw ConfigDict; everything after it takes the
typed `RunConfig`. Every check runs here, before anything is built or compiled, and every
error names the field as it is spelled on the command line (`config.model.num_experts`) and
what is allowed. Unknown keys are errors too, so a typo never silently falls back to a default.

ConfigDict layout (see configs/lm_tiny.py for a complete one):
    task ('lm' or 'classification'), seed, steps, log_every, eval_every, restore_step, aux_loss_weights{name: weight}
    model.*       TransformerConfig fields (dtype / param_dtype as strings: 'float32', 'bfloat16')
    optim.*       OptimConfig fields except total_steps (= steps)
    data.*        DataConfig: corpus (lm) or dataset (classification), data_dir (tfds),
                  tokenizer ('byte' or 'sentencepiece' with vocab_size), seq_len,
                  batch_size (global), eval_*
    classifier.*  pool ('mean' or 'cls'), patch_size (images)
    mesh.*        data, expert, model (one may be -1: the remaining devices)
    checkpoint.*  every, keep, async_save
    eval.*        prompt, sample_tokens, temperature, top_k
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
from typing import Any

import jax.numpy as jnp
import ml_collections

from moe_jax import dispatch, routing
from moe_jax.data import datasets
from moe_jax.data.sentencepiece_tokenizer import MIN_VOCAB_SIZE
from moe_jax.models.transformer import TransformerConfig, validate as validate_model
from moe_jax.parallel.mesh import resolve_axis_sizes
from moe_jax.train_step import OptimConfig
from moe_jax.validation import check_choice, check_float, check_int

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TOKENIZERS = ("byte", "sentencepiece")
TASKS = ("lm", "classification")
BYTE_VOCAB = 256


@dataclasses.dataclass(frozen=True)
class DataConfig:
  corpus: str = "pydoc_topics"         # task 'lm': an embedded corpus or a tfds LM dataset
  dataset: str = "digits"              # task 'classification': embedded or tfds
  data_dir: str = ""                   # tfds datasets: '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  tokenizer: str = "byte"              # 'byte' or 'sentencepiece' (trained into the workdir)
  vocab_size: int = 0                  # sentencepiece: 0 = config.model.vocab_size
  tokenizer_train_bytes: int = 10_000_000   # sentencepiece: training text read
  seq_len: int = 128
  batch_size: int = 16                 # global: summed over processes
  eval_batch_size: int = 16            # global
  eval_max_batches: int = 0            # 0: the whole validation split


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  pool: str = "mean"                   # 'mean' or 'cls'
  patch_size: int = 2                  # image datasets: p x p patches


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
class RunConfig:
  model: TransformerConfig
  optim: OptimConfig
  data: DataConfig
  mesh: MeshConfig                     # sizes resolved against the device count (no -1 left)
  checkpoint: CheckpointConfig
  eval: EvalConfig
  steps: int
  task: str = "lm"
  classifier: ClassifierConfig = ClassifierConfig()
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0                  # 0: evaluate at the end only
  restore_step: int | None = None      # None: resume from the newest checkpoint, if any
  aux_loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def tokens_per_step(self) -> int:
    return self.data.batch_size * self.data.seq_len


_TOP_LEVEL = {"task", "seed", "steps", "log_every", "eval_every", "restore_step", "aux_loss_weights"}
_SECTIONS = ("model", "optim", "data", "mesh", "checkpoint", "eval", "classifier")


def _field_names(cls, exclude=()) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)


def _section(cfg, name: str, cls, exclude=()) -> dict[str, Any]:
  """The section as a plain dict; unknown keys are errors naming the allowed ones."""
  raw = cfg.get(name, ml_collections.ConfigDict())
  raw = raw.to_dict() if isinstance(raw, ml_collections.ConfigDict) else dict(raw)
  allowed = _field_names(cls, exclude)
  for key in raw:
    if key not in allowed:
      raise ValueError(f"config.{name}.{key} is not a known field; allowed: "
                       + ", ".join(allowed))
  return raw


def _dtype(value, field: str):
  check_choice(field.rsplit(".", 1)[-1], value, DTYPES, owner=field.rsplit(".", 1)[0])
  return DTYPES[value]


def _model(cfg, mesh: MeshConfig, *, causal: bool) -> TransformerConfig:
  raw = _section(cfg, "model", TransformerConfig)
  for field in ("dtype", "param_dtype"):
    if field in raw:
      raw[field] = _dtype(raw[field], f"config.model.{field}")
  raw["router_options"] = dict(raw.get("router_options") or {})
  model = TransformerConfig(**raw)
  owner = "config.model"
  check_choice("router", model.router, routing.names(), owner=owner)
  check_choice("dispatcher", model.dispatcher, dispatch.names(), owner=owner)
  check_float("capacity_factor", model.capacity_factor, low=0.0, low_inclusive=False,
              owner=owner)
  if model.num_experts > 0:
    try:
      routing.get(model.router, num_experts=model.num_experts, **model.router_options)
    except (TypeError, ValueError) as e:
      raise ValueError(f"config.model.router_options (router {model.router!r}, "
                       f"num_experts={model.num_experts}): {e}") from e
    if model.num_experts % mesh.expert:
      raise ValueError(f"config.model.num_experts={model.num_experts} is not divisible by "
                       f"config.mesh.expert={mesh.expert}: each device must hold whole experts")
  validate_model(model, causal=causal, owner=owner)
  d_ff = model.d_ff or 4 * model.d_model
  for name, value in (("d_model", model.d_model), ("d_ff", d_ff),
                      ("expert_d_ff", model.expert_d_ff or d_ff)):
    if value % mesh.model:
      raise ValueError(f"config.model.{name}={value} is not divisible by "
                       f"config.mesh.model={mesh.model} (tensor parallelism splits it)")
  return model


def _data(cfg, model: TransformerConfig, mesh: MeshConfig, num_processes: int, task: str,
          classifier: ClassifierConfig) -> DataConfig:
  data = DataConfig(**_section(cfg, "data", DataConfig))
  owner = "config.data"
  check_choice("tokenizer", data.tokenizer, TOKENIZERS, owner=owner)
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
  if task == "lm":
    check_choice("corpus", data.corpus, datasets.lm_names(), owner=owner)
    length = check_int("seq_len", data.seq_len, low=1, high=model.max_len, owner=owner)
  else:
    check_choice("dataset", data.dataset, datasets.classification_names(), owner=owner)
    if data.dataset == "stdlib_package" and data.tokenizer != "byte":
      raise ValueError("config.data.tokenizer: the 'stdlib_package' snippets are byte tokens; "
                       "use tokenizer='byte'")
    kind, _, shape = datasets.classification_info(data)
    patch = classifier.patch_size
    if kind == "image" and (shape[0] % patch or shape[1] % patch):
      raise ValueError(f"config.classifier.patch_size={patch} does not divide the "
                       f"{shape[0]}x{shape[1]} images of {data.dataset!r}")
    length = (shape[0] // patch) * (shape[1] // patch) if kind == "image" else shape[0]
    length += classifier.pool == "cls"
    if length > model.max_len:
      raise ValueError(f"config.model.max_len={model.max_len} is shorter than the {length} "
                       f"positions of one {data.dataset!r} example")
  shards = mesh.data * mesh.expert   # the batch is split over both
  for name in ("batch_size", "eval_batch_size"):
    value = check_int(name, getattr(data, name), low=1, owner=owner)
    for divisor, why in ((shards, f"config.mesh.data x config.mesh.expert = {shards}"),
                         (num_processes, f"the {num_processes} processes")):
      if value % divisor:
        raise ValueError(f"config.data.{name}={value} is not divisible by {why}")
  per_device_tokens = data.batch_size // shards * length
  group = model.group_size or length
  if per_device_tokens % group:
    raise ValueError(f"config.model.group_size={group} does not divide the {per_device_tokens} "
                     "tokens each device routes per step")
  return data


def validate(cfg: ml_collections.ConfigDict, *, num_devices: int,
             num_processes: int = 1) -> RunConfig:
  """The typed, checked run config; raises ValueError naming the first bad field."""
  for key in cfg.keys():
    if key not in _TOP_LEVEL and key not in _SECTIONS:
      raise ValueError(f"config.{key} is not a known field; allowed: "
                       + ", ".join(sorted(_TOP_LEVEL) + list(_SECTIONS)))
  steps = check_int("steps", cfg.get("steps"), low=1, owner="config")
  task = check_choice("task", cfg.get("task", "lm"), TASKS, owner="config")
  classifier = ClassifierConfig(**_section(cfg, "classifier", ClassifierConfig))
  check_choice("pool", classifier.pool, ("mean", "cls"), owner="config.classifier")
  check_int("patch_size", classifier.patch_size, low=1, owner="config.classifier")
  try:
    mesh = MeshConfig(**resolve_axis_sizes(_section(cfg, "mesh", MeshConfig), num_devices))
  except ValueError as e:
    raise ValueError(f"config.mesh: {e}; on CPU, --cpu_devices=N simulates N devices") from e
  model = _model(cfg, mesh, causal=task == "lm")
  optim = OptimConfig(total_steps=steps, **_section(cfg, "optim", OptimConfig,
                                                     exclude=("total_steps",)))
  try:
    optim.validate()
  except ValueError as e:
    raise ValueError(f"config.{e}") from e
  checkpoint = CheckpointConfig(**_section(cfg, "checkpoint", CheckpointConfig))
  check_int("every", checkpoint.every, low=1, owner="config.checkpoint")
  check_int("keep", checkpoint.keep, low=1, owner="config.checkpoint")
  evaluation = EvalConfig(**_section(cfg, "eval", EvalConfig))
  check_int("sample_tokens", evaluation.sample_tokens, low=0, owner="config.eval")
  check_float("temperature", evaluation.temperature, low=0.0, owner="config.eval")
  check_int("top_k", evaluation.top_k, low=0, high=model.vocab_size, owner="config.eval")
  restore_step = cfg.get("restore_step")
  if restore_step is not None:
    check_int("restore_step", restore_step, low=0, owner="config")
  weights = dict(cfg.get("aux_loss_weights") or {})
  for name, w in weights.items():
    check_float(f"aux_loss_weights.{name}", w, low=0.0, owner="config")
  return RunConfig(
      model=model, optim=optim, data=_data(cfg, model, mesh, num_processes, task, classifier),
      mesh=mesh, checkpoint=checkpoint, eval=evaluation, steps=steps, task=task,
      classifier=classifier,
      seed=check_int("seed", cfg.get("seed", 0), low=0, high=2**31 - 1, owner="config"),
      log_every=check_int("log_every", cfg.get("log_every", 10), low=1, owner="config"),
      eval_every=check_int("eval_every", cfg.get("eval_every", 0), low=0, owner="config"),
      restore_step=restore_step, aux_loss_weights=weights)


def load_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (as ml_collections' config_flags loads it)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_moe_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))
