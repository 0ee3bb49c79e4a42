"""Batched experts against per-expert matmuls."""
import jax
import numpy as np
import pytest

from moe_jax.experts import ACTIVATIONS, make_experts


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_batched_experts_equal_one_matmul_per_expert(glu, activation):
  experts = make_experts(12, glu=glu, activation=activation)
  params = experts.init(jax.random.PRNGKey(0), 4, 8)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 8))
  y = experts.apply(params, x)
  act = ACTIVATIONS[activation]
  for e in range(4):
    if glu:
      h = act(x[e] @ params["w_gate"][e]) * (x[e] @ params["w_up"][e])
      expected = h @ params["w_down"][e]
    else:
      expected = act(x[e] @ params["w_in"][e]) @ params["w_out"][e]
    np.testing.assert_allclose(y[e], expected, rtol=1e-5, atol=1e-5)


def test_shapes_and_bad_options():
  params = make_experts(6, glu=True).init(jax.random.PRNGKey(0), 3, 4)
  assert {k: v.shape for k, v in params.items()} == {
      "w_gate": (3, 4, 6), "w_up": (3, 4, 6), "w_down": (3, 6, 4)}
  with pytest.raises(ValueError, match="activation"):
    make_experts(6, activation="swish2")
  with pytest.raises(ValueError, match="d_ff"):
    make_experts(0)
