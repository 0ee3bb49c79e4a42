"""A sweep started on every host of a jax.distributed job: two local processes with 4 simulated
CPU devices each (a data=8 mesh across them) run the same points as one process with 8
devices, and give the same records; process 0 alone writes and reports, and a killed
multi-host sweep resumes."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import harness, run as run_cli
from tests.parallel.test_multihost import _env, _free_port
from tests.train_helpers import REPO

TIMEOUT_S = 300
# Fields that describe the computation (wall time and speed differ from machine to machine).
SAME = ("point", "seed", "E", "steps", "tokens_seen", "total_params", "active_params",
        "flops_per_token", "train_flops", "config")
CLOSE = ("eval_loss", "bits_per_byte", "train_loss", "experts_per_token", "max_vio",
         "router_z_loss")


def _start(args, log_dir, tag):
  port = _free_port()
  procs = []
  for pid in range(2):
    out = open(log_dir / f"{tag}{pid}.out", "w")
    err = open(log_dir / f"{tag}{pid}.err", "w")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.run", "experiments/num_experts.py", "--quick",
         "--seeds=1", *args], cwd=REPO, env=_env(port, pid), stdout=out, stderr=err))
  return procs


def _wait(procs, log_dir, tag, until=None):
  """Waits for both processes (or for `until()`, then kills both); returns their stdouts."""
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if until is not None and until():
        break
      if any(p.returncode not in (None, 0) for p in procs):
        break
      time.sleep(0.05)
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
  outs = [(log_dir / f"{tag}{pid}.out").read_text() for pid in range(2)]
  if until is None:
    errs = [(log_dir / f"{tag}{pid}.err").read_text()[-4000:] for pid in range(2)]
    assert [p.returncode for p in procs] == [0, 0], f"{outs}\n{errs}"
  return outs


def _reference(tmp_path, only):
  """The same points in this process (8 simulated devices, one process)."""
  args = run_cli.parse(["experiments/num_experts.py", "--quick", "--seeds=1", f"--only={only}",
                        f"--out={tmp_path / 'ref'}"])
  run_cli.run(args)
  return {r["point"]: r for r in json.loads((tmp_path / "ref" / "results.json").read_text())}


def _assert_same_records(got, want):
  assert sorted(got) == sorted(want)
  for name in want:
    for key in SAME:
      assert got[name][key] == want[name][key], (name, key)
    for key in CLOSE:
      if want[name][key] is None:
        assert got[name][key] is None, (name, key)
      else:
        np.testing.assert_allclose(got[name][key], want[name][key], rtol=2e-5,
                                   err_msg=f"{name} {key}")
    np.testing.assert_allclose(np.array(got[name]["loss_curve"]),
                               np.array(want[name]["loss_curve"]), rtol=2e-5)


def test_a_sweep_on_two_hosts_gives_the_one_host_records(tmp_path):
  want = _reference(tmp_path, "E2")
  out = tmp_path / "two_hosts"
  outs = _wait(_start(["--only=E2", f"--out={out}"], tmp_path, "w"), tmp_path, "w")

  got = {r["point"]: r for r in json.loads((out / "results.json").read_text())}
  _assert_same_records(got, want)
  assert "E2 seed 0: 6 steps" in outs[0] and "wrote " in outs[0]
  assert _said(outs[1]) == [], outs[1]       # process 1 trains, says nothing, writes nothing
  run_dir = out / "runs" / "E2" / "seed0"
  assert (run_dir / "train.log").exists() and (run_dir / "train.process1.log").exists()
  assert (out / "summary.md").exists() and (out / "results.csv").exists()


@pytest.mark.slow   # make test's budget: test-all (the test above runs the same code paths)
def test_a_killed_two_host_sweep_skips_what_finished_and_resumes_the_rest(tmp_path):
  want = _reference(tmp_path, "E[12]")
  out = tmp_path / "two_hosts"
  first = out / "runs" / "E1" / "seed0" / "record.json"
  ckpts = out / "runs" / "E2" / "seed0" / "checkpoints"
  killed_at = lambda: (first.exists() and ckpts.is_dir()
                       and any(p.name.isdigit() for p in ckpts.iterdir()))
  _wait(_start(["--only=E[12]", f"--out={out}"], tmp_path, "killed"), tmp_path, "killed",
        until=killed_at)
  assert not (out / "runs" / "E2" / "seed0" / "record.json").exists()
  record = first.read_text()
  outs = _wait(_start(["--only=E[12]", f"--out={out}"], tmp_path, "w"), tmp_path, "w")
  assert "1 finished earlier, skipped" in outs[0], outs[0]
  assert "E2 seed 0: 6 steps (resumed)" in outs[0], outs[0]
  assert first.read_text() == record
  log = (out / "runs" / "E2" / "seed0" / "train.log").read_text()
  assert "resumed from checkpoint step" in log or "already holds the finished run" in log, log
  got = {r["point"]: r for r in json.loads((out / "results.json").read_text())}
  _assert_same_records(got, want)


def _said(stdout: str) -> list[str]:
  return [l for l in stdout.splitlines() if l.strip() and not l.startswith("[Gloo]")]
