"""`MoEConfig`: every option of one MoE layer, validated once, handed whole to the layer.

    config = MoEConfig(num_experts=8, expert_d_ff=1024, router="topk", router_options={"k": 2})
    variables = init_moe_layer(rng, d_model, config)
    y_BLD, routing = moe_layer(variables, x_BLD, config, train=True, rng=rng, mesh=mesh)
    moe = moe_jax.models.MoE(d_model, config, mesh=mesh, rngs=nnx.Rngs(0))

The run config's `config.model.*` keys of the same names map onto these fields one to one, and
the transformer holds one `MoEConfig` (`TransformerConfig.moe`), so the options are written
and checked in one place. `router` and `dispatcher` are registered names, or built objects (a
notebook's own `Router`); the built router, dispatcher and experts are properties, made once.
Checks that need the mesh (expert and model axis sizes, the exchange for its backend) are in
`moe_jax.layer.check_mesh`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from moe_jax import dispatch, routing
from moe_jax.dispatch.base import Dispatcher
from moe_jax.dispatch.expert_parallel import EXCHANGES
from moe_jax.experts import Experts, make_experts
from moe_jax.routing.base import Router
from moe_jax.validation import check_choice, check_float, check_int

OWNER = "moe"


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  num_experts: int
  expert_d_ff: int
  router: str | Router = "topk"
  router_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  activation: str = "gelu"
  glu: bool = False
  dispatcher: str | Dispatcher = dispatch.DEFAULT
  capacity_factor: float = 1.25
  group_size: int | None = None       # tokens routed together; None: one sequence
  shared_d_ff: int | None = None      # an always-on shared expert (DeepSeekMoE), or none
  exchange: str = "auto"              # expert-parallel dropless all-to-all

  def __post_init__(self):
    check_int("num_experts", self.num_experts, low=1, owner=OWNER)
    check_int("expert_d_ff", self.expert_d_ff, low=1, owner=OWNER)
    check_float("capacity_factor", self.capacity_factor, low=0.0, low_inclusive=False,
                owner=OWNER)
    if self.group_size is not None:
      check_int("group_size", self.group_size, low=1, owner=OWNER)
    if self.shared_d_ff is not None:
      check_int("shared_d_ff", self.shared_d_ff, low=1, owner=OWNER)
    check_choice("exchange", self.exchange, EXCHANGES, owner=OWNER)
    self.experts   # noqa: B018 - activation, glu
    router, dispatcher = self.built_router, self.built_dispatcher
    if router.soft and not dispatcher.supports_soft:
      raise ValueError(f"{OWNER}: router {router.name!r} mixes tokens into slots (soft "
                       f"routing); dispatcher {dispatcher.name!r} cannot run it, use one that "
                       "supports_soft ('einsum')")

  @functools.cached_property
  def built_router(self) -> Router:
    if isinstance(self.router, Router):
      if self.router_options:
        raise ValueError(f"{OWNER}: router_options must be empty when router is a built "
                         f"Router (its options are fixed: {self.router.options})")
      if self.num_experts != self.router.num_experts:
        raise ValueError(f"{OWNER}: num_experts={self.num_experts} contradicts the given "
                         f"router's num_experts={self.router.num_experts}")
      return self.router
    if not isinstance(self.router, str):
      raise ValueError(f"{OWNER}: router must be a router name or a Router, got "
                       f"{self.router!r}")
    return routing.get(self.router, num_experts=self.num_experts, **self.router_options)

  @functools.cached_property
  def built_dispatcher(self) -> Dispatcher:
    if isinstance(self.dispatcher, Dispatcher):
      return self.dispatcher
    if not isinstance(self.dispatcher, str):
      raise ValueError(f"{OWNER}: dispatcher must be a dispatcher name or a Dispatcher, got "
                       f"{self.dispatcher!r}")
    return dispatch.get(self.dispatcher)

  @functools.cached_property
  def experts(self) -> Experts:
    return make_experts(self.expert_d_ff, activation=self.activation, glu=self.glu)

  @functools.cached_property
  def shared_experts(self) -> Experts | None:
    if self.shared_d_ff is None:
      return None
    return make_experts(self.shared_d_ff, activation=self.activation, glu=self.glu)
