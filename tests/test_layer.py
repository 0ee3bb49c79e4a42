"""The MoE layer against a naive loop over experts, per routing group."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import dispatch, routing
from moe_jax.experts import loop_reference, make_experts
from moe_jax.layer import init_moe_layer, moe_layer, validate_layer


@pytest.mark.parametrize("dispatcher", ["sort", "dropless"])
@pytest.mark.parametrize("shared", [False, True])
def test_layer_equals_loop_over_experts_per_group(dispatcher, shared):
  router = routing.get("topk", num_experts=4, k=2)
  experts = make_experts(12)
  shared_experts = make_experts(8) if shared else None
  variables = init_moe_layer(jax.random.PRNGKey(0), 8, router=router, experts=experts,
                             shared_experts=shared_experts)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))
  y, r = jax.jit(lambda v, x: moe_layer(v, x, router=router, dispatcher=dispatch.get(dispatcher),
                                        experts=experts, shared_experts=shared_experts,
                                        group_size=4, capacity_factor=4.0))(variables, x)
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
  router = routing.get("bias_balanced", num_experts=4, k=1, bias_update_rate=0.1)
  experts = make_experts(8)
  variables = init_moe_layer(jax.random.PRNGKey(0), 8, router=router, experts=experts)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8))
  _, r = moe_layer(variables, x, router=router, dispatcher=dispatch.get("sort"),
                   experts=experts, train=True)
  assert r.new_state["bias"].shape == (4,)
  assert np.abs(np.asarray(r.new_state["bias"])).sum() > 0


def test_invalid_layer_configs_name_the_field():
  router = routing.get("topk", num_experts=6)
  with pytest.raises(ValueError, match="num_experts=6.*'expert' axis size 4"):
    validate_layer(router=router, dispatcher=dispatch.get("sort"), capacity_factor=1.0,
                   expert_axis_size=4)
  with pytest.raises(ValueError, match="capacity_factor"):
    validate_layer(router=router, dispatcher=dispatch.get("sort"), capacity_factor=0.0)
  with pytest.raises(ValueError, match="soft.*einsum"):
    validate_layer(router=routing.get("soft", num_experts=4), dispatcher=dispatch.get("sort"),
                   capacity_factor=1.0)
  experts = make_experts(8)
  variables = init_moe_layer(jax.random.PRNGKey(0), 8, router=router, experts=experts)
  with pytest.raises(ValueError, match="group_size=5"):
    moe_layer(variables, jnp.ones((2, 4, 8)), router=router, dispatcher=dispatch.get("sort"),
              experts=experts, group_size=5)
