"""moe_jax.hf against transformers: logits of the imported fixtures equal transformers' own
(tests/fixtures/hf/make_fixtures.py made them), export writes the same bytes back, bfloat16
stays bfloat16, a sharded import computes the same, each refusal one line that writes nothing.
The CLI's import / train / evaluate / export chain: tests/test_hf_cli.py."""
import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from moe_jax import hf
from moe_jax.hf import model_io, safetensors_io, workdirs
from moe_jax.models.transformer import DecoderLM
from moe_jax.parallel import make_mesh
from moe_jax.workdir import WorkdirError
from tests.train_helpers import REPO, snapshot

FIXTURES = REPO / "tests" / "fixtures" / "hf"
REFERENCE = np.load(FIXTURES / "reference_logits.npz")
FLOAT32 = ["mixtral", "mixtral_fused", "qwen3_moe", "olmoe", "qwen2_moe"]
ALL = FLOAT32 + ["qwen3_moe_bf16"]


def _logits(model, tokens):
  return np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, tokens))


@pytest.mark.parametrize("name", FLOAT32)
def test_imported_logits_equal_transformers(name):
  model, source = hf.load(FIXTURES / name)
  assert source.layout == ("fused" if name.endswith("fused") else "hub")
  np.testing.assert_allclose(_logits(model, REFERENCE[f"{name}_tokens"]),
                             REFERENCE[f"{name}_logits"], rtol=0, atol=1e-5)


def test_the_families_map_onto_moe_jax_options():
  sections = {n: hf.load(FIXTURES / n)[1].section for n in ("mixtral", "qwen3_moe", "olmoe",
                                                            "qwen3_moe_bf16", "qwen2_moe")}
  assert sections["mixtral"]["router_options"] == {"k": 2, "order": "softmax_topk",
                                                   "renormalize": True}
  assert sections["olmoe"]["router_options"]["renormalize"] is False      # norm_topk_prob
  assert sections["qwen3_moe"]["router_options"]["renormalize"] is True
  assert (sections["qwen3_moe"]["head_dim"], sections["qwen3_moe"]["qk_norm"]) == (16, "head")
  assert sections["olmoe"]["qk_norm"] == "full" and sections["mixtral"]["qk_norm"] == "none"
  # mlp_only_layers=[0], decoder_sparse_step=2: each a dense layer 0 before MoE layer 1
  for name in ("qwen3_moe", "qwen3_moe_bf16", "qwen2_moe"):
    config = hf.model_io.model_config(sections[name])
    assert [config.is_moe_layer(i) for i in range(2)] == [False, True]
  qwen2 = sections["qwen2_moe"]       # a sigmoid-gated shared expert, q/k/v biases
  assert (qwen2["shared_d_ff"], qwen2["shared_gate"], qwen2["qkv_bias"]) == (20, True, True)
  assert qwen2["router_options"]["renormalize"] is False and qwen2["qk_norm"] == "none"
  assert not any("shared" in k or "qkv_bias" in k for n in sections if n != "qwen2_moe"
                 for k in sections[n])
  assert {s["dispatcher"] for s in sections.values()} == {"dropless"}      # HF drops nothing
  assert sections["mixtral"]["num_kv_heads"] == 2


