"""Run a sweep: python -m experiments.run experiments/SWEEP.py [--quick] [--seeds N] [--only GLOB]
                                     [--out DIR] [--workdir DIR] [--config FILE] [--cpu_devices N]
                                     [--launcher inprocess|local|slurm] [--collect]
                                     [--config.a.b=v ...]

Expands the sweep's grid x seeds, trains and evaluates every run that has no record yet (a
killed sweep, rerun, resumes its unfinished runs from their checkpoints and skips the finished
ones), then writes into --out (default experiments/results/SWEEP, or runs/sweeps/SWEEP-quick
with --quick): results.csv, results.json, the sweep's plots and summary.md. The runs' workdirs
(checkpoints, logs) go under --workdir (default: --out if given, else runs/sweeps/SWEEP[-quick],
which git ignores). A run directory remembers the settings it was started with; a rerun with
other settings (--config, --config.a.b=v, an edited base) is refused naming the fields that
differ, so no finished run is ever relabelled with a new command: give it another --workdir.
A run that has no directory yet takes the record --out's results.json holds for it (the
committed one) when that record was made with exactly these settings, so a fresh checkout
trains only what is new (a point added, a seed more); --retrain trains every run. The results
are written from every finished run of the grid with these settings, also those another --only
command ran.

--quick runs the same code on the sweep's tiny setting (seconds per run, for tests);
--config replaces the sweep's base config with a config file (e.g. configs/lm_gpu_node.py for
the same grid on GPU-sized models); --config.a.b=v sets a field for every run (the point's own
values win), e.g. --config.mesh.expert=1 so that every E of the grid fits the mesh; --only runs
the points whose name matches a glob.

On a multi-host job (a TPU pod slice, several GPU nodes) start the same command on every host:
jax.distributed is started from --coordinator_address/--num_processes/--process_id, else the
MOE_JAX_COORDINATOR / MOE_JAX_NUM_PROCESSES / MOE_JAX_PROCESS_ID env vars, else JAX's cluster
auto-detection (TPU pods, SLURM, ...). Every host trains every run with the others; process 0
alone writes settings, records, results and plots, and prints the progress lines. --workdir and
--out must then be on storage every host sees.

--launcher=slurm submits each unfinished (point, seed) as a SLURM job through submitit (one
seed's points as one job where they share a helper run), with --nodes, --gpus_per_node,
--timeout_min, --partition, --cpus_per_task (else the sweep file's `resources`); jobs are
requeued on preemption and resume from their checkpoints; the command waits, then writes the
results (--collect writes them later, if it was stopped). --launcher=local does the same with
local processes. See experiments/launch.py.
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_sweep(path: str, quick: bool):
  """(the sweep, its module) of a sweep file (experiments.sweep.load)."""
  from experiments import sweep
  return sweep.load(path, quick)


def parse(argv):
  from moe_jax.cli import split_overrides
  argv, overrides = split_overrides(list(argv))
  parser = argparse.ArgumentParser(prog="python -m experiments.run",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("sweep", help="a sweep file, e.g. experiments/num_experts.py")
  parser.add_argument("--quick", action="store_true", help="the tiny setting, for tests")
  parser.add_argument("--seeds", type=int, default=None, help="seeds per point")
  parser.add_argument("--only", default=None, help="run only points matching this glob")
  parser.add_argument("--out", default=None, help="results directory")
  parser.add_argument("--workdir", default=None, help="where the runs' workdirs go")
  parser.add_argument("--config", default=None, help="a config file replacing the base")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="simulate this many CPU devices (0: leave as is)")
  parser.add_argument("--coordinator_address", default=None,
                      help="multi-host: process 0's host:port for jax.distributed")
  parser.add_argument("--num_processes", type=int, default=None, help="multi-host: processes")
  parser.add_argument("--process_id", type=int, default=None, help="multi-host: this process")
  parser.add_argument("--launcher", default="inprocess", choices=("inprocess", "local", "slurm"),
                      help="inprocess: every run here, in order; slurm: each run a SLURM job "
                           "(submitit); local: each run a local process (submitit's local "
                           "executor)")
  parser.add_argument("--grid", default="cpu", choices=("cpu", "gpu"),
                      help="cpu: the sweep's grid for this project's CPUs; gpu: its "
                      "accelerator-sized grid (the sweep file's get_gpu_sweep)")
  parser.add_argument("--estimate", action="store_true",
                      help="print what the runs would cost (FLOPs, GPU-hours) and stop: "
                      "nothing is trained or written")
  parser.add_argument("--retrain", action="store_true",
                      help="train every run, also those --out's results.json records with "
                      "these settings")
  parser.add_argument("--collect", action="store_true",
                      help="train nothing: write results/ from the runs' records (a sweep "
                           "whose jobs were left running)")
  parser.add_argument("--nodes", type=int, default=None, help="jobs: nodes per job")
  parser.add_argument("--gpus_per_node", type=int, default=None, help="jobs: GPUs per node")
  parser.add_argument("--timeout_min", type=int, default=None,
                      help="jobs: time limit per job, minutes (a job past it is requeued)")
  parser.add_argument("--partition", default=None, help="jobs: the SLURM partition")
  parser.add_argument("--cpus_per_task", type=int, default=None, help="jobs: CPUs per node")
  args = parser.parse_args(argv)
  args.overrides = overrides
  return args


def main(argv=None) -> None:
  args = parse(sys.argv[1:] if argv is None else argv)
  import jax
  from moe_jax import cli
  if args.cpu_devices:
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  cli._quiet_background_threads()
  if args.launcher == "inprocess":    # jobs start their own (experiments/launch.py)
    cli.run_reporting_errors(_start_distributed, args)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  cli.run_reporting_errors(functools.partial(run, cache_compiles=True), args)


def _start_distributed(args) -> None:
  from moe_jax.parallel import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)


def sweep_for(args):
  """The sweep the command names, with --config's base if given."""
  from experiments import sweep
  return sweep.load(args.sweep, args.quick, args.config, grid=args.grid)[0]


