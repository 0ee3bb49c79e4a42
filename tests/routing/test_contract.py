"""Properties every registered router must have. Parametrized over routing.names(), so a newly
registered gating function is tested here without any edit."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import routing
from tests.routing.helpers import D_MODEL, NUM_EXPERTS, make_router, route, tokens

ALL = routing.names()


@pytest.fixture(params=ALL)
def router(request):
  return make_router(request.param)


def _init(router):
  return router.init(jax.random.PRNGKey(0), D_MODEL)


@pytest.mark.parametrize("train", [False, True])
def test_jit_matches_eager(router, train):
  variables = _init(router)
  x = tokens(40)
  eager = route(router, variables, x, train=train)
  jitted = route(router, variables, x, train=train, jit=True)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_tokens", [1, 7, 64])
def test_shapes_dtypes_and_weights(router, num_tokens):
  variables = _init(router)
  r = route(router, variables, tokens(num_tokens), train=True)
  assert isinstance(r, routing.Routing)
  assert r.num_tokens == num_tokens and r.num_experts == NUM_EXPERTS
  if r.is_soft:
    slots = r.num_assignments // NUM_EXPERTS
    chex.assert_shape([r.dispatch_weights, r.combine_weights], (num_tokens, NUM_EXPERTS, slots))
    assert r.token is None and r.expert is None
    assert np.all(np.asarray(r.dispatch_weights) >= 0)
    np.testing.assert_allclose(r.dispatch_weights.sum(0), 1.0, rtol=1e-5)   # slot = mix of tokens
    np.testing.assert_allclose(r.combine_weights.sum((1, 2)), 1.0, rtol=1e-5)  # token = mix of slots
  else:
    n = r.num_assignments
    chex.assert_shape([r.token, r.expert, r.weight, r.valid], (n,))
    chex.assert_type([r.token, r.expert, r.valid], [jnp.int32, jnp.int32, bool])
    chex.assert_type(r.weight, jnp.float32)
    token, expert = np.asarray(r.token), np.asarray(r.expert)
    assert token.min() >= 0 and token.max() < num_tokens
    assert expert.min() >= 0 and expert.max() < NUM_EXPERTS
    weight, valid = np.asarray(r.weight), np.asarray(r.valid)
    assert np.all(weight >= 0)
    assert np.all(weight[~valid] == 0), "invalid slots must carry zero weight"
    # No (token, expert) pair is listed twice among valid assignments.
    pairs = set(zip(token[valid].tolist(), expert[valid].tolist()))
    assert len(pairs) == valid.sum()


def test_metrics_are_consistent(router):
  variables = _init(router)
  r = route(router, variables, tokens(64), train=True)
  for name in ("expert_load", "max_vio", "router_entropy", "no_expert_fraction"):
    assert name in r.metrics, name
  load = np.asarray(r.metrics["expert_load"])
  assert load.shape == (NUM_EXPERTS,) and np.all(load >= 0)
  np.testing.assert_allclose(load.sum(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(r.metrics["max_vio"], NUM_EXPERTS * load.max() - 1, rtol=1e-5)
  assert 0 <= float(r.metrics["router_entropy"]) <= np.log(NUM_EXPERTS) + 1e-5
  assert 0 <= float(r.metrics["no_expert_fraction"]) <= 1
  if not r.is_soft:  # recompute the load from the assignment list itself
    counts = np.bincount(np.asarray(r.expert)[np.asarray(r.valid)], minlength=NUM_EXPERTS)
    np.testing.assert_allclose(load, counts / counts.sum(), rtol=1e-5)
    has_expert = np.zeros(64, bool)
    has_expert[np.asarray(r.token)[np.asarray(r.valid)]] = True
    np.testing.assert_allclose(r.metrics["no_expert_fraction"], 1 - has_expert.mean(), atol=1e-6)
    np.testing.assert_allclose(r.metrics["experts_per_token"], np.asarray(r.valid).sum() / 64,
                               rtol=1e-6)
  else:   # every expert computes all its slots: E * S slots for T tokens
    _, experts, slots = np.asarray(r.combine_weights).shape
    np.testing.assert_allclose(r.metrics["experts_per_token"], experts * slots / 64, rtol=1e-6)
  # Learned routers report their logit magnitude; hash and cluster routing have no logits.
  assert ("router_logit_abs" in r.metrics) == (router.name not in ("hash", "cluster"))
  if "router_logit_abs" in r.metrics:
    assert float(r.metrics["router_logit_abs"]) > 0
  for value in r.aux_losses.values():
    chex.assert_shape(value, ())
    assert np.isfinite(float(value))


def test_state_round_trips(router):
  """new_state has the structure of the state it replaces, so it can be fed back in."""
  variables = _init(router)
  for train in (False, True):
    r = route(router, variables, tokens(32), train=train)
    chex.assert_trees_all_equal_shapes_and_dtypes(r.new_state, variables["state"])
  evaluated = route(router, variables, tokens(32), train=False)
  chex.assert_trees_all_equal(evaluated.new_state, variables["state"])  # eval changes nothing


def test_bfloat16_tokens_route_in_float32(router):
  variables = _init(router)
  r32 = route(router, variables, tokens(32))
  r16 = route(router, variables, tokens(32, dtype=jnp.bfloat16))
  assert (r16.combine_weights if r16.is_soft else r16.weight).dtype == jnp.float32
  assert set(r16.aux_losses) == set(r32.aux_losses)


def test_router_declares_itself(router):
  assert router.name in ALL
  assert isinstance(router.causal_safe, bool)
  assert router.num_experts == NUM_EXPERTS
  assert set(router.options) <= set(routing.options(router.name))


def test_routing_is_a_pytree_through_jit(router):
  variables = _init(router)
  out = jax.jit(lambda v, x: route(router, v, x))(variables, tokens(16))
  assert isinstance(out, routing.Routing)


@pytest.mark.parametrize("name", routing.names())
def test_every_router_declares_the_weight_of_each_aux_loss_it_returns(name):
  """Router.loss_weights names exactly the losses route() returns, so a config can weight only
  real losses and a router's own loss (ReMoE's L1) is never silently weighted 0."""
  router = routing.get(name, num_experts=8)
  variables = jax.eval_shape(lambda key: router.init(key, 16), jax.random.PRNGKey(0))
  out = jax.eval_shape(lambda v: router.route(
      v, jnp.zeros((32, 16)), token_ids=jnp.zeros((32,), jnp.int32),
      rng=jax.random.PRNGKey(1), train=True), variables)
  assert router.loss_weights is not None
  assert sorted(router.loss_weights) == sorted(out.aux_losses)
  assert all(w >= 0 for w in router.loss_weights.values())


@pytest.mark.parametrize("name, options", [
    ("topk", dict(k=1, renormalize=True)), ("topk", dict(k=1, order="topk_softmax")),
    ("bias_balanced", dict(k=1)), ("deepseek", dict(k=1)),
    ("sinkhorn", dict(k=1, renormalize=True))])
def test_a_constant_combine_weight_is_refused_when_the_router_is_built(name, options):
  with pytest.raises(ValueError, match=r"k=1 with .* no gradient from the loss"):
    routing.get(name, num_experts=8, **options)
  # The fixes the message names build.
  fixed = dict(options, k=2)
  routing.get(name, num_experts=8, **fixed)
