"""`cluster`: route each token to its nearest of E centroids, fitted by online spherical
k-means on the token representations (as in Routing Transformers, Roy et al. 2021).

The centroids are router state, not parameters: no gradient flows through the choice. On the
first training call the centroids are seeded from the batch by farthest-first traversal; after
each training call every centroid moves towards the mean of the tokens assigned to it:
    c_e <- normalize((1 - rate) * c_e + rate * mean(x_t assigned to e)).
Causal-safe: a token's expert depends only on it and the (fixed during a step) centroids.

Axis letters: T tokens, D model dim, E experts, K experts per token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing.base import Router, compute_dtype, token_choice_routing
from moe_jax.routing.linear import check_common
from moe_jax.routing.registry import register
from moe_jax.validation import check_float


def _normalize(x_TD):
  return x_TD * jax.lax.rsqrt(jnp.sum(x_TD * x_TD, axis=-1, keepdims=True) + 1e-12)


def farthest_first(z_TD, num_experts: int):
  """E seeds by farthest-first traversal: token 0, then repeatedly the token least similar to
  every seed so far. Deterministic, and lands one seed in each well-separated cluster."""
  def body(i, carry):
    seeds_ED, best_sim_T = carry
    pick = jnp.argmin(best_sim_T)
    seeds_ED = seeds_ED.at[i].set(z_TD[pick])
    return seeds_ED, jnp.maximum(best_sim_T, z_TD @ z_TD[pick])
  seeds_ED = jnp.zeros((num_experts, z_TD.shape[1]), z_TD.dtype).at[0].set(z_TD[0])
  seeds_ED, _ = jax.lax.fori_loop(1, num_experts, body, (seeds_ED, z_TD @ z_TD[0]))
  return seeds_ED


def kmeans_step(centroids_ED, z_TD, assignment_T, rate):
  """One online k-means update; experts without tokens keep their centroid."""
  num_experts = centroids_ED.shape[0]
  sums_ED = jax.ops.segment_sum(z_TD, assignment_T, num_segments=num_experts)
  counts_E = jax.ops.segment_sum(jnp.ones_like(assignment_T, z_TD.dtype), assignment_T,
                                 num_segments=num_experts)
  means_ED = sums_ED / jnp.maximum(counts_E, 1)[:, None]
  moved_ED = _normalize((1 - rate) * centroids_ED + rate * means_ED)
  return jnp.where(counts_E[:, None] > 0, moved_ED, centroids_ED)


@register("cluster")
def cluster(*, num_experts: int, k: int = 1, update_rate: float = 0.1) -> Router:
  owner = "router 'cluster'"
  check_common(owner, num_experts, k)
  check_float("update_rate", update_rate, low=0.0, high=1.0, low_inclusive=False, owner=owner)

  def init(rng, d_model):
    centroids = _normalize(jax.random.normal(rng, (num_experts, d_model), jnp.float32))
    return {"params": {}, "state": {"centroids": centroids,
                                    "initialized": jnp.zeros((), bool)}}

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng
    state = variables["state"]
    z_TD = _normalize(jax.lax.stop_gradient(x_TD).astype(compute_dtype(x_TD)))
    centroids_ED = state["centroids"].astype(z_TD.dtype)
    initialized = state["initialized"]
    if train:  # seed from the data once: random centroids leave many clusters empty
      # A select, not lax.cond: under shard_map the seeds vary per device while the stored
      # centroids do not, and cond's branches must agree on that (the seeding costs E*T*D,
      # the same as the routing matmul).
      centroids_ED = jnp.where(initialized, centroids_ED, farthest_first(z_TD, num_experts))
      initialized = jnp.ones((), bool)
    sim_TE = z_TD @ centroids_ED.T
    _, expert_TK = jax.lax.top_k(sim_TE, k)
    if train:
      centroids_ED = kmeans_step(centroids_ED, z_TD, expert_TK[:, 0], update_rate)
    weight_TK = jnp.full(expert_TK.shape, 1.0 / k, z_TD.dtype)
    return token_choice_routing(expert_TK, weight_TK, num_experts=num_experts,
                                new_state={"centroids": centroids_ED.astype(jnp.float32),
                                           "initialized": initialized})

  return Router(init, route, "cluster", num_experts, causal_safe=True,
                loss_weights={})
