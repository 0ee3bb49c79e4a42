"""LM train-step benchmark: tokens/s of the MoE LM against a dense LM with the same active params.

    python benchmarks/train_step.py [--d_model 128] [--layers 4] [--experts 8] [--k 2]
        [--expert_d_ff 256] [--seq_len 64] [--batch 32] [--rounds 10] [--steps_per_round 2]
        [--mesh data=2,expert=4] [--profile]

Every FFN is MoE (E experts of hidden size F, top-k) in the MoE LM; the dense LM has the same
attention and one FFN of hidden size k*F per layer, i.e. the same parameters active per token
(the MoE LM adds only its routers). Each model takes the full training step (forward,
backward, AdamW; the jitted step `moe_jax.train` runs). Every model is compiled and warmed up
first; then each round runs every model one untimed step and `--steps_per_round` timed steps,
in turn (round-robin, so the machine's drift is shared), and a model's time is its median over
rounds. Rows: dense, MoE with the `sort` dispatcher (default), `dropless` and the `einsum`
reference; with `--mesh`, the same rows sharded over that mesh (simulated CPU devices here).
Ratios are tokens/s relative to the dense LM on the same mesh. Writes
benchmarks/results/train_step.json.

`--profile` then traces `--steps_per_round` steps of each model (`step_profile.py`): ms per
step of each op kind summed over the devices, the kinds that differ most from the dense LM on
the same mesh, and how many of the CPU cores each model kept busy.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

if __name__ == "__main__" and "--xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

if __name__ == "__main__":   # run as a script: the repository root, for `benchmarks.step_profile`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import step_profile  # noqa: E402
from benchmarks.timing import settings  # noqa: E402
from moe_jax.models import DecoderLM, make_config  # noqa: E402
from moe_jax.parallel import make_mesh  # noqa: E402
from moe_jax.parallel.distributed import host_local_to_global  # noqa: E402
from moe_jax.run_setup import place_on_mesh  # noqa: E402
from moe_jax.tasks import lm  # noqa: E402
from moe_jax.train_step import OptimConfig, make_optimizer, make_state_train_step  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _configs(args):
  common = dict(vocab_size=256, d_model=args.d_model, num_layers=args.layers,
                num_heads=max(1, args.d_model // 32), max_len=args.seq_len)
  dense = make_config(**common, d_ff=args.k * args.expert_d_ff, num_experts=0)
  moe = {name: make_config(**common, num_experts=args.experts, router="topk",
                                 router_options={"k": args.k}, expert_d_ff=args.expert_d_ff,
                                 dispatcher=name, capacity_factor=args.capacity_factor)
         for name in args.dispatchers}
  return {"dense": dense, **{f"moe/{name}": c for name, c in moe.items()}}


def _count(model, active_k=None, experts=None):
  params = nnx.state(model, nnx.Param)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  expert = sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(params)
               if "expert_params" in jax.tree_util.keystr(p))
  active = total - expert + (expert * active_k // experts if experts else 0)
  return total, active


class _Runner:
  """One model's jitted training step, its state and batch, ready to time."""

  def __init__(self, config, mesh, args):
    model = DecoderLM(config, rngs=nnx.Rngs(0), mesh=mesh)
    self.params, self.active_params = _count(model, args.k, config.num_experts or None)
    optimizer = nnx.Optimizer(model, make_optimizer(OptimConfig(total_steps=1000,
                                                                warmup_steps=10)), wrt=nnx.Param)
    graphdef, self.state = nnx.split((model, optimizer))
    if mesh is not None:
      self.state = place_on_mesh(self.state, mesh)
    self.step = make_state_train_step(graphdef, task_loss=lm.loss,
                                      aux_loss_weights={"load_balancing": 0.01})
    tokens = np.random.default_rng(0).integers(0, 256, (args.batch, args.seq_len + 1),
                                               dtype=np.int32)
    self.batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    if mesh is not None:
      self.batch = host_local_to_global(self.batch, mesh)
    self.key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    self.run(2)    # compile + one warm step
    self.compile_and_warmup_s = time.perf_counter() - start

  def run(self, steps: int) -> float:
    """Seconds per step over `steps` consecutive steps, after one untimed step (the first call
    after another model's ran measurably slower, as in benchmarks/moe_layer.py)."""
    self.state, metrics = self.step(self.state, self.batch, self.key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch, self.key)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def _time_round_robin(runners: dict, rounds: int, steps: int) -> dict:
  """Median seconds per step of each runner; each round runs every runner `steps` steps in
  turn, so the machine's drift is shared by all of them."""
  times = {name: [] for name in runners}
  for r in range(rounds):
    for name, runner in runners.items():
      times[name].append(runner.run(steps))
    print(f"  round {r + 1}/{rounds}", end="\r" if r + 1 < rounds else "\n", flush=True)
  return {name: statistics.median(ts) for name, ts in times.items()}


