"""The GPT-OSS family (GptOssForCausalLM) against transformers 5.25 (the fixture is
tests/fixtures/hf/make_fixtures.py's `gpt_oss`): attention sinks, a sliding window on the even
layers, q/k/v and output biases, head_dim != hidden / heads, YaRN, a biased router taking the
softmax of its top-k logits, biased experts with the clamped SwiGLU in the interleaved gate_up
layout; the Hub's MXFP4 experts. Logits equal transformers', export writes the same bytes (an
MXFP4 source: dequantised), KV-cache decoding computes the same, and what is not understood is
an error naming it."""
import json

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from moe_jax import hf
from moe_jax.hf import mxfp4, safetensors_io
from tests.test_hf import (FIXTURES, REFERENCE, _logits, assert_load_refused,
                           assert_logits_and_export_equal, copy_with_config,
                           decoded_logits)

NAME = "gpt_oss"


def test_logits_equal_transformers_export_writes_the_same_bytes_and_decoding_agrees(tmp_path):
  model, source = hf.load(FIXTURES / NAME)
  s = source.section
  assert (s["attention_sinks"], s["sliding_window"], s["sliding_every"], s["qkv_bias"],
          s["out_bias"], s["head_dim"], s["activation"], s["expert_bias"]) == \
      (True, 4, 2, True, True, 12, "clamped_swiglu", True)
  assert s["router_options"] == {"k": 2, "order": "topk_softmax", "bias": True}
  assert s["rope_scaling"] == {"factor": 4.0, "original_max_position_embeddings": 16,
                               "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}
  assert_logits_and_export_equal(model, source, NAME, tmp_path / "out")  # interleaved back
  # KV cache: prefill 5 positions (past layer 0's 4-token window), then one at a time
  np.testing.assert_allclose(decoded_logits(model, REFERENCE[f"{NAME}_tokens"]),
                             REFERENCE[f"{NAME}_logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("changes,message", [
    (dict(quantization_config={"quant_method": "bitsandbytes"}),
     r"quant_method='bitsandbytes'\) is not supported; moe_jax reads GPT-OSS's 'mxfp4'"),
    (dict(quantization_config={"quant_method": "mxfp4"}),
     r"says the experts are MXFP4, but the checkpoint holds float expert tensors"),
    (dict(layer_types=["full_attention", "sliding_attention"]),
     r"layer_types=\['full_attention', 'sliding_attention'\] is not supported"),
    (dict(swiglu_limit=5.0), r"swiglu_limit=5.0 is not supported"),
    (dict(some_new_field=1), r"field 'some_new_field'=1 is not understood"),
    (dict(attention_bias=False), r"tensor 'model.layers.0.self_attn.k_proj.bias' is not "
                                 r"understood"),
])
def test_what_is_not_understood_is_an_error_naming_it(tmp_path, changes, message):
  assert_load_refused(tmp_path, NAME, changes, message)


@pytest.mark.parametrize("changes,message", [
    (dict(experts_per_token=3), r"num_experts_per_tok=2 contradicts experts_per_token=3"),
    (dict(quantization_config=None), r"quantization_config is absent, but the checkpoint "
                                     r"holds MXFP4 expert blocks and scales"),
    (dict(intermediate_size=48), r"intermediate_size=48 is not a multiple of 32, the MXFP4 "
                                 r"block"),
])
def test_what_an_mxfp4_checkpoint_cannot_be_is_an_error_naming_it(tmp_path, changes, message):
  assert_load_refused(tmp_path, "gpt_oss_mxfp4", changes, message)


def test_mxfp4_blocks_must_be_bytes(tmp_path):
  directory = copy_with_config(tmp_path, "gpt_oss_mxfp4")
  ckpt = safetensors_io.open_checkpoint(directory)
  tensors = {n: np.asarray(ckpt[n]) for n in ckpt.names()}
  name = next(n for n in tensors if n.endswith("down_proj_blocks"))
  tensors[name] = tensors[name].astype(np.int8)
  (directory / "model.safetensors").unlink()
  safetensors_io.write_checkpoint(directory, tensors)
  with pytest.raises(ValueError, match=rf"tensor '{name}' has dtype int8, MXFP4 blocks and "
                                       r"scales are uint8"):
    hf.load(directory)


# gpt-oss-20b's config.json on the Hub (transformers 4.55 era). Written from memory (no
# network here); its sizes are transformers' GptOssConfig defaults but for 24 layers and 32
# experts. Its experts are MXFP4 (read as such).
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
    "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
    "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn",
                                                       "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"],
                            "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05, "rope_scaling": {
        "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
        "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
    "swiglu_limit": 7.0, "tie_word_embeddings": False, "transformers_version": "4.55.0.dev0",
    "use_cache": True, "vocab_size": 201088}


