"""Expert-parallel layer == unsharded layer, forward and gradients, on 8 simulated devices.

Tokens are split over ('data', 'expert'), experts over 'expert' and their hidden dim over
'model'; routing groups stay on one device, so capacity and drops are exactly the unsharded
ones and every output must agree to float rounding.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import dispatch, routing
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer
from moe_jax.parallel import make_mesh
from tests import dispatchers

D_MODEL, D_FF, NUM_EXPERTS = 16, 32, 8


def _config(router, dispatcher, **fields):
  return MoEConfig(num_experts=router.num_experts, expert_d_ff=fields.pop("expert_d_ff", D_FF),
                   router=router, dispatcher=dispatcher, **fields)


def _run(router, dispatcher, mesh, *, capacity_factor=1.0, train=False, group_size=None,
         with_ids=False, **fields):
  """(loss, y, routing), grads w.r.t. (params, x) of a loss touching every output."""
  config = _config(router, dispatcher, capacity_factor=capacity_factor, group_size=group_size,
                   **fields)
  variables = init_moe_layer(jax.random.PRNGKey(0), D_MODEL, config)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 16, D_MODEL))
  ids = jax.random.randint(jax.random.PRNGKey(2), (8, 16), 0, 100) if with_ids else None
  rng = jax.random.PRNGKey(3) if train else None

  def loss(params, x):   # router state (possibly bool/int) is not differentiated
    v = {**variables, "experts": params["experts"],
         "router": {**variables["router"], "params": params["router"]}}
    y, r = moe_layer(v, x, config, token_ids_BL=ids, rng=rng, train=train, mesh=mesh)
    aux = sum(r.aux_losses.values()) if r.aux_losses else 0.0
    return jnp.sum(jnp.sin(y)) + aux, (y, r)

  params = {"experts": variables["experts"], "router": variables["router"]["params"]}
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)


def _assert_same(sharded, unsharded):
  (loss_s, (y_s, r_s)), grads_s = sharded
  (loss_u, (y_u, r_u)), grads_u = unsharded
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  close(y_s, y_u)
  close(loss_s, loss_u)
  jax.tree.map(close, grads_s, grads_u)
  np.testing.assert_array_equal(r_s.expert, r_u.expert)
  np.testing.assert_array_equal(r_s.valid, r_u.valid)
  jax.tree.map(close, (r_s.aux_losses, r_s.metrics, r_s.new_state),
               (r_u.aux_losses, r_u.metrics, r_u.new_state))


MESHES = [dict(data=2, expert=4), dict(expert=8), dict(data=8, expert=1),
          dict(data=2, expert=2, model=2)]


def _mesh_params():
  """Every expert-parallel dispatcher on every mesh; `make test` runs the default and dropless
  on all of them and every other dispatcher on the mesh that splits all three axes (each case
  compiles on 8 devices), `make test-all` the rest too."""
  params = []
  for dispatcher in dispatchers.parallel():
    for mesh in MESHES:
      full = dispatcher in (dispatch.DEFAULT, "dropless") or mesh == MESHES[-1]
      params.append(pytest.param(dispatcher, mesh, marks=[] if full else [pytest.mark.slow],
                                 id=dispatcher + "-" + "-".join(f"{k}{v}"
                                                               for k, v in mesh.items())))
  return params


@pytest.mark.parametrize("dispatcher, mesh", _mesh_params())
def test_sharded_equals_unsharded(dispatcher, mesh):
  router = routing.get("topk", num_experts=NUM_EXPERTS, k=2)
  unsharded = _run(router, dispatcher, None)
  sharded = _run(router, dispatcher, make_mesh(**mesh))
  _assert_same(sharded, unsharded)
  if dispatch.get(dispatcher).drops_tokens:   # capacity factor 1.0 drops: the same on both
    assert float(unsharded[0][1][1].metrics["dropped_fraction"]) > 0.05


ROUTER_CASES = [
    ("topk", dict(k=2, noisy_gating=True), dict(train=True)),          # per-group rng
    ("bias_balanced", dict(k=2, bias_update_rate=0.05), dict(train=True)),  # router state
    ("expert_choice", dict(), dict(group_size=8)),                      # 2 groups per device
    ("relu", dict(), dict(train=True)),                                 # variable k per token
    ("hash", dict(), dict(with_ids=True)),
    ("cluster", dict(), dict(train=True)),                              # seeded from the data
]


def _router_params():
  """Every router with every expert-parallel dispatcher; `make test` runs one dispatcher per
  router (they take turns, so each dispatcher meets some of the routers), `make test-all` all
  pairs: each case compiles on 8 devices, ~10 s of the 15-minute budget."""
  params = []
  names = dispatchers.parallel()
  for i, (name, options, extra) in enumerate(ROUTER_CASES):
    for j, dispatcher in enumerate(names):
      marks = [] if (i + j) % len(names) == 0 else [pytest.mark.slow]
      params.append(pytest.param(name, options, extra, dispatcher, marks=marks,
                                 id=f"{name}-{dispatcher}"))
  return params


@pytest.mark.parametrize("router_name, options, extra, dispatcher", _router_params())
def test_sharded_equals_unsharded_for_routers(router_name, options, extra, dispatcher):
  router = routing.get(router_name, num_experts=NUM_EXPERTS, **options)
  experts = dict(glu=True, activation="silu")
  _assert_same(_run(router, dispatcher, make_mesh(data=2, expert=4), **experts, **extra),
               _run(router, dispatcher, None, **experts, **extra))


def test_soft_moe_runs_data_and_tensor_parallel():
  router = routing.get("soft", num_experts=NUM_EXPERTS)
  _assert_same(_run(router, "einsum", make_mesh(data=4, model=2)), _run(router, "einsum", None))


def _layer(mesh, *, router=None, batch=8, dispatcher="dropless", **fields):
  config = _config(router or routing.get("topk", num_experts=NUM_EXPERTS, k=2), dispatcher,
                   **fields)
  variables = init_moe_layer(jax.random.PRNGKey(0), D_MODEL, config)
  return moe_layer(variables, jnp.zeros((batch, 16, D_MODEL)), config, mesh=mesh)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch=4), r"batch size 4 is not divisible by the 8 devices"),
    (dict(group_size=32), r"group_size=32 does not divide the 16 tokens each device holds"),
    (dict(router=routing.get("topk", num_experts=6)), r"num_experts=6 .*'expert' axis size 8"),
    (dict(router=routing.get("soft", num_experts=8), dispatcher="einsum"),
     r"router 'soft' has no expert-parallel"),
    (dict(exchange="ragged"), r"XLA:CPU does not implement"),
])
def test_bad_sharded_configs_fail_before_compiling(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _layer(make_mesh(expert=8), **kwargs)


def test_d_ff_must_split_over_model_axis():
  with pytest.raises(ValueError, match=r"d_ff=33 is not divisible by the mesh's 'model' axis"):
    _layer(make_mesh(data=2, expert=2, model=2), expert_d_ff=33)
