"""Sweeps beyond one process, against the same points run in one process (8 simulated CPU
devices):

- on every host of a jax.distributed job: two local processes with 4 simulated CPU devices each
  (a data=8 mesh across them) give the same records; process 0 alone writes and reports, and a
  killed multi-host sweep resumes;
- as jobs (submitit's local executor, as --launcher=slurm submits them to SLURM): the same
  records, and a job preempted mid-run (submitit's SIGUSR2) is requeued and resumes.
"""
import contextlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import harness, launch, run as run_cli
from tests.parallel.test_multihost import _env, _free_port
from tests.train_helpers import REPO, subprocess_env

# One worker computes the one-process reference once for the tests here (xdist's loadgroup
# usually keeps them together).
pytestmark = pytest.mark.xdist_group("sweeps_beyond_one_process")
TIMEOUT_S = 300
# Fields that describe the computation (wall time and speed differ from machine to machine).
SAME = ("point", "seed", "E", "steps", "tokens_seen", "total_params", "active_params",
        "flops_per_token", "train_flops", "config")
CLOSE = ("eval_loss", "bits_per_byte", "train_loss", "experts_per_token", "max_vio",
         "router_z_loss")


# Every run here: num_experts --quick, seed 0, its experts over 4 devices (expert=4) and the
# batch over the rest (data=2: across the two hosts of the multi-host tests).
SWEEP = ["experiments/num_experts.py", "--quick", "--seeds=1", "--config.mesh.expert=4"]


def _start(args, log_dir, tag):
  port = _free_port()
  procs = []
  for pid in range(2):
    out = open(log_dir / f"{tag}{pid}.out", "w")
    err = open(log_dir / f"{tag}{pid}.err", "w")
    procs.append(subprocess.Popen([sys.executable, "-m", "experiments.run", *SWEEP, *args],
                                  cwd=REPO, env=_env(port, pid), stdout=out, stderr=err))
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


def _reference(out: pathlib.Path, only: str) -> dict[str, dict]:
  """Points of the sweep run in this process (8 simulated devices)."""
  run_cli.run(run_cli.parse([*SWEEP, f"--only={only}", f"--out={out}"]))
  return {r["point"]: r for r in json.loads((out / "results.json").read_text())}


# Session-scoped: xdist runs this group's tests between other modules' on one worker, which
# would tear a module fixture down and build it again.
@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  return _reference(tmp_path_factory.mktemp("reference"), "E4")


def _dense_reference(out: pathlib.Path) -> dict[str, dict]:
  """E1 (the dense model) on all 8 devices as data parallelism: the jobs test's cheaper run."""
  run_cli.run(run_cli.parse([*SWEEP[:3], "--only=E1", f"--out={out}"]))
  return {r["point"]: r for r in json.loads((out / "results.json").read_text())}


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


def test_a_sweep_on_two_hosts_gives_the_one_host_records(reference, tmp_path):
  want = reference
  out = tmp_path / "two_hosts"
  outs = _wait(_start(["--only=E4", f"--out={out}"], tmp_path, "w"), tmp_path, "w")

  got = {r["point"]: r for r in json.loads((out / "results.json").read_text())}
  _assert_same_records(got, want)         # losses at every logged step, validation, accounting
  assert "E4 seed 0: 6 steps" in outs[0] and "wrote " in outs[0]
  assert _said(outs[1]) == [], outs[1]       # process 1 trains, says nothing, writes nothing
  run_dir = out / "runs" / "E4" / "seed0"
  assert (run_dir / "train.log").exists() and (run_dir / "train.process1.log").exists()
  assert (out / "summary.md").exists() and (out / "results.csv").exists()
  # The command caches compiled steps in its workdir unless JAX_COMPILATION_CACHE_DIR names a
  # cache, as tests/conftest.py does for the suite.
  assert not (out / "compile_cache").exists()
  # each host's data position is in the checkpoint
  assert sorted(p.name for p in (run_dir / "checkpoints" / "6" / "data").iterdir()
                if p.suffix == ".json") == ["process_0-of-2.json", "process_1-of-2.json"]
  _a_rerun_rebuilds_an_older_record_and_other_settings_are_refused(out, got)


