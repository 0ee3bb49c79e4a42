"""MoE layer benchmark: each dispatcher against a dense FFN with the same active FLOPs.

    python benchmarks/moe_layer.py [--experts 8 32 64] [--tokens 4096] [--d_model 512]
                                   [--d_ff 1024] [--k 2] [--repeats 5]

Forward and forward+backward (gradient w.r.t. x and all params), median ms after warm-up, and
compiled temp memory, all in one process; ratios are to the dense FFN (d_ff = k*F, same
activation) timed in the same run. Writes benchmarks/results/moe_layer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from moe_jax import dispatch, routing
from moe_jax.experts import make_experts
from moe_jax.layer import init_moe_layer, moe_layer


def _time(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times), temp


def _forward_and_backward(forward, params, x, repeats):
  loss = lambda p, x: jnp.sum(forward(p, x) ** 2)
  fwd_ms, fwd_mem = _time(forward, (params, x), repeats)
  bwd_ms, bwd_mem = _time(jax.grad(loss, argnums=(0, 1)), (params, x), repeats)
  return {"forward_ms": fwd_ms, "forward_temp_bytes": fwd_mem,
          "fwd_bwd_ms": bwd_ms, "fwd_bwd_temp_bytes": bwd_mem}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 64])
  parser.add_argument("--tokens", type=int, default=4096)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--d_ff", type=int, default=1024)
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dispatchers", nargs="+", default=["sort", "dropless", "einsum"])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "moe_layer.json"))
  args = parser.parse_args(argv)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, args.tokens // 8, args.d_model))

  dense = make_experts(args.k * args.d_ff)
  dense_params = dense.init(jax.random.PRNGKey(1), 1, args.d_model)
  dense_fn = lambda p, x: dense.apply(p, x.reshape(1, -1, x.shape[-1]))[0].reshape(x.shape)
  results = {"config": vars(args), "jax": jax.__version__,
             "backend": jax.default_backend(), "rows": []}
  base = _forward_and_backward(dense_fn, dense_params, x, args.repeats)
  results["rows"].append({"layer": "dense FFN", "experts": 0, **base})
  print(f"{'layer':<22}{'E':>4}{'fwd ms':>9}{'ratio':>7}{'fwd+bwd ms':>12}{'ratio':>7}"
        f"{'temp MB':>9}")
  print(f"{'dense FFN (d_ff=k*F)':<22}{'-':>4}{base['forward_ms']:9.1f}{1:7.2f}"
        f"{base['fwd_bwd_ms']:12.1f}{1:7.2f}{(base['fwd_bwd_temp_bytes'] or 0) / 2**20:9.1f}")
  for num_experts in args.experts:
    router = routing.get("topk", num_experts=num_experts, k=args.k)
    experts = make_experts(args.d_ff)
    params = init_moe_layer(jax.random.PRNGKey(2), args.d_model, router=router, experts=experts)
    for name in args.dispatchers:
      fn = lambda p, x, name=name: moe_layer(p, x, router=router, dispatcher=dispatch.get(name),
                                             experts=experts, group_size=args.tokens,
                                             capacity_factor=1.25)[0]
      row = _forward_and_backward(fn, params, x, args.repeats)
      row.update(layer=f"moe/{name}", experts=num_experts,
                 forward_ratio=row["forward_ms"] / base["forward_ms"],
                 fwd_bwd_ratio=row["fwd_bwd_ms"] / base["fwd_bwd_ms"])
      results["rows"].append(row)
      print(f"{'moe/' + name:<22}{num_experts:>4}{row['forward_ms']:9.1f}"
            f"{row['forward_ratio']:7.2f}{row['fwd_bwd_ms']:12.1f}{row['fwd_bwd_ratio']:7.2f}"
            f"{(row['fwd_bwd_temp_bytes'] or 0) / 2**20:9.1f}", flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
