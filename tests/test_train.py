"""The training loop: logs, checkpoints, exact resume, clear errors, evaluation outputs."""
import json
import shutil

import numpy as np
import pytest

from moe_jax.checkpoint import CheckpointError
from moe_jax.evaluate import evaluate
from moe_jax.run_log import read_metrics
from moe_jax.train import train
from tests.train_helpers import losses, small_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 12-step run: checkpoints at 4, 8, 12; every step logged."""
  workdir = tmp_path_factory.mktemp("run") / "base"
  result = train(small_config(), workdir, progress=False)
  return workdir, result


def _copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def test_run_writes_config_metrics_tensorboard_and_checkpoints(trained):
  workdir, result = trained
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8, 12]
  records = read_metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
  last = records[-2]
  for key in ("loss", "ce", "aux/load_balancing", "aux/z_loss", "lr", "grad_norm",
              "tokens_per_sec", "layer1/expert_load", "layer1/max_vio",
              "layer1/dropped_fraction"):
    assert key in last, key
  assert len(last["layer1/expert_load"]) == 4
  assert "eval/bits_per_byte" in records[-1]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["steps"] == 12 and saved["model"]["d_model"] == 32
  assert result["eval"]["bits_per_byte"] == pytest.approx(records[-1]["eval/bits_per_byte"])


def test_resume_recomputes_exactly_the_lost_steps(trained, tmp_path):
  """Lose checkpoints 8 and 12 (as if killed after step 4's save): the rerun resumes from 4
  and logs the same losses bit for bit; metrics.jsonl reads as one run."""
  workdir = _copy(trained, tmp_path)
  for step in (8, 12):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  train(small_config(), workdir, progress=False)
  assert losses(workdir) == losses(trained[0])
  assert (workdir / "metrics.abandoned.jsonl").exists()


def test_corrupt_checkpoint_names_it_and_the_fallback(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  latest = workdir / "checkpoints" / "12"
  for f in (latest / "state").rglob("d/*"):    # the array data files: overwrite with junk
    f.write_bytes(b"not a tensorstore chunk")
  with pytest.raises(CheckpointError, match=r"checkpoints/12 is corrupt.*"
                                            r"--config\.restore_step=8"):
    train(small_config(), workdir, progress=False)
  assert latest.exists()                      # nothing deleted
  # Falling back to step 8 moves step 12 aside (kept) and recomputes 9..12 exactly.
  train(small_config(restore_step=8), workdir, progress=False)
  assert losses(workdir) == losses(trained[0])
  assert list((workdir / "abandoned_checkpoints").glob("*/12"))


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  cfg = small_config(steps=16)
  cfg.model.d_model = 64
  with pytest.raises(CheckpointError, match=r"different model \(d_model: saved 32, now 64\)"):
    train(cfg, workdir, progress=False)


def _forget_newer_model_fields(workdir):
  """Rewrites every checkpoint's meta as a moe_jax from before these fields existed wrote it."""
  for path in (workdir / "checkpoints").glob("*/meta/metadata"):
    meta = json.loads(path.read_text())
    for key in ("head_dim", "qk_norm", "norm_eps"):
      del meta["model"][key]
    for key in ("expert_bias", "balance_scope"):
      del meta["model"]["moe"][key]
    path.write_text(json.dumps(meta))


def test_a_checkpoint_from_before_newer_model_fields_resumes_at_their_defaults(trained,
                                                                              tmp_path):
  workdir = _copy(trained, tmp_path)
  _forget_newer_model_fields(workdir)
  train(small_config(steps=13), workdir, progress=False)
  assert sorted(losses(workdir)) == list(range(1, 14))
  cfg = small_config(steps=16)           # but a non-default value of such a field is refused
  cfg.model.qk_norm = "head"
  refused = r"different model \(qk_norm: saved 'none', now 'head'\)"
  with pytest.raises(CheckpointError, match=refused):
    train(cfg, workdir, progress=False)


def test_restore_step_that_does_not_exist(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  with pytest.raises(ValueError, match=r"restore_step=5: no such checkpoint.*\[4, 8, 12\]"):
    train(small_config(restore_step=5), workdir, progress=False)


def test_evaluate_writes_report_and_plots(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  result = evaluate(None, workdir)
  saved = json.loads((workdir / "eval.json").read_text())
  assert saved["step"] == 12 and saved["bits_per_byte"] == pytest.approx(
      result["bits_per_byte"])
  assert result["bits_per_byte"] == pytest.approx(
      trained[1]["eval"]["bits_per_byte"], rel=1e-5)     # same checkpoint, same number
  assert set(saved["layers"]) == {"1"} and len(saved["layers"]["1"]["expert_load"]) == 4
  assert saved["perplexity"] == pytest.approx(np.exp(saved["loss"]))
  assert isinstance(saved["sample"], str) and saved["sample_greedy"]
  for png in ("expert_load.png", "loss_curve.png"):
    assert (workdir / png).stat().st_size > 1000
  # An older step on request.
  assert evaluate(None, workdir, step=8, plots=False)["step"] == 8


def test_logged_lines_carry_the_mean_loss_of_their_interval(trained, tmp_path):
  """One batch's loss is noisy (+-0.2 nats): each logged line also has the mean over the
  steps since the previous one, equal to the mean of the per-step losses of the same run."""
  per_step = {r["step"]: r for r in read_metrics(trained[0]) if "loss" in r}
  assert per_step[5]["loss_mean"] == pytest.approx(per_step[5]["loss"])   # log_every=1
  workdir = tmp_path / "every5"
  cfg = small_config()
  cfg.log_every = 5
  train(cfg, workdir, progress=False)
  logged = {r["step"]: r for r in read_metrics(workdir) if "loss" in r}
  assert sorted(logged) == [5, 10, 12]
  for step, first in ((5, 1), (10, 6), (12, 11)):
    for name in ("loss", "ce"):
      want = np.mean([per_step[s][name] for s in range(first, step + 1)])
      assert logged[step][f"{name}_mean"] == pytest.approx(want, rel=1e-5), (step, name)
  # Resumed inside an interval (checkpoint 4 of 1..5), the means are those of the run never
  # interrupted: the open interval's sums are saved with each checkpoint.
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  for step in (8, 12):
    shutil.rmtree(resumed / "checkpoints" / str(step))
  train(cfg, resumed, progress=False)
  again = {r["step"]: r for r in read_metrics(resumed) if "loss" in r}
  assert {s: r["loss_mean"] for s, r in again.items()} == \
      {s: r["loss_mean"] for s, r in logged.items()}