def _a_rerun_rebuilds_an_older_record_and_other_settings_are_refused(out, want):
  """Rerun here (one process): the finished run is skipped, its record, written by an older
  harness (no version, a field missing), rebuilt from the run directory, nothing retrained.
  The same sweep with other settings is refused through the CLI before anything runs, naming
  the field."""
  record = out / "runs" / "E4" / "seed0" / "record.json"
  old = json.loads(record.read_text())
  for key in ("record_version", "router_z_loss"):
    old.pop(key)
  record.write_text(json.dumps(old))
  metrics = (record.parent / "metrics.jsonl").read_text()
  run_cli.run(run_cli.parse([*SWEEP, "--only=E4", f"--out={out}"]))
  assert json.loads(record.read_text()) == want["E4"]
  assert (record.parent / "metrics.jsonl").read_text() == metrics
  results = (out / "results.csv").read_text()
  changed = subprocess.run([sys.executable, "-m", "experiments.run", *SWEEP, "--only=E4",
                            f"--out={out}", "--config.optim.learning_rate=0.5"], cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert changed.returncode == 1
  lines = changed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and \
      "holds a run made with other settings (optim.learning_rate: 0.003 there, 0.5 now)" \
      in lines[0], changed.stderr
  assert (out / "results.csv").read_text() == results
  _a_fresh_workdir_takes_the_recorded_runs_with_the_same_settings(out, want)


def _a_fresh_workdir_takes_the_recorded_runs_with_the_same_settings(out, want):
  """A checkout that has only the committed results (no run directories: a fresh clone, a new
  session) trains nothing the results.json records with its settings; other settings take
  nothing from it, and --retrain takes nothing."""
  clone = out.parent / "clone"
  with contextlib.redirect_stdout(io.StringIO()) as said:
    run_cli.run(run_cli.parse([*SWEEP, "--only=E4", f"--out={out}", f"--workdir={clone}"]))
  assert f"1 runs taken from {out / 'results.json'}" in said.getvalue() and \
      "E4 seed 0" in said.getvalue(), said.getvalue()
  assert sorted(p.name for p in (clone / "runs" / "E4" / "seed0").iterdir()) == \
      ["record.json", "sweep_config.json"]           # nothing trained
  assert json.loads((out / "results.json").read_text()) == [want["E4"]]
  sweep = run_cli.sweep_for(run_cli.parse(SWEEP))
  assert harness.adopt_recorded(sweep, out.parent / "other", out / "results.json", seeds=1,
                                overrides=["mesh.expert=4", "optim.learning_rate=0.5"]) == []
  assert harness.adopt_recorded(sweep, out.parent / "same", out / "results.json", seeds=1,
                                overrides=["mesh.expert=4"]) == ["E4 seed 0"]
  assert not (out.parent / "other").exists()
  args = run_cli.parse([*SWEEP, "--only=E4", f"--out={out}", f"--workdir={out.parent / 'r'}",
                        "--retrain", "--collect"])
  with pytest.raises(ValueError, match="1 of 1 runs .* have no record yet"):
    run_cli.run(args)


@pytest.mark.slow   # make test's budget: test-all (the test above runs the same code paths)
def test_a_killed_two_host_sweep_skips_what_finished_and_resumes_the_rest(reference, tmp_path):
  want = {**reference, **_reference(tmp_path / "reference_e1", "E1")}
  out = tmp_path / "two_hosts"
  first = out / "runs" / "E1" / "seed0" / "record.json"
  ckpts = out / "runs" / "E4" / "seed0" / "checkpoints"
  killed_at = lambda: (first.exists() and ckpts.is_dir()
                       and any(p.name.isdigit() for p in ckpts.iterdir()))
  _wait(_start(["--only=E[14]", f"--out={out}"], tmp_path, "killed"), tmp_path, "killed",
        until=killed_at)
  assert not (out / "runs" / "E4" / "seed0" / "record.json").exists()
  record = first.read_text()
  outs = _wait(_start(["--only=E[14]", f"--out={out}"], tmp_path, "w"), tmp_path, "w")
  assert "1 finished earlier, skipped" in outs[0], outs[0]
  assert "E4 seed 0: 6 steps (resumed)" in outs[0], outs[0]
  assert first.read_text() == record
  log = (out / "runs" / "E4" / "seed0" / "train.log").read_text()
  assert "resumed from checkpoint step" in log or "already holds the finished run" in log, log
  got = {r["point"]: r for r in json.loads((out / "results.json").read_text())}
  _assert_same_records(got, want)
  # A command for one point writes the results of every finished run with its settings.
  run_cli.run(run_cli.parse([*SWEEP, "--only=E1", f"--out={out}"]))
  assert [r["point"] for r in json.loads((out / "results.json").read_text())] == ["E1", "E4"]
  assert "With the runs of E4, finished earlier" in (out / "summary.md").read_text()


def _said(stdout: str) -> list[str]:
  """The harness's lines in a process's stdout (gloo's connection chatter, which its threads
  may interleave mid-line, is not the harness's)."""
  return [l for l in stdout.splitlines()
          if any(mark in l for mark in ("sweep ", " seed ", "wrote ", "error"))]


def _job_processes(jobs_dir: pathlib.Path) -> list[int]:
  """The pids of submitit's job processes for jobs in `jobs_dir` (their command line names it)."""
  pids = []
  for proc in pathlib.Path("/proc").iterdir():
    try:
      cmd = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
      continue
    if b"submitit.core._submit" in cmd and str(jobs_dir).encode() in cmd:
      pids.append(int(proc.name))
  return pids


# make test's budget: test-all (make test checks the jobs' resources and grouping below)
@pytest.mark.slow
def test_a_sweep_as_jobs_gives_the_same_records_and_a_preempted_job_resumes(tmp_path):
  """The launcher is killed while its job runs (the job goes on); the command, rerun, waits for
  that job instead of submitting another; the job, preempted mid-run, is requeued and resumes."""
  out = tmp_path / "jobs_sweep"
  cmd = [sys.executable, "-u", "-m", "experiments.run", *SWEEP[:3], "--only=E1",
         "--launcher=local", "--cpu_devices=8", f"--out={out}"]  # the job simulates 8 devices
  popen = lambda: subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  first, again = popen(), None
  ckpts = out / "runs" / "E1" / "seed0" / "checkpoints"
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
      assert first.poll() is None and time.monotonic() < deadline, first.communicate()
      time.sleep(0.05)
    pids = _job_processes(out / "jobs")
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGSTOP)        # the job waits while the launcher is replaced
    first.kill()
    first.wait()
    again = popen()
    header = [again.stdout.readline() for _ in range(2)]
    assert "(submitted earlier, still running): E1 seed 0" in header[1], header
    os.kill(pids[0], signal.SIGCONT)
    os.kill(pids[0], signal.SIGUSR2)        # what SLURM sends before preemption
    reference = _dense_reference(tmp_path / "reference")     # while the job resumes
    stdout, stderr = again.communicate(timeout=TIMEOUT_S)
  finally:
    for proc in (first, again):
      if proc is not None and proc.poll() is None:
        proc.kill()
  assert again.returncode == 0, stderr[-3000:]
  assert "E1 seed 0: 6 steps" in stdout and "wrote " in stdout, stdout
  assert len(list((out / "jobs").glob("*_submitted.pkl"))) == 1     # one job, never two
  job_logs = "".join(p.read_text() for p in (out / "jobs").glob("*_log.*"))
  assert "Requeued job" in job_logs, job_logs[-3000:]
  log = (out / "runs" / "E1" / "seed0" / "train.log").read_text()
  assert "resumed from checkpoint step" in log or "already holds the finished run" in log, log
  got = {r["point"]: r for r in json.loads((out / "results.json").read_text())}
  _assert_same_records(got, reference)

  # --collect writes the results from the records without training; with a run missing it
  # names it.
  (out / "results.json").unlink()
  run_cli.run(run_cli.parse([*cmd[4:], "--collect"]))
  assert json.loads((out / "results.json").read_text())[0]["eval_loss"] == got["E1"]["eval_loss"]
  with pytest.raises(ValueError, match=r"1 of 2 runs in .* have no record yet \(E4 seed 0\)"):
    run_cli.run(run_cli.parse([*cmd[4:], "--only=E[14]", "--collect"]))


