"""The GLM-4.5 MoE family (Glm4MoeForCausalLM) against transformers 5.25 (the fixture is
tests/fixtures/hf/make_fixtures.py's `glm4_moe`): RoPE on the first half of each head, q/k/v
biases, per-head q/k norms, DeepSeek-V3's biased sigmoid routing over groups, a shared expert,
a dense first layer. Logits equal transformers', export writes the same bytes, KV-cache
decoding computes the same, the Hub's multi-token-prediction layers are left out, and what is
not understood is an error naming it."""
import json

import numpy as np
import pytest

from moe_jax import hf
from moe_jax.hf import safetensors_io
from tests.test_hf import (FIXTURES, REFERENCE, _logits, _tensors, assert_load_refused,
                           assert_logits_and_export_equal, copy_with_config,
                           decoded_logits)

NAME = "glm4_moe"


def test_logits_equal_transformers_export_writes_the_same_bytes_and_decoding_agrees(tmp_path):
  model, source = hf.load(FIXTURES / NAME)
  s = source.section
  assert (s["rope_fraction"], s["qkv_bias"], s["qk_norm"], s["head_dim"], s["num_kv_heads"],
          s["first_dense_layers"], s["shared_d_ff"], s["router"]) == \
      (0.5, True, "head", 12, 2, 1, 8, "deepseek")
  assert s["router_options"] == dict(k=2, num_groups=4, top_groups=2, score="sigmoid",
                                     group_score="top2_sum", renormalize=True,
                                     routed_scaling_factor=1.8)
  bias = model.transformer.blocks[1].ffn.router_state["bias"][...]
  assert np.abs(np.asarray(bias)).max() > 0              # e_score_correction_bias, imported
  assert_logits_and_export_equal(model, source, NAME, tmp_path / "out")
  # KV cache: prefill 5 positions, then one token at a time (the partial rotation at each
  # position's own angle)
  np.testing.assert_allclose(decoded_logits(model, REFERENCE[f"{NAME}_tokens"]),
                             REFERENCE[f"{NAME}_logits"], rtol=0, atol=1e-5)


def test_the_multi_token_prediction_layers_of_a_hub_checkpoint_are_left_out(tmp_path):
  """The Hub's GLM-4.5 stores its MTP layer as model.layers.{num_hidden_layers}.* (with
  eh_proj, enorm, hnorm, shared_head): not the model's, so not imported, and said so."""
  directory = copy_with_config(tmp_path, NAME)
  source_tensors = safetensors_io.open_checkpoint(directory)
  tensors = {n: np.array(source_tensors[n]) for n in source_tensors.names()}
  mtp = {"model.layers.2.eh_proj.weight": np.ones((32, 64), np.float32),
         "model.layers.2.enorm.weight": np.ones((32,), np.float32),
         "model.layers.2.self_attn.q_proj.weight": np.ones((48, 32), np.float32)}
  (directory / "model.safetensors").unlink()
  safetensors_io.write_checkpoint(directory, {**tensors, **mtp})
  model, source = hf.load(directory)
  assert source.mtp_tensors == 3
  np.testing.assert_allclose(_logits(model, REFERENCE[f"{NAME}_tokens"]),
                             REFERENCE[f"{NAME}_logits"], rtol=0, atol=1e-5)
  hf.export(model, source, tmp_path / "out")
  assert _tensors(tmp_path / "out") == _tensors(FIXTURES / NAME)      # without them
  # A layer past them is no MTP layer: refused as before.
  config = json.loads((directory / "config.json").read_text())
  (directory / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 0}))
  with pytest.raises(ValueError, match=r"num_hidden_layers=2, but the checkpoint's tensors "
                                       r"hold layers 0..2"):
    hf.load(directory)


@pytest.mark.parametrize("changes,message", [
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     r"rope_type='yarn' is not supported for Glm4MoeForCausalLM"),
    (dict(rope_parameters={"rope_theta": 1e4, "partial_rotary_factor": 0.3}),
     r"rope_fraction=0.3 of head size 12 rotates 3 dims"),
    (dict(attention_dropout=0.1), r"attention_dropout=0.1 is not supported"),
    (dict(rope_parameters=[["rope_theta", 1e4]]), r"rope_parameters=\[\['rope_theta', "
                                                  r"10000.0\]\] must be a dict"),
    (dict(rope_parameters=5), r"rope_parameters=5 must be a dict"),
    (dict(some_new_field=1), r"field 'some_new_field'=1 is not understood"),
    (dict(attention_bias=False), r"tensor 'model.layers.0.self_attn.k_proj.bias' is not "
                                 r"understood"),
])
def test_what_is_not_understood_is_an_error_naming_it(tmp_path, changes, message):
  assert_load_refused(tmp_path, NAME, changes, message)


# GLM-4.5-Air's config.json on the Hub (transformers 4.54 era). Written from memory (no
# network here); its sizes are transformers' Glm4MoeConfig defaults.
GLM_45_AIR = {
    "architectures": ["Glm4MoeForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
    "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338], "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 4096, "partial_rotary_factor": 0.5,
    "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 131072,
    "model_type": "glm4_moe", "moe_intermediate_size": 1408, "norm_topk_prob": True,
    "num_attention_heads": 96, "n_group": 1, "topk_group": 1, "n_routed_experts": 128,
    "n_shared_experts": 1, "routed_scaling_factor": 1.0, "num_experts_per_tok": 8,
    "first_k_dense_replace": 1, "num_hidden_layers": 46, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 1000000,
    "num_nextn_predict_layers": 1, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0", "use_cache": True, "use_qk_norm": False,
    "vocab_size": 151552}


def test_the_hub_config_of_glm_4_5_air_is_understood():
  family = hf.families.family_of(GLM_45_AIR)
  s = hf.families.model_section(family, GLM_45_AIR, "bfloat16")
  assert (s["num_experts"], s["expert_d_ff"], s["shared_d_ff"], s["first_dense_layers"],
          s["head_dim"], s["num_kv_heads"], s["rope_fraction"], s["rope_theta"],
          s["qk_norm"], s["qkv_bias"]) == (128, 1408, 1408, 1, 128, 8, 0.5, 1e6, "none", True)
  assert s["router_options"]["k"] == 8 and s["router_options"]["renormalize"] is True


def test_fields_a_config_leaves_out_read_as_transformers_defaults():
  """transformers 5.25's Glm4MoeConfig defaults (its class attributes), written here by hand."""
  sparse = {k: v for k, v in GLM_45_AIR.items()
            if k not in ("n_shared_experts", "routed_scaling_factor", "n_group", "topk_group",
                         "first_k_dense_replace", "norm_topk_prob")}
  s = hf.families.model_section(hf.families.family_of(sparse), sparse, "bfloat16")
  assert (s["shared_d_ff"], s["first_dense_layers"]) == (1408, 1)
  assert s["router_options"] == dict(k=8, num_groups=1, top_groups=1, score="sigmoid",
                                     group_score="top2_sum", renormalize=True,
                                     routed_scaling_factor=1.0)
