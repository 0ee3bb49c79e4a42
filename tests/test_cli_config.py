"""The training CLI's config handling, as a user meets it: each command below runs in a
subprocess and either fails before anything is built, with one `error:` line and nothing
written, or (the last tests) trains a few steps."""
import json

import pytest

from moe_jax import config as config_lib
from tests.train_helpers import REPO, assert_one_line_error, cli_command, losses, run_cli

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.stem != "common")

BAD_FLAGS = [
    (["--config.model.d_modle=64"],
     r"--config\.model\.d_modle is not a known field; did you mean --config\.model\.d_model\?"),
    (["--config.modle.d_model=64"],
     r"--config\.modle\.d_model is not a known field; did you mean --config\.model\.d_model\?"),
    (["--config.learning_rate=0.1"],
     r"--config\.learning_rate is not a known field; did you mean "
     r"--config\.optim\.learning_rate\?"),
    (["--config.restore_step=abc"],
     r"config\.restore_step takes an integer or None, got 'abc'"),
    (["--config.model.glu=maybe"], r"config\.model\.glu takes true or false, got 'maybe'"),
    (["--config.model"], r"--config\.model: an override is --config\.FIELD=VALUE"),
    (["--config.model.router=dense", "--config.model.router_options.k=2"],
     r"config\.model\.router_options\.k: router 'dense' takes no option 'k'; it takes: "
     r"init_scale"),
    (["--config.model.router=expert_choice"],
     r"router 'expert_choice' is not causal-safe.*"
     r"config\.model\.allow_non_causal_router=True"),
    (["--config.model.shared_gate=True"],
     r"config\.model: shared_gate=True gates the shared expert, but there is none; set "
     r"shared_d_ff"),
    (["--config.model.router_options.batch_prioritized=True"],
     r"router 'topk' is not causal-safe"),
    (["--config.model.drop_renormalize=True", "--config.model.dispatcher=dropless"],
     r"config\.model: drop_renormalize=True renormalises after capacity drops, but dispatcher "
     r"'dropless' drops nothing"),
    (["--config.model.num_experts=6"],
     r"config\.model\.num_experts=6 is not divisible by config\.mesh\.expert=4"),
    # A gate that cannot learn: k=1 with renormalised weights makes every weight s/s = 1.
    (["--config.model.router=bias_balanced", "--config.model.router_options.k=1"],
     r"router 'bias_balanced': k=1 with renormalize=True makes every token's combine weight "
     r"s/s = 1, so the router gets no gradient from the loss; set renormalize=False or k >= 2"),
    # A weight for a loss the router does not produce would weigh nothing, silently.
    (["--config.aux_loss_weights.l1_sparsity=1.0"],
     r"config\.aux_loss_weights\.l1_sparsity: router 'topk' produces no aux loss "
     r"'l1_sparsity'; its losses: load_balancing \(default 0\.01\), z_loss \(default 0\.001\), "
     r"importance \(default 0\)"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_and_writes_nothing(tmp_path, flags, message):
  workdir = tmp_path / "run"
  proc = run_cli(cli_command(workdir, *flags))
  assert_one_line_error(proc, message)
  assert not workdir.exists()


def test_missing_config_file_is_one_line(tmp_path):
  proc = run_cli(cli_command(tmp_path / "run", config=REPO / "configs" / "lm_tiyn.py"))
  assert_one_line_error(proc, r"config file '.*configs/lm_tiyn\.py' does not exist")


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "run").write_text("my notes")
  proc = run_cli(cli_command(tmp_path / "run"))
  assert_one_line_error(proc, r"--workdir .*/run is a file, not a directory")
  assert (tmp_path / "run").read_text() == "my notes"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_field_of_every_config_can_be_overridden(path):
  """Fields the file does not set included (restore_step is None in every config; dtype,
  data_dir, async_save, allow_non_causal_router are set by some files only)."""
  overrides = ["restore_step=20", "model.dtype=bfloat16", "data.data_dir=/data/tfds",
               "checkpoint.async_save=True", "model.allow_non_causal_router=True",
               "model.exchange=padded", "optim.b2=0.99", "model.router_options.k=1"]
  devices = 256 if path.stem == "lm_tpu_pod" else 8
  run = config_lib.validate(config_lib.load_file(path), num_devices=devices,
                            overrides=[f"--config.{o}" for o in overrides])
  assert run.restore_step == 20 and run.checkpoint.async_save and run.optim.b2 == 0.99
  assert run.data.data_dir == "/data/tfds" and run.model.allow_non_causal_router
  assert run.record["model"]["dtype"] == "bfloat16"


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_warmup_longer_than_the_run_is_clipped_with_a_note(tmp_path):
  """lm_tiny warms up for 50 steps; `--config.steps=4` alone trains."""
  proc = run_cli(cli_command(tmp_path / "run", "--config.steps=4",
                             "--config.optim.warmup_steps=50", cpu_devices=1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("note: config.optim.warmup_steps=50 does not fit in config.steps=4: warming up "
          "over the first 3 steps instead") in proc.stdout
  assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4]


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_readme_deepseek_command_weights_its_sequence_loss(tmp_path):
  """docs/routers.md's flag: the deepseek router with its sequence-wise balance loss weighted."""
  from moe_jax.run_log import read_metrics
  workdir = tmp_path / "run"
  proc = run_cli(cli_command(workdir, "--config.steps=2", "--config.model.router=deepseek",
                             "--config.aux_loss_weights.sequence_balance=1e-4", cpu_devices=1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [r for r in read_metrics(workdir) if "aux/sequence_balance" in r]
  assert len(rows) == 2 and all(r["aux/sequence_balance"] > 0 for r in rows)
  record = json.loads((workdir / "config.json").read_text())
  assert record["aux_loss_weights"]["sequence_balance"] == 1e-4
  assert record["model"]["router"] == "deepseek"


def test_relu_trains_with_its_own_l1_weight_unless_the_config_sets_one(tmp_path):
  """ReMoE's L1 penalty is weighted by the router's declared default (1), recorded in
  config.json, and enters the training loss; a config weight overrides it."""
  from moe_jax.run_log import read_metrics
  relu = ["--config.steps=2", "--config.model.router=relu", "--config.model.router_options={}"]
  proc = run_cli(cli_command(tmp_path / "run", *relu, cpu_devices=1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "run" / "config.json").read_text())
  assert record["aux_loss_weights"] == {"l1_sparsity": 1.0}
  rows = [r for r in read_metrics(tmp_path / "run") if "aux/l1_sparsity" in r]
  assert rows and all(r["loss"] == pytest.approx(r["ce"] + r["aux/l1_sparsity"], rel=1e-5)
                      for r in rows)
  run = config_lib.validate(config_lib.load_file(REPO / "configs" / "lm_tiny.py"),
                            num_devices=8, overrides=[*relu, "aux_loss_weights.l1_sparsity=0.5"])
  assert run.aux_loss_weights == {"l1_sparsity": 0.5}
  topk = config_lib.validate(config_lib.load_file(REPO / "configs" / "lm_tiny.py"),
                             num_devices=8)
  assert topk.aux_loss_weights == {"load_balancing": 0.01, "z_loss": 0.001, "importance": 0.0}
