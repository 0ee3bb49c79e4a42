"""The MoE layer: router -> dispatcher -> experts (+ shared experts), as a pure function.

    config = MoEConfig(num_experts=8, expert_d_ff=1024, router_options={"k": 2})
    variables = init_moe_layer(rng, d_model, config)
    y_BLD, routing = moe_layer(variables, x_BLD, config, train=True, rng=rng, mesh=mesh)

variables = {'router': {'params', 'state'}, 'experts': stacked params, 'shared': params or None}.
Tokens are routed in groups of `group_size` (default: one sequence), as GShard does, so the
capacity and the cost of routing do not grow with the global batch. The returned Routing holds
the per-group assignments (leading axis G) with aux losses and metrics averaged over groups, and
the router's new state (floating leaves averaged over groups, booleans all-reduced).

Axis letters: B batch, L length, D model dim, G groups, S tokens per group, E experts.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from moe_jax import null_experts
from moe_jax.dispatch import expert_parallel
from moe_jax.dispatch.slots import dropped_fraction, kept_assignments
from moe_jax.experts import Experts
from moe_jax.moe_config import MoEConfig
from moe_jax.routing.base import Routing
from moe_jax.routing.linear import init_linear
from moe_jax.parallel.mesh import BATCH_AXES, axis_size, logical_to_spec

__all__ = ["MoEConfig", "check_mesh", "init_moe_layer", "merge_groups", "moe_layer",
           "variable_specs"]


def init_moe_layer(rng, d_model: int, config: MoEConfig) -> dict:
  """The layer's variables; 'shared' holds the shared expert (and its 'gate' [D, 1] with
  shared_gate), 'null' the constant experts' params (None without null experts)."""
  r_rng, e_rng, s_rng, g_rng, n_rng = jax.random.split(rng, 5)
  shared = config.shared_experts
  variables = {"router": config.built_router.init(r_rng, d_model),
               "experts": config.experts.init(e_rng, config.num_experts, d_model),
               "shared": None if shared is None else shared.init(s_rng, 1, d_model)}
  if config.shared_gate:
    variables["shared"]["gate"] = init_linear(g_rng, d_model, 1)
  if config.num_null_experts:
    variables["null"] = null_experts.init(n_rng, d_model, config.constant_experts)
  return variables


def _platform(mesh) -> str | None:
  """The mesh's device platform; None (the default backend) for an AbstractMesh, which has no
  devices and is used to build shapes and shardings without allocating (nnx.eval_shape)."""
  if mesh is None or isinstance(mesh, jax.sharding.AbstractMesh):
    return None
  return mesh.devices.flat[0].platform


def check_mesh(config: MoEConfig, mesh: Mesh | None) -> None:
  """The checks that need the mesh, made before anything compiles; each names the field."""
  if mesh is None:
    return
  expert, model = axis_size(mesh, "expert"), axis_size(mesh, "model")
  if config.num_experts % expert:
    raise ValueError(f"moe: num_experts={config.num_experts} is not divisible by the mesh's "
                     f"'expert' axis size {expert}")
  if config.expert_d_ff % model:
    raise ValueError(f"moe: expert_d_ff={config.expert_d_ff} is not divisible by the mesh's "
                     f"'model' axis size {model}")
  if expert > 1:
    if config.built_router.soft:
      raise ValueError(f"moe: router {config.built_router.name!r} has no expert-parallel form "
                       "(its slots mix every token); use a mesh with expert=1")
    if not expert_parallel.is_available(config.built_dispatcher):
      raise ValueError(f"moe: dispatcher {config.built_dispatcher.name!r} has no "
                       "expert-parallel version (no pack/unpack halves and no expert_parallel "
                       "factory); use a mesh with expert=1 or a dispatcher that has one")
    expert_parallel.resolve_exchange(config.exchange, backend=_platform(mesh))


def _merge_state(state_G):
  def merge(leaf):
    if leaf.dtype == jnp.bool_:
      return jnp.all(leaf, axis=0)
    return jnp.mean(leaf, axis=0).astype(leaf.dtype)
  return jax.tree.map(merge, state_G)


def moe_layer(variables, x_BLD, config: MoEConfig, *, token_ids_BL=None, rng=None,
              train: bool = False, mesh: Mesh | None = None):
  """y_BLD, routing. With `mesh`, experts are split over its 'expert' axis (and their hidden
  dim over 'model'), tokens over ('data', 'expert'); the result equals the unsharded layer's."""
  batch, length, _ = x_BLD.shape
  group_size = length if config.group_size is None else config.group_size
  shards = 1 if mesh is None else axis_size(mesh, "data") * axis_size(mesh, "expert")
  if batch % shards:
    raise ValueError(f"moe: batch size {batch} is not divisible by the {shards} devices of the "
                     "mesh's ('data', 'expert') axes")
  local_tokens = batch // shards * length
  if local_tokens % group_size:
    where = "" if mesh is None else " each device holds"
    raise ValueError(f"moe: group_size={group_size} does not divide the {local_tokens} "
                     f"tokens{where}")
  num_groups = batch * length // group_size
  rngs_G = None if rng is None else jax.random.split(rng, num_groups)
  check_mesh(config, mesh)
  layer = partial(_local_layer, config=config, train=train, group_size=group_size)
  if mesh is None:
    return layer(variables, x_BLD, token_ids_BL, rngs_G, dispatcher=config.built_dispatcher)
  return _sharded_layer(layer, variables, x_BLD, token_ids_BL, rngs_G, mesh=mesh,
                        dispatcher=config.built_dispatcher, experts=config.experts,
                        exchange=config.exchange)


