"""Config validation: every shipped config validates; every bad value names its field."""
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from moe_jax import config as config_lib
from moe_jax.run_setup import build
from tests.train_helpers import REPO

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# The device count each shipped config's mesh is sized for.
DEVICES = {"lm_tiny": 8, "lm_small": 8, "lm_gpu_node": 8, "lm_tpu_pod": 256,
           "classify_digits": 8, "classify_text": 8, "classify_cifar10": 8, "lm_lm1b": 8}


def _load(name="lm_tiny"):
  return config_lib.load_file(CONFIGS / f"{name}.py")


def test_every_config_file_is_covered():
  assert {p.stem for p in CONFIGS.glob("*.py")} - {"common"} == set(DEVICES)


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_config_validates_and_builds_abstractly_on_its_mesh(name):
  """Parameter shapes and shardings without allocating: nnx.eval_shape on an AbstractMesh."""
  run = config_lib.validate(_load(name), num_devices=DEVICES[name])
  assert run.mesh.data * run.mesh.expert * run.mesh.model == DEVICES[name]
  sizes = (run.mesh.data, run.mesh.expert, run.mesh.model)
  mesh = AbstractMesh(sizes, ("data", "expert", "model"), axis_types=(AxisType.Auto,) * 3)
  model, _ = nnx.eval_shape(lambda: build(run, mesh))
  params = nnx.state(model, nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  assert sum(int(np.prod(x.shape)) for _, x in leaves) > 0
  experts = [x for path, x in leaves if "expert_params" in jax.tree_util.keystr(path)]
  if run.model.num_experts:
    assert experts and all(x.shape[0] == run.model.num_experts for x in experts)
    spec = experts[0].sharding.spec
    assert spec[0] == "expert", spec          # experts split over the expert axis


def test_config_docstrings_give_the_command():
  for name in DEVICES:
    doc = (CONFIGS / f"{name}.py").read_text().split('"""')[1]
    assert "python -m moe_jax.train --config configs/" + name in doc, name


def _override(cfg, dotted, value):
  *path, leaf = dotted.split(".")
  node = cfg
  for key in path:
    node = node[key]
  with cfg.unlocked():
    node[leaf] = value
  return cfg


BAD = [
    ("model.router", "nope", r"config\.model: option 'router'='nope' is not allowed; allowed: .*'topk'"),
    ("model.dispatcher", "fast", r"config\.model: option 'dispatcher'.*allowed: 'dropless'"),
    ("model.router_options", {"k": 9}, r"config\.model\.router_options.*k"),
    ("model.num_experts", 6, r"config\.model\.num_experts=6 is not divisible by config\.mesh\.expert=4"),
    ("model.capacity_factor", 0.0, r"config\.model: option 'capacity_factor'=0\.0"),
    ("model.router", "sinkhorn", r"not causal-safe.*config\.model\.allow_non_causal_router"),
    ("model.dtype", "float8", r"config\.model: option 'dtype'='float8'.*'bfloat16'"),
    ("model.d_modle", 3, r"config\.model\.d_modle is not a known field; did you mean config\.model\.d_model\?"),
    ("mesh.expert", 3, r"config\.mesh: .*needs 6 devices, but there are 8"),
    ("mesh.data", -1, None),   # -1 is allowed: the rest
    ("steps", 0, r"config: option 'steps'=0 is out of range"),
    ("optim.learning_rate", -1.0, r"config\.optim: option 'learning_rate'=-1\.0"),
    ("optim.total_steps", 5, r"config\.optim\.total_steps is not a known field"),
    ("data.seq_len", 4096, r"config\.data: option 'seq_len'=4096 is out of range; allowed: 1 <= seq_len <= 64"),
    ("data.corpus", "wiki", r"config\.data: option 'corpus'='wiki'.*'pydoc_topics'"),
    ("data.batch_size", 12, r"config\.data\.batch_size=12 is not divisible by config\.mesh\.data x config\.mesh\.expert = 8"),
    ("checkpoint.keep", 0, r"config\.checkpoint: option 'keep'=0"),
    ("eval.top_k", 1000, r"config\.eval: option 'top_k'=1000"),
    ("restore_step", -2, r"config: option 'restore_step'=-2"),
    ("learning_rate", 1.0, r"config\.learning_rate is not a known field; did you mean config\.optim\.learning_rate\?"),
    ("data.tokenizer", "wordpiece", r"config\.data: option 'tokenizer'='wordpiece'.*'sentencepiece'"),
    ("data.vocab_size", 100, None),   # ignored by the byte tokenizer
]


def test_sentencepiece_vocab_must_fit_the_model():
  cfg = _override(_load(), "data.tokenizer", "sentencepiece")
  with pytest.raises(ValueError, match=r"config\.model\.vocab_size=256 is too small for "
                                       r"config\.data\.tokenizer='sentencepiece'"):
    config_lib.validate(cfg, num_devices=8)
  cfg = _override(cfg, "model.vocab_size", 512)
  assert config_lib.validate(cfg, num_devices=8).data.vocab_size == 512   # 0: the model's
  with pytest.raises(ValueError, match=r"config\.data: option 'vocab_size'=1024 is out of "
                                       r"range; allowed: 275 <= vocab_size <= 512"):
    config_lib.validate(_override(cfg, "data.vocab_size", 1024), num_devices=8)


def test_byte_snippet_task_refuses_sentencepiece():
  cfg = _override(_load("classify_text"), "data.tokenizer", "sentencepiece")
  cfg = _override(cfg, "model.vocab_size", 512)
  with pytest.raises(ValueError, match=r"config\.data\.tokenizer.*stdlib_package.*'byte'"):
    config_lib.validate(cfg, num_devices=8)


@pytest.mark.parametrize("field,value,message", BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD])
def test_bad_values_name_the_field(field, value, message):
  cfg = _override(_load(), field, value)
  if message is None:
    config_lib.validate(cfg, num_devices=8)
    return
  with pytest.raises(ValueError, match=message):
    config_lib.validate(cfg, num_devices=8)


