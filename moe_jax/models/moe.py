"""The MoE layer as a Flax NNX module, so models can hold it as a stateful object.

    moe = MoE(64, MoEConfig(num_experts=8, expert_d_ff=256, router_options={"k": 2}),
              rngs=nnx.Rngs(0))
    y_BLD, routing = moe(x_BLD, train=True, rngs=nnx.Rngs(router=1))
    loss = task_loss(y_BLD) + 0.01 * routing.aux_losses["load_balancing"]

The math lives in the pure `moe_jax.layer.moe_layer`; this module only owns the variables and
rebuilds the layer's `variables` dict on every call, so both give the same numbers. Trainable
weights are `nnx.Param`; the router's running state (a balancing bias, k-means centroids, an
adaptive coefficient) is a `RouterState`, which is not a Param: `nnx.grad` and optimizers (which
filter on Param) leave it alone, and a `train=True` call writes the router's new state back, as
BatchNorm does with its running statistics.
"""
from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.layer import MoEConfig, check_mesh, init_moe_layer, moe_layer
from moe_jax.parallel.mesh import sharded_param
from moe_jax.validation import check_int

# The rng stream a call draws the router's key from (Switch jitter, noisy gating). nnx.Rngs falls
# back to its 'default' stream when it has no 'router' stream.
RNG_STREAM = "router"

class RouterState(nnx.Variable):
  """Router state updated by the forward pass, not by gradients (not an nnx.Param)."""


def _wrap(tree: dict, make) -> nnx.Dict:
  """Nested dict of arrays -> nested nnx.Dict of Variables (NNX needs its own containers)."""
  return nnx.Dict({k: _wrap(v, make) if isinstance(v, dict) else make(k, v)
                   for k, v in tree.items()})


def _unwrap(node: nnx.Dict) -> dict:
  """The inverse of `_wrap`: the current arrays, as the pure layer takes them."""
  return {k: _unwrap(v) if isinstance(v, nnx.Dict) else v[...] for k, v in node.items()}


def _assign(node: nnx.Dict, tree: dict, where: str) -> None:
  """Writes `tree` into the Variables of `node`; both must have the same keys."""
  if set(node) != set(tree):
    raise ValueError(f"moe: router returned new_state with keys {sorted(tree)} at {where!r}, "
                     f"but its state has {sorted(node)}")
  for k, v in node.items():
    if isinstance(v, nnx.Dict):
      _assign(v, tree[k], f"{where}/{k}")
    else:
      v[...] = tree[k]


class MoE(nnx.Module):
  """Router -> dispatcher -> experts (+ an optional shared expert), as an NNX module.

  config: the layer's `MoEConfig` (validated when it was made). mesh: split experts over its
  'expert' axis (their hidden dim over 'model') and tokens over ('data', 'expert'); expert
  params are then placed sharded at construction. The mesh checks run here, before anything
  is traced.
  """

  def __init__(self, d_model: int, config: MoEConfig, *, mesh: Mesh | None = None,
               rngs: nnx.Rngs):
    check_int("d_model", d_model, low=1, owner="moe")
    if not isinstance(config, MoEConfig):
      raise ValueError(f"moe: config must be a MoEConfig, got {config!r}")
    check_mesh(config, mesh)
    self.d_model, self.config, self.mesh = d_model, config, mesh
    variables = init_moe_layer(rngs.params(), d_model, config)
    if mesh is not None:
      # Replicate the rest on the mesh up front: the layer returns the router state that way, and
      # a jitted step whose inputs change placement after the first call compiles twice.
      replicated = NamedSharding(mesh, P())
      variables = {**variables, **{k: jax.device_put(variables[k], replicated)
                                   for k in ("router", "shared", "null") if k in variables}}
    self.router_params = _wrap(variables["router"]["params"], lambda _, v: nnx.Param(v))
    self.router_state = _wrap(variables["router"]["state"], lambda _, v: RouterState(v))
    self.expert_params = _wrap(variables["experts"], self._expert_param)
    # The layer replicates router and shared-expert params (see layer.variable_specs), so they
    # carry no sharding annotation: nnx.get_partition_spec gives them P().
    self.shared_params = (None if variables["shared"] is None
                          else _wrap(variables["shared"], lambda _, v: nnx.Param(v)))
    # The constant null experts' params (MoE++), replicated like the router's.
    self.null_params = (None if variables.get("null") is None
                        else _wrap(variables["null"], lambda _, v: nnx.Param(v)))

  @property
  def router(self):
    return self.config.built_router

  def _expert_param(self, name: str, value) -> nnx.Param:
    return sharded_param(value, self.config.experts.param_axes[name], self.mesh)

  def layer_variables(self) -> dict:
    """The current variables in the pure layer's layout, for `moe_layer` or checkpoints."""
    return {"router": {"params": _unwrap(self.router_params),
                       "state": _unwrap(self.router_state)},
            "experts": _unwrap(self.expert_params),
            "shared": None if self.shared_params is None else _unwrap(self.shared_params),
            **({} if not self.config.num_null_experts else
               {"null": None if self.null_params is None else _unwrap(self.null_params)})}

  def __call__(self, x_BLD, *, train: bool = False, token_ids=None,
               rngs: nnx.Rngs | None = None):
    """y_BLD, routing. With train=True the router state is updated in place.

    token_ids: [B, L] ints for routers that need them (`needs_token_ids`). rngs: a key is drawn
    from its 'router' stream (or 'default') for routers that are random in training; a router
    that needs one and gets none raises ValueError.
    """
    rng = None if rngs is None else getattr(rngs, RNG_STREAM)()
    y_BLD, r = moe_layer(self.layer_variables(), x_BLD, self.config, token_ids_BL=token_ids,
                         rng=rng, train=train, mesh=self.mesh)
    if train:
      _assign(self.router_state, r.new_state, "router_state")
    return y_BLD, r
