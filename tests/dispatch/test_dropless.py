"""Dropless dispatch: both grouped-matmul implementations against the einsum reference."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import dispatch, routing
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


@pytest.mark.parametrize("impl", ["blocked", "ragged"])
@pytest.mark.parametrize("router_name,options", [("topk", {"k": 2}), ("relu", {}),
                                                 ("hash", {"k": 1})])
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
