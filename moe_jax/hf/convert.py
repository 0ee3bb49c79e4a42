"""Hugging Face tensors <-> moe_jax DecoderLM params: one table of mappings, read both ways.

    table = mappings(family, section, layout)     # layout: 'hub' or 'fused'
    params = to_params(table, tensors)            # {path tuple: array}, as the model lays them out
    tensors = from_params(table, params)          # {HF name: array}, the exact inverse

Each Mapping ties moe_jax params (paths into nnx.to_pure_dict of the model's Params) to HF
tensors with a `kind` saying how, and gives the HF shapes the config implies, so a checkpoint
is checked from its safetensors headers alone, before any data is read. HF Linear weights are
[out, in] (y = x W^T), moe_jax kernels [in, out]: 'linear' transposes. Every conversion is a
transpose, a stack, a concatenation or an interleave, so moe_jax -> HF -> moe_jax is exact, bit
for bit; but for MXFP4 experts, which are decoded one way (an export writes them as floats).

Layouts: 'hub' is the layout of the checkpoints on the Hub (and what transformers 5 still
saves by default): one Linear per expert, `...experts.{e}.w1.weight` (Mixtral, under
block_sparse_moe) or `...mlp.experts.{e}.gate_proj.weight` (Qwen2/3-MoE, OLMoE). 'fused' is
transformers 5's in-memory layout, saved with `save_pretrained(save_original_format=False)`:
`mlp.experts.gate_up_proj` [E, 2F, D] (gate rows first) and `mlp.experts.down_proj` [E, D, F],
the router at `mlp.gate.weight` for every family. 'mxfp4' is GPT-OSS's Hub layout: its experts'
weights as MXFP4 blocks and scales (moe_jax.hf.mxfp4), read only.

Axis letters: E experts, D model dim, F expert hidden dim, H heads, G key/value heads, K head
dim, V vocab.
"""
from __future__ import annotations

import dataclasses
import re

import ml_dtypes
import numpy as np

from moe_jax.hf import families, gpt_oss, mxfp4
from moe_jax.hf.families import Family

FLOAT_DTYPES = tuple(np.dtype(d) for d in ("float32", "float16", "float64", ml_dtypes.bfloat16))


@dataclasses.dataclass(frozen=True)
class Mapping:
  params: tuple[tuple, ...]             # moe_jax param paths
  tensors: tuple[str, ...]              # HF tensor names
  shapes: tuple[tuple[int, ...], ...]   # their shapes, one per tensor
  kind: str


def _t(a):
  return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def forward(m: Mapping, arrays: list) -> list:
  """HF tensors -> moe_jax params."""
  if m.kind == "copy":
    return list(arrays)
  if m.kind == "linear":
    return [_t(arrays[0])]
  if m.kind == "qkv":                    # q [HK, D], k [GK, D], v [GK, D] -> [D, (H + 2G) K]
    return [np.concatenate([_t(a) for a in arrays], axis=1)]
  if m.kind == "experts":                # E x [out, in] -> [E, in, out]
    return [np.stack([_t(a) for a in arrays])]
  if m.kind == "concat":                 # q [HK], k [GK], v [GK] biases -> [(H + 2G) K]
    return [np.concatenate(arrays)]
  if m.kind == "gate_up":                # [E, 2F, D] -> w_gate, w_up [E, D, F]
    f = arrays[0].shape[1] // 2
    return [_t(arrays[0][:, :f]), _t(arrays[0][:, f:])]
  if m.kind == "down":                   # [E, D, F] -> [E, F, D]
    return [_t(arrays[0])]
  if m.kind == "interleaved":            # GPT-OSS [..., 2F]: even columns gate, odd up
    return [np.ascontiguousarray(arrays[0][..., 0::2]),
            np.ascontiguousarray(arrays[0][..., 1::2])]
  if m.kind in ("mxfp4", "mxfp4_interleaved"):   # blocks, scales [E, out, in/32(, 16)]
    w = _t(mxfp4.dequantize(*arrays))              # -> [E, in, out]
    return forward(dataclasses.replace(m, kind="interleaved"), [w]) if m.kind.endswith(
        "interleaved") else [w]
  raise AssertionError(m.kind)


