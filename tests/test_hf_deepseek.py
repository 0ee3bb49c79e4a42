"""The DeepSeek-V2/V3 family against transformers 5.25 (tests/fixtures/hf/make_fixtures.py made
the fixtures): multi-head latent attention, YaRN on interleaved RoPE pairs, DeepSeek-V2's
group_limited_greedy and V3's biased sigmoid routing, shared experts, a dense first layer.
Logits equal transformers', export writes the same bytes, a data x expert x model sharded
import and KV-cache decoding compute the same, and what is not understood is an error naming
it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax import hf
from moe_jax.models import rope
from moe_jax.parallel import make_mesh
from moe_jax.routing import deepseek
from tests.test_hf import (FIXTURES, REFERENCE, _logits, assert_load_refused,
                           assert_logits_and_export_equal)

NAMES = ["deepseek_v2", "deepseek_v3"]


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers_and_export_writes_the_same_bytes(name, tmp_path):
  model, source = hf.load(FIXTURES / name)
  assert_logits_and_export_equal(model, source, name, tmp_path / "out")


def test_the_configs_map_onto_latent_attention_and_the_deepseek_router():
  v2 = hf.load(FIXTURES / "deepseek_v2")[1].section
  v3 = hf.load(FIXTURES / "deepseek_v3")[1].section
  for s in (v2, v3):
    assert (s["attention"], s["router"], s["first_dense_layers"], s["rope_interleave"]) == \
        ("mla", "deepseek", 1, True)
    assert (s["kv_lora_rank"], s["qk_nope_head_dim"], s["qk_rope_head_dim"],
            s["v_head_dim"]) == (12, 6, 4, 5)
  assert v2["q_lora_rank"] is None and v3["q_lora_rank"] == 10
  assert v2["shared_d_ff"] == 16 and v3["shared_d_ff"] == 8     # n_shared x moe_intermediate
  assert v2["router_options"] == dict(k=2, num_groups=4, top_groups=2, score="softmax",
                                      group_score="max", renormalize=False,
                                      routed_scaling_factor=1.5, bias_update_rate=0.0)
  assert v3["router_options"] == dict(k=2, num_groups=4, top_groups=2, score="sigmoid",
                                      group_score="top2_sum", renormalize=True,
                                      routed_scaling_factor=2.5)
  assert v2["rope_scaling"]["mscale"] == 0.9 and v3["rope_scaling"] is None


def test_a_data_expert_sharded_import_and_kv_cache_decoding_give_the_same_logits():
  name = "deepseek_v3"             # its router's selection bias is state, placed too
  mesh = make_mesh(data=2, expert=2, model=2)   # the latent projections' heads split too
  model, _ = hf.load(FIXTURES / name, mesh=mesh)
  bias = model.transformer.blocks[1].ffn.router_state["bias"][...]
  assert np.abs(np.asarray(bias)).max() > 0
  tokens = np.tile(REFERENCE[f"{name}_tokens"], (4, 1))
  np.testing.assert_allclose(_logits(model, tokens),
                             np.tile(REFERENCE[f"{name}_logits"], (4, 1, 1)), rtol=0, atol=1e-5)

  # DeepSeek-V2 (YaRN on interleaved pairs): prefill 5 positions, then one token at a time;
  # the cache holds the latent and the rotated shared key, not the heads.
  model, _ = hf.load(FIXTURES / "deepseek_v2")
  tokens = jnp.asarray(REFERENCE["deepseek_v2_tokens"])
  caches = model.init_cache(2, 8)
  assert [c.shape for c in caches[0]] == [(2, 8, 12), (2, 8, 4)]
  step = nnx.jit(lambda m, t, c, s: m.decode(t, c, s)[::2], static_argnums=3)
  first, caches = step(model, tokens[:, :5], caches, 0)
  pieces = [first]
  for i in range(5, 8):
    logits, caches = step(model, tokens[:, i:i + 1], caches, i)
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, 1), REFERENCE["deepseek_v2_logits"],
                             rtol=0, atol=1e-5)


def _v2_group_limited_greedy(scores, num_groups, top_groups, k):
  """DeepSeek-V2's routing, written out per token: groups ranked by their best score, the
  top `top_groups` kept, the k best experts among them."""
  out = []
  for row in scores:
    groups = row.reshape(num_groups, -1)
    kept = np.argsort(-groups.max(-1), kind="stable")[:top_groups]
    allowed = np.concatenate([np.arange(g * groups.shape[1], (g + 1) * groups.shape[1])
                              for g in kept])
    out.append(sorted(allowed[np.argsort(-row[allowed], kind="stable")[:k]]))
  return np.array(out)


def test_group_limited_greedy_scores_a_group_by_its_best_expert():
  scores = jax.nn.softmax(jax.random.normal(jax.random.key(0), (256, 16)) * 2, axis=-1)
  want = _v2_group_limited_greedy(np.asarray(scores), 4, 2, 3)
  for group_score, same in (("max", True), ("top2_sum", False)):
    masked = deepseek.group_limited_scores(scores, 4, 2, group_score)
    got = np.sort(np.asarray(jax.lax.top_k(masked, 3)[1]), -1)
    assert np.array_equal(got, want) == same, group_score
  # (V3's top-2 sum picks other experts for some of these tokens: the option matters)


def test_yarn_frequencies_and_scales_follow_the_paper():
  """YaRN (Peng et al. 2023, Eq. 17-21) written out: wavelength 2 pi / theta_d against the
  original context L over beta_fast / beta_slow rotations; mscale 0.1 m ln s + 1."""
  dim, base, s, length = 16, 10000.0, 4.0, 64
  scaling = dict(factor=s, original_max_position_embeddings=length, beta_fast=32, beta_slow=1,
                 mscale=0.9, mscale_all_dim=0.8)
  inv_freq, factor = rope.frequencies(dim, base, scaling)
  theta = base ** (-np.arange(0, dim, 2) / dim)
  dim_of = lambda r: dim * np.log(length / (r * 2 * np.pi)) / (2 * np.log(base))
  low, high = max(np.floor(dim_of(32)), 0), min(np.ceil(dim_of(1)), dim - 1)
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  np.testing.assert_allclose(inv_freq, theta / s * ramp + theta * (1 - ramp), rtol=1e-6)
  m = lambda scale, mult: 0.1 * mult * np.log(scale) + 1
  assert factor == pytest.approx(m(s, 0.9) / m(s, 0.8))
  assert rope.softmax_scale(10, scaling) == pytest.approx(10 ** -0.5 * m(s, 0.8) ** 2)
  assert rope.frequencies(dim, base)[1] == 1.0


@pytest.mark.parametrize("name,changes,message", [
    ("deepseek_v2", dict(topk_method="noaux_tc"), r"topk_method='noaux_tc' is not supported"),
    ("deepseek_v2", dict(norm_topk_prob=True), r"norm_topk_prob=True is not supported for "
                                               r"DeepseekV2ForCausalLM"),
    ("deepseek_v2", dict(moe_layer_freq=2), r"moe_layer_freq=2 is not supported"),
    ("deepseek_v3", dict(scoring_func="softmax"), r"scoring_func='softmax': DeepSeek-V3"),
    ("deepseek_v3", dict(num_key_value_heads=2), r"num_key_value_heads=2 must equal"),
    ("deepseek_v3", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4,
                                          "factor": 2.0}), r"rope_type='linear' is not"),
    ("deepseek_v3", dict(some_new_field=1), r"field 'some_new_field'=1 is not understood"),
    ("deepseek_v3", dict(q_lora_rank=None), r"tensor 'model.layers.0.self_attn.q_a_"),
])
def test_what_is_not_understood_is_an_error_naming_it(tmp_path, name, changes, message):
  assert_load_refused(tmp_path, name, changes, message)


# DeepSeek-V2-Lite's config.json on the Hub (transformers 4.x era, DeepSeek's remote code):
# rope_scaling with "type", scoring_func, topk_method, the training-only fields. Written from
# memory (no network here); its sizes agree with the 16B model's arguments of DeepSeek's own
# inference code (dim 2048, inter_dim 10944, moe_inter_dim 1408, 27 layers of which 1 dense,
# 16 heads, 64 routed / 2 shared / 6 active, q_lora_rank 0, kv_lora_rank 512, head dims
# 128 / 64 / 128, YaRN mscale 0.707), as a public copy of them reads.
V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 100000,
    "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "pretraining_tp": 1, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06, "rope_scaling": {
        "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "seq_aux": True, "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "use_cache": True, "v_head_dim": 128, "vocab_size": 102400}


def test_the_hub_config_of_deepseek_v2_lite_is_understood():
  family = hf.families.family_of(V2_LITE)
  s = hf.families.model_section(family, V2_LITE, "bfloat16")
  assert (s["num_experts"], s["expert_d_ff"], s["shared_d_ff"], s["first_dense_layers"]) == \
      (64, 1408, 2816, 1)
  assert s["router_options"]["k"] == 6 and s["router_options"]["num_groups"] == 1
  assert s["rope_scaling"]["factor"] == 40 and s["rope_theta"] == 10000.0


# The fields whose defaults matter, and transformers 5.25's DeepseekV2Config / DeepseekV3Config
# values for them (their class attributes), written here by hand.
OMITTED = ("n_shared_experts", "routed_scaling_factor", "n_group", "topk_group",
           "first_k_dense_replace", "norm_topk_prob", "topk_method")


def test_fields_a_config_leaves_out_read_as_transformers_defaults():
  v2 = {k: v for k, v in V2_LITE.items() if k not in OMITTED}
  s = hf.families.model_section(hf.families.family_of(v2), v2, "bfloat16")
  assert (s["shared_d_ff"], s["first_dense_layers"]) == (2 * 1408, 0)
  assert s["router_options"] == dict(k=6, num_groups=1, top_groups=1, routed_scaling_factor=1.0,
                                     score="softmax", group_score="max", renormalize=False,
                                     bias_update_rate=0.0)
  v3 = {**v2, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "num_experts_per_tok": 8, "rope_scaling": None}
  for dropped in ("scoring_func", "seq_aux", "aux_loss_alpha", "pretraining_tp", "moe_layer_freq"):
    v3.pop(dropped)
  s = hf.families.model_section(hf.families.family_of(v3), v3, "bfloat16")
  assert (s["shared_d_ff"], s["first_dense_layers"]) == (1408, 3)
  assert s["router_options"] == dict(k=8, num_groups=8, top_groups=4, routed_scaling_factor=2.5,
                                     score="sigmoid", group_score="top2_sum", renormalize=True)
