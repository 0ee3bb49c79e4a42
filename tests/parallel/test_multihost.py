"""Two real processes joined by jax.distributed give the unsharded layer's outputs and grads.

Simulated devices in one process (the rest of the suite) never exercise the multi-controller
path: non-addressable shards, global arrays built from per-host data, gloo collectives between
processes. Here two worker processes with 4 CPU devices each form a data=2 x expert=4 mesh, run
the jitted expert-parallel forward + backward for the 'sort' (capacity 1.0, tokens drop) and
'dropless' dispatchers, and process 0 saves the gathered results; this process computes the same
without a mesh and compares.
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.parallel import multihost_worker as worker

REPO = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(port: int, process_id: int) -> dict[str, str]:
  drop = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_CPU_DEVICES", "JAX_LOCAL_DEVICE_IDS")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MOE_JAX_") and k not in drop and "_proxy" not in k.lower()}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             MOE_JAX_COORDINATOR=f"127.0.0.1:{port}", MOE_JAX_NUM_PROCESSES="2",
             MOE_JAX_PROCESS_ID=str(process_id),
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
  return env


def _start_workers(out_path: pathlib.Path, log_dir: pathlib.Path):
  port = _free_port()
  procs, logs = [], []
  for pid in range(2):
    out = open(log_dir / f"worker{pid}.out", "w+")
    err = open(log_dir / f"worker{pid}.err", "w+")
    logs.append((out, err))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.parallel.multihost_worker", str(out_path)],
        cwd=REPO, env=_env(port, pid), stdout=out, stderr=err))
  return procs, logs


def _finish_workers(procs, logs, out_path: pathlib.Path, started: float) -> None:
  """Waits for both; one failing (or the deadline) ends the other, which would otherwise hang
  in the coordinator or a collective waiting for its peer."""
  timed_out = False
  try:
    while any(p.poll() is None for p in procs):
      if any(p.returncode not in (None, 0) for p in procs):
        break
      if time.monotonic() - started > TIMEOUT_S:
        timed_out = True
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  failed = [f"worker {pid}: exit {p.returncode}" for pid, p in enumerate(procs)
            if p.returncode != 0]
  if timed_out:
    failed.insert(0, f"timed out after {TIMEOUT_S}s (then killed)")
  report = []
  for pid, (out, err) in enumerate(logs):
    out.seek(0)
    err.seek(0)
    stdout = "".join(l for l in out if not l.startswith("[Gloo]"))   # gloo's connect chatter
    report.append(f"--- worker {pid} stdout ---\n{stdout}\n"
                  f"--- worker {pid} stderr ---\n{err.read()[-8000:]}")
    out.close()
    err.close()
  assert not failed and out_path.exists(), "; ".join(failed or ["no output"]) + "\n" + \
      "\n".join(report)


def test_two_processes_match_unsharded(tmp_path):
  out_path = tmp_path / "multihost.npz"
  started = time.monotonic()
  procs, logs = _start_workers(out_path, tmp_path)
  try:   # the reference compiles while the workers do
    config, variables, x = worker.build()
    want = worker.compute(variables, x, config=config, mesh=None)
  finally:
    _finish_workers(procs, logs, out_path, started)
  got = dict(np.load(out_path))

  # Process 0 supplies the first half of the batch: 'data' spans processes, 'expert' is local.
  np.testing.assert_array_equal(got.pop("process_rows"), [0, 1, 2, 3])
  assert sorted(got) == sorted(want)
  assert np.any(np.all(want["sort/y"] == 0, axis=-1)), "capacity 1.0 should drop some tokens"
  for key, w in want.items():
    scale = float(np.max(np.abs(w))) or 1.0
    np.testing.assert_allclose(got[key], w, rtol=1e-4, atol=1e-5 * scale, err_msg=key)


def test_initialize_is_a_no_op_without_configuration(monkeypatch):
  from moe_jax.parallel import distributed
  for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
              distributed.ENV_PROCESS_ID, "JAX_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "_detected_cluster", lambda: None)
  assert not distributed.is_multiprocess_configured()
  assert distributed.initialize() is False


@pytest.mark.parametrize("kwargs, env, match", [
    ({"coordinator_address": "localhost"}, {}, "coordinator_address must look like host:port"),
    ({"coordinator_address": "h:99999"}, {}, "host:port"),
    ({}, {"MOE_JAX_COORDINATOR": "::1:80"}, "MOE_JAX_COORDINATOR must look like"),
    ({"num_processes": 0}, {}, "num_processes must be >= 1"),
    ({}, {"MOE_JAX_NUM_PROCESSES": "two"}, "MOE_JAX_NUM_PROCESSES must be an integer"),
    ({"num_processes": 2, "process_id": 2}, {}, r"process_id=2 must be in \[0, 2\)"),
    ({}, {"MOE_JAX_NUM_PROCESSES": "2", "MOE_JAX_PROCESS_ID": "-1"},
     "MOE_JAX_PROCESS_ID must be >= 0"),
    ({"coordinator_address": "h:1234"}, {}, "missing: .*num_processes.*MOE_JAX_PROCESS_ID"),
    ({"cpu_collectives": "nccl"}, {}, "cpu_collectives must be one of gloo, mpi"),
])
def test_initialize_rejects_bad_settings(monkeypatch, kwargs, env, match):
  from moe_jax.parallel import distributed
  for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
              distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(var, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(distributed, "_detected_cluster", lambda: None)
  with pytest.raises(ValueError, match=match):
    distributed.initialize(**kwargs)
