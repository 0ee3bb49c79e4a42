"""The MoE layer against a naive loop over experts, per routing group."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import routing
from moe_jax.experts import loop_reference
from moe_jax.layer import MoEConfig, check_mesh, init_moe_layer, moe_layer
from moe_jax.parallel import make_mesh
from tests import dispatchers


@pytest.mark.parametrize("dispatcher", dispatchers.every())
@pytest.mark.parametrize("shared", [False, True])
def test_layer_equals_loop_over_experts_per_group(dispatcher, shared):
  config = MoEConfig(num_experts=4, expert_d_ff=12, router_options={"k": 2},
                     dispatcher=dispatcher, shared_d_ff=8 if shared else None, group_size=4,
                     capacity_factor=4.0)
  router, experts, shared_experts = config.built_router, config.experts, config.shared_experts
  variables = init_moe_layer(jax.random.PRNGKey(0), 8, config)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))
  y, r = jax.jit(lambda v, x: moe_layer(v, x, config))(variables, x)
  tokens = x.reshape(3, 4, 8)
  expected = []
  for g in range(3):
    rg = router.route(variables["router"], tokens[g])
    expected.append(loop_reference(variables["experts"], experts, tokens[g], rg.combine_matrix()))
  expected = jnp.concatenate(expected).reshape(2, 6, 8)
  if shared:
    expected += shared_experts.apply(variables["shared"], x.reshape(1, 12, 8))[0].reshape(2, 6, 8)
  np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)
  assert r.token.shape == (3, 8)   # per group: 4 tokens x k=2
  assert r.aux_losses["load_balancing"].shape == ()
  assert float(r.metrics["dropped_fraction"]) == 0.0


def test_router_state_is_merged_over_groups():
  config = MoEConfig(num_experts=4, expert_d_ff=8, router="bias_balanced",
                     router_options={"k": 1, "renormalize": False, "bias_update_rate": 0.1})
  variables = init_moe_layer(jax.random.PRNGKey(0), 8, config)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8))
  _, r = jax.jit(lambda v, x: moe_layer(v, x, config, train=True))(variables, x)
  assert r.new_state["bias"].shape == (4,)
  assert np.abs(np.asarray(r.new_state["bias"])).sum() > 0


BAD = [
    (dict(num_experts=0), r"moe: option 'num_experts'=0 is out of range"),
    (dict(expert_d_ff=0), r"moe: option 'expert_d_ff'=0"),
    (dict(capacity_factor=0.0), r"moe: option 'capacity_factor'=0\.0 is invalid"),
    (dict(group_size=0), r"moe: option 'group_size'=0"),
    (dict(shared_d_ff=0), r"moe: option 'shared_d_ff'=0"),
    (dict(exchange="fast"), r"moe: option 'exchange'='fast' is not allowed; allowed: 'auto'"),
    (dict(activation="swish2"), r"option 'activation'='swish2'"),
    (dict(router="nope"), r"unknown router 'nope'; allowed: .*topk"),
    (dict(router_options={"k": 9}), r"'k'=9 is out of range"),
    (dict(router_options={"kk": 1}), r"router 'topk' got unknown option\(s\) \['kk'\]"),
    (dict(dispatcher="fast"), r"unknown dispatcher 'fast'; allowed: dropless, einsum, sort"),
    (dict(router="soft"), r"router 'soft' mixes tokens.*dispatcher 'sort' cannot run it"),
    (dict(router=routing.get("topk", num_experts=8)), r"num_experts=4 contradicts the given "
                                                      r"router's num_experts=8"),
    (dict(router=routing.get("topk", num_experts=4), router_options={"k": 2}),
     r"router_options must be empty when router is a built Router"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[
    "-".join(f"{k}={'Router' if isinstance(v, routing.Router) else v}" for k, v in f.items())
    for f, _ in BAD])
def test_every_bad_moe_option_names_its_field(fields, message):
  with pytest.raises(ValueError, match=message):
    MoEConfig(**{"num_experts": 4, "expert_d_ff": 8, **fields})


def test_mesh_checks_name_the_axis():
  mesh = make_mesh(data=2, expert=4)
  with pytest.raises(ValueError, match=r"num_experts=6.*'expert' axis size 4"):
    check_mesh(MoEConfig(num_experts=6, expert_d_ff=8), mesh)
  with pytest.raises(ValueError, match=r"expert_d_ff=9.*'model' axis size 2"):
    check_mesh(MoEConfig(num_experts=4, expert_d_ff=9), make_mesh(data=2, expert=2, model=2))
  with pytest.raises(ValueError, match=r"router 'soft' has no expert-parallel form"):
    check_mesh(MoEConfig(num_experts=4, expert_d_ff=8, router="soft", dispatcher="einsum"), mesh)
  with pytest.raises(ValueError, match=r"exchange='ragged' needs ragged_all_to_all"):
    check_mesh(MoEConfig(num_experts=4, expert_d_ff=8, dispatcher="dropless",
                         exchange="ragged"), mesh)
  config = MoEConfig(num_experts=4, expert_d_ff=8, group_size=5)
  variables = init_moe_layer(jax.random.PRNGKey(0), 8, config)
  with pytest.raises(ValueError, match="group_size=5"):   # 2x4 tokens do not split into 5s
    moe_layer(variables, jnp.ones((2, 4, 8)), config)
