"""The DeepSeek-V2/V3 family (DeepSeek-V2, V2-Lite, V3, Moonlight): config.json -> config.model.*
and the tensors of its attention and MoE, read against transformers 5.25's
modeling_deepseek_v2.py / modeling_deepseek_v3.py.

What they have that moe_jax's other families do not, and what moe_jax maps it to:
- multi-head latent attention (q_lora_rank, kv_lora_rank, qk_nope/rope_head_dim, v_head_dim):
  `attention='mla'` (moe_jax.models.mla), its latent norms at epsilon 1e-6;
- RoPE on interleaved pairs (V2's complex rotation; V3's rope_interleave) and YaRN scaling
  with its softmax mscale: `rope_interleave`, `rope_scaling` (moe_jax.models.rope);
- the router: the `deepseek` router. V2: softmax scores, `greedy` or `group_limited_greedy`
  (a group scores by its best expert: group_score='max'), weights not renormalised, times
  routed_scaling_factor, no selection bias (bias_update_rate 0). V3: sigmoid scores plus
  e_score_correction_bias for selection (the router state 'bias'), groups scored by their
  best two, weights renormalised when norm_topk_prob, times routed_scaling_factor;
- n_shared_experts always-on shared experts (one of width n_shared * moe_intermediate_size,
  ungated), dense FFNs in the first first_k_dense_replace layers (moe_layer_freq, read by
  DeepSeek's own code and not by transformers, must be 1).
"""
from __future__ import annotations

from moe_jax.hf import fields

# Fields of the Hub's configs (DeepSeek's remote code) that transformers 5 does not read, and
# that change nothing for inference: the training losses' coefficients, expert parallelism.
# num_nextn_predict_layers: V3's multi-token-prediction layers, which transformers does not
# build either (their tensors are left out: model_io.without_mtp_layers).
_HUB_IGNORED = {"aux_loss_alpha", "seq_aux", "ep_size", "auto_map", "pretraining_tp",
                "qk_head_dim", "head_dim", "mlp_bias", "attention_bias", "attention_dropout",
                "num_nextn_predict_layers"}
_FIELDS = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
           "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings",
           "num_experts_per_tok", "intermediate_size", "moe_intermediate_size",
           "n_routed_experts", "n_shared_experts", "routed_scaling_factor", "kv_lora_rank",
           "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_group",
           "topk_group", "topk_method", "norm_topk_prob", "first_k_dense_replace",
           "moe_layer_freq", "scoring_func", "rope_interleave"}
_REQUIRED = {"mlp_bias": False, "attention_bias": False, "attention_dropout": 0.0,
             "pretraining_tp": 1, "moe_layer_freq": 1}
_YARN = {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
         "mscale_all_dim", "truncate"}


def check_fields(family, hf_config: dict) -> None:
  fields.check_known(family, hf_config, fields.IGNORED | _HUB_IGNORED | _FIELDS, _REQUIRED,
                     "DeepSeek")
  kv = hf_config.get("num_key_value_heads")
  if kv is not None and kv != hf_config.get("num_attention_heads"):
    raise ValueError(f"config.json: num_key_value_heads={kv!r} must equal num_attention_heads "
                     "(multi-head latent attention has one key/value per query head)")


