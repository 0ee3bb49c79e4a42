"""The Hugging Face MoE families moe_jax reads: their config.json fields -> `config.model.*`.

    family = family_of(hf_config)                # by `architectures`
    section = model_section(family, hf_config)   # the flat config.model.* keys of the model

Each family is a table, not code: which field holds what, the fields that must have a given
value (a sliding window, RoPE scaling, biases: things moe_jax's transformer does not have) and
the fields that do not change the forward pass (token ids, initializer_range, the HF training
loss coefficient). A field in none of these is an error naming it, so a config this module
does not understand is never imported silently wrong. Read against transformers 5.25's
modeling_{mixtral,qwen3_moe,olmoe,qwen2_moe}.py (DeepSeek-V2/V3: moe_jax.hf.deepseek); transformers 4.x configs (`rope_theta`, `rope_scaling`,
`torch_dtype`) are read too.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from moe_jax.hf import deepseek, fields, glm, gpt_oss
from moe_jax.hf.fields import IGNORED, get as _get, num_experts as _num_experts  # noqa: F401

DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclasses.dataclass(frozen=True)
class Family:
  architecture: str
  model_type: str
  moe_module: str                       # the layer's MoE submodule: block_sparse_moe or mlp
  expert_names: tuple[str, str, str]    # per-expert Linear names: gate, up, down
  num_experts_fields: tuple[str, ...]   # the first present is read (the Hub's configs say
                                        # num_experts; transformers 5 saves num_local_experts)
  expert_d_ff_field: str
  qk_norm: str                          # moe_jax's qk_norm
  renormalize_field: str | None         # None: always renormalised (Mixtral)
  required: dict[str, Any]              # fields that must have this value when present
  shared_expert_field: str | None = None   # a sigmoid-gated shared expert of this width
  qkv_bias_field: str | None = None        # q/k/v projections with biases when true
  sparse_step: bool = False             # decoder_sparse_step + mlp_only_layers place the MoE
  attention: str = "mha"                # 'mla': DeepSeek's latent attention (moe_jax.hf.deepseek)
  shared_name: str = "shared_expert"    # the shared expert's module under mlp.
  router_bias: bool = False             # the router's e_score_correction_bias (DeepSeek-V3)


FAMILIES = {f.architecture: f for f in (
    Family("MixtralForCausalLM", "mixtral", "block_sparse_moe", ("w1", "w3", "w2"),
           ("num_local_experts",), "intermediate_size", "none", None,
           {"sliding_window": None, "attention_dropout": 0.0, "rope_scaling": None}),
    Family("Qwen3MoeForCausalLM", "qwen3_moe", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("num_experts", "num_local_experts"), "moe_intermediate_size", "head", "norm_topk_prob",
           {"use_sliding_window": False, "attention_bias": False, "attention_dropout": 0.0,
            "rope_scaling": None}, sparse_step=True),
    Family("Qwen2MoeForCausalLM", "qwen2_moe", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("num_experts", "num_local_experts"), "moe_intermediate_size", "none", "norm_topk_prob",
           {"use_sliding_window": False, "attention_dropout": 0.0, "rope_scaling": None},
           shared_expert_field="shared_expert_intermediate_size", qkv_bias_field="qkv_bias",
           sparse_step=True),
    Family("OlmoeForCausalLM", "olmoe", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("num_experts", "num_local_experts"), "intermediate_size", "full", "norm_topk_prob",
           {"attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
            "rope_scaling": None, "sliding_window": None}),
    # Their fields are read by moe_jax.hf.deepseek, not by the table fields here.
    Family("DeepseekV2ForCausalLM", "deepseek_v2", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("n_routed_experts",), "moe_intermediate_size", "none", None, {},
           attention="mla", shared_name="shared_experts"),
    Family("DeepseekV3ForCausalLM", "deepseek_v3", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("n_routed_experts",), "moe_intermediate_size", "none", None, {},
           attention="mla", shared_name="shared_experts", router_bias=True),
    # Its fields and tensors are read by moe_jax.hf.gpt_oss.
    Family("GptOssForCausalLM", "gpt_oss", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("num_local_experts", "num_experts"), "intermediate_size", "none", None, {}),
    # Its fields are read by moe_jax.hf.glm.
    Family("Glm4MoeForCausalLM", "glm4_moe", "mlp", ("gate_proj", "up_proj", "down_proj"),
           ("n_routed_experts",), "moe_intermediate_size", "none", None,
           {}, shared_name="shared_experts", router_bias=True),
)}

# The fields each family maps (beyond `required` and IGNORED).
_COMMON = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
           "rms_norm_eps", "rope_theta", "rope_parameters", "tie_word_embeddings",
           "num_experts_per_tok", "intermediate_size"}
_MAPPED = {"MixtralForCausalLM": {"router_jitter_noise"},
           "Qwen3MoeForCausalLM": {"moe_intermediate_size", "norm_topk_prob",
                                   "decoder_sparse_step", "mlp_only_layers", "sliding_window"},
           "OlmoeForCausalLM": {"norm_topk_prob"},
           "Qwen2MoeForCausalLM": {"moe_intermediate_size", "norm_topk_prob",
                                   "decoder_sparse_step", "mlp_only_layers", "sliding_window",
                                   "shared_expert_intermediate_size", "qkv_bias",
                                   "layer_types"}}


def family_of(hf_config: dict) -> Family:
  archs = hf_config.get("architectures")
  if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in FAMILIES:
    raise ValueError(f"config.json: architectures={archs!r} is not supported; moe_jax.hf "
                     f"imports one of {', '.join(FAMILIES)}")
  family = FAMILIES[archs[0]]
  if hf_config.get("model_type") != family.model_type:
    raise ValueError(f"config.json: model_type={hf_config.get('model_type')!r} does not match "
                     f"architectures {archs[0]!r} (expected {family.model_type!r})")
  return family


def rope_theta(hf_config: dict) -> float:
  """The RoPE base from `rope_parameters` (transformers 5) or `rope_theta` (4.x); any other
  RoPE type or parameter (scaling, YaRN, partial rotary) is an error naming it."""
  params = hf_config.get("rope_parameters")
  if params is None:
    return float(_get(hf_config, "rope_theta", kind=(int, float)))
  if not isinstance(params, dict):
    raise ValueError(f"config.json: rope_parameters={params!r} must be a dict")
  if params.get("rope_type", "default") != "default":
    raise ValueError(f"config.json: rope_parameters.rope_type={params['rope_type']!r} is not "
                     "supported (moe_jax has plain RoPE only: 'default')")
  extra = sorted(set(params) - {"rope_type", "rope_theta"})
  if extra:
    raise ValueError(f"config.json: rope_parameters.{extra[0]}={params[extra[0]]!r} is not "
                     "supported (moe_jax has plain RoPE only)")
  return float(_get({"rope_parameters.rope_theta": params.get("rope_theta")},
                    "rope_parameters.rope_theta", kind=(int, float)))


def check_fields(family: Family, hf_config: dict) -> None:
  known = (IGNORED | _COMMON | _MAPPED[family.architecture] | set(family.required)
           | set(family.num_experts_fields))
  for key in sorted(hf_config):
    if key.startswith("_"):     # _name_or_path, _attn_implementation*: bookkeeping
      continue
    if key not in known:
      raise ValueError(f"config.json: field {key!r}={hf_config[key]!r} is not understood for "
                       f"{family.architecture}; moe_jax.hf does not import it")
  for key, allowed in family.required.items():
    if key in hf_config and hf_config[key] != allowed:
      raise ValueError(f"config.json: {key}={hf_config[key]!r} is not supported for "
                       f"{family.architecture} (moe_jax's transformer needs {key}={allowed!r})")
  if hf_config.get("tie_word_embeddings", False):
    raise ValueError("config.json: tie_word_embeddings=True is not supported (moe_jax's tied "
                     "output projection scales the logits by 1/sqrt(d_model); HF's does not)")
  if _get(hf_config, "hidden_act", "silu") != "silu":
    raise ValueError(f"config.json: hidden_act={hf_config['hidden_act']!r} is not supported "
                     "(these families' experts are SwiGLU: 'silu')")
  types = hf_config.get("layer_types")
  if types is not None and (not isinstance(types, list)
                            or any(t != "full_attention" for t in types)):
    raise ValueError(f"config.json: layer_types={types!r} is not supported (moe_jax's "
                     "attention is full attention in every layer: 'full_attention')")


def _dense_pattern(family: Family, hf_config: dict, num_layers: int) -> tuple[int, int]:
  """(first_dense_layers, moe_every) giving the MoE layers Qwen2/3-MoE's decoder_sparse_step
  and mlp_only_layers give: layer i is MoE iff i not in mlp_only_layers and (i + 1) % step
  == 0."""
  if not family.sparse_step:
    return 0, 1
  step = _get(hf_config, "decoder_sparse_step", 1, kind=int)
  only = hf_config.get("mlp_only_layers") or []
  if step < 1 or not isinstance(only, list) or not all(
      isinstance(i, int) and not isinstance(i, bool) for i in only):
    raise ValueError(f"config.json: decoder_sparse_step={step!r} / mlp_only_layers={only!r} "
                     "are not valid")
  dense = set(only)
  want = [i not in dense and (i + 1) % step == 0 for i in range(num_layers)]
  moe = [i for i, m in enumerate(want) if m]
  # The only candidate (the smallest, as a search would find): the first MoE layer, and the
  # gap to the second (a single MoE layer: any gap reaching past the end; none: all dense).
  first = moe[0] if moe else num_layers
  every = moe[1] - moe[0] if len(moe) > 1 else max(1, num_layers - first)
  if want == [i >= first and (i - first) % every == 0 for i in range(num_layers)]:
    return first, every
  field = "mlp_only_layers" if only else "decoder_sparse_step"
  shown = str(moe) if len(moe) <= 16 else f"[{', '.join(map(str, moe[:16]))}, ...]"
  raise ValueError(f"config.json: {field}={hf_config.get(field)!r} makes MoE layers "
                   f"{shown}, which moe_jax's first_dense_layers + moe_every cannot express")


def dtype_name(hf_config: dict) -> str | None:
  """The checkpoint's dtype as the config states it ('dtype' in transformers 5, 'torch_dtype'
  in 4.x), or None."""
  value = hf_config.get("dtype", hf_config.get("torch_dtype"))
  if value is None:
    return None
  if value not in DTYPE_NAMES:
    raise ValueError(f"config.json: dtype={value!r} is not supported; allowed: "
                     + ", ".join(DTYPE_NAMES))
  return DTYPE_NAMES[value]


def model_section(family: Family, hf_config: dict, dtype: str) -> dict:
  """The `config.model.*` keys describing the checkpoint's model (params in `dtype`)."""
  if family.attention == "mla":
    return deepseek.model_section(family, hf_config, dtype)
  if family.architecture == "Glm4MoeForCausalLM":
    return glm.model_section(family, hf_config, dtype)
  if family.architecture == gpt_oss.ARCHITECTURE:
    return gpt_oss.model_section(family, hf_config, dtype)
  check_fields(family, hf_config)
  g = lambda key, kind=int, default=None: _get(hf_config, key, default, kind=kind)
  layers, num_experts = g("num_hidden_layers"), _num_experts(family, hf_config)
  sizes = fields.attention_sizes(hf_config)
  if family.qk_norm == "full" and sizes["head_dim"] is not None:
    raise ValueError(f"config.json: head_dim={hf_config['head_dim']} with hidden_size="
                     f"{sizes['d_model']} / num_attention_heads={sizes['num_heads']}: OLMoE's "
                     "q_norm spans hidden_size, so head_dim must be hidden_size / "
                     "num_attention_heads")
  k = fields.experts_per_token(hf_config.get("num_experts_per_tok"), num_experts)
  renormalize = (True if family.renormalize_field is None
                 else bool(g(family.renormalize_field, bool, False)))
  options = {"k": k, "order": "softmax_topk", "renormalize": renormalize}
  jitter = float(hf_config.get("router_jitter_noise") or 0.0)
  if jitter:     # Mixtral's training-time x * U(1 - j, 1 + j) is moe_jax's jitter_eps
    options["jitter_eps"] = jitter
  first_dense, every = _dense_pattern(family, hf_config, layers)
  extra = {}
  if family.shared_expert_field is not None:
    extra.update(shared_d_ff=g(family.shared_expert_field), shared_gate=True)
  # transformers 4.x configs have no qkv_bias field: their Qwen2-MoE attention always had biases
  if family.qkv_bias_field is not None and g(family.qkv_bias_field, bool, True):
    extra["qkv_bias"] = True
  return {
      "vocab_size": g("vocab_size"), **sizes, "num_layers": layers,
      "max_len": g("max_position_embeddings"), "d_ff": g("intermediate_size"),
      "activation": "silu", "glu": True, "num_experts": num_experts, "router": "topk",
      "router_options": options, "expert_d_ff": g(family.expert_d_ff_field),
      "moe_every": every, "first_dense_layers": first_dense, "dispatcher": "dropless",
      "tie_embeddings": False, "rope_theta": rope_theta(hf_config),
      "norm_eps": float(g("rms_norm_eps", (int, float))), "qk_norm": family.qk_norm,
      "dtype": dtype, "param_dtype": dtype, **extra,
  }