def run(args, *, cache_compiles: bool = False) -> None:
  """The command's work. cache_compiles: JAX's persistent compilation cache in the sweep's
  workdir (experiments/compile_cache.py), a process-wide setting, so only the command sets it,
  not a caller of this function (a test, a notebook)."""
  from experiments import compile_cache, harness, hosts, launch, records as records_lib, report
  sweep = sweep_for(args)
  args.sweep_name = sweep.name
  if args.estimate:
    from experiments import estimate
    rows = estimate.estimate(sweep, seeds=args.seeds, only=args.only, overrides=args.overrides)
    print("\n".join(estimate.describe(rows, sweep.name)))
    return
  # Quick results are for tests and trying things: they never overwrite the committed ones.
  runs = REPO / "runs" / "sweeps" / (sweep.name + ("-quick" if args.quick else ""))
  out = pathlib.Path(args.out or (runs / "results" if args.quick
                                  else REPO / "experiments" / "results" / sweep.name))
  # With --out and no --workdir the runs go beside the results (OUT/runs/...), so a sweep run
  # into a directory of its own writes nothing into the checkout.
  workdir = pathlib.Path(args.workdir or args.out or runs).absolute()
  if cache_compiles:
    compile_cache.enable(workdir)
  start = time.perf_counter()
  if not args.retrain:
    adopted = hosts.main_writes(lambda: harness.adopt_recorded(
        sweep, workdir, out / "results.json", seeds=args.seeds, overrides=args.overrides),
        "adopt records")
    if adopted and hosts.is_main():
      print(f"{len(adopted)} runs taken from {out / 'results.json'} (recorded with these "
            f"settings; --retrain trains them again): {', '.join(adopted)}")
  if args.launcher == "inprocess" and not args.collect:
    harness.run_sweep(sweep, workdir, seeds=args.seeds, only=args.only,
                      overrides=args.overrides)
  else:
    todo = harness.runs_of(sweep, args.seeds, args.only)
    if not args.collect:
      done = sum((harness.run_dirs(workdir, p, s) / harness.RECORD).exists() for p, s in todo)
      print(f"sweep {sweep.name}: {harness.grid_text(todo)} in {workdir}, as {args.launcher} jobs"
            + (f"; {done} finished earlier, skipped" if done else ""))
      harness.check_all_settings(sweep, workdir, todo, args.overrides)
      jobs = launch.submit(sweep, args, workdir, todo)
      launch.wait(sweep, workdir, jobs)
    harness.collect(sweep, workdir, todo)
  seconds = time.perf_counter() - start

  def write():
    # Every finished run of the grid with these settings, also those of other --only commands.
    records = harness.finished_records(sweep, workdir, seeds=args.seeds,
                                       overrides=args.overrides)
    selected = {p.name for p in harness.selected(sweep, args.only)}
    earlier = sorted({r["point"] for r in records} - selected,
                     key=[p.name for p in sweep.points].index)
    written = records_lib.write_results(records, out)
    written += report.write_summary(sweep, records, out, command=command_line(args),
                                    seconds=seconds, earlier=earlier)
    print("wrote " + ", ".join(str(p) for p in written))
  hosts.main_writes(write, "results")


def command_line(args) -> str:
  """The command that reproduces these results (the summary prints it)."""
  parts = ["python -m experiments.run", args.sweep]
  parts += ["--quick"] * args.quick
  parts += [f"--{k} {getattr(args, k)}" for k in ("seeds", "only", "config")
            if getattr(args, k) is not None]
  parts += ["--grid gpu"] * (args.grid == "gpu")
  parts += [f"--config.{o}" for o in args.overrides]
  return " ".join(parts)


if __name__ == "__main__":
  main()
