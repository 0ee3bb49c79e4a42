"""`python -m moe_jax.evaluate` on another mesh than the run was trained on, through the CLI as
a user runs it: the mesh error's suggested flags work as printed, the checkpoint's shardings
follow the new mesh, a model change is refused, nothing in the workdir changes when it fails."""
import json
import re

import pytest

from moe_jax.evaluate import evaluate
from moe_jax.train import train
from tests.train_helpers import (assert_one_line_error, cli_command, eval_command, losses,
                                 run_cli, small_config, snapshot)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run trained in-process on the data=2 x expert=4 mesh of 8 devices, and its own
  evaluation there."""
  workdir = tmp_path_factory.mktemp("eval_cli") / "run"
  train(small_config(steps=4), workdir, progress=False)
  return workdir, evaluate(workdir=workdir, write=False)


def test_a_run_trained_on_8_devices_evaluates_on_1_with_the_flags_the_error_names(trained):
  workdir, on_8 = trained
  before = snapshot(workdir)
  refused = run_cli(eval_command(workdir, cpu_devices=1))
  line = assert_one_line_error(refused, r"needs 8 devices, but there are 1; .* or "
                                        r"(--config\.mesh\.\S+ ?)+ uses the 1 there are")
  assert snapshot(workdir) == before
  flags = re.findall(r"--config\.mesh\.\S+", line)
  proc = run_cli(eval_command(workdir, *flags, cpu_devices=1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bits per byte" in proc.stdout
  on_1 = json.loads((workdir / "eval.json").read_text())
  assert on_1["step"] == on_8["step"] == 4
  assert on_1["loss"] == pytest.approx(on_8["loss"], rel=1e-5)
  assert json.loads((workdir / "config.json").read_text())["mesh"] == \
      json.loads(before["config.json"])["mesh"]        # the run's own config is untouched


def test_an_override_that_changes_the_model_is_refused_and_writes_nothing(trained):
  workdir, _ = trained
  before = snapshot(workdir)
  assert_one_line_error(run_cli(eval_command(workdir, "--config.model.d_model=64")),
                        r"different model \(d_model: saved 32, now 64\)")
  assert snapshot(workdir) == before


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_the_mesh_errors_flags_also_train(tmp_path):
  """The same error from `train` (2 devices for lm_tiny's 8-device mesh): its flags, added
  as printed, train the run."""
  workdir = tmp_path / "run"
  line = assert_one_line_error(run_cli(cli_command(workdir, "--config.steps=2", cpu_devices=2)),
                               r"needs 8 devices, but there are 2; .* uses the 2 there are")
  assert not workdir.exists()
  flags = re.findall(r"--config\.mesh\.\S+", line)
  proc = run_cli(cli_command(workdir, "--config.steps=2", *flags, cpu_devices=2))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(losses(workdir)) == [1, 2]
