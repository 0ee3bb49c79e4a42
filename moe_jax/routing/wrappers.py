"""Router wrappers: a training-time option that composes with any router, as optax's
`chain` composes gradient transformations, instead of a flag inside one router.

    router = routing.with_input_jitter(routing.get("sinkhorn", num_experts=8), eps=0.01)

`topk`'s `jitter_eps` is this wrapper. (Shazeer's noisy gating stays inside `topk`: its noise
scale is a learned projection of the router's own logits, part of that gating function.)
"""
from __future__ import annotations

import jax

from moe_jax.routing.base import Router, compute_dtype
from moe_jax.routing.linear import require_rng
from moe_jax.validation import check_float


def with_input_jitter(router: Router, eps: float) -> Router:
  """Switch Transformer's multiplicative jitter: in training, the router sees
  x * U(1 - eps, 1 + eps) (elementwise) instead of x; the experts still get x, and evaluation
  is unchanged. The wrapped router draws from the rest of the key: (jitter, inner) =
  split(rng). eps = 0 returns `router` itself."""
  check_float("jitter_eps", eps, low=0.0, high=1.0, owner=f"router {router.name!r}")
  if eps == 0:
    return router

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    if train:
      require_rng(router.name, rng, "jitter_eps > 0 is set")
      jitter_rng, rng = jax.random.split(rng)
      x_TD = x_TD.astype(compute_dtype(x_TD))
      x_TD = x_TD * jax.random.uniform(jitter_rng, x_TD.shape, x_TD.dtype, 1.0 - eps, 1.0 + eps)
    return router.route(variables, x_TD, token_ids=token_ids, rng=rng, train=train)

  return router._replace(route=route)
