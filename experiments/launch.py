"""A sweep as cluster jobs: each (point, seed) a job, submitted with submitit.

    python -m experiments.run experiments/num_experts.py --launcher=slurm \
        --partition=gpu --gpus_per_node=8 --timeout_min=240 --config configs/lm_gpu_node.py

`submit` sends every unfinished run of the sweep to SLURM (`--launcher=slurm`) or to submitit's
local executor (`--launcher=local`: jobs as local processes, how the tests run it); `wait`
reports each job as it ends; the command then collects the records into results/ as an
in-process sweep does (`--collect` does only that, for a sweep whose jobs were left running).

A job runs the harness's own code for its runs (`harness.run_runs`): the same settings check,
setup, train, evaluate and record, into the same run directories, so a job killed anywhere
resumes as a killed in-process sweep does. A job with several nodes starts jax.distributed from
SLURM's environment (JAX detects it) and its nodes run the runs together (experiments/hosts.py).

Preemption and the time limit: SLURM sends submitit's signal (SIGUSR2) shortly before; inside
training it stops the run as SIGTERM does (the step finishes, a checkpoint is saved), and then
submitit requeues the job, which resumes from that checkpoint. Points whose `setup` trains a run
other points share (upcycling's dense source, distillation's teacher, one per seed) would race
for it as separate jobs, so such a sweep runs each seed's points as one job, in order.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import time
from typing import Callable

from experiments import harness, records
from experiments.sweep import Sweep

LAUNCHERS = ("inprocess", "local", "slurm")
JOBS_DIR = "jobs"            # submitit's pickles and logs, under the sweep's workdir
POLL_S = 2.0


def preemption_signal() -> int:
  """The signal submitit sends before preemption or the time limit (SUBMITIT_PREEMPT_SIGNAL,
  default USR2)."""
  return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _import_submitit():
  try:
    import submitit
  except ImportError:
    raise ValueError("--launcher=local/slurm needs the submitit package: pip install "
                     "'submitit>=1.5' (or pip install -e '.[cluster]')") from None
  return submitit


class SweepJob:
  """One job: some runs of a sweep, by point name and seed (picklable: the sweep is rebuilt
  from its file and the command's arguments in the job)."""

  def __init__(self, args: argparse.Namespace, workdir: pathlib.Path,
               runs: list[tuple[str, int]]):
    self.args, self.workdir, self.runs = args, pathlib.Path(workdir), list(runs)

  def __call__(self) -> list[str]:
    import jax
    from moe_jax import cli, interrupts
    from moe_jax.parallel import distributed
    from experiments import compile_cache, sweep as sweep_lib
    compile_cache.enable(self.workdir)
    if self.args.cpu_devices:
      jax.config.update("jax_num_cpu_devices", self.args.cpu_devices)
    cli._quiet_background_threads()
    distributed.initialize()      # several nodes: from SLURM's environment; else a no-op
    sweep, _ = sweep_lib.load(self.args.sweep, self.args.quick, self.args.config)
    points = {p.name: p for p in sweep.points}
    todo = [(points[name], seed) for name, seed in self.runs]
    sig = preemption_signal()
    requeue = signal.getsignal(sig)          # submitit's: checkpoint() and requeue
    try:
      with interrupts.also_on(sig):
        harness.run_runs(sweep, self.workdir, todo, self.args.overrides)
    except interrupts.Interrupted as e:
      if e.signum == sig and callable(requeue):
        requeue(sig, None)                 # the checkpoint is saved: requeued, exits
      raise
    return [f"{name} seed {seed}" for name, seed in self.runs]

  def checkpoint(self, *args, **kwargs):
    """submitit calls this on preemption: the same job again (it resumes from the runs'
    checkpoints and skips what finished)."""
    submitit = _import_submitit()
    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def job_groups(sweep: Sweep, todo) -> list[list[tuple[str, int]]]:
  """The runs each job runs: one run per job, or one seed's runs per job where a point's setup
  trains a run that other points share."""
  if any(p.setup is not None for p, _ in todo):
    seeds = sorted({s for _, s in todo})
    return [[(p.name, s) for p, s in todo if s == seed] for seed in seeds]
  return [[(p.name, s)] for p, s in todo]


def executor(args, folder: pathlib.Path, resources: dict):
  """A submitit executor for `args.launcher` with the sweep's resources, the flags winning."""
  submitit = _import_submitit()
  if args.launcher == "slurm" and shutil.which("srun") is None:
    raise ValueError("--launcher=slurm: this machine has no SLURM (srun is not on PATH); run "
                     "the command on the cluster's login node, or --launcher=local to run the "
                     "jobs as local processes")
  ex = submitit.AutoExecutor(folder=folder, cluster=args.launcher)
  wanted = {**resources, **{k: getattr(args, k) for k in RESOURCE_FLAGS
                            if getattr(args, k) is not None}}
  repo = pathlib.Path(__file__).resolve().parent.parent
  setup = [f"export PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}"]   # experiments/ importable
  params = {"timeout_min": wanted.get("timeout_min", 60), "nodes": wanted.get("nodes", 1),
            "tasks_per_node": 1,    # JAX: one process per node drives all its accelerators
            "gpus_per_node": wanted.get("gpus_per_node", 0),
            "name": f"moe_jax-{args.sweep_name}"}
  if args.launcher == "slurm":
    params.update(slurm_setup=setup, slurm_signal_delay_s=wanted.get("signal_delay_s", 120))
    if wanted.get("partition"):
      params["slurm_partition"] = wanted["partition"]
    if wanted.get("cpus_per_task"):
      params["cpus_per_task"] = wanted["cpus_per_task"]
  else:
    params.update(local_setup=setup)
  ex.update_parameters(**params)
  return ex


# Flags of experiments.run that set a job's resources (the sweep file's `resources` otherwise).
RESOURCE_FLAGS = ("nodes", "gpus_per_node", "timeout_min", "partition", "cpus_per_task")


SUBMITTED = "submitted.json"   # in jobs/: {"POINT/seedS": job id} of every job submitted


def _submitted(folder: pathlib.Path) -> dict[str, str]:
  path = folder / SUBMITTED
  return json.loads(path.read_text()) if path.exists() else {}


class _LocalJobSeen:
  """A local job submitted by an earlier invocation (its controller's pid is the job id):
  running while that process lives; its result is submitit's pickle."""

  def __init__(self, folder: pathlib.Path, job_id: str):
    submitit = _import_submitit()
    self.job_id, self._job = job_id, submitit.LocalJob(folder, job_id)
    self.paths = self._job.paths

  def done(self) -> bool:
    try:
      os.kill(int(self.job_id), 0)
    except (OSError, ValueError):
      return True
    return self.paths.result_pickle.exists()

  def result(self):
    return self._job.result()


def _still_running(launcher: str, folder: pathlib.Path, job_id: str):
  """The job `job_id` as a job object if it has not ended, else None."""
  submitit = _import_submitit()
  if launcher == "local":
    job = _LocalJobSeen(folder, job_id)
  else:
    job = submitit.SlurmJob(folder, job_id)
  return None if job.done() else job


def submit(sweep: Sweep, args, workdir: pathlib.Path, todo,
           say: Callable[[str], None] = print) -> list[tuple[object, list[tuple[str, int]]]]:
  """Submits a job for every group of unfinished runs, except runs whose job from an earlier
  invocation of the command is still queued or running: those are waited for again. Returns
  (job, its runs) for every job to wait for."""
  left = [(p, s) for p, s in todo if not (harness.run_dirs(workdir, p, s) /
                                          harness.RECORD).exists()]
  if not left:
    return []
  folder = workdir / JOBS_DIR
  submitted, jobs, attached = _submitted(folder), [], set()
  for job_id in dict.fromkeys(submitted.get(f"{p.name}/seed{s}") for p, s in left):
    job = job_id and _still_running(args.launcher, folder, job_id)
    if job:
      runs = [(p.name, s) for p, s in left if submitted.get(f"{p.name}/seed{s}") == job_id]
      attached.update(runs)
      jobs.append((job, runs))
      say(f"job {job_id} (submitted earlier, still running): " + _runs_text(runs))
  groups = job_groups(sweep, [(p, s) for p, s in left if (p.name, s) not in attached])
  if groups:
    ex = executor(args, folder, dict(sweep.resources))
    for runs in groups:
      job = ex.submit(SweepJob(args, workdir, runs))
      jobs.append((job, runs))
      submitted.update({f"{n}/seed{s}": str(job.job_id) for n, s in runs})
      say(f"job {job.job_id}: " + _runs_text(runs))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUBMITTED).write_text(json.dumps(submitted, indent=1))
  return jobs


def _runs_text(runs) -> str:
  return ", ".join(f"{n} seed {s}" for n, s in runs)


def wait(sweep: Sweep, workdir: pathlib.Path, jobs, say: Callable[[str], None] = print) -> None:
  """Waits for every job, saying each run as its job ends; raises ValueError naming the failed
  jobs and their logs once all have ended."""
  pending, failed, ended = list(jobs), [], 0
  while pending:
    for job, runs in [j for j in pending if j[0].done()]:
      pending.remove((job, runs))
      ended += 1
      try:
        job.result()
      except Exception as e:  # noqa: BLE001 -- submitit re-raises the job's error as its own
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        failed.append(f"job {job.job_id} ({_runs_text(runs)}): "
                      f"{last} (log: {job.paths.stderr})")
        continue
      for name, seed in runs:
        record = records.read_record(workdir, name, seed)
        say(f"[{ended}/{len(jobs)} jobs] {name} seed {seed}: "
            f"{harness.describe_run(record, sweep.metric)}")
    if pending:
      time.sleep(POLL_S)
  if failed:
    raise ValueError(f"{len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed))
