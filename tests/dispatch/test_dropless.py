"""Dropless dispatch: the grouped-matmul implementations against the einsum reference, and
which one 'auto' picks."""
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import dispatch, routing
from moe_jax.dispatch import dropless
from moe_jax.dispatch.grouped_matmul import blocked_matmul
from moe_jax.experts import make_experts


@pytest.mark.parametrize("num_blocks", [None, 3])
def test_blocked_matmul_forward_and_gradient_match_per_row_weights(num_blocks):
  block, num_experts = 4, 3
  block_expert = jnp.array([0, 0, 2, 1, 2], jnp.int32)
  x = jax.random.normal(jax.random.PRNGKey(0), (20, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (num_experts, 5, 6))
  used_rows = 20 if num_blocks is None else num_blocks * block   # later rows: output 0
  mask = (jnp.arange(20) < used_rows)[:, None]
  reference = lambda x, w: mask * jnp.einsum("ri,rio->ro", x,
                                             w[jnp.repeat(block_expert, block)])
  fast = jax.jit(lambda x, w: blocked_matmul(x, w, block_expert, block, num_blocks=num_blocks))
  np.testing.assert_allclose(fast(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
  probe = jax.random.normal(jax.random.PRNGKey(2), (20, 6))
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * probe), argnums=(0, 1))(x, w)
  chex.assert_trees_all_close(grads(fast), grads(reference), rtol=1e-5, atol=1e-5)


def _one_expert_params():
  """Every impl with every router; in make test's budget, topk with every impl and hash with
  'spill' (the CPU default), the rest in test-all."""
  routers = [("topk", {"k": 2}), ("relu", {}), ("hash", {"k": 1})]
  return [pytest.param(impl, name, options, id=f"{name}-options{i}-{impl}",
                       marks=[] if name == "topk" or (name, impl) == ("hash", "spill")
                       else [pytest.mark.slow])
          for i, (name, options) in enumerate(routers) for impl in ("spill", "blocked", "ragged")]


@pytest.mark.parametrize("impl,router_name,options", _one_expert_params())
def test_dropless_equals_reference_even_when_all_tokens_pick_one_expert(impl, router_name,
                                                                        options):
  router = routing.get(router_name, num_experts=8, **options)
  experts = make_experts(24, glu=True, activation="silu")
  variables = router.init(jax.random.PRNGKey(0), 16)
  params = experts.init(jax.random.PRNGKey(1), 8, 16)
  x = jax.random.normal(jax.random.PRNGKey(2), (64, 16))
  ids = jnp.zeros((64,), jnp.int32)   # for hash: every token to the same expert

  def f(params, x, dispatcher, **kw):
    r = router.route(variables, x, token_ids=ids)
    return dispatch.get(dispatcher).run(r, x, params, experts, **kw)[0]

  # Everything jitted: op-by-op the einsum reference and its gradient take seconds each.
  y_ref = jax.jit(lambda p, x: f(p, x, "einsum", capacity_factor=1e3))(params, x)
  y = jax.jit(lambda p, x: f(p, x, "dropless", impl=impl))(params, x)
  np.testing.assert_allclose(y, y_ref, rtol=2e-4, atol=2e-5)
  probe = jax.random.normal(jax.random.PRNGKey(3), y.shape)
  g_ref = jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x, "einsum", capacity_factor=1e3) * probe),
                           argnums=(0, 1)))(params, x)
  g = jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x, "dropless", impl=impl) * probe),
                       argnums=(0, 1)))(params, x)
  chex.assert_trees_all_close(g, g_ref, rtol=5e-4, atol=5e-5)


def test_dropless_rejects_unknown_impl():
  router = routing.get("topk", num_experts=4)
  experts = make_experts(8)
  x = jnp.ones((4, 8))
  r = router.route(router.init(jax.random.PRNGKey(0), 8), x)
  with pytest.raises(ValueError, match="impl='fast'.*blocked"):
    dispatch.get("dropless").run(r, x, experts.init(jax.random.PRNGKey(0), 4, 8), experts,
                                 impl="fast")


@pytest.mark.parametrize("backend, installed, expected", [
    ("tpu", True, "ragged"), ("gpu", True, "tokamax"), ("gpu", False, "spill"),
    ("cpu", True, "spill")])
def test_default_impl_by_backend(monkeypatch, backend, installed, expected):
  monkeypatch.setattr(dropless, "tokamax_available", lambda: installed)
  assert dropless.default_impl(backend) == expected


def _fake_tokamax(calls):
  """A stand-in with tokamax.ragged_dot's signature (CI does not install tokamax): the
  wiring is what is tested here; the kernels themselves on a GPU host
  (benchmarks/check_accelerator_paths.py)."""
  def ragged_dot(lhs, rhs, group_sizes, precision=None, preferred_element_type=None,
                 group_offset=None, activation=None, *, implementation=None):
    calls.append(lhs.shape)
    return jax.lax.ragged_dot(lhs, rhs, group_sizes)
  return types.SimpleNamespace(ragged_dot=ragged_dot)


# make test's budget: test-all (tokamax is the GPU path; its wiring's refusal without the
# package runs in make test).
@pytest.mark.slow
def test_tokamax_impl_equals_reference_forward_and_gradient(monkeypatch):
  calls, real = [], dropless.tokamax_available()
  if not real:
    monkeypatch.setitem(sys.modules, "tokamax", _fake_tokamax(calls))
    monkeypatch.setattr(dropless, "tokamax_available", lambda: True)
  router = routing.get("topk", num_experts=4, k=2)
  experts = make_experts(12)
  variables = router.init(jax.random.PRNGKey(0), 8)
  params = experts.init(jax.random.PRNGKey(1), 4, 8)
  x = jax.random.normal(jax.random.PRNGKey(2), (32, 8))

  def f(params, x, impl):
    r = router.route(variables, x)
    return dispatch.get("dropless").run(r, x, params, experts, impl=impl)[0]

  np.testing.assert_allclose(f(params, x, "tokamax"), f(params, x, "blocked"), rtol=1e-5,
                             atol=1e-6)
  grads = lambda impl: jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x, impl))),
                                argnums=(0, 1))(params, x)
  chex.assert_trees_all_close(grads("tokamax"), grads("blocked"), rtol=1e-5, atol=1e-6)
  assert real or calls    # the stand-in was called: the path went through tokamax.ragged_dot


def test_tokamax_impl_without_the_package_says_how_to_install_it(monkeypatch):
  monkeypatch.setattr(dropless, "tokamax_available", lambda: False)
  router = routing.get("topk", num_experts=4)
  experts = make_experts(8)
  x = jnp.ones((4, 8))
  r = router.route(router.init(jax.random.PRNGKey(0), 8), x)
  with pytest.raises(ValueError, match=r"impl='tokamax' needs the tokamax package: pip install "
                                       r"'moe_jax\[gpu\]'"):
    dispatch.get("dropless").run(r, x, experts.init(jax.random.PRNGKey(0), 4, 8), experts,
                                 impl="tokamax")
