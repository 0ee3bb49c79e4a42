"""The training CLI never loses a run: each failure below is hit as a user hits it, through
`python -m moe_jax.train` in a subprocess, and checked for its one-line message and for what it
left in the workdir (nothing lost, nothing overwritten, and the run resumes exactly)."""
import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from moe_jax import routing
from moe_jax.evaluate import evaluate
from moe_jax.train import train
from tests.train_helpers import (REPO, assert_one_line_error, cli_command, losses, run_cli,
                                 small_config, snapshot, subprocess_env)

# Subprocess tests share the 2 cores with the rest of the suite; keep them on one xdist worker
# so the timing-sensitive ones (signals, locks) are not starved.
pytestmark = pytest.mark.xdist_group("subprocess_training")
STEPS = 16


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run the interrupted ones must reproduce, trained in-process."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  train(small_config(steps=STEPS), workdir, progress=False)
  return workdir


def _start(cmd, log_path):
  log = open(log_path, "w")
  return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=log, stderr=log,
                          text=True)


def _wait_until(condition, proc, log_path, timeout=240):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, log_path.read_text()[-3000:]
    assert time.monotonic() < deadline, "timed out; log:\n" + log_path.read_text()[-3000:]
    time.sleep(0.05)


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_every_registered_router_trains_from_the_cli(tmp_path):
  """One override selects any router: options of the config file's top-k router that the
  chosen one does not take (k) are dropped with a note, not an error."""
  procs = {}
  for name in routing.names():
    flags = [f"--config.model.router={name}", "--config.steps=2",
             "--config.data.eval_max_batches=1"]
    router = routing.get(name, num_experts=4)
    if not router.causal_safe:      # the ablation flag the causal-safety error names
      flags.append("--config.model.allow_non_causal_router=True")
    if name == "soft":              # mixes every token into slots: only einsum runs it
      flags.append("--config.model.dispatcher=einsum")
    procs[name] = (_start(cli_command(tmp_path / name, *flags, cpu_devices=1),
                          tmp_path / f"{name}.log"),
                   "k" not in routing.options(name))
  for name, (proc, drops_k) in procs.items():
    assert proc.wait(timeout=300) == 0, (name, (tmp_path / f"{name}.log").read_text()[-3000:])
    assert sorted(losses(tmp_path / name)) == [1, 2], name
    log = (tmp_path / f"{name}.log").read_text()
    assert ("takes no option(s) k" in log) == drops_k, (name, log[-2000:])
    saved = json.loads((tmp_path / name / "config.json").read_text())
    assert saved["model"]["router"] == name
    assert ("k" in saved["model"]["router_options"]) != drops_k


def _restore_all_finite(workdir, step) -> bool:
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = [np.asarray(x) for x in jax.tree.leaves(restored["state"])]
  return all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.inexact))


def test_diverged_run_saves_no_nonfinite_state(tmp_path):
  """The issue's repro: at learning rate 1e6 the gradients go NaN while the step's loss is
  still finite. Nothing of that step is saved; the message names the step and the newest
  checkpoint, which holds only finite numbers."""
  workdir = tmp_path / "run"
  cmd = cli_command(workdir, "--config.steps=30", "--config.optim.warmup_steps=5",
                    "--config.checkpoint.every=2", "--config.optim.learning_rate=1e6",
                    cpu_devices=1)
  line = assert_one_line_error(
      run_cli(cmd), r"training diverged at step (\d+): the (loss|gradients|updated "
      r"parameters) went non-finite .* The newest checkpoint, step (\d+) in .*checkpoints, is "
      r"from before that and finite: lower config\.optim\.learning_rate \(now 1e\+06\)")
  failed, newest = map(int, re.search(r"at step (\d+).*step (\d+) in", line).groups())
  assert newest < failed and _checkpoint_steps(workdir)[-1] == newest
  assert all(_restore_all_finite(workdir, s) for s in _checkpoint_steps(workdir))
  assert max(losses(workdir)) < failed           # the diverged step is not logged either

  # With no checkpoint yet the message says so.
  fresh = tmp_path / "fresh"
  cmd = cli_command(fresh, "--config.steps=30", "--config.optim.warmup_steps=5",
                    "--config.checkpoint.every=100", "--config.optim.learning_rate=1e6",
                    cpu_devices=1)
  assert_one_line_error(run_cli(cmd), r"No checkpoint was saved yet: lower "
                                      r"config\.optim\.learning_rate .* rerun to start over")
  assert not list((fresh / "checkpoints").glob("[0-9]*"))