def _local_layer(variables, x_BLD, token_ids_BL, rngs_G, *, config: MoEConfig, dispatcher,
                 train, group_size, reduce=None):
  """The layer on the tokens one device holds; `reduce` finishes cross-device means."""
  batch, length, d_model = x_BLD.shape
  router, experts = config.built_router, config.experts
  num_tokens = batch * length
  num_groups = num_tokens // group_size
  x_GSD = x_BLD.reshape(num_groups, group_size, d_model)
  ids_GS = None if token_ids_BL is None else token_ids_BL.reshape(num_groups, group_size)

  def route(x_SD, ids_S, group_rng):
    return router.route(variables["router"], x_SD, token_ids=ids_S, rng=group_rng, train=train)

  routing_G = jax.vmap(route, in_axes=(0, None if ids_GS is None else 0,
                                       None if rngs_G is None else 0))(x_GSD, ids_GS, rngs_G)
  ffn_G, extra_metrics = routing_G, {}
  # Capacity as if null experts held slots too: C = ceil(cf * N / (E + Q)) per FFN expert, so
  # the assignments null experts take shrink the FFN buffers (MoE++ sizes every expert alike).
  capacity_factor = config.capacity_factor * config.num_experts / config.num_routed
  if config.num_null_experts:
    ffn_G, null_GSQ = jax.vmap(partial(null_experts.split, num_ffn=config.num_experts,
                                       num_null=config.num_null_experts))(routing_G)
    extra_metrics.update(jax.vmap(null_experts.ffn_metrics)(routing_G, ffn_G))
  if config.drop_renormalize:
    ffn_G, drop_metrics = jax.vmap(partial(renormalize_after_drops,
                                           capacity_factor=capacity_factor))(ffn_G)
    extra_metrics.update(drop_metrics)

  def run(r, x_TD, **groups):
    return dispatcher.run(r, x_TD, variables["experts"], experts,
                          capacity_factor=capacity_factor, **groups)

  if dispatcher.merge_groups:   # one dispatch over every group's tokens, capacity per group
    y_TD, dispatch_metrics = run(merge_groups(ffn_G), x_BLD.reshape(num_tokens, d_model),
                                 num_groups=num_groups)
    y_GSD = y_TD.reshape(x_GSD.shape)
  else:
    y_GSD, dispatch_metrics = jax.vmap(run)(ffn_G, x_GSD)
  if config.num_null_experts:
    y_GSD = y_GSD + jax.vmap(partial(
        null_experts.apply, variables.get("null"), zero=config.zero_experts,
        copy=config.copy_experts, constant=config.constant_experts))(x_GSD, null_GSQ)
  mean = lambda tree: jax.tree.map(lambda a: a.mean(0), tree)
  routing = routing_G.replace(
      aux_losses=mean(routing_G.aux_losses),
      metrics={**mean(routing_G.metrics),
               **jax.tree.map(lambda a: a.mean() if a.ndim else a, dispatch_metrics),
               **mean(extra_metrics)},
      new_state=_merge_state(routing_G.new_state))
  if reduce is not None:
    routing = reduce(routing)
  if config.balance_scope == "global":
    routing = global_load_balancing(routing)
  y_BLD = y_GSD.reshape(batch, length, d_model)
  if config.shared_experts is not None:
    y_BLD = y_BLD + _shared_expert(variables["shared"], config.shared_experts, x_BLD)
  return y_BLD, routing


def _shared_expert(params, shared: Experts, x_BLD):
  """The always-on expert; with a 'gate' (Qwen2-MoE), scaled by sigmoid(x . w_gate) per token."""
  batch, length, d_model = x_BLD.shape
  y_BLD = shared.apply(params, x_BLD.reshape(1, batch * length, d_model))[0].reshape(
      x_BLD.shape)
  if "gate" in params:
    y_BLD = y_BLD * jax.nn.sigmoid(x_BLD @ params["gate"].astype(x_BLD.dtype))
  return y_BLD


