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

import jax
import jax.numpy as jnp

from moe_jax import dispatch, routing
from moe_jax.dispatch.base import Dispatcher
from moe_jax.dispatch.expert_parallel import EXCHANGES
from moe_jax.experts import Experts, make_experts
from moe_jax.routing.base import Router
from moe_jax.validation import check_choice, check_float, check_int

OWNER = "moe"
BALANCE_SCOPES = ("group", "global")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  num_experts: int
  expert_d_ff: int
  router: str | Router = "topk"
  router_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  activation: str = "gelu"
  glu: bool = False
  expert_bias: bool = False           # x W + b in every expert projection (routed and shared)
  dispatcher: str | Dispatcher = dispatch.DEFAULT
  capacity_factor: float = 1.25
  group_size: int | None = None       # tokens routed together; None: one sequence
  shared_d_ff: int | None = None      # an always-on shared expert (DeepSeekMoE), or none
  shared_gate: bool = False           # Qwen2-MoE: the shared expert scaled by sigmoid(x . w_gate)
  exchange: str = "auto"              # expert-parallel dropless all-to-all
  # MoE++ (Jin et al. 2024) zero-computation experts, routed beside the FFN experts: the router
  # sees num_experts + zero + copy + constant experts, in that order.
  zero_experts: int = 0               # output 0
  copy_experts: int = 0               # output x
  constant_experts: int = 0           # output a1 x + a2 v, [a1, a2] = softmax(x W_c), v learned
  # load_balancing over each routing group ('group') or the whole global batch, all-reduced
  # over the devices' batch axes ('global', Qiu et al. 2025).
  balance_scope: str = "group"
  # NLLB-MoE: after capacity drops, a token's kept combine weights are rescaled to sum to 1.
  drop_renormalize: bool = False

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
    for name in ("zero_experts", "copy_experts", "constant_experts"):
      check_int(name, getattr(self, name), low=0, owner=OWNER)
    check_choice("balance_scope", self.balance_scope, BALANCE_SCOPES, owner=OWNER)
    if self.shared_gate and self.shared_d_ff is None:
      raise ValueError(f"{OWNER}: shared_gate=True gates the shared expert, but there is none; "
                       "set shared_d_ff")
    self.experts   # noqa: B018 - activation, glu
    router, dispatcher = self.built_router, self.built_dispatcher
    if router.soft and not dispatcher.supports_soft:
      raise ValueError(f"{OWNER}: router {router.name!r} mixes tokens into slots (soft "
                       f"routing); dispatcher {dispatcher.name!r} cannot run it, use one that "
                       "supports_soft ('einsum')")
    if router.soft and (self.num_null_experts or self.drop_renormalize
                        or self.balance_scope != "group"):
      raise ValueError(f"{OWNER}: router {router.name!r} is soft (no token -> expert "
                       "assignments): null experts, drop_renormalize and balance_scope='global' "
                       "need a sparse router")
    if self.drop_renormalize and not dispatcher.drops_tokens:
      raise ValueError(f"{OWNER}: drop_renormalize=True renormalises after capacity drops, but "
                       f"dispatcher {dispatcher.name!r} drops nothing; use a dispatcher with a "
                       "capacity ('sort', 'einsum')")
    if self.balance_scope == "global":
      _check_reports_balance_stats(router)

  @property
  def num_null_experts(self) -> int:
    return self.zero_experts + self.copy_experts + self.constant_experts

  @property
  def num_routed(self) -> int:
    """How many experts the router chooses among: the FFN experts, then the null experts."""
    return self.num_experts + self.num_null_experts

  @functools.cached_property
  def built_router(self) -> Router:
    if isinstance(self.router, Router):
      if self.router_options:
        raise ValueError(f"{OWNER}: router_options must be empty when router is a built "
                         f"Router (its options are fixed: {self.router.options})")
      if self.num_routed != self.router.num_experts:
        null = f" + {self.num_null_experts} null experts" if self.num_null_experts else ""
        raise ValueError(f"{OWNER}: num_experts={self.num_experts}{null} contradicts the given "
                         f"router's num_experts={self.router.num_experts}")
      return self.router
    if not isinstance(self.router, str):
      raise ValueError(f"{OWNER}: router must be a router name or a Router, got "
                       f"{self.router!r}")
    return routing.get(self.router, num_experts=self.num_routed, **self.router_options)

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
    return make_experts(self.expert_d_ff, activation=self.activation, glu=self.glu,
                        bias=self.expert_bias)

  @functools.cached_property
  def shared_experts(self) -> Experts | None:
    if self.shared_d_ff is None:
      return None
    return make_experts(self.shared_d_ff, activation=self.activation, glu=self.glu,
                        bias=self.expert_bias)


def _check_reports_balance_stats(router: Router) -> None:
  """balance_scope='global' rebuilds the Switch loss from the router's `expert_load` and
  `router_prob` metrics; routers that do not report both cannot have it (checked by tracing one
  small call, nothing computed)."""
  def probe():
    variables = router.init(jax.random.PRNGKey(0), 8)
    x = jnp.zeros((4, 8), jnp.float32)
    return router.route(variables, x, token_ids=jnp.zeros((4,), jnp.int32),
                        rng=jax.random.PRNGKey(0), train=False)
  out = jax.eval_shape(probe)
  missing = [k for k in ("expert_load", "router_prob") if k not in out.metrics]
  if missing or "load_balancing" not in out.aux_losses:
    raise ValueError(f"{OWNER}: balance_scope='global' needs a router with a load_balancing "
                     f"loss that reports expert_load and router_prob; router {router.name!r} "
                     f"does not (missing: {', '.join(missing or ['load_balancing'])})")
