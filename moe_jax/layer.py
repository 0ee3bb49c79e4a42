"""The MoE layer: router -> dispatcher -> experts (+ shared experts), as a pure function.

    y_BLD, routing = moe_layer(variables, x_BLD, router=..., dispatcher=..., experts=...)

variables = {'router': {'params', 'state'}, 'experts': stacked params, 'shared': params or None}.
Tokens are routed in groups of `group_size` (default: one sequence), as GShard does, so the
capacity and the cost of routing do not grow with the global batch. The returned Routing holds
the per-group assignments (leading axis G) with aux losses and metrics averaged over groups, and
the router's new state (floating leaves averaged over groups, booleans all-reduced).

Axis letters: B batch, L length, D model dim, G groups, S tokens per group, E experts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.dispatch.base import Dispatcher, expert_capacity
from moe_jax.experts import Experts
from moe_jax.routing.base import Router
from moe_jax.validation import check_float, check_int


def init_moe_layer(rng, d_model: int, *, router: Router, experts: Experts,
                   shared_experts: Experts | None = None) -> dict:
  r_rng, e_rng, s_rng = jax.random.split(rng, 3)
  return {"router": router.init(r_rng, d_model),
          "experts": experts.init(e_rng, router.num_experts, d_model),
          "shared": None if shared_experts is None else shared_experts.init(s_rng, 1, d_model)}


def validate_layer(*, router: Router, dispatcher: Dispatcher, capacity_factor: float,
                   expert_axis_size: int = 1) -> None:
  """Checks made before anything compiles; each error names the field."""
  check_float("capacity_factor", capacity_factor, low=0.0, low_inclusive=False, owner="moe")
  check_int("expert_axis_size", expert_axis_size, low=1, owner="moe")
  if router.num_experts % expert_axis_size:
    raise ValueError(f"moe: num_experts={router.num_experts} is not divisible by the mesh's "
                     f"'expert' axis size {expert_axis_size}")
  if router.name == "soft" and not dispatcher.supports_soft:
    raise ValueError(f"moe: router 'soft' needs dispatcher 'einsum', got {dispatcher.name!r}")


def _merge_state(state_G):
  def merge(leaf):
    if leaf.dtype == jnp.bool_:
      return jnp.all(leaf, axis=0)
    return jnp.mean(leaf, axis=0).astype(leaf.dtype)
  return jax.tree.map(merge, state_G)


def moe_layer(variables, x_BLD, *, router: Router, dispatcher: Dispatcher, experts: Experts,
              shared_experts: Experts | None = None, token_ids_BL=None, rng=None,
              train: bool = False, group_size: int | None = None,
              capacity_factor: float = 1.25):
  batch, length, d_model = x_BLD.shape
  num_tokens = batch * length
  group_size = length if group_size is None else group_size
  if num_tokens % group_size:
    raise ValueError(f"moe: group_size={group_size} does not divide the {num_tokens} tokens")
  expert_capacity(1, 1, capacity_factor)  # validates capacity_factor
  num_groups = num_tokens // group_size
  x_GSD = x_BLD.reshape(num_groups, group_size, d_model)
  ids_GS = None if token_ids_BL is None else token_ids_BL.reshape(num_groups, group_size)
  rngs = None if rng is None else jax.random.split(rng, num_groups)

  def one_group(x_SD, ids_S, group_rng):
    r = router.route(variables["router"], x_SD, token_ids=ids_S, rng=group_rng, train=train)
    y_SD, dispatch_metrics = dispatcher.run(r, x_SD, variables["experts"], experts,
                                            capacity_factor=capacity_factor)
    return y_SD, r.replace(metrics={**r.metrics, **dispatch_metrics})

  y_GSD, routing_G = jax.vmap(one_group, in_axes=(0, None if ids_GS is None else 0,
                                                  None if rngs is None else 0))(x_GSD, ids_GS,
                                                                                rngs)
  routing = routing_G.replace(
      aux_losses=jax.tree.map(lambda a: a.mean(0), routing_G.aux_losses),
      metrics=jax.tree.map(lambda a: a.mean(0), routing_G.metrics),
      new_state=_merge_state(routing_G.new_state))
  y_BLD = y_GSD.reshape(batch, length, d_model)
  if shared_experts is not None:
    y_BLD = y_BLD + shared_experts.apply(variables["shared"],
                                         x_BLD.reshape(1, num_tokens, d_model))[0].reshape(
                                             y_BLD.shape)
  return y_BLD, routing
