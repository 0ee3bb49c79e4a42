"""The benchmark's naive layer computes what moe_layer computes (topk + sort, one group), so
the benchmark's ratio to it compares equal work."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.naive_moe import naive_moe
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer


# k=2 with some drops, and k=1 with most assignments dropped (capacity 4 of 8 per expert).
@pytest.mark.parametrize("num_experts, k, capacity_factor", [
    (4, 2, 1.0), (8, 1, 0.5)])
def test_naive_layer_equals_moe_layer_forward_and_gradients(num_experts, k, capacity_factor):
  config = MoEConfig(num_experts=num_experts, expert_d_ff=16, router_options={"k": k},
                     dispatcher="sort", capacity_factor=capacity_factor, group_size=64)
  params = init_moe_layer(jax.random.PRNGKey(0), 8, config)
  x_BLD = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 8))
  # Jitted (as the benchmark runs them): op by op, the two layers' gradients took ~25 s.
  layer = jax.jit(lambda p, x: moe_layer(p, x, config)[0])
  naive = jax.jit(lambda p, x: naive_moe(p, x.reshape(64, 8), k=k,
                                         capacity_factor=capacity_factor).reshape(x.shape))
  np.testing.assert_allclose(naive(params, x_BLD), layer(params, x_BLD), atol=1e-5)
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  got = jax.jit(jax.grad(loss(naive), argnums=(0, 1)))(params, x_BLD)
  want = jax.jit(jax.grad(loss(layer), argnums=(0, 1)))(params, x_BLD)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-5)