# The config.json of real Hub checkpoints (transformers 4.x fields), as published when this was
# written; the tests do not download them. Each must be understood in full.
HUB_CONFIGS = {
    "Mixtral-8x7B-v0.1": {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
        "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_theta": 1e6, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.36.0.dev0", "use_cache": True, "vocab_size": 32000},
    "Qwen3-30B-A3B": {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1,
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
        "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32,
        "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
        "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1e6, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    "OLMoE-1B-7B-0924": {
        "architectures": ["OlmoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "clip_qkv": None, "eos_token_id": 50279, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 1024, "max_position_embeddings": 4096,
        "model_type": "olmoe", "norm_topk_prob": False, "num_attention_heads": 16,
        "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 16,
        "num_key_value_heads": 16, "output_router_logits": False, "pad_token_id": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 50304},
    "Qwen1.5-MoE-A2.7B": {      # 4.x: no qkv_bias field (its attention always had biases)
        "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151643,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21,
        "model_type": "qwen2_moe", "moe_intermediate_size": 1408, "norm_topk_prob": False,
        "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_key_value_heads": 16, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_theta": 1e6, "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 5632, "sliding_window": 32768,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0.dev0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
}


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_hub_configs_are_understood(name):
  from moe_jax.hf import convert, families
  config = HUB_CONFIGS[name]
  family = families.family_of(config)
  section = families.model_section(family, config, families.dtype_name(config))
  model = hf.model_io.model_config(section)        # a valid moe_jax model, built on demand
  assert model.param_dtype == jax.numpy.bfloat16 and model.moe.built_router.name == "topk"
  table = convert.mappings(family, section, "hub")
  names = {n for m in table for n in m.tensors}
  experts = {"Mixtral-8x7B-v0.1": (8, 2, 32), "Qwen3-30B-A3B": (128, 8, 48),
             "OLMoE-1B-7B-0924": (64, 8, 16), "Qwen1.5-MoE-A2.7B": (60, 4, 24)}[name]
  assert (model.moe.num_experts, model.moe.built_router.options["k"], model.num_layers) == experts
  # the Hub's per-expert names, one Linear per expert and projection (Qwen1.5-MoE: + the
  # shared expert's three and its gate, + the q/k/v biases)
  layer0 = {n for n in names if n.startswith("model.layers.0.")}
  qwen2 = name.startswith("Qwen1.5")
  assert len(layer0) == (3 * experts[0] + 1 + 6 + 2 * (family.qk_norm != "none")
                         + 7 * qwen2)
  assert convert.expected_count(section, "hub") == len(names)
  assert ("model.layers.0.block_sparse_moe.experts.3.w1.weight" in names
          or "model.layers.0.mlp.experts.3.gate_proj.weight" in names)


def decoded_logits(model, tokens, prefill: int = 5):
  """The logits KV-cache decoding gives: `prefill` positions at once, then one at a time."""
  import jax.numpy as jnp
  tokens = jnp.asarray(tokens)
  step = nnx.jit(lambda m, t, c, s: m.decode(t, c, s)[::2], static_argnums=3)
  logits, caches = step(model, tokens[:, :prefill], model.init_cache(*tokens.shape), 0)
  pieces = [logits]
  for i in range(prefill, tokens.shape[1]):
    logits, caches = step(model, tokens[:, i:i + 1], caches, i)
    pieces.append(logits)
  return np.concatenate(pieces, 1)


def copy_with_config(tmp_path, name, changes=None):
  """The fixture `name` copied, its config.json updated with `changes`."""
  directory = tmp_path / name
  shutil.copytree(FIXTURES / name, directory)
  edit_config(directory, **(changes or {}))
  return directory


def edit_config(directory, **changes):
  """config.json in `directory` updated with `changes`."""
  if changes:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _tensors(directory):
  ckpt = safetensors_io.open_checkpoint(directory)
  return {n: (str(ckpt.dtype(n)), ckpt.shape(n), ckpt[n].tobytes()) for n in ckpt.names()}


def assert_logits_and_export_equal(model, source, name, out):
  """The imported fixture's logits are transformers' (to 1e-5), and its export to `out`
  writes the fixture's tensors, byte for byte, and its config.json."""
  np.testing.assert_allclose(_logits(model, REFERENCE[f"{name}_tokens"]),
                             REFERENCE[f"{name}_logits"], rtol=0, atol=1e-5)
  return assert_export_equal(model, source, name, out)


def assert_export_equal(model, source, name, out):
  """The export to `out` writes the fixture's tensors, byte for byte, and its config.json."""
  files = hf.export(model, source, out)
  assert _tensors(out) == _tensors(FIXTURES / name)
  assert (json.loads((out / "config.json").read_text())
          == json.loads((FIXTURES / name / "config.json").read_text()))
  return files


def assert_load_refused(tmp_path, name, changes, message):
  """The fixture with config.json updated by `changes` is refused, `message` in the error."""
  with pytest.raises(ValueError, match=message):
    hf.load(copy_with_config(tmp_path, name, changes))


@pytest.mark.parametrize("name", ALL)
def test_export_writes_the_same_tensors_and_config(name, tmp_path):
  model, source = hf.load(FIXTURES / name)
  files = assert_export_equal(model, source, name, tmp_path / "out")
  assert "generation_config.json" in files      # carried along


@pytest.mark.parametrize("changes,message", [
    (dict(rope_theta=500.0), r"the model's rope_theta=500.0 but OlmoeForCausalLM"),
    (dict(router_options={"k": 1}), r"the model's router \(.*'k': 1.*\) is not "
                                    r"OlmoeForCausalLM's"),
    # No tensor of the family holds a q/k/v bias: written, it would be dropped.
    (dict(qkv_bias=True), r"the model's param transformer/blocks/0/attn/qkv_bias has no "
                          r"tensor in OlmoeForCausalLM"),
])
def test_export_refuses_a_model_the_source_family_cannot_hold(tmp_path, changes, message):
  source = hf.load(FIXTURES / "olmoe")[1]
  section = {**source.section, **changes}
  if "router_options" in changes:
    section["router_options"] = {**source.section["router_options"], **changes["router_options"]}
  model = DecoderLM(model_io.model_config(section), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=message):
    hf.export(model, source, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_bfloat16_stays_bfloat16():
  name = "qwen3_moe_bf16"
  model, source = hf.load(FIXTURES / name)
  assert source.dtype == "bfloat16"
  dtypes = {a.dtype for a in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {np.dtype(ml_dtypes.bfloat16)}
  assert model.transformer.config.param_dtype == jax.numpy.bfloat16
  # bf16 params, f32 compute: transformers' float32 forward of the same (upcast) weights.
  model32, _ = hf.load(FIXTURES / name, dtype="float32")
  assert {a.dtype for a in jax.tree.leaves(nnx.state(model32, nnx.Param))} == dtypes
  np.testing.assert_allclose(_logits(model32, REFERENCE[f"{name}_tokens"]),
                             REFERENCE[f"{name}_logits"], rtol=0, atol=1e-5)


def test_sharded_import_on_a_data_expert_mesh_gives_the_same_logits():
  mesh = make_mesh(data=2, expert=4)
  model, _ = hf.load(FIXTURES / "mixtral", mesh=mesh)       # the sharded (index) checkpoint
  w_gate = model.transformer.blocks[0].ffn.expert_params["w_gate"][...]
  assert w_gate.shape == (4, 32, 16)
  assert w_gate.sharding.spec == P("expert", None, "model")
  assert len({d for s in w_gate.addressable_shards for d in [s.device]}) == 8
  tokens = np.tile(REFERENCE["mixtral_tokens"], (4, 1))      # 8 sequences: 1 per device
  np.testing.assert_allclose(_logits(model, tokens), np.tile(REFERENCE["mixtral_logits"],
                                                             (4, 1, 1)), rtol=0, atol=1e-5)


def test_transformers_4_configs_and_sharded_exports_read_the_same(tmp_path):
  """Hub configs written by transformers 4.x say rope_theta, torch_dtype and num_experts where
  5.x says rope_parameters, dtype and num_local_experts; shards are read like one file."""
  old = tmp_path / "qwen3_v4"
  shutil.copytree(FIXTURES / "qwen3_moe", old)
  config = json.loads((old / "config.json").read_text())
  config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
  config["torch_dtype"] = config.pop("dtype")
  config["num_experts"] = config.pop("num_local_experts")
  config.update(rope_scaling=None, max_window_layers=2)
  (old / "config.json").write_text(json.dumps(config))
  a, source = hf.load(FIXTURES / "qwen3_moe")
  b, _ = hf.load(old)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(a)),
               nnx.to_pure_dict(nnx.state(b)))
  files = hf.export(a, source, tmp_path / "sharded", max_shard_bytes=20_000)
  assert safetensors_io.INDEX_FILE in files and len(files) > 4
  assert _tensors(tmp_path / "sharded") == _tensors(FIXTURES / "qwen3_moe")


def test_safetensors_round_trip_and_corrupt_files(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.array([1.5, -2.25], ml_dtypes.bfloat16), "c": np.zeros((0, 4), np.int64),
             "d": np.array([True, False])}
  safetensors_io.write_file(tmp_path / "x.safetensors", tensors, {"format": "pt"})
  f = safetensors_io.SafetensorsFile(tmp_path / "x.safetensors")
  assert f.metadata == {"format": "pt"}
  for name, array in tensors.items():
    assert f[name].dtype == array.dtype and f[name].tobytes() == array.tobytes()
  length = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
  assert length % 8 == 0
  raw = bytearray((tmp_path / "x.safetensors").read_bytes())
  (tmp_path / "short.safetensors").write_bytes(bytes(raw[:-4]))   # data cut off
  bad = r"short.safetensors: not a safetensors file the safetensors library can read: \S"
  with pytest.raises(ValueError, match=bad):
    safetensors_io.SafetensorsFile(tmp_path / "short.safetensors")
  (tmp_path / "junk.safetensors").write_bytes(b"\x05" + b"\x00" * 7 + b"nope!")
  with pytest.raises(ValueError, match=r"junk.safetensors: not a safetensors file"):
    safetensors_io.SafetensorsFile(tmp_path / "junk.safetensors")
  with pytest.raises(ValueError, match="has no safetensors code"):
    safetensors_io.write_file(tmp_path / "y.safetensors", {"z": np.zeros(2, np.complex64)})


@pytest.mark.parametrize("name,changes,message", [
    ("olmoe", dict(architectures=["OlmoForCausalLM"]),
     r"architectures=\['OlmoForCausalLM'\] is not supported"),
    ("mixtral", dict(sliding_window=4096),
     r"sliding_window=4096 is not supported for MixtralForCausalLM"),
    ("qwen3_moe", dict(use_sliding_window=True), r"use_sliding_window=True is not supported"),
    ("olmoe", dict(rope_scaling={"type": "linear", "factor": 2.0}), r"rope_scaling=.* is not"),
    ("olmoe", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     r"rope_parameters.rope_type='yarn' is not supported"),
    ("olmoe", dict(clip_qkv=8.0), r"clip_qkv=8.0 is not supported"),
    ("olmoe", dict(tie_word_embeddings=True), r"tie_word_embeddings=True is not supported"),
    ("olmoe", dict(hidden_act="gelu"), r"hidden_act='gelu' is not supported"),
    ("olmoe", dict(some_new_field=1), r"field 'some_new_field'=1 is not understood"),
    ("olmoe", dict(num_experts_per_tok=9), r"num_experts_per_tok=9 must be in 1..4"),
    ("qwen3_moe", dict(num_hidden_layers=4, mlp_only_layers=[2]),
     r"mlp_only_layers=\[2\] makes MoE layers \[0, 1, 3\], which .* cannot express"),
    ("qwen3_moe", dict(num_hidden_layers=3), r"tensor 'model.layers.2.input_layernorm.weight' is "
                                             "missing"),
    ("olmoe", dict(hidden_size=64), r"tensor 'lm_head.weight' has shape \[256, 32\], config.json "
                                    r"implies \[256, 64\]"),
])
def test_what_is_not_understood_is_an_error_naming_it(tmp_path, name, changes, message):
  assert_load_refused(tmp_path, name, changes, message)


def test_bias_tensors_are_refused_by_name(tmp_path):
  directory = copy_with_config(tmp_path, "olmoe")
  ckpt = safetensors_io.open_checkpoint(directory)
  tensors = {n: np.array(ckpt[n]) for n in ckpt.names()}
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
  safetensors_io.write_checkpoint(directory, tensors)
  with pytest.raises(ValueError, match=r"tensor 'model.layers.0.self_attn.q_proj.bias' is not "
                                       r"understood \(moe_jax imports the biases a "
                                       r"family's config implies: q/k/v with qkv_bias"):
    hf.load(directory)


def test_import_refusals_write_nothing(tmp_path):
  used = tmp_path / "used"
  used.mkdir()
  (used / "notes.txt").write_text("mine")
  before = snapshot(used)
  with pytest.raises(WorkdirError, match=r"is not empty \(it holds notes.txt\)"):
    workdirs.import_workdir(FIXTURES / "olmoe", used, overrides=["data.seq_len=16"],
                            say=lambda _: None)
  assert snapshot(used) == before
  with pytest.raises(ValueError, match=r"config.model.d_model: the imported checkpoint sets the "
                                       "model; an import can change only dtype"):
    workdirs.import_workdir(FIXTURES / "olmoe", tmp_path / "new",
                            overrides=["model.d_model=64"])
  with pytest.raises(ValueError, match=r"byte tokenizer's 256 tokens"):   # vocab 128 < 256
    workdirs.import_workdir(FIXTURES / "mixtral", tmp_path / "new", overrides=["data.seq_len=16"])
  assert not (tmp_path / "new").exists()


# The CLI: import -> train on -> evaluate -> export. One device and the sort dispatcher (an
# override an import allows; with room for every token it drops none) compile fastest.
