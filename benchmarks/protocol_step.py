"""Where a CPU-protocol training step's time goes (issue 27's "throughput is the budget"): the
sweeps' model (experiments/bases.py `lm_protocol`), its training loop against the jitted step
alone and the data alone, the step's ops by kind, and the machine's one-matmul rate measured
in the same run, so the step's FLOP rate reads as a fraction of what the CPU can do.

    .venv/bin/python benchmarks/protocol_step.py [--steps 60]     # results/protocol_step.json

Loop: `moe_jax.train`'s per-step work (the next batch, the jitted step, its metrics to the
host, the finite check, the interval sums). Step alone: the same jitted step on batches made
beforehand, one host sync at the end. Data alone: the batches. FLOP rate: 3 x forward FLOPs per
token (experiments/accounting.py) x tokens/s. Run with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                         "protocol_step.json"))
  args = parser.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from benchmarks import step_profile
  from experiments import accounting, bases
  from moe_jax import config as config_lib, run_setup
  from moe_jax.parallel.distributed import host_local_to_global
  from moe_jax.train import _Loop

  run = config_lib.validate(bases.lm_protocol(quick=False), num_devices=jax.device_count())
  workdir = pathlib.Path(tempfile.mkdtemp())
  session = run_setup.open_training(run, workdir, lambda _: None)
  loop = _Loop(session, workdir, lambda _: None, progress=False, enabled=True)
  n = args.steps
  for step in range(1, 11):                       # compile and warm up
    loop.step(step)
  start = time.perf_counter()
  for step in range(11, 11 + n):
    loop.step(step)
  loop_ms = 1e3 * (time.perf_counter() - start) / n
  start = time.perf_counter()
  batches = [host_local_to_global(next(session.iterator), session.mesh) for _ in range(n)]
  data_ms = 1e3 * (time.perf_counter() - start) / n
  key, state = jax.random.PRNGKey(0), loop.state

  def steps(count):
    nonlocal state
    for batch in batches[:count]:
      state, metrics = loop.train_step(state, batch, key)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  steps(n)
  step_ms = 1e3 * (time.perf_counter() - start) / n
  ops = step_profile.op_ms_per_step(steps, min(n, 20))
  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  start = time.perf_counter()
  for _ in range(10):
    out = matmul(a)
  jax.block_until_ready(out)
  matmul_flops = 2 * 2048 ** 3 * 10 / (time.perf_counter() - start)
  flops_per_token = accounting.account(run)["flops_per_token"]
  tokens_per_step = run.tokens_per_step
  result = {
      "loop_ms": loop_ms, "step_alone_ms": step_ms, "data_alone_ms": data_ms,
      "tokens_per_sec_loop": tokens_per_step / loop_ms * 1e3,
      "train_gflops_per_sec": 3 * flops_per_token * tokens_per_step / loop_ms / 1e6,
      "matmul_gflops_per_sec": matmul_flops / 1e9,
      "ops_ms_per_step": {k: round(v, 2) for k, v in list(ops.items())[:12]},
      "settings": {"steps": n, "jax": jax.__version__, "devices": jax.device_count()}}
  result["fraction_of_matmul_rate"] = result["train_gflops_per_sec"] / result[
      "matmul_gflops_per_sec"]
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