def rope(hf_config: dict) -> tuple[float, dict | None]:
  """(the RoPE base, the YaRN parameters or None) from `rope_parameters` (transformers 5) or
  `rope_theta` + `rope_scaling` (4.x and the Hub's configs)."""
  params = hf_config.get("rope_parameters")
  if params is None:
    params = dict(hf_config.get("rope_scaling") or {})
    params["rope_theta"] = hf_config.get("rope_theta", 10000.0)
  if not isinstance(params, dict):
    raise ValueError(f"config.json: rope_parameters={params!r} must be a dict")
  kind = params.get("rope_type", params.get("type", "default"))
  theta = fields.get({"rope_theta": params.get("rope_theta")}, "rope_theta",
                        kind=(int, float))
  extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
  if kind == "default":
    if extra:
      raise ValueError(f"config.json: rope parameter {extra[0]!r} is not supported with plain "
                       "RoPE")
    return float(theta), None
  if kind != "yarn":
    raise ValueError(f"config.json: rope_type={kind!r} is not supported (moe_jax has plain "
                     "RoPE and YaRN: 'default', 'yarn')")
  unknown = sorted(set(extra) - _YARN)
  if unknown or params.get("attention_factor") is not None:
    name = unknown[0] if unknown else "attention_factor"
    raise ValueError(f"config.json: YaRN parameter {name!r} is not supported")
  scaling = {k: params[k] for k in sorted(_YARN) if params.get(k) is not None}
  if "factor" not in scaling or "original_max_position_embeddings" not in scaling:
    raise ValueError("config.json: YaRN needs factor and original_max_position_embeddings")
  return float(theta), scaling


def _router_options(family, hf_config: dict, k: int, num_experts: int) -> dict:
  g = lambda key, default=None: hf_config.get(key, default)
  groups, top = g("n_group") or 1, g("topk_group") or 1
  options = {"k": k, "num_groups": groups, "top_groups": top,
             "routed_scaling_factor": float(g("routed_scaling_factor"))}
  if family.architecture == "DeepseekV2ForCausalLM":
    method = g("topk_method")
    if method not in ("greedy", "group_limited_greedy"):
      raise ValueError(f"config.json: topk_method={method!r} is not supported for "
                       "DeepseekV2ForCausalLM (transformers reads 'greedy' and "
                       "'group_limited_greedy')")
    if g("scoring_func", "softmax") != "softmax":
      raise ValueError(f"config.json: scoring_func={g('scoring_func')!r}: DeepSeek-V2 routes "
                       "by softmax")
    if g("norm_topk_prob"):
      raise ValueError("config.json: norm_topk_prob=True is not supported for "
                       "DeepseekV2ForCausalLM (transformers' DeepseekV2 router never "
                       "renormalises, DeepSeek's own code does: the two disagree)")
    if method == "greedy":
      options.update(num_groups=1, top_groups=1)
    options.update(score="softmax", group_score="max", renormalize=False,
                   bias_update_rate=0.0)
  else:
    if g("topk_method", "noaux_tc") != "noaux_tc" or g("scoring_func", "sigmoid") != "sigmoid":
      raise ValueError(f"config.json: topk_method={g('topk_method')!r} / scoring_func="
                       f"{g('scoring_func')!r}: DeepSeek-V3 routes by 'noaux_tc' over "
                       "'sigmoid' scores")
    options = v3_router_options(hf_config, k)
  return options


def v3_router_options(hf_config: dict, k: int) -> dict:
  """DeepSeek-V3's router (also GLM-4.5's): sigmoid scores plus the selection bias, groups
  scored by their best two, renormalised when norm_topk_prob, times routed_scaling_factor.
  `hf_config` has the family's DEFAULTS filled in (a null group count reads as 1)."""
  g = lambda key, default=None: hf_config.get(key, default)
  return {"k": k, "num_groups": g("n_group") or 1, "top_groups": g("topk_group") or 1,
          "routed_scaling_factor": float(g("routed_scaling_factor")), "score": "sigmoid",
          "group_score": "top2_sum", "renormalize": bool(g("norm_topk_prob"))}


# What transformers 5.25's DeepseekV2Config / DeepseekV3Config assume for a field config.json
# leaves out (a hand-written or older config): read so, the import computes what transformers
# computes from the same file. V3's differ from the neutral values (1 group, no shared expert,
# scale 1, no dense layer), so guessing those would build another model.
DEFAULTS = {
    "DeepseekV2ForCausalLM": {"n_shared_experts": 2, "routed_scaling_factor": 1.0,
                              "first_k_dense_replace": 0, "topk_method": "greedy",
                              "norm_topk_prob": False},
    "DeepseekV3ForCausalLM": {"n_shared_experts": 1, "routed_scaling_factor": 2.5,
                              "n_group": 8, "topk_group": 4, "first_k_dense_replace": 3,
                              "norm_topk_prob": True},
}


