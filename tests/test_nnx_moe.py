"""The NNX MoE module against the pure layer: same numbers, Params vs RouterState, mesh, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from moe_jax import routing
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer
from moe_jax.models import MoE, RouterState
from moe_jax.parallel.mesh import make_mesh

D, E, F = 8, 4, 16


def _x(seed=1, batch=8, length=4):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, length, D))


def test_forward_equals_the_pure_layer():
  config = MoEConfig(num_experts=E, expert_d_ff=F, router_options={"k": 2}, shared_d_ff=8,
                     group_size=8)
  model = MoE(D, config, rngs=nnx.Rngs(0))
  variables = model.layer_variables()
  # The module initialises exactly as the pure layer does from the same key.
  expected_vars = init_moe_layer(nnx.Rngs(0).params(), D, config)
  jax.tree.map(np.testing.assert_array_equal, variables, expected_vars)

  x = _x()
  y, r = nnx.jit(lambda m, x: m(x))(model, x)
  y_ref, r_ref = jax.jit(lambda v, x: moe_layer(v, x, config))(variables, x)
  np.testing.assert_array_equal(y, y_ref)
  jax.tree.map(np.testing.assert_array_equal, r.aux_losses, r_ref.aux_losses)


def test_params_exclude_router_state_and_training_updates_it():
  model = MoE(D, MoEConfig(num_experts=E, expert_d_ff=F, router="bias_balanced",
                           router_options={"k": 1, "renormalize": False, "bias_update_rate": 0.1}),
              rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  param_paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert param_paths == {"router_params/w", "expert_params/w_in", "expert_params/w_out"}
  state = nnx.state(model, RouterState)
  assert {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)} == {"router_state/bias"}
  assert not issubclass(RouterState, nnx.Param)
  np.testing.assert_array_equal(model.router_state["bias"][...], 0.0)

  x, target = _x(), _x(seed=2)

  @nnx.jit
  def step(model, x, target):
    def loss_fn(model):
      y, r = model(x, train=True)
      return jnp.mean((y - target) ** 2) + 0.01 * r.aux_losses["load_balancing"], r
    (loss, r), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, r, grads

  loss, r, grads = step(model, x, target)
  assert np.isfinite(float(loss))
  grad_leaves = nnx.to_flat_state(grads)
  assert {"/".join(map(str, p)) for p, _ in grad_leaves} == param_paths
  assert all(isinstance(v, nnx.Param) for _, v in grad_leaves)
  assert all(float(jnp.abs(v[...]).sum()) > 0 for _, v in grad_leaves)
  bias = model.router_state["bias"][...]
  assert np.abs(np.asarray(bias)).sum() > 0
  np.testing.assert_array_equal(bias, r.new_state["bias"])

  # Evaluation reads the state but does not move it.
  nnx.jit(lambda m, x: m(x, train=False))(model, x)
  np.testing.assert_array_equal(model.router_state["bias"][...], bias)


def test_router_rng_comes_from_the_router_stream():
  model = MoE(D, MoEConfig(num_experts=E, expert_d_ff=F,
                           router_options={"k": 2, "jitter_eps": 0.1}), rngs=nnx.Rngs(0))
  call = nnx.jit(lambda m, x, rngs: m(x, train=True, rngs=rngs))
  with pytest.raises(ValueError, match="needs `rng`.*jitter_eps"):   # raised while tracing
    call(model, _x(), None)
  y1, _ = call(model, _x(), nnx.Rngs(router=3))
  y2, _ = call(model, _x(), nnx.Rngs(router=3))
  np.testing.assert_array_equal(y1, y2)


def test_jit_and_mesh_match_the_unsharded_module():
  mesh = make_mesh(data=2, expert=4)
  config = MoEConfig(num_experts=E, expert_d_ff=F, router="bias_balanced",
                     router_options={"k": 2, "bias_update_rate": 0.1})
  # Separate but equal Rngs: one shared Rngs would give the second model the next keys.
  plain = MoE(D, config, rngs=nnx.Rngs(0))
  sharded = MoE(D, config, mesh=mesh, rngs=nnx.Rngs(0))
  w_in = sharded.expert_params["w_in"]
  assert w_in.get_metadata("out_sharding") == ("expert", "embed", "mlp")
  assert w_in[...].sharding.spec == P("expert", None, "model")
  spec = nnx.get_partition_spec(nnx.state(plain, nnx.Param))
  assert spec["expert_params"]["w_out"].get_value() == P("expert", "model", None)
  assert spec["router_params"]["w"].get_value() == P()

  traces = []
  def forward(model, x):
    traces.append(model.mesh)
    return model(x, train=True)
  call = nnx.jit(forward)
  x = _x()
  y_plain, r_plain = call(plain, x)
  y_sharded, r_sharded = call(sharded, x)
  np.testing.assert_allclose(y_sharded, y_plain, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sharded.router_state["bias"][...], plain.router_state["bias"][...],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(r_sharded.aux_losses["load_balancing"],
                             r_plain.aux_losses["load_balancing"], rtol=1e-5)
  # The updated state keeps its placement, so the next step reuses the compiled program.
  call(sharded, x)
  assert len(traces) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(router="no_such_router"), "unknown router 'no_such_router'"),
    (dict(router_options={"k": 99}), r"'k'=99 is out of range"),
    (dict(capacity_factor=0), "capacity_factor"),
    (dict(router=routing.get("topk", num_experts=8)), "num_experts=4 contradicts"),
    (dict(router="soft"), "soft.*einsum"),
    (dict(group_size=0), "group_size"),
    (dict(dispatcher="no_such_dispatcher"), "unknown dispatcher"),
])
def test_bad_config_raises_when_the_config_is_made(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MoEConfig(num_experts=E, expert_d_ff=F, **kwargs)


def test_mesh_mismatch_raises_at_construction():
  config = MoEConfig(num_experts=6, expert_d_ff=F)
  with pytest.raises(ValueError, match=r"num_experts=6.*'expert' axis size 4"):
    MoE(D, config, mesh=make_mesh(data=2, expert=4), rngs=nnx.Rngs(0))
