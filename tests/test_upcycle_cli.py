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


def test_upcycled_run_starts_as_the_dense_model_trains_on_and_refuses_reuse(dense, tmp_path):
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
  # Refused, in one line, writing nothing: an MoE run as the source, and a used workdir.
  moe = snapshot(workdir)
  assert_one_line_error(run_cli(_upcycle_command(tmp_path / "again", workdir)),
                        r"the source run is not dense \(its config.model.num_experts=4\)")
  assert not (tmp_path / "again").exists()
  assert_one_line_error(run_cli(_upcycle_command(workdir, dense)),
                        "already holds a run; upcycle into a new directory")
  assert snapshot(workdir) == moe


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


def _upcycled_state(workdir):
  """(pure dict of checkpoint `step`'s (model, optimizer) state, step) of the run in workdir."""
  import dataclasses

  import jax
  from flax import nnx

  from moe_jax import config as config_lib, run_setup
  from moe_jax.parallel.mesh import make_mesh
  run = config_lib.validate(run_setup.run_config(workdir), num_devices=jax.device_count())
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  _, state, step = run_setup.restore_for_eval(run, workdir, mesh, None)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state)), step


def test_keep_step_continues_the_learning_rate_and_carry_moments_copies_adams(dense, tmp_path):
  """Issue 27 §1: the upcycled run's learning rate at its first steps is the schedule's value
  at those steps (not a re-warm from 0), and --carry_moments gives every expert the dense
  FFN's Adam moments (the router's are zero)."""
  from moe_jax import config as config_lib
  from moe_jax.train_step import learning_rate_schedule
  from tests.train_helpers import small_config
  steps = DENSE_STEPS + 3
  workdir = tmp_path / "moe"
  proc = run_cli(_upcycle_command(workdir, dense, "--keep_step", "--carry_moments",
                                  f"--config.steps={steps}"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"the learning rate continues the schedule from step {DENSE_STEPS}" in proc.stdout
  record = json.loads((workdir / "upcycled_from.json").read_text())
  assert record["step"] == DENSE_STEPS and record["options"]["carry_moments"] is True
  assert record["optimizer_state"] == "Adam moments carried from the dense run"

  moe, step = _upcycled_state(workdir)
  src, _ = _upcycled_state(dense)
  assert step == DENSE_STEPS
  opt, dense_opt = moe[1], src[1]
  assert int(opt["step"]) == DENSE_STEPS
  adam, dense_adam = opt["opt_state"][1][0], dense_opt["opt_state"][1][0]
  schedule_count = opt["opt_state"][1][2]["count"]
  assert int(schedule_count) == int(dense_opt["opt_state"][1][2]["count"]) == DENSE_STEPS
  assert int(adam["count"]) == int(dense_adam["count"]) == DENSE_STEPS
  for moment in ("mu", "nu"):
    blocks, dense_blocks = adam[moment]["transformer"]["blocks"], \
        dense_adam[moment]["transformer"]["blocks"]
    experts, ffn = blocks[1]["ffn"]["expert_params"], dense_blocks[1]["ffn"]
    assert np.abs(ffn["w_in"]["kernel"]).max() > 0          # a trained run's, not zeros
    for e in range(experts["w_in"].shape[0]):
      np.testing.assert_array_equal(experts["w_in"][e], ffn["w_in"]["kernel"])
      np.testing.assert_array_equal(experts["w_out"][e], ffn["w_out"]["kernel"])
    assert not np.any(blocks[1]["ffn"]["router_params"]["w"])          # the router: zeros
    np.testing.assert_array_equal(blocks[0]["ffn"]["w_in"]["kernel"],  # a layer kept dense
                                  dense_blocks[0]["ffn"]["w_in"]["kernel"])
    np.testing.assert_array_equal(adam[moment]["transformer"]["embed"],
                                  dense_adam[moment]["transformer"]["embed"])

  # The train command continues it: the lr column of its first steps is the schedule's.
  proc = run_cli(cli_command(workdir, f"--config.steps={steps}"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  from moe_jax.run_log import read_metrics
  lr = {r["step"]: r["lr"] for r in read_metrics(workdir) if "lr" in r}
  assert sorted(lr) == list(range(DENSE_STEPS + 1, steps + 1))
  schedule = learning_rate_schedule(
      config_lib.validate(small_config(steps=steps), num_devices=8).optim)
  for s, value in lr.items():      # step s is trained with the schedule's value at count s-1
    np.testing.assert_allclose(value, float(schedule(s - 1)), rtol=1e-6)
  # A re-warm would rise from 0 (0, lr/2, lr with 2 warmup steps); this is the cosine's tail.
  assert 0 < lr[DENSE_STEPS + 3] < lr[DENSE_STEPS + 2] < lr[DENSE_STEPS + 1]


@pytest.mark.slow   # make test's budget: test-all (the keep_step test reads the schedule)
def test_without_keep_step_the_schedule_restarts_and_says_so(dense, tmp_path):
  workdir = tmp_path / "moe"
  proc = run_cli(_upcycle_command(workdir, dense))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "the learning rate restarts at step 0" in proc.stdout
  record = json.loads((workdir / "upcycled_from.json").read_text())
  assert record["learning_rate"].startswith("restarts at step 0")
  assert record["optimizer_state"] == "fresh"
  moe, step = _upcycled_state(workdir)
  assert step == 0 and int(moe[1]["step"]) == 0
  assert int(moe[1]["opt_state"][1][2]["count"]) == 0
  assert not np.any(moe[1]["opt_state"][1][0]["mu"]["transformer"]["embed"])


def test_keep_step_needs_steps_past_the_dense_run(dense, tmp_path):
  workdir = tmp_path / "moe"
  assert_one_line_error(run_cli(_upcycle_command(workdir, dense, "--keep_step",
                                                 f"--config.steps={DENSE_STEPS}")),
                        rf"config.steps=12 is not past the dense run's step {DENSE_STEPS}")
  assert not workdir.exists()


def _kill_when(proc, path, timeout=240.0):
  import signal
  import time
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  return proc.returncode


def test_a_killed_upcycle_is_refused_by_train_and_finished_by_its_rerun(dense, tmp_path):
  """Issue 28 item 3: kill -9 once checkpoints/ appears; `train` there refuses in one line
  naming the upcycle command (it used to train an MoE from random init), and the same upcycle
  command, rerun, completes."""
  import subprocess

  from tests.train_helpers import REPO, subprocess_env
  workdir = tmp_path / "moe"
  command = _upcycle_command(workdir, dense, *EXACT)
  proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  assert _kill_when(proc, workdir / "checkpoints") == -9
  assert (workdir / "seeding.json").exists()
  assert not (workdir / "config.json").exists()
  (workdir / "run.lock").unlink()       # the killed process's: the next run removes it
  before = snapshot(workdir)
  error = assert_one_line_error(run_cli(cli_command(workdir, "--config.steps=2")),
                                r"holds an unfinished upcycle \(interrupted before its first "
                                r"checkpoint was complete.*rerun it to finish: python -m "
                                r"moe_jax.upcycle ")
  assert f"--from={dense}" in error
  assert snapshot(workdir) == before                   # refused: nothing changed
  proc = run_cli(command)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (workdir / "seeding.json").exists()
  assert (workdir / "checkpoints" / "0").is_dir()
  assert json.loads((workdir / "upcycled_from.json").read_text())["source_step"] == DENSE_STEPS
  assert json.loads((workdir / "config.json").read_text())["model"]["num_experts"] == 4


@pytest.mark.slow   # make test's budget: test-all
def test_workdirs_left_without_a_marker_are_refused_by_train_and_reused_by_upcycle(dense,
                                                                                   tmp_path):
  """A cut-short seed from before seeding.json existed (only a temporary checkpoint, no run
  record) is refused by train; an empty checkpoints/ (a refused train's, before the fix) is
  upcycled into; a refused train on a new workdir now leaves nothing; a workdir with anything
  else in it is still refused."""
  legacy = tmp_path / "legacy"
  (legacy / "checkpoints" / "0.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)
  before = snapshot(legacy)
  assert_one_line_error(run_cli(cli_command(legacy, "--config.steps=2", cpu_devices=1)),
                        "holds only an incomplete first checkpoint .* no run record: the "
                        "upcycle or hf import that wrote it was interrupted")
  assert snapshot(legacy) == before and (legacy / "checkpoints").is_dir()

  fresh = tmp_path / "fresh"
  assert_one_line_error(run_cli(cli_command(fresh, "--config.restore_step=4", cpu_devices=1)),
                        "config.restore_step=4: no such checkpoint")
  assert not fresh.exists()

  (legacy / "checkpoints" / "0.orbax-checkpoint-tmp-1700000000").rmdir()   # empty checkpoints/
  proc = run_cli(_upcycle_command(legacy, dense))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (legacy / "checkpoints" / "0").is_dir() and not (legacy / "seeding.json").exists()

  used = tmp_path / "used"
  (used / "checkpoints").mkdir(parents=True)
  (used / "notes.txt").write_text("mine")
  assert_one_line_error(run_cli(_upcycle_command(used, dense)),
                        "already holds a run; upcycle into a new directory .it holds notes.txt")
  assert (used / "notes.txt").read_text() == "mine"
