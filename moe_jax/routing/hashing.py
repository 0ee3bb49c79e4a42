"""`hash`: fixed routing by a hash of the token id (Hash Layers, Roller et al. 2021).

No parameters and no gradient: the expert is a pure function of the token id, so it is
causal-safe and perfectly reproducible. Needs `token_ids`. With k > 1 a token goes to k
consecutive experts after its hashed one (always distinct), each with weight 1/k.

Axis letters: T tokens, E experts, K experts per token.
"""
from __future__ import annotations

import jax.numpy as jnp

from moe_jax.routing.base import Router, token_choice_routing
from moe_jax.routing.linear import check_common
from moe_jax.routing.registry import register
from moe_jax.validation import check_int


def mix32(x, seed: int):
  """A 32-bit integer finaliser (xor-shift-multiply); spreads consecutive ids evenly."""
  x = x.astype(jnp.uint32) ^ jnp.uint32(seed * 0x9E3779B9 & 0xFFFFFFFF)
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


@register("hash")
def hash_router(*, num_experts: int, k: int = 1, seed: int = 0) -> Router:
  owner = "router 'hash'"
  check_common(owner, num_experts, k)
  check_int("seed", seed, low=0, owner=owner)

  def init(rng, d_model):
    del rng, d_model
    return {"params": {}, "state": {}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del rng, train
    if token_ids is None:
      raise ValueError("router 'hash' needs token_ids: route(variables, x, token_ids=ids)")
    if token_ids.shape != x_TD.shape[:1]:
      raise ValueError(f"router 'hash': token_ids has shape {token_ids.shape}, "
                       f"expected ({x_TD.shape[0]},) to match x")
    first_T = (mix32(token_ids, seed) % jnp.uint32(num_experts)).astype(jnp.int32)
    expert_TK = (first_T[:, None] + jnp.arange(k)) % num_experts
    weight_TK = jnp.full(expert_TK.shape, 1.0 / k, jnp.float32)
    return token_choice_routing(expert_TK, weight_TK, num_experts=num_experts,
                                new_state=variables.get("state", {}))

  return Router(init, route, "hash", num_experts, causal_safe=True,
                needs_token_ids=True, loss_weights={})
