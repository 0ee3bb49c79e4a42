"""Task `distill`: a dense student trained towards a frozen MoE teacher."""
import numpy as np
import pytest

from moe_jax.evaluate import evaluate
from moe_jax.run_log import read_metrics
from moe_jax.train import train
from tests.train_helpers import (assert_one_line_error, cli_command, losses, run_cli,
                                 small_config)



@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A small MoE LM (4 experts), trained for a few steps."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  train(small_config(steps=12), workdir, progress=False)
  return workdir


def _student(teacher, steps, **distill):
  cfg = small_config(steps=steps)
  cfg.model.num_experts = 0
  cfg.task = "distill"
  cfg.distill = dict(teacher_workdir=str(teacher), **distill)
  return cfg


def test_alpha_zero_is_plain_training_bit_for_bit(teacher, tmp_path):
  plain = small_config(steps=6)
  plain.model.num_experts = 0
  train(plain, tmp_path / "plain", progress=False)
  train(_student(teacher, 6, alpha=0.0), tmp_path / "student", progress=False)
  assert losses(tmp_path / "student") == losses(tmp_path / "plain")


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_the_student_moves_towards_the_teacher(teacher, tmp_path):
  workdir = tmp_path / "student"
  train(_student(teacher, 16, alpha=0.8, temperature=2.0), workdir, progress=False)
  kl = [r["kl"] for r in read_metrics(workdir) if "kl" in r]
  assert len(kl) == 16 and np.mean(kl[-4:]) < 0.7 * np.mean(kl[:4]), kl
  result = evaluate(workdir=workdir, plots=False, write=False)
  assert 0 < result["kl_to_teacher"] < 5 and result["bits_per_byte"] > 0
  # The frozen teacher in the student's checkpoint is the teacher run's model, untouched.
  assert result["kl_to_teacher"] < _kl_of_untrained_student(teacher, tmp_path)


def _kl_of_untrained_student(teacher, tmp_path) -> float:
  workdir = tmp_path / "untrained"
  train(_student(teacher, 1, alpha=0.8), workdir, progress=False)
  return evaluate(workdir=workdir, plots=False, write=False)["kl_to_teacher"]


def test_a_teacher_of_another_vocabulary_is_refused(teacher, tmp_path):
  workdir = tmp_path / "student"
  proc = run_cli(cli_command(workdir, "--config.task=distill", "--config.model.num_experts=0",
                             f"--config.distill.teacher_workdir={teacher}",
                             "--config.model.vocab_size=300"))
  assert_one_line_error(proc, r"config.model.vocab_size=300 but the teacher's is 256: teacher "
                              "and student must share the tokenizer and vocabulary")
  assert not workdir.exists()
  proc = run_cli(cli_command(workdir, "--config.task=distill", "--config.model.num_experts=0"))
  assert_one_line_error(proc, "needs config.distill.teacher_workdir")
