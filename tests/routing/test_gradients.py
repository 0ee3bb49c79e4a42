"""Gradients of every router with parameters, against finite differences (float64)."""
import jax
import jax.numpy as jnp
import jax.test_util
import pytest

from moe_jax import routing
from tests.routing.helpers import D_MODEL, make_router, token_ids, tokens

DIFFERENTIABLE = [n for n in routing.names()
                  if jax.tree.leaves(make_router(n).init(jax.random.PRNGKey(0), D_MODEL)["params"])]


def test_the_learned_routers_are_all_here():
  assert {"topk", "dense", "expert_choice", "soft", "sinkhorn", "relu",
          "bias_balanced", "deepseek"} <= set(DIFFERENTIABLE)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_check_grads(name, train):
  with jax.enable_x64(True):
    router = make_router(name)
    variables = router.init(jax.random.PRNGKey(0), D_MODEL)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
                             variables)
    x = tokens(24).astype(jnp.float64)
    ids = token_ids(24)
    probe = jax.random.normal(jax.random.PRNGKey(3), (24, 8, 4), jnp.float64)

    def scalar(params, x):
      r = router.route({"params": params, "state": variables["state"]}, x, token_ids=ids,
                       rng=jax.random.PRNGKey(4), train=train)
      if r.is_soft:
        out = jnp.sum(r.dispatch_weights * probe[..., :r.dispatch_weights.shape[-1]])
        out += jnp.sum(r.combine_weights * probe[..., -r.combine_weights.shape[-1]:])
      else:
        out = jnp.sum(r.combine_matrix() * probe[..., 0])
      return out + sum(r.aux_losses.values())

    jax.test_util.check_grads(scalar, (variables["params"], x), order=1, modes=["rev"],
                              eps=1e-6, atol=1e-5, rtol=1e-5)
