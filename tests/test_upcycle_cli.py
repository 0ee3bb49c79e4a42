"""`python -m moe_jax.upcycle` as a user runs it: a trained dense run becomes an MoE run that
the train CLI continues, the source is never touched, and each refusal is one line that
writes nothing."""
import json

import numpy as np
import pytest

from moe_jax.evaluate import evaluate
from moe_jax.train import train
from tests.train_helpers import (assert_one_line_error, cli_command, losses, run_cli,
                                 small_config, snapshot)

DENSE_STEPS = 12
# A zero router with renormalised top-2 and no capacity: the upcycled model is the dense one.
EXACT = ["--router_init=zeros", "--config.model.router_options.renormalize=True",
         "--config.model.dispatcher=dropless"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dense") / "run"
  cfg = small_config(steps=DENSE_STEPS)
  cfg.model.num_experts = 0
  train(cfg, workdir, progress=False)
  return workdir


def _upcycle_command(workdir, source, *flags):
  return cli_command(workdir, f"--from={source}", *flags, module="moe_jax.upcycle")


def test_upcycled_run_starts_as_the_dense_model_and_trains_on(dense, tmp_path):
  before = snapshot(dense)
  workdir = tmp_path / "moe"
  proc = run_cli(_upcycle_command(workdir, dense, *EXACT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"upcycled step {DENSE_STEPS} of the dense run" in proc.stdout
  assert "optimizer state starts fresh" in proc.stdout
  record = json.loads((workdir / "upcycled_from.json").read_text())
  assert record["source_step"] == DENSE_STEPS and record["step"] == 0
  assert record["data_position_continued"] is True      # the same config.data: reads on
  # Checkpoint 0 is the dense model exactly: the same validation loss.
  got = evaluate(workdir=workdir, plots=False, write=False)
  want = evaluate(workdir=dense, plots=False, write=False)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  # The normal train command continues it, from step 0.
  proc = run_cli(cli_command(workdir, "--config.steps=4", *EXACT[1:]))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(losses(workdir)) == [1, 2, 3, 4]
  assert losses(workdir)[1] < losses(dense)[1] - 0.5    # it starts where the dense run got to
  assert snapshot(dense) == before                     # the source was only read


@pytest.mark.parametrize("flags,message", [
    (["--config.model.expert_d_ff=48"], "config.model.expert_d_ff=48 does not split the dense "
                                        "run's d_ff=64"),
    pytest.param(["--config.model.d_model=64"], "config.model.d_model=64 but the dense run's is 32",
                 marks=pytest.mark.slow),        # `make test-all`; the same check as the first
    (["--drop_ratio=1.5"], "option 'drop_ratio'=1.5"),
])
def test_refusals_are_one_line_and_write_nothing(dense, tmp_path, flags, message):
  before = snapshot(dense)
  workdir = tmp_path / "moe"
  assert_one_line_error(run_cli(_upcycle_command(workdir, dense, *flags)), message)
  assert not workdir.exists()
  assert snapshot(dense) == before


def test_a_source_that_is_not_dense_and_a_used_workdir_are_refused(dense, tmp_path):
  moe = tmp_path / "moe"
  assert run_cli(_upcycle_command(moe, dense)).returncode == 0
  before = snapshot(moe)
  assert_one_line_error(run_cli(_upcycle_command(tmp_path / "again", moe)),
                        r"the source run is not dense \(its config.model.num_experts=4\)")
  assert not (tmp_path / "again").exists()
  assert_one_line_error(run_cli(_upcycle_command(moe, dense)),
                        "already holds a run; upcycle into a new directory")
  assert snapshot(moe) == before
