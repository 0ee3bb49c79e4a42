"""MoE layer benchmark: each dispatcher against a dense FFN with the same active FLOPs.

    python benchmarks/moe_layer.py [--experts 8 32 64] [--tokens 4096] [--d_model 512]
                                   [--d_ff 1024] [--k 2] [--repeats 5] [--ep 8]

Forward and forward+backward (gradient w.r.t. x and all params), median ms after warm-up, and
compiled temp memory, all in one process; ratios are to the dense FFN (d_ff = k*F, same
activation) timed in the same run. Also: the sort path's forward split into phases (route,
pack, experts, unpack), and the expert-parallel layer on an `--ep`-device expert axis against
the unsharded layer routed in the same per-device groups (on CPU the devices are simulated:
`--xla_force_host_platform_device_count`, set here when jax has not been imported yet).
Writes benchmarks/results/moe_layer.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from functools import partial

if __name__ == "__main__" and "--xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402

from moe_jax import dispatch  # noqa: E402
from moe_jax.dispatch import sort  # noqa: E402
from moe_jax.dispatch.base import expert_capacity  # noqa: E402
from moe_jax.experts import make_experts  # noqa: E402
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer  # noqa: E402
from moe_jax.parallel import make_mesh  # noqa: E402


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


def _dispatcher(name: str):
  """'sort', 'dropless', ... or 'dropless:blocked' / 'dropless:ragged' to force an impl."""
  base, _, impl = name.partition(":")
  dispatcher = dispatch.get(base)
  if impl:
    dispatcher = dispatcher._replace(run=partial(dispatcher.run, impl=impl))
  return dispatcher


def _sort_phases(router, experts, params, x_TD, capacity_factor, repeats):
  """Forward ms of each phase of the sort dispatcher, each jitted on its own."""
  num_experts = router.num_experts
  route = lambda p, x: router.route(p["router"], x)
  r = jax.jit(route)(params, x_TD)
  capacity = expert_capacity(r.num_assignments, num_experts, capacity_factor)

  def pack(r, x):
    plan = sort.plan(r.expert, r.valid, num_experts, capacity)
    return sort.pack(r, x, plan).reshape(num_experts, capacity, -1), plan

  x_ECD, plan = jax.jit(pack)(r, x_TD)
  y_ECD = jax.jit(experts.apply)(params["experts"], x_ECD)
  unpack = lambda r, y, plan: sort.unpack(r, y.reshape(-1, y.shape[-1]), plan, x_TD.dtype)
  return {name: _time(fn, args, repeats)[0] for name, fn, args in [
      ("route", route, (params, x_TD)), ("pack", pack, (r, x_TD)),
      ("experts", experts.apply, (params["experts"], x_ECD)),
      ("unpack", unpack, (r, y_ECD, plan))]}


def _print_row(name, num_experts, row):
  print(f"{name:<22}{num_experts:>4}{row['forward_ms']:9.1f}{row['forward_ratio']:7.2f}"
        f"{row['fwd_bwd_ms']:12.1f}{row['fwd_bwd_ratio']:7.2f}"
        f"{(row['fwd_bwd_temp_bytes'] or 0) / 2**20:9.1f}", flush=True)


def _expert_parallel_rows(args, num_experts, config, params, x, repeats):
  """EP layer vs the unsharded layer with the same per-device routing groups."""
  if jax.device_count() < args.ep or num_experts % args.ep or x.shape[0] % args.ep:
    print(f"(expert-parallel rows skipped: need {args.ep} devices dividing E and the batch)")
    return []
  mesh = make_mesh(data=-1 if jax.device_count() > args.ep else 1, expert=args.ep,
                   devices=jax.devices()[:args.ep])
  group = x.shape[0] * x.shape[1] // args.ep
  rows = []
  for name in ("sort", "dropless"):
    case = dataclasses.replace(config, dispatcher=name, group_size=group)
    def layer(p, x, mesh, case=case):
      return moe_layer(p, x, case, mesh=mesh)[0]
    local = _forward_and_backward(lambda p, x: layer(p, x, None), params, x, repeats)
    sharded = _forward_and_backward(lambda p, x: layer(p, x, mesh), params, x, repeats)
    for label, row, base in ((f"moe/{name} G={args.ep}", local, local),
                             (f"moe/{name} EP={args.ep}", sharded, local)):
      row = dict(row, layer=label, experts=num_experts, baseline="unsharded, same groups",
                 forward_ratio=row["forward_ms"] / base["forward_ms"],
                 fwd_bwd_ratio=row["fwd_bwd_ms"] / base["fwd_bwd_ms"])
      rows.append(row)
      _print_row(label, num_experts, row)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 64])
  parser.add_argument("--tokens", type=int, default=4096)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--d_ff", type=int, default=1024)
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dispatchers", nargs="+", default=["sort", "dropless", "einsum"],
                      help="names, or dropless:blocked / dropless:ragged to force an impl")
  parser.add_argument("--ep", type=int, default=8,
                      help="expert-axis size for the expert-parallel rows (0: skip them)")
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
    config = MoEConfig(num_experts=num_experts, expert_d_ff=args.d_ff,
                       router_options={"k": args.k}, group_size=args.tokens,
                       capacity_factor=1.25)
    router, experts = config.built_router, config.experts
    params = init_moe_layer(jax.random.PRNGKey(2), args.d_model, config)
    for name in args.dispatchers:
      case = dataclasses.replace(config, dispatcher=_dispatcher(name))
      fn = lambda p, x, case=case: moe_layer(p, x, case)[0]
      row = _forward_and_backward(fn, params, x, args.repeats)
      row.update(layer=f"moe/{name}", experts=num_experts,
                 forward_ratio=row["forward_ms"] / base["forward_ms"],
                 fwd_bwd_ratio=row["fwd_bwd_ms"] / base["fwd_bwd_ms"])
      results["rows"].append(row)
      _print_row("moe/" + name, num_experts, row)
    phases = _sort_phases(router, experts, params, x.reshape(-1, args.d_model), 1.25,
                          args.repeats)
    results.setdefault("sort_phases_ms", {})[num_experts] = phases
    print("  sort forward phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    if args.ep > 1:
      print("  ratios below: to the unsharded layer routed in the same per-device groups")
      results["rows"] += _expert_parallel_rows(args, num_experts, config, params, x,
                                               args.repeats)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
