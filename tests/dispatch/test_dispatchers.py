"""Every dispatcher against the einsum reference and a naive loop over experts."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import dispatch, routing
from moe_jax.experts import loop_reference, make_experts

D, F, E, T = 16, 24, 8, 48
FAST = [n for n in dispatch.names() if n != "einsum"]


def _setup(router_name, glu=False, seed=0):
  router = routing.get(router_name, num_experts=E)
  experts = make_experts(F, glu=glu, activation="silu" if glu else "gelu")
  r_rng, e_rng, x_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  variables = router.init(r_rng, D)
  params = experts.init(e_rng, E, D)
  x = jax.random.normal(x_rng, (T, D))
  ids = jax.random.randint(x_rng, (T,), 0, 100)
  return router, experts, variables, params, x, ids


def _layer(router, experts, dispatcher, variables, ids, capacity_factor):
  def f(params, router_params, x):
    r = router.route({"params": router_params, "state": variables["state"]}, x, token_ids=ids)
    y, metrics = dispatcher.run(r, x, params, experts, capacity_factor=capacity_factor)
    return y, metrics
  return f


@pytest.mark.parametrize("router_name", routing.names())
def test_einsum_reference_equals_python_loop_over_experts(router_name):
  router, experts, variables, params, x, ids = _setup(router_name)
  r = router.route(variables, x, token_ids=ids)
  y, _ = dispatch.get("einsum").run(r, x, params, experts, capacity_factor=1e3)
  if r.is_soft:   # y_t = sum_{e,s} combine[t,e,s] FFN_e(sum_t' dispatch[t',e,s] x_t')
    slots_ESD = jnp.einsum("tes,td->esd", r.dispatch_weights, x)
    out = jnp.stack([experts.apply(jax.tree.map(lambda w: w[e:e + 1], params), slots_ESD[e:e + 1])[0]
                     for e in range(E)])
    expected = jnp.einsum("tes,esd->td", r.combine_weights, out)
  else:
    expected = loop_reference(params, experts, x, r.combine_matrix())
  np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)


def _router_glu_params():
  """Every non-soft router with plain experts; GLU experts (the experts' path, not the
  router's) with three routers in make test's budget, with every router in test-all."""
  with_glu = ("topk", "relu", "deepseek")
  return [pytest.param(name, glu, id=f"{name}-{glu}",
                       marks=[pytest.mark.slow] if glu and name not in with_glu else [])
          for name in routing.names() if name != "soft" for glu in (False, True)]


@pytest.mark.parametrize("dispatcher_name", FAST)
@pytest.mark.parametrize("router_name, glu", _router_glu_params())
def test_fast_dispatchers_equal_reference_forward_and_gradient(router_name, dispatcher_name, glu):
  router, experts, variables, params, x, ids = _setup(router_name, glu=glu)
  args = (params, variables["params"], x)
  ref = _layer(router, experts, dispatch.get("einsum"), variables, ids, 1e3)
  fast = _layer(router, experts, dispatch.get(dispatcher_name), variables, ids, 1e3)
  probe = jax.random.normal(jax.random.PRNGKey(5), (T, D))
  # Outputs, metrics and gradients from one compiled function per side (half the compiles)
  both = lambda f: jax.jit(lambda *a: (f(*a), jax.grad(lambda *b: jnp.sum(f(*b)[0] * probe),
                                                       argnums=(0, 1, 2))(*a)))
  ((y_ref, m_ref), g_ref), ((y_fast, m_fast), g_fast) = both(ref)(*args), both(fast)(*args)
  np.testing.assert_allclose(y_fast, y_ref, rtol=2e-4, atol=2e-5)
  assert float(m_fast["dropped_fraction"]) == float(m_ref["dropped_fraction"]) == 0.0
  chex.assert_trees_all_close(g_fast, g_ref, rtol=5e-4, atol=5e-5)


@pytest.mark.parametrize("capacity_factor", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("router_name", ["topk", "bias_balanced", "relu", "dense", "hash"])
def test_sort_drops_exactly_what_the_reference_drops(router_name, capacity_factor):
  router, experts, variables, params, x, ids = _setup(router_name)
  r = router.route(variables, x, token_ids=ids)
  y_ref, m_ref = dispatch.get("einsum").run(r, x, params, experts, capacity_factor=capacity_factor)
  y_sort, m_sort = dispatch.get("sort").run(r, x, params, experts, capacity_factor=capacity_factor)
  np.testing.assert_allclose(y_sort, y_ref, rtol=2e-4, atol=2e-5)
  # The dropped fraction, recomputed in numpy: earlier assignments win each expert's C slots.
  capacity = dispatch.expert_capacity(r.num_assignments, E, capacity_factor)
  seen = np.zeros(E, int)
  kept = 0
  valid = np.asarray(r.valid)
  for e, v in zip(np.asarray(r.expert), valid):
    if v:
      kept += seen[e] < capacity
      seen[e] += 1
  expected = 1 - kept / valid.sum()
  np.testing.assert_allclose(m_sort["dropped_fraction"], expected, atol=1e-6)
  np.testing.assert_allclose(m_ref["dropped_fraction"], expected, atol=1e-6)
  if capacity_factor < 1:
    assert expected > 0


def test_position_in_expert_matches_a_loop():
  expert = jnp.array([2, 0, 2, 1, 2, 0, 1])
  valid = jnp.array([True, True, False, True, True, True, True])
  np.testing.assert_array_equal(dispatch.position_in_expert(expert, valid, 3),
                                [0, 0, -1, 0, 1, 1, 1])


def test_bad_names_and_options():
  with pytest.raises(ValueError, match="unknown dispatcher 'scatter'.*sort"):
    dispatch.get("scatter")
  router, experts, variables, params, x, ids = _setup("topk")
  r = router.route(variables, x)
  with pytest.raises(ValueError, match="capacity_factor"):
    dispatch.get("sort").run(r, x, params, experts, capacity_factor=0.0)
  soft = routing.get("soft", num_experts=E)
  rs = soft.route(soft.init(jax.random.PRNGKey(0), D), x)
  with pytest.raises(ValueError, match="soft.*einsum"):
    dispatch.get("sort").run(rs, x, params, experts)
