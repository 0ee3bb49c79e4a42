"""Routers by name, and clear errors for bad names and options."""
import jax
import pytest

from moe_jax import routing

EXPECTED = {"dense", "topk", "expert_choice", "soft", "sinkhorn", "relu", "hash", "cluster",
            "bias_balanced", "deepseek"}


def test_all_routers_registered():
  assert EXPECTED <= set(routing.names())


def test_unknown_router_lists_the_allowed_names():
  with pytest.raises(ValueError, match="unknown router 'nope'.*topk"):
    routing.get("nope", num_experts=4)


def test_unknown_option_is_named():
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['kk'\].*allowed: .*k"):
    routing.get("topk", num_experts=4, kk=2)


def test_num_experts_required():
  with pytest.raises(ValueError, match="num_experts"):
    routing.get("topk")


@pytest.mark.parametrize("name,options,field", [
    ("topk", dict(num_experts=4, k=5), "'k'=5.*1 <= k <= 4"),
    ("topk", dict(num_experts=4, k=0), "'k'"),
    ("topk", dict(num_experts=0), "'num_experts'"),
    ("topk", dict(num_experts=4, order="random"), "'order'.*softmax_topk"),
    ("topk", dict(num_experts=4, jitter_eps=-0.1), "'jitter_eps'"),
    ("topk", dict(num_experts=4, k=1.5), "'k' must be an integer"),
    ("expert_choice", dict(num_experts=4, capacity_factor=0.0), "'capacity_factor'"),
    ("expert_choice", dict(num_experts=4, capacity_factor=-1), "'capacity_factor'"),
    ("sinkhorn", dict(num_experts=4, k=9), "'k'"),
    ("sinkhorn", dict(num_experts=4, temperature=0), "'temperature'"),
    ("relu", dict(num_experts=4, k=8), "'k'"),
    ("relu", dict(num_experts=4, max_active=5), "'max_active'"),
    ("relu", dict(num_experts=4, l1_update_rate=1.0), "'l1_update_rate'"),
    ("soft", dict(num_experts=4, slots_per_expert=0), "'slots_per_expert'"),
    ("hash", dict(num_experts=4, k=5), "'k'"),
    ("cluster", dict(num_experts=4, update_rate=0.0), "'update_rate'"),
    ("bias_balanced", dict(num_experts=4, score="tanh"), "'score'"),
    ("bias_balanced", dict(num_experts=4, bias_update_rate=-1e-3), "'bias_update_rate'"),
])
def test_bad_options_name_the_option(name, options, field):
  with pytest.raises(ValueError, match=field):
    routing.get(name, **options)


def test_register_a_new_router_and_get_it_by_name():
  @routing.register("test_first_expert")
  def first_expert(*, num_experts, scale=1.0):
    import jax.numpy as jnp

    def init(rng, d_model):
      return {"params": {}, "state": {}}

    def route(variables, x, *, token_ids=None, rng=None, train=False):
      zeros = jnp.zeros((x.shape[0], 1), jnp.int32)
      return routing.token_choice_routing(zeros, zeros.astype(jnp.float32) + scale,
                                          num_experts=num_experts)
    return routing.Router(init, route, "test_first_expert", num_experts, True, {"scale": scale})

  try:
    router = routing.get("test_first_expert", num_experts=3, scale=0.5)
    r = router.route(router.init(jax.random.PRNGKey(0), 4), jax.numpy.ones((5, 4)))
    assert float(r.metrics["max_vio"]) == 2.0   # all load on one of three experts
    with pytest.raises(ValueError, match="already registered"):
      routing.register("test_first_expert")(lambda **kw: None)
  finally:
    from moe_jax.routing import registry
    registry._FACTORIES.remove("test_first_expert")
