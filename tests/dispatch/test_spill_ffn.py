"""capacity_and_spill_ffn against its definition written row by row: the capacity buffer
through the batched FFN, each spill row through its block's expert, weighted and summed per
token; forward and gradients w.r.t. the parameters, both inputs and the spill weights."""
import chex
import jax
import jax.numpy as jnp
import pytest

from moe_jax.dispatch.spill_ffn import capacity_and_spill_ffn
from moe_jax.experts import make_experts

NUM_EXPERTS, CAPACITY, TOKENS, D, BLOCK = 3, 4, 10, 6, 4


def _reference(apply, params, x_ECD, x_TD, token_R, weight_R, block_expert, num_blocks):
  y_ECD = apply(params, x_ECD)
  y_TD = jnp.zeros_like(x_TD)
  for r in range(num_blocks * BLOCK):      # a Python loop over the rows in use
    t = int(token_R[r])
    if t == TOKENS:                        # padding row
      continue
    expert = jax.tree.map(lambda p: p[int(block_expert[r // BLOCK])][None], params)
    y_TD = y_TD.at[t].add(weight_R[r] * apply(expert, x_TD[t][None, None])[0, 0])
  return y_ECD, y_TD


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("num_blocks", [0, 2, 4])
def test_capacity_and_spill_ffn_matches_the_row_by_row_definition(glu, num_blocks):
  experts = make_experts(8, glu=glu, activation="silu" if glu else "gelu")
  params = experts.init(jax.random.PRNGKey(0), NUM_EXPERTS, D)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  x_ECD = jax.random.normal(keys[0], (NUM_EXPERTS, CAPACITY, D))
  x_TD = jax.random.normal(keys[1], (TOKENS, D))
  # 4 blocks of 4 rows: token 3 twice in block 0 (same expert twice), padding rows (token T).
  token_R = jnp.array([3, 3, 0, TOKENS, 7, 1, TOKENS, TOKENS, 9, 2, 5, 3, 4, 8, 6, TOKENS])
  weight_R = jnp.where(token_R < TOKENS, jax.random.uniform(keys[2], (16,)), 0.0)
  block_expert = jnp.array([2, 0, 1, 2], jnp.int32)
  args = (params, x_ECD, x_TD, token_R, weight_R, block_expert)

  fast = jax.jit(lambda p, a, b, t, w, e: capacity_and_spill_ffn(
      experts.apply, p, a, b, t, w, e, num_blocks, BLOCK))
  reference = lambda p, a, b, t, w, e: _reference(experts.apply, p, a, b, t, w, e, num_blocks)
  chex.assert_trees_all_close(fast(*args), reference(*args), rtol=1e-5, atol=1e-6)

  probes = (jax.random.normal(keys[3], x_ECD.shape), jax.random.normal(keys[3], x_TD.shape))
  loss = lambda f: lambda p, a, b, w: sum(jnp.sum(y * g) for y, g in
                                          zip(f(p, a, b, token_R, w, block_expert), probes))
  grads = lambda f: jax.grad(loss(f), argnums=(0, 1, 2, 3))(params, x_ECD, x_TD, weight_R)
  chex.assert_trees_all_close(grads(fast), grads(reference),
                              rtol=1e-5, atol=1e-6)
