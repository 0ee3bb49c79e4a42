"""MoE layer benchmark: each path against a dense FFN with the same active FLOPs and against
the simplest correct MoE layer (benchmarks/naive_moe.py), all timed round-robin in one process.

    python benchmarks/moe_layer.py [--experts 8 32 64] [--tokens 4096] [--d_model 512]
                                   [--d_ff 1024] [--k 2] [--rounds 7] [--ep 8]

Every case is compiled first; then each round times each case once, in turn (each timed call
right after an untimed one of the same function), and the table holds the medians over
rounds: this machine's speed drifts by tens of percent within minutes, so cases timed minutes
apart (or in separate processes) would compare the drift. Forward and
forward+backward (gradient of sum(y^2) w.r.t. x and all params), and compiled temp memory.
Ratios: to the dense FFN (d_ff = k*F, same activation) and to the naive layer of the same E.

Rows: `naive`; `moe/sort` with one routing group of all tokens and `moe/sort G=S` with the
default groups (one sequence each); `moe/dropless`; the breakdown of the layer's cost at the
first E (`--breakdown`): the sort dispatcher alone on a bare top-k Routing, the topk router's
route + the dispatcher, and the layer; and the expert-parallel layer on an `--ep`-device expert
axis against the unsharded layer in the same per-device groups (on CPU the devices are
simulated: `--xla_force_host_platform_device_count`, set here when jax has not been imported);
with `--null_experts N`, `moe/sort` with N MoE++ zero experts and its FFN experts per token.
Writes benchmarks/results/moe_layer.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from functools import partial
from typing import Callable, NamedTuple

if __name__ == "__main__" and "--xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

if __name__ == "__main__":   # run as a script: the repository root, for `benchmarks.naive_moe`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402

from benchmarks.naive_moe import naive_moe  # noqa: E402
from benchmarks.timing import round_robin_ms, settings  # noqa: E402
from moe_jax import dispatch  # noqa: E402
from moe_jax.dispatch import sort  # noqa: E402
from moe_jax.experts import make_experts  # noqa: E402
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer  # noqa: E402
from moe_jax.parallel import make_mesh  # noqa: E402
from moe_jax.routing.base import token_choice_routing  # noqa: E402

CAPACITY_FACTOR = 1.25


class Case(NamedTuple):
  label: str
  experts: int
  forward: Callable
  args: tuple
  baseline: str = "dense FFN"     # the label of the row its ratios are to (besides dense)


def _compile(fn, args):
  compiled = jax.jit(fn).lower(*args).compile()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  jax.block_until_ready(compiled(*args))     # warm-up
  return compiled, temp


def _fwd_bwd(forward):
  return jax.grad(lambda p, x: jnp.sum(forward(p, x) ** 2), argnums=(0, 1))


def time_round_robin(cases: list[Case], rounds: int, say=print) -> list[dict]:
  """Compiles every case's forward and forward+backward, then `rounds` rounds that each time
  every compiled function once (after one untimed call), in turn; one row per case with the
  medians in ms."""
  fns, temps = [], []
  for case in cases:
    for mode, fn in (("forward", case.forward), ("fwd_bwd", _fwd_bwd(case.forward))):
      compiled, temp = _compile(fn, case.args)
      fns.append((case, mode, compiled))
      temps.append(temp)
  times = round_robin_ms([partial(compiled, *case.args) for case, _, compiled in fns], rounds,
                         say)
  rows = {}
  for (case, mode, _), ts, temp in zip(fns, times, temps):
    row = rows.setdefault(case.label + f"@{case.experts}", {
        "layer": case.label, "experts": case.experts, "baseline": case.baseline})
    row[f"{mode}_ms"], row[f"{mode}_temp_bytes"] = statistics.median(ts), temp
  return list(rows.values())


def _dispatcher(name: str):
  """'sort', 'dropless', ... or 'dropless:IMPL' (spill, blocked, ragged, tokamax): that impl."""
  base, _, impl = name.partition(":")
  dispatcher = dispatch.get(base)
  if impl:
    dispatcher = dispatcher._replace(run=partial(dispatcher.run, impl=impl))
  return dispatcher


def _layer_cases(args, num_experts, x, seq_len) -> list[Case]:
  config = MoEConfig(num_experts=num_experts, expert_d_ff=args.d_ff,
                     router_options={"k": args.k}, group_size=args.tokens,
                     capacity_factor=CAPACITY_FACTOR)
  params = init_moe_layer(jax.random.PRNGKey(2), args.d_model, config)
  naive = lambda p, x: naive_moe(p, x.reshape(-1, x.shape[-1]), k=args.k,
                                 capacity_factor=CAPACITY_FACTOR).reshape(x.shape)
  cases = [Case("naive", num_experts, naive, (params, x))]
  for name in args.dispatchers:
    groups = [None, seq_len] if name == "sort" else [None]
    for group in groups:
      case = dataclasses.replace(config, dispatcher=_dispatcher(name),
                                 group_size=group or args.tokens)
      label = f"moe/{name}" + (f" G={args.tokens // group}" if group else "")
      cases.append(Case(label, num_experts, lambda p, x, case=case: moe_layer(p, x, case)[0],
                        (params, x), baseline="naive"))
  return cases


def _null_expert_cases(args, num_experts, x) -> tuple[list[Case], dict[str, float]]:
  """`moe/sort` with MoE++ zero experts beside the E FFN experts: a token routed to one costs
  no expert matmul. Also returns each case's measured FFN experts per token (at init the
  router spreads assignments over FFN and zero experts alike)."""
  cases, per_token = [], {}
  for count in args.null_experts:
    config = MoEConfig(num_experts=num_experts, expert_d_ff=args.d_ff,
                       router_options={"k": args.k}, group_size=args.tokens,
                       capacity_factor=CAPACITY_FACTOR, zero_experts=count)
    params = init_moe_layer(jax.random.PRNGKey(2), args.d_model, config)
    label = f"moe/sort +{count} zero experts"
    cases.append(Case(label, num_experts, lambda p, x, c=config: moe_layer(p, x, c)[0],
                      (params, x), baseline="naive"))
    per_token[label, num_experts] = float(moe_layer(params, x, config)[1].metrics[
        "experts_per_token"])
  return cases, per_token


def _breakdown_cases(args, num_experts, x) -> list[Case]:
  """Where the layer's cost over the naive layer goes: the dispatcher alone on a bare top-k
  Routing (no aux losses, no telemetry), the topk router + the dispatcher, and the layer."""
  config = MoEConfig(num_experts=num_experts, expert_d_ff=args.d_ff,
                     router_options={"k": args.k}, group_size=args.tokens,
                     capacity_factor=CAPACITY_FACTOR, dispatcher="sort")
  params = init_moe_layer(jax.random.PRNGKey(2), args.d_model, config)
  router, experts = config.built_router, config.experts
  sort_run = partial(sort.run, experts=experts, capacity_factor=CAPACITY_FACTOR)

  def bare(p, x):
    x_TD = x.reshape(-1, x.shape[-1])
    weight_TK, expert_TK = jax.lax.top_k(jax.nn.softmax(x_TD @ p["router"]["params"]["w"]),
                                         args.k)
    r = token_choice_routing(expert_TK, weight_TK, num_experts=num_experts)
    return sort_run(r, x_TD, p["experts"])[0].reshape(x.shape)

  def routed(p, x):
    x_TD = x.reshape(-1, x.shape[-1])
    return sort_run(router.route(p["router"], x_TD), x_TD, p["experts"])[0].reshape(x.shape)

  return [Case("breakdown: sort.run, bare top-k", num_experts, bare, (params, x), "naive"),
          Case("breakdown: topk.route + sort.run", num_experts, routed, (params, x), "naive")]


def _expert_parallel_cases(args, num_experts, x) -> list[Case]:
  """EP layer vs the unsharded layer with the same per-device routing groups."""
  if jax.device_count() < args.ep or num_experts % args.ep or x.shape[0] % args.ep:
    print(f"(expert-parallel rows skipped: need {args.ep} devices dividing E and the batch)")
    return []
  mesh = make_mesh(data=-1 if jax.device_count() > args.ep else 1, expert=args.ep,
                   devices=jax.devices()[:args.ep])
  group = x.shape[0] * x.shape[1] // args.ep
  cases = []
  for name in ("sort", "dropless"):
    config = MoEConfig(num_experts=num_experts, expert_d_ff=args.d_ff,
                       router_options={"k": args.k}, group_size=group,
                       capacity_factor=CAPACITY_FACTOR, dispatcher=name)
    params = init_moe_layer(jax.random.PRNGKey(2), args.d_model, config)
    local = f"moe/{name} G={args.ep}"
    cases += [Case(f"{local} (EP baseline)", num_experts,
                   lambda p, x, c=config: moe_layer(p, x, c)[0], (params, x), "naive"),
              Case(f"moe/{name} EP={args.ep}", num_experts,
                   lambda p, x, c=config: moe_layer(p, x, c, mesh=mesh)[0], (params, x),
                   f"{local} (EP baseline)")]
  return cases


def _with_ratios(rows):
  by = {(r["layer"], r["experts"]): r for r in rows}
  dense = by[("dense FFN", 0)]
  for r in rows:
    for mode in ("forward", "fwd_bwd"):
      r[f"{mode}_x_dense"] = r[f"{mode}_ms"] / dense[f"{mode}_ms"]
      base = by.get((r["baseline"], r["experts"]))
      r[f"{mode}_x_baseline"] = r[f"{mode}_ms"] / base[f"{mode}_ms"] if base else None
  return rows


def _print_table(rows):
  print(f"{'layer':<36}{'E':>4}{'fwd ms':>9}{'×dense':>7}{'×base':>7}{'f+b ms':>9}"
        f"{'×dense':>7}{'×base':>7}{'temp MB':>9}  base")
  for r in rows:
    base = lambda m: f"{r[m]:7.2f}" if r[m] is not None else f"{'-':>7}"
    print(f"{r['layer']:<36}{r['experts'] or '-':>4}{r['forward_ms']:9.1f}"
          f"{r['forward_x_dense']:7.2f}{base('forward_x_baseline')}{r['fwd_bwd_ms']:9.1f}"
          f"{r['fwd_bwd_x_dense']:7.2f}{base('fwd_bwd_x_baseline')}"
          f"{(r['fwd_bwd_temp_bytes'] or 0) / 2**20:9.1f}  {r['baseline']}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 64])
  parser.add_argument("--tokens", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=8, help="sequences: tokens / batch each")
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--d_ff", type=int, default=1024)
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--dispatchers", nargs="+", default=["sort", "dropless", "dropless:blocked"],
                      help="names, or dropless:IMPL (spill, blocked, ragged, tokamax); plain "
                           "'dropless' is the platform's default impl (spill on CPU)")
  parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                      help="skip the breakdown rows (at the first E)")
  parser.add_argument("--null_experts", type=int, nargs="*", default=[],
                      help="also time moe/sort with this many MoE++ zero experts (each count)")
  parser.add_argument("--ep", type=int, default=8,
                      help="expert-axis size for the expert-parallel rows (0: skip them)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "moe_layer.json"))
  args = parser.parse_args(argv)
  seq_len = args.tokens // args.batch
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, seq_len, args.d_model))
  dense = make_experts(args.k * args.d_ff)
  dense_params = dense.init(jax.random.PRNGKey(1), 1, args.d_model)
  cases = [Case("dense FFN", 0, lambda p, x: dense.apply(p, x.reshape(1, -1, x.shape[-1]))[0]
                .reshape(x.shape), (dense_params, x))]
  ffn_per_token = {}
  for i, num_experts in enumerate(args.experts):
    cases += _layer_cases(args, num_experts, x, seq_len)
    null_cases, per_token = _null_expert_cases(args, num_experts, x)
    cases += null_cases
    ffn_per_token.update(per_token)
    if args.breakdown and i == 0:
      cases += _breakdown_cases(args, num_experts, x)
    if args.ep > 1:
      cases += _expert_parallel_cases(args, num_experts, x)
  print(f"{len(cases)} cases x (forward, forward+backward), compiled first, then "
        f"{args.rounds} round-robin rounds", flush=True)
  rows = _with_ratios(time_round_robin(cases, args.rounds))
  for row in rows:
    if (row["layer"], row["experts"]) in ffn_per_token:
      row["ffn_experts_per_token"] = ffn_per_token[row["layer"], row["experts"]]
  _print_table(rows)
  for (label, num_experts), value in ffn_per_token.items():
    print(f"{label} (E={num_experts}): {value:.2f} FFN experts per token (k={args.k})")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"config": settings(args), "jax": jax.__version__, "backend": jax.default_backend(),
               "devices": jax.device_count(), "cpu_count": os.cpu_count(), "rows": rows},
              f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