def _profile(runners: dict, rows: list, steps: int) -> None:
  """Per mesh, the op kinds where the MoE steps differ most from the dense one (ms/step summed
  over devices), and each model's cores busy; both also go into `rows`."""
  for mesh_name in dict.fromkeys(m for m, _ in runners):
    profiles, busy = {}, {}
    for (m, name), runner in runners.items():
      if m == mesh_name:
        busy[name] = step_profile.cores_busy(runner.run, steps)
        profiles[name] = step_profile.op_ms_per_step(runner.run, steps)
        row = next(r for r in rows if (r["mesh"], r["model"]) == (m, name))
        row.update(cores_busy=busy[name], op_ms_per_step=profiles[name])
    print(f"\n{mesh_name}: ms/step per op kind, summed over devices (where the models differ "
          "most from dense)")
    print("\n".join(step_profile.compare(profiles, "dense")))
    print(f"{'cores busy':<28}" + "".join(f"{b:>16.2f}" for b in busy.values()))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--experts", type=int, default=8)
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--expert_d_ff", type=int, default=256)
  parser.add_argument("--capacity_factor", type=float, default=1.25)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--steps_per_round", type=int, default=2)
  parser.add_argument("--dispatchers", nargs="+", default=["sort", "dropless", "einsum"])
  parser.add_argument("--mesh", default="", help="e.g. data=2,expert=4 (also run sharded)")
  parser.add_argument("--profile", action="store_true",
                      help="then trace each model: where its step's time goes")
  parser.add_argument("--out", default=str(RESULTS / "train_step.json"))
  args = parser.parse_args(argv)

  meshes = {"1 device": None}
  if args.mesh:
    sizes = dict((k, int(v)) for k, v in (item.split("=") for item in args.mesh.split(",")))
    meshes[args.mesh] = make_mesh(**sizes)
  print(f"{jax.default_backend()}, jax {jax.__version__}; d_model {args.d_model}, "
        f"{args.layers} layers, E={args.experts} k={args.k} F={args.expert_d_ff}, "
        f"{args.batch}x{args.seq_len} tokens/step; every model compiled, then {args.rounds} "
        f"round-robin rounds of {args.steps_per_round} steps each", flush=True)
  runners = {(mesh_name, name): _Runner(config, mesh, args)
             for mesh_name, mesh in meshes.items() for name, config in _configs(args).items()}
  step_s = _time_round_robin(runners, args.rounds, args.steps_per_round)
  print(f"{'mesh':<18}{'model':<16}{'params':>13}{'active':>13}{'ms/step':>10}"
        f"{'tokens/s':>11}{'x dense':>9}")
  rows = []
  for (mesh_name, name), runner in runners.items():
    row = {"mesh": mesh_name, "model": name, "step_ms": 1e3 * step_s[mesh_name, name],
           "tokens_per_sec": args.batch * args.seq_len / step_s[mesh_name, name],
           "params": runner.params, "active_params": runner.active_params,
           "compile_and_warmup_s": runner.compile_and_warmup_s}
    row["vs_dense"] = step_s[mesh_name, "dense"] / step_s[mesh_name, name]
    rows.append(row)
    print(f"{mesh_name:<18}{name:<16}{row['params']:>13,}{row['active_params']:>13,}"
          f"{row['step_ms']:>10.1f}{row['tokens_per_sec']:>11,.0f}{row['vs_dense']:>9.2f}")
  if args.profile:
    _profile(runners, rows, args.steps_per_round)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {"backend": jax.default_backend(), "jax": jax.__version__, "args": settings(args),
            "rows": rows}
  out.write_text(json.dumps(result, indent=1))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
