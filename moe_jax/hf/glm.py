"""The GLM-4.5 / 4.6 MoE family (`Glm4MoeForCausalLM`: GLM-4.5, GLM-4.5-Air, GLM-4.6):
config.json -> config.model.*, read against transformers 5.25's modeling_glm4_moe.py.

Its attention is grouped-query attention with q/k/v biases (attention_bias; o_proj has none),
optional per-head q/k RMSNorms (use_qk_norm) and RoPE on the leading partial_rotary_factor of
each head (0.5: `rope_fraction`). Its MoE is DeepSeek-V3's: sigmoid scores plus the
e_score_correction_bias for selection, n_group / topk_group groups scored by their best two,
weights renormalised when norm_topk_prob, times routed_scaling_factor (the `deepseek`
router), an ungated shared expert of n_shared_experts x moe_intermediate_size, dense FFNs in
the first first_k_dense_replace layers. The Hub's multi-token-prediction layers
(num_nextn_predict_layers, stored after the last layer) are not part of the model transformers
builds either; their tensors are left out (model_io.without_mtp_layers).
"""
from __future__ import annotations

from moe_jax.hf import deepseek, fields

_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
           "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
           "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
           "rope_scaling", "partial_rotary_factor", "tie_word_embeddings", "attention_bias",
           "moe_intermediate_size", "num_experts_per_tok", "n_shared_experts",
           "n_routed_experts", "routed_scaling_factor", "n_group", "topk_group",
           "first_k_dense_replace", "norm_topk_prob", "use_qk_norm", "attention_dropout",
           # the multi-token-prediction layers' count: not built (see above)
           "num_nextn_predict_layers", "num_mtp_layers"}
_REQUIRED = {"attention_dropout": 0.0, "rope_scaling": None}


def check_fields(family, hf_config: dict) -> None:
  fields.check_known(family, hf_config, fields.IGNORED | _FIELDS, _REQUIRED, "GLM")


def rope(hf_config: dict) -> tuple[float, float]:
  """(the RoPE base, the rotated fraction of each head) from `rope_parameters` (transformers
  5, which keeps partial_rotary_factor there) or `rope_theta` + `partial_rotary_factor` (the
  Hub's configs); transformers' default fraction for this family is 0.5."""
  params = hf_config.get("rope_parameters") or {"rope_theta": hf_config.get("rope_theta")}
  if not isinstance(params, dict):
    raise ValueError(f"config.json: rope_parameters={params!r} must be a dict")
  kind = params.get("rope_type", "default")
  if kind != "default":
    raise ValueError(f"config.json: rope_type={kind!r} is not supported for Glm4MoeForCausalLM "
                     "(moe_jax reads plain partial RoPE: 'default')")
  extra = sorted(set(params) - {"rope_type", "rope_theta", "partial_rotary_factor"})
  if extra:
    raise ValueError(f"config.json: rope parameter {extra[0]!r} is not supported")
  fraction = params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 0.5))
  theta = fields.get({"rope_theta": params.get("rope_theta")}, "rope_theta", kind=(int, float))
  fraction = fields.get({"partial_rotary_factor": fraction}, "partial_rotary_factor",
                        kind=(int, float))
  return float(theta), float(fraction)


# transformers 5.25's Glm4MoeConfig defaults for fields config.json may leave out (see
# deepseek.DEFAULTS for why they are read as transformers reads them).
DEFAULTS = {"n_shared_experts": 1, "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1,
            "first_k_dense_replace": 1, "norm_topk_prob": True}


def model_section(family, hf_config: dict, dtype: str) -> dict:
  check_fields(family, hf_config)
  hf_config = {**DEFAULTS, **hf_config}
  g = lambda key, kind=int, default=None: fields.get(hf_config, key, default, kind=kind)
  layers, num_experts = g("num_hidden_layers"), fields.num_experts(family, hf_config)
  k = fields.experts_per_token(hf_config.get("num_experts_per_tok"), num_experts)
  theta, fraction = rope(hf_config)
  shared = g("n_shared_experts")
  expert_d_ff = g("moe_intermediate_size")
  options = deepseek.v3_router_options(hf_config, k)
  return {
      "vocab_size": g("vocab_size"), **fields.attention_sizes(hf_config), "num_layers": layers,
      "max_len": g("max_position_embeddings"), "d_ff": g("intermediate_size"),
      "activation": "silu", "glu": True, "num_experts": num_experts, "router": "deepseek",
      "router_options": options, "expert_d_ff": expert_d_ff, "moe_every": 1,
      "first_dense_layers": g("first_k_dense_replace"), "dispatcher": "dropless",
      "tie_embeddings": False, "rope_theta": theta, "rope_fraction": fraction,
      "norm_eps": float(g("rms_norm_eps", (int, float))),
      "qk_norm": "head" if g("use_qk_norm", bool, False) else "none",
      "qkv_bias": bool(g("attention_bias", bool, False)),
      "dtype": dtype, "param_dtype": dtype,
      **({"shared_d_ff": shared * expert_d_ff} if shared else {}),
  }