def inverse(m: Mapping, arrays: list) -> list:
  """moe_jax params -> HF tensors (the exact inverse of `forward`)."""
  if m.kind == "copy":
    return list(arrays)
  if m.kind in ("linear", "down"):
    return [_t(arrays[0])]
  if m.kind == "qkv":
    cuts = np.cumsum([s[0] for s in m.shapes])[:-1]
    return [_t(a) for a in np.split(arrays[0], cuts, axis=1)]
  if m.kind == "concat":
    return np.split(arrays[0], np.cumsum([s[0] for s in m.shapes])[:-1])
  if m.kind == "experts":
    return [_t(a) for a in arrays[0]]
  if m.kind == "gate_up":
    return [np.concatenate([_t(arrays[0]), _t(arrays[1])], axis=1)]
  if m.kind == "interleaved":
    both = np.stack([arrays[0], arrays[1]], axis=-1)          # [..., F, 2]
    return [both.reshape(*both.shape[:-2], -1)]
  raise AssertionError(m.kind)


def _shared(prefix: str, block: tuple, s: dict) -> list[Mapping]:
  """Qwen2-MoE's shared expert (one expert of width shared_d_ff) and its sigmoid gate."""
  if not s.get("shared_d_ff"):
    return []
  d, f, m = s["d_model"], s["shared_d_ff"], prefix + "mlp."
  shared = block + ("ffn", "shared_params")
  name = s.get("_shared_name", "shared_expert")
  one = lambda param, hf_name, shape: Mapping((shared + (param,),),
                                              (f"{m}{name}.{hf_name}.weight",),
                                              (shape,), "experts")
  out = [one("w_gate", "gate_proj", (f, d)), one("w_up", "up_proj", (f, d)),
         one("w_down", "down_proj", (d, f))]
  if s.get("shared_gate"):
    out.append(Mapping((shared + ("gate",),), (m + "shared_expert_gate.weight",), ((1, d),),
                       "linear"))
  return out


def _moe(family: Family, prefix: str, block: tuple, s: dict, layout: str) -> list[Mapping]:
  return [*_routed(family, prefix, block, s, layout), *_router_bias(family, prefix, block, s),
          *_shared(prefix, block, {**s, "_shared_name": family.shared_name})]


def _router_bias(family: Family, prefix: str, block: tuple, s: dict) -> list[Mapping]:
  """DeepSeek-V3's e_score_correction_bias: the deepseek router's selection bias (state)."""
  if not family.router_bias:
    return []
  return [Mapping((block + ("ffn", "router_state", "bias"),),
                  (prefix + "mlp.gate.e_score_correction_bias",), ((s["num_experts"],),),
                  "copy")]


def _routed(family: Family, prefix: str, block: tuple, s: dict, layout: str) -> list[Mapping]:
  d, e, f = s["d_model"], s["num_experts"], s["expert_d_ff"]
  experts = block + ("ffn", "expert_params")
  if layout == "fused":
    m = prefix + "mlp."
    return [Mapping((block + ("ffn", "router_params", "w"),), (m + "gate.weight",),
                    ((e, d),), "linear"),
            Mapping((experts + ("w_gate",), experts + ("w_up",)),
                    (m + "experts.gate_up_proj",), ((e, 2 * f, d),), "gate_up"),
            Mapping((experts + ("w_down",),), (m + "experts.down_proj",), ((e, d, f),), "down")]
  m = prefix + family.moe_module + "."
  gate, up, down = family.expert_names

  def per_expert(param, hf_name, shape):
    names = tuple(f"{m}experts.{i}.{hf_name}.weight" for i in range(e))
    return Mapping((experts + (param,),), names, (shape,) * e, "experts")

  return [Mapping((block + ("ffn", "router_params", "w"),), (m + "gate.weight",), ((e, d),),
                  "linear"),
          per_expert("w_gate", gate, (f, d)), per_expert("w_up", up, (f, d)),
          per_expert("w_down", down, (d, f))]


def mappings(family: Family, section: dict, layout: str) -> list[Mapping]:
  """Every param of the model described by `section` (config.model.* keys), with its tensors."""
  return list(iter_mappings(family, section, layout))


