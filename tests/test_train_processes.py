"""A 2-process jax.distributed run through the CLI trains like one process (SIGKILL, SIGTERM
and SIGINT resumes are in tests/test_cli_runs.py)."""
import socket
import subprocess

import numpy as np
import pytest

from moe_jax.train import train
from tests.train_helpers import REPO, cli_command, losses, small_config, subprocess_env

# Subprocess tests share the 2 cores with the rest of the suite; keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("subprocess_training")


def _reference(tmp_path, steps):
  """The uninterrupted single-process run (8 simulated devices, data=2 x expert=4). `steps`
  sets the cosine schedule, so a reference must have the compared run's step count."""
  train(small_config(steps=steps), tmp_path / "reference", progress=False)
  return losses(tmp_path / "reference")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# make test's budget: test-all. In make test, a two-host sweep trains an expert-parallel run on
# 2 processes x 4 devices with the single-process losses and validation
# (tests/experiments/test_sweeps_beyond_one_process.py).
@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  """2 processes x 4 CPU devices (gloo), the same CLI and mesh: the single-process losses."""
  reference = _reference(tmp_path, 8)
  workdir, port = tmp_path / "run", _free_port()
  cmd = cli_command(workdir, "--config.steps=8", cpu_devices=4)
  procs = []
  for pid in range(2):
    env = subprocess_env(MOE_JAX_COORDINATOR=f"127.0.0.1:{port}", MOE_JAX_NUM_PROCESSES="2",
                         MOE_JAX_PROCESS_ID=str(pid))
    out = open(tmp_path / f"p{pid}.log", "w")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out))
  try:
    for p in procs:
      p.wait(timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  logs = [(tmp_path / f"p{pid}.log").read_text()[-3000:] for pid in range(2)]
  assert [p.returncode for p in procs] == [0, 0], logs
  got = losses(workdir)
  assert sorted(got) == list(range(1, 9))
  np.testing.assert_allclose([got[s] for s in range(1, 9)], [reference[s] for s in range(1, 9)],
                             rtol=1e-5)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8]
  assert sorted(p.name for p in (workdir / "checkpoints" / "8" / "data").iterdir()
                if p.suffix == ".json") == ["process_0-of-2.json", "process_1-of-2.json"]
