"""The accelerator-sized grids (--grid gpu) and what they would cost (--estimate), from the
configs alone: tokens are 20 per dense non-embedding parameter, the FLOPs 3 x forward x tokens,
the GPU-hours those FLOPs at the stated peak and utilisation; nothing is trained or written."""
import contextlib
import io
import math
import sys

import pytest

from experiments import bases, estimate, run as run_cli
from tests.train_helpers import REPO, assert_one_line_error, run_cli as run_command


def test_the_routed_scaling_gpu_grid_costs_what_its_configs_say():
  args = run_cli.parse(["experiments/routed_scaling.py", "--grid", "gpu", "--estimate",
                        "--only", "d256-*"])
  with contextlib.redirect_stdout(io.StringIO()) as said:
    run_cli.run(args)
  assert "routed_scaling-gpu: 8 runs" in said.getvalue() and "GPU-hours" in said.getvalue()
  assert not (REPO / "experiments" / "results" / "routed_scaling-gpu").exists()
  rows = estimate.estimate(run_cli.sweep_for(args))
  assert len(rows) == 32 and {r["seed"] for r in rows} == {0, 1}
  for r in rows:
    d = int(r["point"].split("-")[0][1:])
    layers = dict(routed_scaling_gpu_sizes())[d]
    n_dense = bases.dense_non_embedding(d, layers)
    steps = math.ceil(20 * n_dense / bases.GPU_TOKENS_PER_STEP)
    assert r["tokens"] == steps * 256 * 256 >= 20 * n_dense
    assert r["train_flops"] == 3 * r["flops_per_token"] * r["tokens"]
    assert r["gpu_hours"] == pytest.approx(r["train_flops"] / (989e12 * 0.35) / 3600)
    if r["point"].endswith("-E1"):     # the dense model: N as the token budget counts it
      assert r["active_params"] == r["total_params"]
      assert r["non_embedding_params"] == pytest.approx(n_dense, rel=1e-3)


def routed_scaling_gpu_sizes():
  from experiments import sweep
  module = sweep.load(REPO / "experiments" / "routed_scaling.py", False)[1]
  return module.GPU_SIZES


def test_a_sweep_without_a_gpu_grid_says_which_have_one(tmp_path):
  proc = run_command([sys.executable, "-m", "experiments.run", "experiments/balancing.py",
                      "--grid", "gpu", f"--out={tmp_path / 'out'}"])
  assert_one_line_error(proc, r"experiments/balancing.py has no GPU-sized grid \(--grid gpu\); "
                              r"the sweeps that have one: experiments/granularity.py, "
                              r"experiments/routed_scaling.py$")
  assert not (tmp_path / "out").exists()
