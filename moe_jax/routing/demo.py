"""Routing demo: every registered router on the same random tokens, as a table.

    python -m moe_jax.routing.demo [--tokens 4096] [--experts 8] [--d_model 64] [--steps 50]

Tokens get a shared mean offset (as a residual stream has), which skews plain top-k routing;
stateful routers (bias_balanced, relu, cluster) first take `--steps` training calls on fresh
batches so their state (bias, L1 coefficient, centroids) has adapted.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from moe_jax import routing


def _batch(rng, num_tokens, d_model, offset_D):
  x_rng, id_rng = jax.random.split(rng)
  x = jax.random.normal(x_rng, (num_tokens, d_model)) + offset_D
  return x, jax.random.randint(id_rng, (num_tokens,), 0, 256)


def run_router(name, args, offset_D):
  router = routing.get(name, num_experts=args.experts)
  variables = router.init(jax.random.PRNGKey(0), args.d_model)
  route = jax.jit(lambda v, x, ids, rng, train: router.route(v, x, token_ids=ids, rng=rng,
                                                             train=train),
                  static_argnames="train")
  state = variables["state"]
  if jax.tree.leaves(state):
    for step in range(args.steps):
      x, ids = _batch(jax.random.PRNGKey(100 + step), args.tokens, args.d_model, offset_D)
      state = route({"params": variables["params"], "state": state}, x, ids,
                    jax.random.PRNGKey(step), True).new_state
  x, ids = _batch(jax.random.PRNGKey(1), args.tokens, args.d_model, offset_D)
  start = time.perf_counter()
  r = jax.block_until_ready(route({"params": variables["params"], "state": state}, x, ids,
                                  jax.random.PRNGKey(2), True))
  return router, r, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tokens", type=int, default=4096)
  parser.add_argument("--experts", type=int, default=8)
  parser.add_argument("--d_model", type=int, default=64)
  parser.add_argument("--steps", type=int, default=50)
  args = parser.parse_args(argv)
  offset_D = 0.5 * jax.random.normal(jax.random.PRNGKey(42), (args.d_model,))
  print(f"moe_jax routing demo: T={args.tokens} tokens, D={args.d_model}, E={args.experts} "
        f"experts, jax {jax.__version__} on {jax.devices()[0].platform}")
  print("load = share of assignments per expert (%); MaxVio = max load / mean load - 1\n")
  header = (f"{'router':<14}{'N':>7} {'causal':<7}{'expert load %':<{4 * args.experts + 2}}"
            f"{'MaxVio':>7}{'entropy':>8}{'no-exp':>7}  aux losses")
  print(header)
  print("-" * len(header))
  for name in routing.names():
    router, r, _ = run_router(name, args, offset_D)
    load = "".join(f"{100 * float(v):4.0f}" for v in r.metrics["expert_load"])
    aux = ", ".join(f"{k}={float(v):.3g}" for k, v in sorted(r.aux_losses.items())) or "-"
    print(f"{name:<14}{r.num_assignments:>7} {'yes' if router.causal_safe else 'no':<7}"
          f"{load:<{4 * args.experts + 2}}{float(r.metrics['max_vio']):7.2f}"
          f"{float(r.metrics['router_entropy']):8.2f}"
          f"{float(r.metrics['no_expert_fraction']):7.2f}  {aux}")
  print("\nN: assignments listed (soft: slots); causal: routing of a token ignores later tokens;"
        "\nentropy: mean router entropy in nats (max ln E = "
        f"{float(jnp.log(args.experts)):.2f}); no-exp: share of tokens with no expert.")


if __name__ == "__main__":
  main()