def renormalize_after_drops(routing: Routing, *, capacity_factor: float):
  """NLLB-MoE's order: drop past the capacity first, then rescale each token's kept combine
  weights to sum to 1 (a token with every assignment dropped keeps none). The dropped
  assignments become invalid, so the dispatcher (same capacity, same priority order) drops
  nothing more; `dropped_fraction` is reported from here."""
  kept_N = kept_assignments(routing, capacity_factor)
  w_N = jnp.where(kept_N, routing.weight, 0)
  total_T = jnp.zeros((routing.num_tokens,), w_N.dtype).at[routing.token].add(w_N)
  total_N = total_T[routing.token]
  w_N = jnp.where(kept_N, w_N / jnp.where(total_N > 0, total_N, 1), 0)
  return (routing.replace(valid=kept_N, weight=w_N),
          {"dropped_fraction": dropped_fraction(routing.valid, kept_N)})


def global_load_balancing(routing: Routing) -> Routing:
  """The Switch loss E * sum_e f_e P_e from expert frequencies f and mean probabilities P over
  every group (and, inside shard_map, every device's batch: the metrics are already means
  over them), instead of the mean of per-group losses (Qiu et al. 2025). f carries no
  gradient, as in the per-group loss. Groups hold equal numbers of tokens and assignments, so
  the mean of their fractions is the global fraction."""
  load_E = jax.lax.stop_gradient(routing.metrics["expert_load"])
  loss = load_E.shape[0] * jnp.sum(load_E * routing.metrics["router_prob"])
  return routing.replace(aux_losses={**routing.aux_losses, "load_balancing": loss})


def merge_groups(routing_G) -> Routing:
  """G routings of S tokens each -> one routing of G*S tokens (assignment lists concatenated)."""
  num_groups, num = routing_G.token.shape
  offset_G1 = (jnp.arange(num_groups, dtype=jnp.int32) * routing_G.num_tokens)[:, None]
  return Routing(num_tokens=num_groups * routing_G.num_tokens,
                 num_experts=routing_G.num_experts,
                 token=(routing_G.token + offset_G1).reshape(-1),
                 expert=routing_G.expert.reshape(-1), weight=routing_G.weight.reshape(-1),
                 valid=routing_G.valid.reshape(-1))


def variable_specs(variables, experts: Experts):
  """PartitionSpecs for the layer's variables: experts by their logical axes, rest replicated."""
  specs = {"router": P(), "shared": P(),
           "experts": {name: logical_to_spec(experts.param_axes[name])
                       for name in variables["experts"]}}
  if "null" in variables:
    specs["null"] = P()
  return specs


def _reduce_across_devices(routing):
  """Per-device means over groups -> global means (every device holds as many groups)."""
  pmean = lambda a: jax.lax.pmean(a, BATCH_AXES)
  def merge_state(leaf):
    if leaf.dtype == jnp.bool_:
      return jax.lax.pmin(leaf.astype(jnp.int32), BATCH_AXES).astype(bool)
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return pmean(leaf)
    return pmean(leaf.astype(jnp.float32)).astype(leaf.dtype)
  return routing.replace(aux_losses=jax.tree.map(pmean, routing.aux_losses),
                         metrics=jax.tree.map(pmean, routing.metrics),
                         new_state=jax.tree.map(merge_state, routing.new_state))


def _output_bias_on_one_model_shard(variables, experts: Experts, model_size: int):
  """Under tensor parallelism each 'model' shard computes a partial expert output and a psum
  completes it, so an output bias would be added once per shard: keep it on shard 0 only (its
  gradient, summed over the replicated param's shards, is then the full one)."""
  if experts.output_bias is None or model_size == 1:
    return variables
  name = experts.output_bias
  first = (jax.lax.axis_index("model") == 0).astype(variables["experts"][name].dtype)
  return {**variables, "experts": {**variables["experts"],
                                   name: variables["experts"][name] * first}}


def _sharded_layer(layer, variables, x_BLD, token_ids_BL, rngs_G, *, mesh, dispatcher, experts,
                   exchange):
  ep_dispatcher = expert_parallel.make(dispatcher, ep=axis_size(mesh, "expert"),
                                       exchange=exchange)

  def body(variables, x_BLD, token_ids_BL, rngs_G):
    variables = _output_bias_on_one_model_shard(variables, experts, axis_size(mesh, "model"))
    y_BLD, routing = layer(variables, x_BLD, token_ids_BL, rngs_G, dispatcher=ep_dispatcher,
                           reduce=_reduce_across_devices)
    per_group = routing.replace(aux_losses={}, metrics={}, new_state={})
    return y_BLD, per_group, (routing.aux_losses, routing.metrics, routing.new_state)

  batch_spec = P(BATCH_AXES)
  opt = lambda a: None if a is None else batch_spec
  y_BLD, per_group, (aux, metrics, state) = jax.shard_map(
      body, mesh=mesh,
      in_specs=(variable_specs(variables, experts), batch_spec, opt(token_ids_BL), opt(rngs_G)),
      out_specs=(batch_spec, batch_spec, P()))(variables, x_BLD, token_ids_BL, rngs_G)
  return y_BLD, per_group.replace(aux_losses=aux, metrics=metrics, new_state=state)