def test_slurm_jobs_ask_for_the_flags_resources_over_the_sweeps(tmp_path, monkeypatch):
  fake = tmp_path / "bin"          # submitit looks for srun to know it is on a SLURM cluster
  fake.mkdir()
  (fake / "srun").write_text("#!/bin/sh\n")
  (fake / "srun").chmod(0o755)
  monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
  args = run_cli.parse(["experiments/num_experts.py", "--launcher=slurm", "--partition=gpu",
                        "--nodes=2", "--gpus_per_node=8", "--timeout_min=240"])
  args.sweep_name = "num_experts"
  ex = launch.executor(args, tmp_path / "jobs", {"timeout_min": 30, "cpus_per_task": 16})
  script = ex._executor._make_submission_file_text("python -u -m submitit.core._submit x", "u")
  for line in ("--partition=gpu", "--nodes=2", "--gpus-per-node=8", "--time=240",
               "--cpus-per-task=16", "--ntasks-per-node=1", "--signal=USR2@120",
               "--job-name=moe_jax-num_experts"):
    assert f"#SBATCH {line}" in script, (line, script)
  assert f"export PYTHONPATH={REPO}" in script


def test_a_seeds_points_that_share_a_helper_run_are_one_job():
  from experiments.harness import runs_of
  sweeps = {name: run_cli.load_sweep(REPO / "experiments" / f"{name}.py", quick=True)[0]
            for name in ("num_experts", "upcycling")}
  todo = runs_of(sweeps["num_experts"], seeds=2)
  assert launch.job_groups(sweeps["num_experts"], todo) == [[(p.name, s)] for p, s in todo]
  todo = runs_of(sweeps["upcycling"], seeds=2)
  groups = launch.job_groups(sweeps["upcycling"], todo)   # the dense source is per seed
  assert [sorted({s for _, s in g}) for g in groups] == [[0], [1]]
  assert [n for n, _ in groups[0]] == ["dense", "upcycled", "drop0.5", "scratch"]
