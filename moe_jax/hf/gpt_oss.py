"""The GPT-OSS family (`GptOssForCausalLM`: gpt-oss-20b, gpt-oss-120b): config.json ->
config.model.* and its tensors, read against transformers 5.25's modeling_gpt_oss.py.

What it has that moe_jax's other families do not, and what moe_jax maps it to:
- attention: q/k/v and output biases (attention_bias: `qkv_bias`, `out_bias`), a learned
  per-head sink logit in the softmax (`attention_sinks`), a 128-token sliding window on the
  even layers (layer_types alternating sliding / full from layer 0: `sliding_window`,
  `sliding_every=2`), YaRN (`rope_scaling`, with `truncate`), head_dim 64 != hidden / heads;
- the router: x W + b (`topk` with `bias`), the softmax over its top-k logits
  (`order='topk_softmax'`);
- the experts: biases on every projection (`expert_bias`), the clamped SwiGLU
  (`activation='clamped_swiglu'`, swiglu_alpha 1.702 and swiglu_limit 7.0), and one stored
  layout: gate_up_proj [E, D, 2F] with gate and up interleaved along the last axis (even
  columns the gate, odd the up), its bias [E, 2F] likewise, down_proj [E, F, D], all x @ W.
The Hub's checkpoints hold the two expert matrices MXFP4-quantised (`quantization_config`,
`*_blocks` and `*_scales` tensors): they are dequantised on import (moe_jax.hf.mxfp4) and an
export writes them as float tensors, a dequantised checkpoint without quantization_config.
"""
from __future__ import annotations

from moe_jax import experts
from moe_jax.hf import deepseek, fields, mxfp4

ARCHITECTURE = "GptOssForCausalLM"
_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
           "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
           "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
           "rope_scaling", "tie_word_embeddings", "attention_bias", "attention_dropout",
           "num_local_experts", "num_experts", "num_experts_per_tok", "experts_per_token",
           "sliding_window", "layer_types", "swiglu_alpha", "swiglu_limit",
           # the Hub's: the context its YaRN extends (also in rope_scaling), and MXFP4
           "initial_context_length", "quantization_config"}
_REQUIRED = {"attention_dropout": 0.0, "swiglu_alpha": experts.SWIGLU_ALPHA,
             "swiglu_limit": experts.SWIGLU_LIMIT}     # the clamped SwiGLU's constants


def check_fields(family, hf_config: dict) -> None:
  quant = hf_config.get("quantization_config")
  if quant is not None and (not isinstance(quant, dict) or quant.get("quant_method") != "mxfp4"):
    method = quant.get("quant_method") if isinstance(quant, dict) else quant
    raise ValueError(f"config.json: quantization_config (quant_method={method!r}) is not "
                     "supported; moe_jax reads GPT-OSS's 'mxfp4' experts (or float weights)")
  fields.check_known(family, hf_config, fields.IGNORED | _FIELDS, _REQUIRED, "GPT-OSS")
  given = {f: hf_config[f] for f in ("num_experts_per_tok", "experts_per_token")
           if f in hf_config}
  if len(set(given.values())) > 1:
    raise ValueError(f"config.json: num_experts_per_tok={given['num_experts_per_tok']!r} "
                     f"contradicts experts_per_token={given['experts_per_token']!r}")


def check_layout(hf_config: dict, layout: str) -> None:
  """config.json's quantization_config and the tensors agree: MXFP4 experts iff it says so."""
  said = hf_config.get("quantization_config") is not None
  if said != (layout == "mxfp4"):
    raise ValueError("config.json: quantization_config " + (
        "says the experts are MXFP4, but the checkpoint holds float expert tensors" if said
        else "is absent, but the checkpoint holds MXFP4 expert blocks and scales"))


def _windows(hf_config: dict, layers: int) -> tuple[int | None, int]:
  """(sliding_window, sliding_every) from layer_types: GPT-OSS's alternation (sliding on the
  even layers) or full attention everywhere."""
  types = hf_config.get("layer_types")
  sliding = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
  if types is None or types == sliding:
    return fields.get(hf_config, "sliding_window", 128, kind=int), 2
  if types == ["full_attention"] * layers:
    return None, 1
  raise ValueError(f"config.json: layer_types={types!r} is not supported (moe_jax reads "
                   "sliding windows on the even layers, as GPT-OSS has them, or none)")