def test_the_hub_config_of_gpt_oss_20b_is_understood():
  s = hf.families.model_section(hf.families.family_of(GPT_OSS_20B), GPT_OSS_20B, "bfloat16")
  assert (s["num_experts"], s["expert_d_ff"], s["num_kv_heads"], s["head_dim"],
          s["sliding_window"], s["sliding_every"], s["rope_theta"]) == \
      (32, 2880, 8, 64, 128, 2, 150000.0)
  assert s["rope_scaling"]["factor"] == 32.0 and s["rope_scaling"]["truncate"] is False
  assert s["router_options"]["k"] == 4


def test_mxfp4_codes_decode_as_sign_exponent_mantissa_times_the_block_scale():
  """Every byte (two E2M1 codes: the low nibble is the even element) against the format's
  definition, (-1)^s * (e == 0 ? m / 2 : 2^(e-1) * (1 + m / 2)), times 2^(scale - 127)."""
  def e2m1(code):
    s, e, m = code >> 3, (code >> 1) & 3, code & 1
    return (-1.0) ** s * (m / 2 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2))
  blocks = np.arange(256, dtype=np.uint8).reshape(16, 16)          # 16 blocks of 16 bytes
  scales = np.arange(120, 136, dtype=np.uint8)
  got = mxfp4.dequantize(blocks, scales)
  assert got.shape == (16 * 32,) and got.dtype == np.float32
  for b in range(16):
    for j in range(16):
      byte = int(blocks[b, j])
      for half, code in ((0, byte & 15), (1, byte >> 4)):
        assert got[b * 32 + 2 * j + half] == e2m1(code) * 2.0 ** (int(scales[b]) - 127)
  with pytest.raises(ValueError, match=r"blocks \[16, 8\] and scales \[16\] do not pair"):
    mxfp4.dequantize(blocks[:, :8], scales)


def test_the_hubs_mxfp4_layout_imports_and_exports_dequantised(tmp_path):
  """The fixture's experts are MXFP4 blocks and scales (transformers' own MXFP4 reader gave
  its reference logits, tests/fixtures/hf/make_fixtures.py): imported dequantised, and
  exported as the float tensors they stand for, without quantization_config."""
  name = "gpt_oss_mxfp4"
  model, source = hf.load(FIXTURES / name)
  assert source.layout == "mxfp4"
  np.testing.assert_allclose(_logits(model, REFERENCE[f"{name}_tokens"]),
                             REFERENCE[f"{name}_logits"], rtol=0, atol=1e-5)
  hf.export(model, source, tmp_path / "out")
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert "quantization_config" not in config
  assert config == {
      k: v for k, v in json.loads((FIXTURES / name / "config.json").read_text()).items()
      if k != "quantization_config"}
  again, float_source = hf.load(tmp_path / "out")
  assert float_source.layout == "fused"
  np.testing.assert_array_equal(_logits(again, REFERENCE[f"{name}_tokens"]),
                                _logits(model, REFERENCE[f"{name}_tokens"]))


def test_mxfp4_experts_take_the_checkpoints_dtype_and_a_nan_scale_is_refused(tmp_path):
  """A bfloat16 checkpoint's MXFP4 experts import as bfloat16 (float32 would double the
  memory of the model's largest tensors; the decoded values are exact in bfloat16)."""
  directory = copy_with_config(tmp_path, "gpt_oss_mxfp4", {"dtype": "bfloat16"})
  ckpt = safetensors_io.open_checkpoint(directory)
  tensors = {n: np.asarray(ckpt[n]) for n in ckpt.names()}
  tensors = {n: t if t.dtype == np.uint8 else t.astype(ml_dtypes.bfloat16)
             for n, t in tensors.items()}
  (directory / "model.safetensors").unlink()
  safetensors_io.write_checkpoint(directory, tensors)
  model = hf.load(directory)[0]
  dtypes = {str(v.dtype) for v in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {"bfloat16"}
  scales = next(n for n in tensors if n.endswith("_scales"))
  with pytest.raises(ValueError, match="a scale of 0xFF"):
    mxfp4.dequantize(tensors[scales.replace("_scales", "_blocks")],
                     np.full_like(tensors[scales], 0xFF))