def test_mesh_error_hints_at_simulated_devices():
  with pytest.raises(ValueError, match=r"needs 8 devices, but there are 1.*--cpu_devices"):
    config_lib.validate(_load(), num_devices=1)


def test_batch_must_divide_over_processes():
  cfg = _override(_override(_load(), "mesh.data", 1), "mesh.expert", 1)
  cfg = _override(cfg, "data.batch_size", 3)
  with pytest.raises(ValueError, match=r"batch_size=3 is not divisible by the 2 processes"):
    config_lib.validate(cfg, num_devices=1, num_processes=2)


def test_json_round_trip_gives_the_same_run():
  cfg = _load()
  again = config_lib.from_json(config_lib.to_json(cfg))
  assert config_lib.validate(again, num_devices=8) == config_lib.validate(cfg, num_devices=8)


def test_missing_config_file():
  with pytest.raises(FileNotFoundError, match="no_such.py"):
    config_lib.load_file(CONFIGS / "no_such.py")


def test_the_model_section_is_the_model_dataclasses_fields_written_once():
  """config.model.* is TransformerConfig's fields with MoEConfig's flattened in, at their
  defaults except where a config needs its own (required sizes, names for objects)."""
  import dataclasses
  from moe_jax.models.transformer import TransformerConfig, make_config
  from moe_jax.moe_config import MoEConfig

  def default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

  section = {f.name: default(f) for f in dataclasses.fields(config_lib.ModelSection)}
  model = {f.name: f for f in dataclasses.fields(TransformerConfig) if f.name != "moe"}
  moe = {f.name: f for f in dataclasses.fields(MoEConfig)}
  assert set(section) == set(model) | set(moe)
  own = {"vocab_size": 256, "d_model": 128, "num_layers": 4, "num_heads": 4, "num_experts": 0,
         "expert_d_ff": None, "dtype": "float32", "param_dtype": "float32", "router": "topk",
         "dispatcher": "sort"}
  for name, value in section.items():
    if name in own:
      assert value == own[name], name
    else:
      assert value == default(model.get(name) or moe[name]), name
  # the defaults build a model, dense and MoE
  dtypes = {"dtype": jax.numpy.float32, "param_dtype": jax.numpy.float32}
  built = make_config(**{**section, **dtypes})
  assert built.moe is None and built.d_model == 128
  built = make_config(**{**section, **dtypes, "num_experts": 4})
  assert built.moe.num_experts == 4 and built.moe.capacity_factor == 1.25


def test_the_shared_configs_set_only_what_differs_from_the_schema():
  """configs/common.py restates no schema default (one place for each default); `task`
  names what a builder builds and may equal the default."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("common", REPO / "configs" / "common.py")
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  defaults = config_lib.defaults().to_dict()
  built = {"base": common.base(steps=1), "byte_lm": common.byte_lm(steps=1, corpus="x"),
           "accelerator_lm": common.accelerator_lm(steps=1, corpus="x"),
           "classifier": common.classifier(steps=1, dataset="x")}
  for name, cfg in built.items():
    restated = []
    for section, value in cfg.to_dict().items():
      if section == "task":
        continue
      if isinstance(value, dict):
        restated += [f"{section}.{k}" for k, v in value.items() if defaults[section][k] == v]
      elif defaults[section] == value:
        restated.append(section)
    assert not restated, f"common.{name} restates schema defaults: {restated}"


def test_a_task_owns_its_config_section():
  """A registered task's Section joins the schema (defaults, overrides, typo hints) and its
  check runs in validate; the task reads it as run.options[name]. No edit of config.py."""
  import dataclasses
  from moe_jax import tasks
  from moe_jax.tasks import registry

  @dataclasses.dataclass(frozen=True)
  class Probe:
    depth: int = 3

  def check(probe):
    if probe.depth < 1:
      raise ValueError(f"config.probe.depth={probe.depth} must be >= 1")
    return probe

  lm = tasks.get("lm")
  task = lm._replace(name="probe_task", sections=(tasks.Section("probe", Probe, check),))
  tasks.register(task)
  try:
    cfg = config_lib.load_file(REPO / "configs/lm_tiny.py")
    assert config_lib.defaults().probe.depth == 3
    run = config_lib.validate(cfg, num_devices=8, overrides=["--config.probe.depth=5"])
    assert run.options["probe"] == Probe(depth=5)
    assert run.record["probe"] == {"depth": 5}            # config.json records it
    with pytest.raises(ValueError, match=r"config\.probe\.depth=0 must be >= 1"):
      config_lib.validate(cfg, num_devices=8, overrides=["probe.depth=0"])
    with pytest.raises(ValueError, match=r"did you mean --config\.probe\.depth\?"):
      config_lib.validate(cfg, num_devices=8, overrides=["probe.dept=2"])
    clash = lm._replace(name="clash", sections=(tasks.Section("probe", dict),))
    with pytest.raises(ValueError, match="config section 'probe' is already declared"):
      tasks.register(clash)
  finally:
    registry._TASKS.remove("probe_task")
  assert "probe" not in config_lib.defaults()