def model_section(family, hf_config: dict, dtype: str) -> dict:
  check_fields(family, hf_config)
  g = lambda key, kind=int, default=None: fields.get(hf_config, key, default, kind=kind)
  layers, num_experts = g("num_hidden_layers"), fields.num_experts(family, hf_config)
  k = fields.experts_per_token(
      hf_config.get("num_experts_per_tok", hf_config.get("experts_per_token")), num_experts)
  theta, scaling = deepseek.rope(hf_config)
  window, every = _windows(hf_config, layers)
  bias = bool(g("attention_bias", bool, True))
  return {
      "vocab_size": g("vocab_size"), **fields.attention_sizes(hf_config), "num_layers": layers,
      "max_len": g("max_position_embeddings"), "d_ff": g("intermediate_size"),
      "activation": "clamped_swiglu", "glu": True, "num_experts": num_experts,
      "router": "topk", "router_options": {"k": k, "order": "topk_softmax", "bias": True},
      "expert_d_ff": g("intermediate_size"), "expert_bias": True, "moe_every": 1,
      "first_dense_layers": 0, "dispatcher": "dropless", "tie_embeddings": False,
      "rope_theta": theta, "rope_scaling": scaling,
      "norm_eps": float(g("rms_norm_eps", (int, float))), "qk_norm": "none",
      "qkv_bias": bias, "out_bias": bias, "attention_sinks": True,
      "sliding_window": window, "sliding_every": every, "dtype": dtype, "param_dtype": dtype,
  }


def attention_mappings(s: dict, prefix: str, block: tuple, copy) -> list:
  """The output bias and the sinks of one layer (q/k/v are the shared grouped-query ones)."""
  a, at = prefix + "self_attn.", block + ("attn",)
  out = [copy(at + ("sinks",), a + "sinks", (s["num_heads"],))]
  if s.get("out_bias"):
    out.append(copy(at + ("out_bias",), a + "o_proj.bias", (s["d_model"],)))
  return out


def moe_mappings(s: dict, prefix: str, block: tuple, mapping, quantized: bool = False) -> list:
  """The router (weight and bias) and the experts in GPT-OSS's layout: float, or (the Hub's)
  the two expert matrices as MXFP4 blocks and scales over their input axis."""
  d, e, f = s["d_model"], s["num_experts"], s["expert_d_ff"]
  m, router, ex = prefix + "mlp.", block + ("ffn", "router_params"), block + ("ffn",
                                                                              "expert_params")
  x = m + "experts."
  if quantized:
    for size, name in ((d, "hidden_size"), (f, "intermediate_size")):
      if size % mxfp4.BLOCK:
        raise ValueError(f"config.json: {name}={size} is not a multiple of {mxfp4.BLOCK}, the "
                         "MXFP4 block")
    q = lambda out, inp: ((e, out, inp // mxfp4.BLOCK, mxfp4.BLOCK // 2),
                          (e, out, inp // mxfp4.BLOCK))
    weights = [mapping((ex + ("w_gate",), ex + ("w_up",)),
                       (x + "gate_up_proj_blocks", x + "gate_up_proj_scales"), q(2 * f, d),
                       "mxfp4_interleaved"),
               mapping((ex + ("w_down",),), (x + "down_proj_blocks", x + "down_proj_scales"),
                       q(d, f), "mxfp4")]
  else:
    weights = [mapping((ex + ("w_gate",), ex + ("w_up",)), (x + "gate_up_proj",),
                       ((e, d, 2 * f),), "interleaved"),
               mapping((ex + ("w_down",),), (x + "down_proj",), ((e, f, d),), "copy")]
  return [mapping((router + ("w",),), (m + "router.weight",), ((e, d),), "linear"),
          mapping((router + ("b",),), (m + "router.bias",), ((e,),), "copy"),
          *weights,
          mapping((ex + ("b_gate",), ex + ("b_up",)), (x + "gate_up_proj_bias",),
                  ((e, 2 * f),), "interleaved"),
          mapping((ex + ("b_down",),), (x + "down_proj_bias",), ((e, d),), "copy")]


MOE_TENSORS = 6              # per layer: router weight and bias, the four expert tensors
MXFP4_TENSORS = 8            # ... with the two expert matrices as blocks and scales
ATTENTION_TENSORS = 2        # per layer beyond the shared ones: the sinks, o_proj's bias
