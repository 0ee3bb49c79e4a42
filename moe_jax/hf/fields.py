"""config.json field readers the family modules share (families.py, deepseek.py, glm.py,
gpt_oss.py): the fields no family maps, typed reads, the attention's sizes, the number of
routed experts and the experts per token."""
from __future__ import annotations

# Fields with no effect on the weights' meaning or the forward pass. `router_aux_loss_coef` and
# `output_router_logits` are HF's training loss; the moe_jax run's is config.aux_loss_weights.
IGNORED = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "initializer_range",
    "transformers_version", "output_router_logits", "router_aux_loss_coef", "output_attentions",
    "output_hidden_states", "return_dict", "torchscript", "architectures", "model_type",
    "dtype", "torch_dtype", "tokenizer_class", "max_window_layers"})


def get(hf_config: dict, key: str, default=None, *, kind=None):
  value = hf_config.get(key, default)
  if kind is not None and (isinstance(value, bool) != (kind is bool)
                           or not isinstance(value, kind)):
    name = {int: "an integer", bool: "true or false"}.get(kind, "a number")
    raise ValueError(f"config.json: {key}={value!r} must be {name}")
  return value


def num_experts(family, hf_config: dict) -> int:
  given = [(f, hf_config[f]) for f in family.num_experts_fields if f in hf_config]
  if not given:
    raise ValueError(f"config.json: {family.num_experts_fields[0]} is missing")
  if len({v for _, v in given}) > 1:
    raise ValueError(f"config.json: {given[0][0]}={given[0][1]!r} contradicts "
                     f"{given[1][0]}={given[1][1]!r}")
  return get(hf_config, given[0][0], kind=int)


def check_known(family, hf_config: dict, known, required: dict, who: str) -> None:
  """The checks a family module (deepseek.py, glm.py) makes first: every field is known (or
  bookkeeping: '_...'), the `required` ones have their value, no tied embeddings, SwiGLU
  experts. `who` names the family in the error ('DeepSeek's experts are SwiGLU')."""
  for key in sorted(hf_config):
    if not key.startswith("_") and key not in known:
      raise ValueError(f"config.json: field {key!r}={hf_config[key]!r} is not understood for "
                       f"{family.architecture}; moe_jax.hf does not import it")
  for key, allowed in required.items():
    if key in hf_config and hf_config[key] != allowed:
      raise ValueError(f"config.json: {key}={hf_config[key]!r} is not supported for "
                       f"{family.architecture} (moe_jax needs {key}={allowed!r})")
  if hf_config.get("tie_word_embeddings", False):
    raise ValueError("config.json: tie_word_embeddings=True is not supported")
  if get(hf_config, "hidden_act", "silu") != "silu":
    raise ValueError(f"config.json: hidden_act={hf_config['hidden_act']!r} is not supported "
                     f"({who}'s experts are SwiGLU: 'silu')")


def attention_sizes(hf_config: dict) -> dict:
  """The section's d_model, num_heads, num_kv_heads (None: as many as heads) and head_dim
  (None: hidden_size / num_attention_heads), so a section states only what differs."""
  d_model = get(hf_config, "hidden_size", kind=int)
  heads = get(hf_config, "num_attention_heads", kind=int)
  kv = hf_config.get("num_key_value_heads") or heads
  head_dim = hf_config.get("head_dim")
  return {"d_model": d_model, "num_heads": heads, "num_kv_heads": None if kv == heads else kv,
          "head_dim": None if head_dim is not None and heads * head_dim == d_model
          else head_dim}


def experts_per_token(k, num_experts: int) -> int:
  """num_experts_per_tok (already read), checked against the routed experts."""
  k = get({"num_experts_per_tok": k}, "num_experts_per_tok", kind=int)
  if not 1 <= k <= num_experts:
    raise ValueError(f"config.json: num_experts_per_tok={k} must be in 1..{num_experts}")
  return k