def model_section(family, hf_config: dict, dtype: str) -> dict:
  check_fields(family, hf_config)
  hf_config = {**DEFAULTS[family.architecture], **hf_config}
  g = lambda key, kind=int, default=None: fields.get(hf_config, key, default, kind=kind)
  layers, num_experts = g("num_hidden_layers"), fields.num_experts(family, hf_config)
  k = g("num_experts_per_tok")
  if not 1 <= k <= num_experts:
    raise ValueError(f"config.json: num_experts_per_tok={k} must be in 1..{num_experts}")
  first_dense = g("first_k_dense_replace")
  theta, scaling = rope(hf_config)
  shared = g("n_shared_experts")
  expert_d_ff = g("moe_intermediate_size")
  q_lora = hf_config.get("q_lora_rank")
  return {
      "vocab_size": g("vocab_size"), "d_model": g("hidden_size"), "num_layers": layers,
      "num_heads": g("num_attention_heads"), "num_kv_heads": None, "head_dim": None,
      "max_len": g("max_position_embeddings"), "d_ff": g("intermediate_size"),
      "activation": "silu", "glu": True, "num_experts": num_experts, "router": "deepseek",
      "router_options": _router_options(family, hf_config, k, num_experts),
      "expert_d_ff": expert_d_ff, "moe_every": 1, "first_dense_layers": first_dense,
      "dispatcher": "dropless", "tie_embeddings": False, "rope_theta": theta,
      "norm_eps": float(g("rms_norm_eps", (int, float))), "qk_norm": "none",
      "dtype": dtype, "param_dtype": dtype,
      **({"shared_d_ff": shared * expert_d_ff} if shared else {}),
      "attention": "mla", "q_lora_rank": None if q_lora is None else g("q_lora_rank"),
      "kv_lora_rank": g("kv_lora_rank"), "qk_nope_head_dim": g("qk_nope_head_dim"),
      "qk_rope_head_dim": g("qk_rope_head_dim"), "v_head_dim": g("v_head_dim"),
      # V2 rotates interleaved pairs always (a complex product); V3 as rope_interleave says
      "rope_interleave": bool(hf_config.get("rope_interleave", True)),
      "rope_scaling": scaling,
  }


def attention_mappings(section: dict, prefix: str, block: tuple, copy, linear) -> list:
  """The MLA projections and latent norms of one layer."""
  s, a = section, prefix + "self_attn."
  d, heads = s["d_model"], s["num_heads"]
  qk = s["qk_nope_head_dim"] + s["qk_rope_head_dim"]
  c, r, v = s["kv_lora_rank"], s["qk_rope_head_dim"], s["v_head_dim"]
  at = block + ("attn",)
  if s.get("q_lora_rank") is None:
    out = [linear(at + ("q", "kernel"), a + "q_proj.weight", (heads * qk, d))]
  else:
    ql = s["q_lora_rank"]
    out = [linear(at + ("q_a", "kernel"), a + "q_a_proj.weight", (ql, d)),
           copy(at + ("q_a_norm", "scale"), a + "q_a_layernorm.weight", (ql,)),
           linear(at + ("q_b", "kernel"), a + "q_b_proj.weight", (heads * qk, ql))]
  return out + [
      linear(at + ("kv_a", "kernel"), a + "kv_a_proj_with_mqa.weight", (c + r, d)),
      copy(at + ("kv_a_norm", "scale"), a + "kv_a_layernorm.weight", (c,)),
      linear(at + ("kv_b", "kernel"), a + "kv_b_proj.weight",
             (heads * (s["qk_nope_head_dim"] + v), c)),
      linear(at + ("out", "kernel"), a + "o_proj.weight", (d, heads * v))]


def attention_count(section: dict) -> int:
  return 4 + (1 if section.get("q_lora_rank") is None else 3)