def iter_mappings(family: Family, section: dict, layout: str):
  """`mappings`, one at a time (so a check can stop at the first tensor a checkpoint lacks
  without listing them all)."""
  s = section
  d, v, heads = s["d_model"], s["vocab_size"], s["num_heads"]
  kv = s["num_kv_heads"] or heads
  k = s["head_dim"] or d // heads
  copy = lambda path, name, shape: Mapping((path,), (name,), (shape,), "copy")
  linear = lambda path, name, shape: Mapping((path,), (name,), (shape,), "linear")
  yield copy(("transformer", "embed"), "model.embed_tokens.weight", (v, d))
  for i in range(s["num_layers"]):
    p, b = f"model.layers.{i}.", ("transformer", "blocks", i)
    a = p + "self_attn."
    yield from [
        copy(b + ("norm_attn", "scale"), p + "input_layernorm.weight", (d,)),
        copy(b + ("norm_ffn", "scale"), p + "post_attention_layernorm.weight", (d,))]
    if family.attention == "mla":
      from moe_jax.hf import deepseek
      yield from deepseek.attention_mappings(s, p, b, copy, linear)
    else:
      yield from [
          Mapping((b + ("attn", "qkv", "kernel"),),
                  (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                  ((heads * k, d), (kv * k, d), (kv * k, d)), "qkv"),
          linear(b + ("attn", "out", "kernel"), a + "o_proj.weight", (d, heads * k))]
      if family.architecture == gpt_oss.ARCHITECTURE:      # sinks and the output bias
        yield from gpt_oss.attention_mappings(s, p, b, copy)
    if s.get("qkv_bias"):
      yield Mapping((b + ("attn", "qkv_bias"),),
                    (a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"),
                    ((heads * k,), (kv * k,), (kv * k,)), "concat")
    if s["qk_norm"] != "none":
      full = s["qk_norm"] == "full"
      yield from [copy(b + ("attn", "q_norm", "scale"), a + "q_norm.weight",
                     (heads * k if full else k,)),
                copy(b + ("attn", "k_norm", "scale"), a + "k_norm.weight",
                     (kv * k if full else k,))]
    moe = i >= s["first_dense_layers"] and (i - s["first_dense_layers"]) % s["moe_every"] == 0
    if moe and family.architecture == gpt_oss.ARCHITECTURE:
      yield from gpt_oss.moe_mappings(s, p, b, Mapping, quantized=layout == "mxfp4")
    elif moe:
      yield from _moe(family, p, b, s, layout)
    else:
      f = s["d_ff"]
      yield from [linear(b + ("ffn", "w_in", "kernel"), p + "mlp.gate_proj.weight", (f, d)),
                linear(b + ("ffn", "w_up", "kernel"), p + "mlp.up_proj.weight", (f, d)),
                linear(b + ("ffn", "w_out", "kernel"), p + "mlp.down_proj.weight", (d, f))]
  yield from [copy(("transformer", "norm", "scale"), "model.norm.weight", (d,)),
              linear(("unembed", "kernel"), "lm_head.weight", (v, d))]


def expected_count(section: dict, layout: str) -> int:
  """How many tensors `mappings` lists, in O(1): each layer's norms and attention (+ q/k
  norms), its MoE (router + experts) or dense FFN, and the embedding, final norm and head."""
  layers, first, every = section["num_layers"], section["first_dense_layers"], section["moe_every"]
  moe = len(range(first, layers, every)) if 0 <= first < layers and every >= 1 else 0
  per_moe = 3 if layout == "fused" else 1 + 3 * section["num_experts"]
  if section.get("shared_d_ff"):
    per_moe += 3 + bool(section.get("shared_gate"))
  per_moe += section.get("router") == "deepseek" and section["router_options"].get(
      "score") == "sigmoid"                         # DeepSeek-V3's selection bias
  per_layer = 6 + 2 * (section["qk_norm"] != "none") + 3 * bool(section.get("qkv_bias"))
  if section.get("attention") == "mla":
    from moe_jax.hf import deepseek
    per_layer = 2 + deepseek.attention_count(section)
  if section.get("attention_sinks"):          # GPT-OSS
    per_layer += gpt_oss.ATTENTION_TENSORS - (not section.get("out_bias"))
    per_moe = gpt_oss.MXFP4_TENSORS if layout == "mxfp4" else gpt_oss.MOE_TENSORS
  return 3 + max(layers, 0) * per_layer + moe * per_moe + (max(layers, 0) - moe) * 3


LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.")
_ROUTER = re.compile(r"model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.(?:gate|router)\.weight")


def _layers_present(names) -> list[int]:
  return sorted({int(m.group(1)) for n in names if (m := LAYER_NAME.match(n))})


def _layers_error(layers: int, present: list[int]) -> ValueError:
  if present == list(range(len(present))):
    held = f"layers 0..{len(present) - 1}"
  else:
    held = f"layers {', '.join(map(str, present[:8]))}{', ...' if len(present) > 8 else ''}"
  have, gap = set(present), 0
  while gap in have:
    gap += 1
  tail = (f": tensor 'model.layers.{gap}.input_layernorm.weight' is missing" if gap < layers
          else f" ({len(present)} layers)")
  return ValueError(f"config.json: num_hidden_layers={layers}, but the checkpoint's tensors "
                    f"hold {held if present else 'no layers'}{tail}")


def check_sizes(family: Family, hf_config: dict, checkpoint) -> None:
  """config.json's sizes against the safetensors headers, before anything is built from them
  (a table, a model, a list per layer): the number of experts against the routers' rows, and
  num_hidden_layers at most the number of tensors (its exact check is `check_layers`, after
  the config's own checks)."""
  names = checkpoint.names()
  layers = families._get(hf_config, "num_hidden_layers", kind=int)
  if layers > len(names):
    raise _layers_error(layers, _layers_present(names))
  experts = families._num_experts(family, hf_config)
  field = next(f for f in family.num_experts_fields if f in hf_config)
  routers = sorted((int(m.group(1)), n) for n in names if (m := _ROUTER.fullmatch(n)))
  if routers:
    name = routers[0][1]
    shape = checkpoint.shape(name)
    if not shape or shape[0] != experts:
      raise ValueError(f"config.json: {field}={experts}, but the checkpoint's router {name!r} "
                       f"has shape {list(shape)} ({shape[0] if shape else 0} experts)")


def check_layers(family: Family, section: dict, layout: str, checkpoint, where: str) -> None:
  """The layers config.json describes are those the tensors hold, and it implies no more
  tensors than the checkpoint has (so the table `mappings` lists is bounded by the headers);
  the first tensor it lacks is named."""
  names = checkpoint.names()
  present = _layers_present(names)
  if present != list(range(section["num_layers"])):
    raise _layers_error(section["num_layers"], present)
  expected = expected_count(section, layout)
  if expected > len(names):
    have = set(names)
    missing = next(n for m in iter_mappings(family, section, layout) for n in m.tensors
                   if n not in have)
    raise ValueError(f"{where}: config.json (num_hidden_layers={section['num_layers']}, "
                     f"{section['num_experts']} experts) implies {expected} tensors, the "
                     f"checkpoint holds {len(names)}: tensor {missing!r} is missing")


def detect_layout(names) -> str:
  """'fused' if the checkpoint holds fused expert tensors, 'mxfp4' if it holds them MXFP4
  (GPT-OSS on the Hub), else 'hub'."""
  if any(n.endswith(".experts.gate_up_proj_blocks") for n in names):
    return "mxfp4"
  return "fused" if any(n.endswith(".experts.gate_up_proj") for n in names) else "hub"


def export_layout(layout: str) -> str:
  """The layout an export writes: the source's, but MXFP4 experts are written as the float
  tensors they stand for (moe_jax does not quantise)."""
  return "fused" if layout == "mxfp4" else layout


def check_tensors(table: list[Mapping], checkpoint, where: str) -> None:
  """Names and shapes (from the headers) against the table: an unknown or missing tensor, or
  a wrong shape, is an error naming it. A bias the config implies none of is an unknown name."""
  expected = {n: s for m in table for n, s in zip(m.tensors, m.shapes)}
  quantized = {n for m in table if m.kind.startswith("mxfp4") for n in m.tensors}
  names = set(checkpoint.names())
  for name in sorted(names - set(expected)):
    why = (" (moe_jax imports the biases a family's config implies: q/k/v with qkv_bias or "
           "attention_bias, GPT-OSS's output, router and expert biases; Mixtral, Qwen3-MoE "
           "and OLMoE have none)" if name.endswith(".bias") else "")
    raise ValueError(f"{where}: tensor {name!r} is not understood{why}")
  for name in sorted(set(expected) - names):
    raise ValueError(f"{where}: tensor {name!r} is missing (config.json implies it)")
  for name in sorted(expected):
    if checkpoint.shape(name) != expected[name]:
      raise ValueError(f"{where}: tensor {name!r} has shape {list(checkpoint.shape(name))}, "
                       f"config.json implies {list(expected[name])}")
    if name in quantized:
      if checkpoint.dtype(name) != np.uint8:
        raise ValueError(f"{where}: tensor {name!r} has dtype {checkpoint.dtype(name)}, MXFP4 "
                         "blocks and scales are uint8")
    elif checkpoint.dtype(name) not in FLOAT_DTYPES:
      raise ValueError(f"{where}: tensor {name!r} has dtype {checkpoint.dtype(name)}, not a "
                       "float (quantised checkpoints are not supported but GPT-OSS's MXFP4 "
                       "experts)")


def to_params(table: list[Mapping], checkpoint) -> dict[tuple, np.ndarray]:
  out = {}
  for m in table:
    out.update(zip(m.params, forward(m, [checkpoint[n] for n in m.tensors])))
  return out


def from_params(table: list[Mapping], params: dict[tuple, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for m in table:
    out.update(zip(m.tensors, inverse(m, [params[p] for p in m.params])))
  return out