@pytest.mark.slow   # make test's budget: test-all (the divergence test above runs in make test)
def test_divergence_says_when_the_newest_finite_checkpoint_is_already_dead(reference,
                                                                            tmp_path):
  """Issue 28, 11: after a NaN, the finite checkpoint the message pointed to could already be
  dead. Here the log says so of two (checkpoint 16: cross-entropy ln V; 12: gradient norm 0):
  the message says why 16 is dead and points to 8, the newest one that is not."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  for r in records:
    if r["step"] == STEPS and "ce" in r:
      r["ce"] = math.log(256)
    if r["step"] == STEPS - 4:
      r["grad_norm"] = 0.0
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  cmd = cli_command(workdir, f"--config.steps={STEPS + 8}", "--config.optim.learning_rate=1e6",
                    "--config.checkpoint.every=100")
  assert_one_line_error(
      run_cli(cmd), rf"training diverged at step \d+: .* The newest checkpoint, step {STEPS} "
      r"in .*checkpoints, is finite but was already dead \(cross-entropy 5\.5452 = ln 256 at "
      rf"its last logged step, {STEPS}: it predicts the uniform distribution\), so "
      r"resuming from it will not train: lower config\.optim\.learning_rate \(now 1e\+06\) or "
      r"raise config\.optim\.warmup_steps, then rerun to fall back to step 8 with "
      r"--config\.restore_step=8$")


@pytest.mark.slow   # make test's budget: test-all
def test_a_torn_last_metrics_line_is_dropped_and_a_corrupt_one_named(reference, tmp_path):
  """Issue 28, 10: one torn line in metrics.jsonl blocked every rerun and `evaluate` with
  `error: Unterminated string starting at ...`, naming no file. A torn last line (the run
  died writing it) is left out by readers and moved to metrics.abandoned.jsonl on resume, said
  once; a corrupt line elsewhere is refused in one line naming the file and the line."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  metrics = workdir / "metrics.jsonl"
  torn = '{"step": 17, "aux/importance": 0.2, "aux/load_bal'
  with open(metrics, "a") as f:
    f.write(torn)
  assert evaluate(None, workdir)["step"] == STEPS      # its loss curve plot skips it
  proc = run_cli(cli_command(workdir, f"--config.steps={STEPS + 4}"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (proc.stdout + proc.stderr).count("was cut short") == 1, proc.stderr[-3000:]
  assert (workdir / "metrics.abandoned.jsonl").read_text().splitlines()[-1] == torn
  assert sorted(losses(workdir)) == list(range(1, STEPS + 5))
  assert {s: l for s, l in losses(workdir).items() if s <= STEPS} == losses(reference)

  lines = metrics.read_text().splitlines(keepends=True)
  lines[2] = lines[2][:lines[2].index('"', 12) + 4] + "\n"     # inside line 3's second key
  metrics.write_text("".join(lines))
  before = snapshot(workdir)
  assert_one_line_error(run_cli(cli_command(workdir, f"--config.steps={STEPS + 8}")),
                        rf"^error: {metrics}, line 3, is corrupt \(Unterminated string "
                        r"starting at: column \d+\); remove or repair that "
                        r"line, then rerun$")
  assert snapshot(workdir) == before


@pytest.mark.slow   # make test's budget: test-all
def test_corrupt_checkpoint_error_prints_a_command_that_resumes(reference, tmp_path):
  """The command in the message (the user's own, plus --config.restore_step=N) runs as
  printed and reproduces the uninterrupted run; no TensorStore spec in the message."""
  workdir = tmp_path / "run"
  cmd = cli_command(workdir, f"--config.steps={STEPS}")
  assert run_cli(cmd).returncode == 0
  for f in (workdir / "checkpoints" / str(STEPS) / "state").rglob("d/*"):
    f.write_bytes(b"not a tensorstore chunk")
  before = snapshot(workdir)
  line = assert_one_line_error(
      run_cli(cmd), rf"checkpoints/{STEPS} is corrupt or incomplete \(.*\); resume from an "
                    r"older one .* with --config\.restore_step=12: python -m moe_jax\.train ")
  message = line.split(": python ", 1)[0]
  assert "tensorstore_spec" not in message and "{" not in message and len(message) < 500
  assert snapshot(workdir) == before                 # the refused run changed nothing
  printed = shlex.split(line.split(": python ", 1)[1])
  proc = subprocess.run([subprocess.sys.executable] + printed, cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert losses(workdir) == losses(reference)
  assert list((workdir / "abandoned_checkpoints").glob(f"*/{STEPS}"))
  # Rerunning the same fallback command later resumes the newer checkpoints it wrote, rather
  # than falling back to step 12 again.
  again = subprocess.run([subprocess.sys.executable] + printed + [f"--config.steps={STEPS + 4}"],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resuming from its newest checkpoint, step {STEPS}" in again.stdout
  assert sorted(losses(workdir)) == list(range(1, STEPS + 5))


@pytest.mark.slow   # make test's budget: test-all
def test_refused_or_finished_reruns_leave_the_run_record_alone(reference, tmp_path):
  workdir = tmp_path / "run"
  cmd = cli_command(workdir, f"--config.steps={STEPS}")
  assert run_cli(cmd).returncode == 0
  before = snapshot(workdir)
  # Another model on the same workdir: refused naming each changed field (nested ones by
  # their path, not the whole ~1,000-character moe dict), nothing changes.
  line = assert_one_line_error(
      run_cli(cmd + ["--config.model.d_model=64", "--config.model.num_experts=8"]),
      r"different model \(d_model: saved 32, now 64; moe\.num_experts: saved 4, now 8\); use "
      r"the config it was trained with, or another --workdir$")
  assert len(line) < 300, line
  # Another dataset on the same run: refused as a data change, before anything is built.
  assert_one_line_error(run_cli(cmd + ["--config.data.corpus=tiny_shakespeare",
                                       f"--config.data.data_dir={tmp_path / 'tfds'}"]),
                        r"config\.data\.corpus='tiny_shakespeare' but it was 'pydoc_topics'")
  # The finished run rerun with other flags: exits 0, trains nothing, records nothing.
  proc = run_cli(cmd + ["--config.optim.learning_rate=1e-4", "--config.eval_every=4"])
  assert proc.returncode == 0 and "already holds the finished run" in proc.stdout
  assert snapshot(workdir) == before
  # A resume with changed non-model fields is recorded, the original kept.
  longer = run_cli(cmd + [f"--config.steps={STEPS + 4}", "--config.optim.weight_decay=0.0"])
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert (workdir / "config.json").read_bytes() == before["config.json"]
  history = [json.loads(line) for line in (workdir / "config_history.jsonl").open()]
  assert history[-1]["start_step"] == STEPS
  assert history[-1]["changes"] == {"optim.weight_decay": [0.1, 0.0],
                                    "steps": [STEPS, STEPS + 4]}
  assert losses(workdir)[STEPS] == losses(reference)[STEPS]


def test_second_run_on_a_busy_workdir_stops_at_once(tmp_path):
  workdir = tmp_path / "run"
  # One device trains fast: enough steps that the first run is still going when the second
  # has started its interpreter and jax.
  cmd = cli_command(workdir, "--config.steps=150", cpu_devices=1)
  first = _start(cmd, tmp_path / "first.log")
  try:
    _wait_until(lambda: len(losses(workdir)) >= 2, first, tmp_path / "first.log")
    second = run_cli(cmd)
    assert_one_line_error(second, rf"--workdir .*run is in use by process {first.pid} on .* "
                                  r"\(running since .*\); wait for that run")
  finally:
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
  assert [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").open())
          if "loss" in r] == list(range(1, 151))   # one run's lines, not two interleaved
  assert not list((workdir / "checkpoints").glob("*tmp*"))


def test_sigterm_and_sigint_save_and_resume_exactly(reference, tmp_path):
  """Preempted with SIGTERM, then Ctrl-C'd: each time the step finishes, is saved, and the
  rerun of the same command continues; the losses are those of the uninterrupted run.
  A lock left by a SIGKILLed run does not block the next one."""
  workdir = tmp_path / "run"
  cmd = cli_command(workdir, f"--config.steps={STEPS}", "--config.checkpoint.every=100")
  stopped = 0
  for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
    proc = _start(cmd, tmp_path / f"{sig.name}.log")
    # A few steps past the previous stop: this run is in its training loop.
    _wait_until(lambda: max(losses(workdir), default=0) >= stopped + 3, proc,
                tmp_path / f"{sig.name}.log")
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    log = (tmp_path / f"{sig.name}.log").read_text()
    stopped = int(re.search(r"interrupted at step (\d+); rerun the same command to resume "
                            rf"\({sig.name}\)", log).group(1))
    assert "Traceback" not in log and _checkpoint_steps(workdir)[-1] == stopped
    assert stopped < STEPS
  killed = _start(cmd, tmp_path / "killed.log")
  _wait_until(lambda: max(losses(workdir), default=0) >= stopped + 2, killed,
              tmp_path / "killed.log")
  killed.send_signal(signal.SIGKILL)
  killed.wait(timeout=60)
  assert (workdir / "run.lock").exists()             # left behind by the killed process
  final = run_cli(cmd)
  assert final.returncode == 0, final.stderr[-3000:]
  assert f"resumed from checkpoint step {stopped}" in final.stdout
  assert losses(workdir) == losses(reference)
  assert not (workdir / "run.lock").exists()


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_second_signal_exits_at_once_without_a_partial_checkpoint(tmp_path):
  """The first SIGTERM lands in a long step (one with a long validation), the
  second while it is still running: the process exits at once, and every checkpoint it lists
  is complete (the rerun restores the newest and finishes)."""
  workdir = tmp_path / "run"
  # Step 8 validates on 300 batches of the big corpus's validation split: several seconds, so
  # the second signal lands inside the step even on a loaded machine.
  cmd = cli_command(workdir, f"--config.steps={STEPS}", "--config.eval_every=8",
                    "--config.data.corpus=stdlib_py", "--config.data.eval_max_batches=300",
                    "--config.data.eval_batch_size=8")
  proc = _start(cmd, tmp_path / "log")
  # Step 7 logged: step 8, which validates for a couple of seconds, is running.
  _wait_until(lambda: max(losses(workdir), default=0) >= 7, proc, tmp_path / "log")
  proc.send_signal(signal.SIGTERM)
  _wait_until(lambda: "finishing this step" in (tmp_path / "log").read_text(), proc,
              tmp_path / "log")
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 143
  log = (tmp_path / "log").read_text()
  assert "SIGTERM again: exiting now" in log and "Traceback" not in log
  proc = run_cli(cmd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(losses(workdir)) == list(range(1, STEPS + 1))


# make test's budget: test-all (make test resumes a run stopped mid-training exactly above)
@pytest.mark.slow
def test_kill_during_the_final_validation_is_redone_by_the_rerun(reference, tmp_path):
  workdir = tmp_path / "run"
  # The whole validation split, 8 windows a batch: the final validation takes a while.
  cmd = cli_command(workdir, f"--config.steps={STEPS}", "--config.data.eval_max_batches=0",
                    "--config.data.eval_batch_size=8")
  proc = _start(cmd, tmp_path / "log")
  _wait_until(lambda: (workdir / "checkpoints" / str(STEPS)).is_dir(), proc, tmp_path / "log")
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  final_eval = lambda: [r for r in map(json.loads, (workdir / "metrics.jsonl").open())
                        if "eval/loss" in r]
  assert not final_eval(), "the validation finished before the kill; make it longer"
  rerun = run_cli(cmd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert [r["step"] for r in final_eval()] == [STEPS]
  assert losses(workdir) == losses(reference)


def test_a_dataset_that_is_not_prepared_is_refused_before_anything_is_built(tmp_path):
  workdir = tmp_path / "fresh"
  assert_one_line_error(run_cli(cli_command(workdir, "--config.data.corpus=tiny_shakespeare",
                                            f"--config.data.data_dir={tmp_path / 'tfds'}",
                                            cpu_devices=1)),
                        r"tfds dataset 'tiny_shakespeare' is not prepared")
  assert not workdir.exists()
