"""The `config.model.*` section: its schema, derived from the model dataclasses, and its checks
(dtypes, router and options, the aux-loss weights the router declares, the mesh fit).

Part of moe_jax.config, which calls these from `validate` and re-exports `ModelSection`,
`DTYPES` and `build_model_config`; every error names the field as spelled on the command line.
"""
from __future__ import annotations

import dataclasses
from typing import get_type_hints

import jax.numpy as jnp

from moe_jax import dispatch, routing
from moe_jax.models.transformer import TransformerConfig, make_config, validate as validate_model
from moe_jax.moe_config import MoEConfig
from moe_jax.validation import check_choice, check_float, check_int

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# The `config.model.*` keys: TransformerConfig's fields with its MoEConfig's flattened in, the
# one flat list `make_config` takes. The fields, their defaults and their comments are written
# once, in those two dataclasses; the section differs only where a config needs it to: a
# default for what the model dataclasses require (sizes, num_experts 0 = dense, expert_d_ff
# None = d_ff), and names (strings) where they take objects (dtypes, router, dispatcher).
_SECTION_DEFAULTS = {"vocab_size": 256, "d_model": 128, "num_layers": 4, "num_heads": 4,
                     "num_experts": 0, "expert_d_ff": None, "dtype": "float32",
                     "param_dtype": "float32", "router": "topk", "dispatcher": dispatch.DEFAULT}
_SECTION_TYPES = {"expert_d_ff": int | None, "dtype": str, "param_dtype": str, "router": str,
                  "router_options": dict, "dispatcher": str}


def _model_section():
  fields, seen = [], set()
  for cls in (TransformerConfig, MoEConfig):
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
      if f.name == "moe" or f.name in seen:
        continue
      seen.add(f.name)
      if f.name in _SECTION_DEFAULTS:
        spec = dataclasses.field(default=_SECTION_DEFAULTS[f.name])
      elif f.default_factory is not dataclasses.MISSING:
        spec = dataclasses.field(default_factory=f.default_factory)
      else:
        spec = dataclasses.field(default=f.default)
      fields.append((f.name, _SECTION_TYPES.get(f.name, hints[f.name]), spec))
  section = dataclasses.make_dataclass("ModelSection", fields, frozen=True)
  section.__module__ = __name__      # (make_dataclass takes module= only from Python 3.12)
  section.__doc__ = "The `config.model.*` keys: the transformer's fields and the MoE options."
  return section


ModelSection = _model_section()


def _dtype(value, field: str):
  check_choice(field, value, DTYPES, owner="config.model")
  return DTYPES[value]


def router_options(section: dict, explicit, notes: list) -> dict:
  """The options the chosen router takes; the file's others are dropped, a flag's are errors."""
  router, given = section["router"], dict(section["router_options"] or {})
  check_choice("router", router, routing.names(), owner="config.model")
  allowed = [k for k in routing.options(router) if k != "num_experts"]
  unknown = sorted(set(given) - set(allowed))
  flagged = [k for k in unknown if f"model.router_options.{k}" in explicit
             or "model.router_options" in explicit]
  if flagged:
    raise ValueError(f"config.model.router_options.{flagged[0]}: router {router!r} takes no "
                     f"option {flagged[0]!r}; it takes: {', '.join(allowed) or 'none'}")
  if unknown:
    notes.append(f"router {router!r} takes no option(s) {', '.join(unknown)} (set by the "
                 "config file for another router): ignored")
  return {k: v for k, v in given.items() if k in allowed}


def build_router(section: dict) -> routing.Router:
  """The router the model section builds (it chooses among the FFN experts and MoE++'s null
  experts); its option errors name config.model.router_options."""
  owner = "config.model"
  routed = section["num_experts"] + sum(check_int(k, section[k], low=0, owner=owner) for k in
                                        ("zero_experts", "copy_experts", "constant_experts"))
  try:
    return routing.get(section["router"], num_experts=routed, **section["router_options"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.model.router_options (router {section['router']!r}, "
                     f"num_experts={routed}): {e}") from e


def aux_loss_weights(tree: dict) -> dict[str, float]:
  """The weight of every aux loss the run's router produces: the router's declared defaults
  (routing.Router.loss_weights), overridden by name by config.aux_loss_weights. A nonzero
  weight for a loss the router does not produce is an error naming the ones it does; a dense
  model (no MoE layer) has none to weigh, so its weights are kept as given and unused."""
  given = dict(tree["aux_loss_weights"] or {})
  for name, w in given.items():
    check_float(f"aux_loss_weights.{name}", w, low=0.0, owner="config")
  if not tree["model"]["num_experts"]:
    return given
  router = build_router(tree["model"])
  declared = router.loss_weights
  if declared is None:        # a router that does not declare its losses: the config decides
    return given
  unknown = [n for n, w in given.items() if n not in declared and w != 0]
  if unknown:
    losses = ", ".join(f"{k} (default {v:g})" for k, v in declared.items()) or "none"
    raise ValueError(f"config.aux_loss_weights.{unknown[0]}: router {router.name!r} produces "
                     f"no aux loss {unknown[0]!r}; its losses: {losses}")
  return {**declared, **{n: w for n, w in given.items() if n in declared}}


def check_model(section: dict, mesh, *, causal: bool) -> TransformerConfig:
  owner = "config.model"
  section = dict(section)
  for field in ("dtype", "param_dtype"):
    section[field] = _dtype(section[field], field)
  check_choice("dispatcher", section["dispatcher"], dispatch.names(), owner=owner)
  num_experts = check_int("num_experts", section["num_experts"], low=0, owner=owner)
  if num_experts:
    build_router(section)
    if num_experts % mesh.expert:
      raise ValueError(f"config.model.num_experts={num_experts} is not divisible by "
                       f"config.mesh.expert={mesh.expert}: each device must hold whole experts")
  model = build_model_config(section)
  validate_model(model, causal=causal, owner=owner)
  d_ff = section["d_ff"] or 4 * section["d_model"]
  for name, value in (("d_model", section["d_model"]), ("d_ff", d_ff),
                      ("expert_d_ff", section["expert_d_ff"] or d_ff)):
    if value % mesh.model:
      raise ValueError(f"config.model.{name}={value} is not divisible by "
                       f"config.mesh.model={mesh.model} (tensor parallelism splits it)")
  return model


def build_model_config(section: dict) -> TransformerConfig:
  """The model's config from the flat `config.model.*` section (dtypes already resolved); the
  MoE options' errors name config.model."""
  try:
    return make_config(**section)
  except ValueError as e:
    raise ValueError(str(e).replace("moe: ", "config.model: ", 1)) from e
