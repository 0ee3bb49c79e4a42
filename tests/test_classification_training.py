"""Classification through the same train CLI: an MoE classifier on the embedded digits, experts
over a data=2 x expert=4 mesh of 8 simulated devices, reaches the logistic baseline's level."""
import json
import shutil

import pytest

from moe_jax import config as config_lib
from moe_jax.evaluate import evaluate
from moe_jax.train import train
from tests.train_helpers import REPO, losses


@pytest.mark.slow   # 400 steps on 8 simulated devices, ~90 s: `make test-all` runs it
def test_digits_moe_classifier_reaches_095(tmp_path):
  cfg = config_lib.load_file(REPO / "configs" / "classify_digits.py")
  result = train(cfg, tmp_path / "run", progress=False)
  assert result["eval"]["accuracy"] >= 0.95, result["eval"]["accuracy"]
  report = evaluate(None, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert saved["accuracy"] == pytest.approx(report["accuracy"])
  assert len(saved["per_class_accuracy"]) == 10 and len(saved["confusion"]) == 10
  assert sum(map(sum, saved["confusion"])) == saved["examples"] == 364
  assert saved["baselines"]["majority"] < 0.11
  load = saved["class_expert_load"]              # [classes, MoE layers, experts]
  assert (len(load), len(load[0]), len(load[0][0])) == (10, 2, 8)
  assert all(abs(sum(layer) - 1.0) < 1e-4 for cls in load for layer in cls)
  for png in ("confusion.png", "class_expert_load.png", "expert_load.png", "loss_curve.png"):
    assert (tmp_path / "run" / png).stat().st_size > 1000, png
  # Resume is exact for classifiers too: lose the newest checkpoint (step 400), rerun, and the
  # last 100 steps log the same losses bit for bit (the example iterator's position is in the
  # checkpoint with the model).
  shutil.copytree(tmp_path / "run", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "400")
  train(cfg, tmp_path / "resumed", progress=False)
  assert losses(tmp_path / "resumed") == losses(tmp_path / "run")


def test_decoder_only_routers_are_allowed_in_classifiers():
  """expert_choice is rejected for an LM but fine for a classifier config."""
  cfg = config_lib.load_file(REPO / "configs" / "classify_digits.py")
  cfg.model.router, cfg.model.router_options = "expert_choice", {}
  run = config_lib.validate(cfg, num_devices=8)
  assert run.task == "classification" and run.model.moe.router == "expert_choice"
  cfg.task = "lm"
  with pytest.raises(ValueError, match="not causal-safe"):
    config_lib.validate(cfg, num_devices=8)
