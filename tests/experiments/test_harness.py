"""The sweep harness: grids, and sweeps run end to end through the CLI in --quick mode, killed
and resumed without rerunning what finished."""
import csv
import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from experiments import harness
from experiments.sweep import axis, concat, override_flags, point, product, zipped
from tests.train_helpers import REPO, subprocess_env

SWEEPS = ["num_experts", "routed_scaling", "granularity", "capacity_factor", "routers",
          "balancing", "classification", "upcycling", "distillation", "pilot"]
# The columns every results.csv has, whatever the sweep.
COLUMNS = {"point", "seed", "eval_loss", "train_loss", "total_params", "active_params",
           "non_embedding_params", "expert_params", "flops_per_token", "train_flops",
           "tokens_seen", "steps", "wall_s", "tokens_per_sec", "step_ms", "max_vio",
           "dropped_fraction", "router_logit_abs", "router_z_loss", "experts_per_token"}


def test_grids_cross_tie_and_join_points():
  e = axis("E", "model.num_experts", [2, 4])
  k = axis("k", "model.router_options.k", [1, 2])
  crossed = product(e, k)
  assert [p.name for p in crossed] == ["E2-k1", "E2-k2", "E4-k1", "E4-k2"]
  assert crossed[1].overrides == {"model.num_experts": 2, "model.router_options.k": 2}
  assert crossed[1].values == {"E": 2, "k": 2}
  tied = zipped(e, k)
  assert [p.name for p in tied] == ["E2-k1", "E4-k2"]
  with pytest.raises(ValueError, match="one length"):
    zipped(e, axis("k", "k", [1, 2, 3]))
  with pytest.raises(ValueError, match=r"same name: \['E2'\]"):
    concat(e, e[:1])
  dense = point({"E": 1}, {"model.num_experts": 0, "model.router": "topk"}, name="dense")
  assert override_flags(dense, 2) == ["model.num_experts=0", "model.router=topk", "seed=2"]


def test_a_point_may_run_more_seeds_than_its_sweep_and_a_command_sets_them_all():
  from experiments import harness
  from experiments.sweep import Sweep
  close = [p._replace(seeds=5) for p in axis("k", "model.router_options.k", [2])]
  crossed = product(axis("E", "model.num_experts", [4, 8]), close)
  assert [p.seeds for p in crossed] == [5, 5]            # the most any factor asks for
  sweep = Sweep(name="s", base=lambda: None, seeds=3,
                points=[point({"E": 1}, {}, name="dense"), crossed[0]])
  todo = harness.runs_of(sweep)
  assert [(p.name, s) for p, s in todo] == [("dense", 0), ("dense", 1), ("dense", 2)] + \
      [("E4-k2", s) for s in range(5)]
  assert harness.grid_text(todo) == "8 runs (2 points, 3 to 5 seeds each)"
  assert len(harness.runs_of(sweep, seeds=2)) == 4      # --seeds 2: every point
  assert harness.grid_text(harness.runs_of(sweep, seeds=2)) == "4 runs (2 points x 2 seeds)"
  assert len(harness.runs_of(sweep, only="dense")) == 3
  with pytest.raises(ValueError, match="--seeds must be at least 1, got 0"):
    harness.runs_of(sweep, seeds=0)
  sweep.points[1] = crossed[0]._replace(seeds=0)           # the sweep file's mistake, named
  with pytest.raises(ValueError, match="sweep s: point E4-k2's seeds must be at least 1, got 0"):
    harness.runs_of(sweep)


def _sweep_cmd(name, out, workdir, *extra):
  return [sys.executable, "-m", "experiments.run", f"experiments/{name}.py", "--quick",
          f"--out={out}", f"--workdir={workdir}", *extra]


def _run(cmd, timeout=600):
  return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=timeout)


# ~1 min each on 2 cores: marked slow to keep `make test` under 15 minutes (`make test-all`
# runs them; docs/experiments.md). The kill test below runs the harness end to end in the
# default suite.
@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_runs_end_to_end_quick(name, tmp_path):
  out, workdir = tmp_path / "results", tmp_path / "runs"
  proc = _run(_sweep_cmd(name, out, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert COLUMNS <= set(rows[0]), COLUMNS - set(rows[0])
  points = {r["point"] for r in rows}
  assert len(rows) == 2 * len(points) and {r["seed"] for r in rows} == {"0", "1"}
  assert all(float(r["eval_loss"]) > 0 for r in rows)
  summary = (out / "summary.md").read_text()
  assert "## Reading" in summary and "## Every point" in summary and "±" in summary
  assert list(out.glob("*.png"))
  records = json.loads((out / "results.json").read_text())
  assert len(records) == len(rows) and all(r["expert_load"] is not None for r in records)
  # One progress line per run, then the files written.
  lines = [l for l in proc.stdout.splitlines() if l.startswith("[")]
  assert len(lines) == len(rows), proc.stdout


# make test's budget: test-all. In make test, tests/experiments/test_sweeps_beyond_one_process.py
# resumes a preempted sweep run, rebuilds an older record and refuses changed settings.
@pytest.mark.slow
def test_killed_sweep_resumes_unfinished_runs_and_skips_finished(tmp_path):
  out, workdir = tmp_path / "results", tmp_path / "runs"
  cmd = _sweep_cmd("num_experts", out, workdir, "--only=E[12]", "--seeds=1")
  proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  first = workdir / "runs" / "E1" / "seed0" / "record.json"
  second = workdir / "runs" / "E2" / "seed0" / "checkpoints"
  deadline = time.time() + 300
  complete = lambda: second.is_dir() and any(p.name.isdigit() for p in second.iterdir())
  while not (first.exists() and complete()) and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "runs" / "E2" / "seed0" / "record.json").exists()
  first_record = first.read_text()
  first_mtime = first.stat().st_mtime_ns

  rerun = _run(cmd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "1 finished earlier, skipped" in rerun.stdout
  assert "E2 seed 0: 6 steps (resumed)" in rerun.stdout
  assert first.read_text() == first_record and first.stat().st_mtime_ns == first_mtime
  # The rerun continued the killed run from its checkpoint (or, killed after its last step,
  # found it finished and only evaluated it); it never started it over.
  log = (workdir / "runs" / "E2" / "seed0" / "train.log").read_text()
  assert "resumed from checkpoint step" in log or "already holds the finished run" in log, log
  history = (workdir / "runs" / "E2" / "seed0" / "config_history.jsonl")
  assert not history.exists() or all(json.loads(l)["start_step"] > 0
                                     for l in history.read_text().splitlines())
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["point"] for r in rows] == ["E1", "E2"]
  assert COLUMNS <= set(rows[0]), COLUMNS - set(rows[0])
  assert float(rows[1]["total_params"]) > float(rows[0]["total_params"])    # 2 experts
  assert float(rows[1]["router_z_loss"]) > 0 and rows[0]["router_z_loss"] == ""  # dense: none
  assert rows[0]["active_params"] == rows[0]["total_params"]                 # dense
  summary = (out / "summary.md").read_text()
  assert "## Reading" in summary and "| E2 |" in summary
  assert (out / "loss_vs_experts.png").exists() and (out / "loss_vs_steps.png").exists()
  curves = [r["loss_curve"] for r in json.loads((out / "results.json").read_text())]
  assert [[s for s, _ in c] for c in curves] == [[2, 4, 6]] * 2   # --quick logs every 2 steps
  assert all(loss > 0 for c in curves for _, loss in c)

  # A record an older harness wrote (no version, a field missing) is rebuilt from its run
  # directory on the next invocation; nothing is retrained.
  old = json.loads(first_record)
  for key in ("record_version", "router_z_loss"):
    old.pop(key)
  first.write_text(json.dumps(old))
  metrics = (workdir / "runs" / "E1" / "seed0" / "metrics.jsonl").read_text()
  again = _run(cmd)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "2 finished earlier, skipped" in again.stdout
  assert json.loads(first.read_text()) == json.loads(first_record)
  assert (workdir / "runs" / "E1" / "seed0" / "metrics.jsonl").read_text() == metrics
  assert json.loads(first_record)["config"]["optim"]["learning_rate"] == 0.003

  # The same sweep with other settings is refused before anything runs, naming the field: the
  # finished runs are neither reused under the new command nor resumed with the new values.
  results = (out / "results.csv").read_text()
  changed = _run([*cmd, "--config.optim.learning_rate=0.5"])
  assert changed.returncode == 1
  lines = changed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and \
      "holds a run made with other settings (optim.learning_rate: 0.003 there, 0.5 now)" \
      in lines[0], changed.stderr
  assert (out / "results.csv").read_text() == results
  assert json.loads(first.read_text()) == json.loads(first_record)


def test_bad_sweep_arguments_are_one_line(tmp_path):
  proc = _run(_sweep_cmd("num_experts", tmp_path / "o", tmp_path / "w", "--only=E99"))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: --only 'E99' matches none of the sweep's points: E1, E2, E4"]
  proc = _run([sys.executable, "-m", "experiments.run", "experiments/nope.py"])
  assert proc.returncode == 1
  assert proc.stderr.strip() == "error: No such sweep file: experiments/nope.py"
  # No SLURM on this machine: refused before anything is written.
  proc = _run(_sweep_cmd("num_experts", tmp_path / "o", tmp_path / "w", "--launcher=slurm"))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: --launcher=slurm: this machine has no SLURM (srun is not on PATH); run the "
      "command on the cluster's login node, or --launcher=local to run the jobs as local "
      "processes"]
  assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("quick", [False, True], ids=["default", "quick"])
@pytest.mark.parametrize("name", SWEEPS)
def test_every_point_of_every_sweep_is_a_valid_run(name, quick):
  """Each point's overrides on its sweep's base pass the run config's checks (the default
  settings too, which only the committed results exercise otherwise)."""
  from experiments.run import load_sweep
  from moe_jax import config as config_lib
  sweep, _ = load_sweep(REPO / "experiments" / f"{name}.py", quick)
  assert len({p.name for p in sweep.points}) == len(sweep.points)
  assert sweep.seeds >= 2
  for p in sweep.points:
    run = config_lib.validate(sweep.base(), num_devices=1,
                              overrides=override_flags(p, seed=1))
    assert run.seed == 1


def test_a_sweep_runs_on_an_accelerator_config_with_overrides():
  """docs/experiments.md's example: the num_experts grid on configs/lm_gpu_node.py's model,
  with every run's mesh set so that each E fits (validated here on an 8-device count, not
  trained)."""
  from experiments.run import load_sweep, parse
  from moe_jax import config as config_lib
  args = parse(["experiments/num_experts.py", "--config", "configs/lm_gpu_node.py",
                "--config.mesh.expert=1", "--config.mesh.data=-1"])
  assert args.overrides == ["mesh.expert=1", "mesh.data=-1"]
  sweep, _ = load_sweep(REPO / args.sweep, False)
  for p in sweep.points:
    run = config_lib.validate(config_lib.load_file(REPO / args.config), num_devices=8,
                              overrides=[*args.overrides, *override_flags(p, seed=0)])
    assert run.mesh.data == 8 and run.model.d_model == 1024


def test_a_quick_sweep_with_out_keeps_its_runs_there(tmp_path, monkeypatch):
  """--out without --workdir: the runs go under --out, nothing into the checkout's runs/."""
  from experiments import harness, records, report, run
  seen = {}
  monkeypatch.setattr(harness, "run_sweep", lambda sweep, workdir, **kw: seen.setdefault(
      "workdir", workdir) and [])
  monkeypatch.setattr(records, "write_results", lambda rows, out: [])
  monkeypatch.setattr(report, "write_summary", lambda *a, **kw: [])
  run.run(run.parse(["experiments/num_experts.py", "--quick", f"--out={tmp_path / 'o'}"]))
  assert seen["workdir"] == tmp_path / "o"


def test_a_field_added_to_the_schema_since_a_run_was_recorded_reads_as_its_default(tmp_path):
  """A finished sweep run recorded before the schema grew a field is not 'other settings': the
  field it lacks is compared at its default (what the run had). A real change still is."""
  import json as json_lib
  from experiments import bases
  base = bases.lm_protocol(quick=True)
  tree = harness.check_settings(tmp_path / "new", base, [])
  recorded = json_lib.loads(json_lib.dumps(tree))
  del recorded["data"]["text_field"]                 # as written before the field existed
  run = tmp_path / "run"
  run.mkdir()
  (run / harness.SWEEP_CONFIG).write_text(json_lib.dumps(recorded))
  assert harness.check_settings(run, base, []) == tree
  with pytest.raises(harness.SettingsChanged, match=r"optim\.learning_rate"):
    harness.check_settings(run, base, ["optim.learning_rate=0.5"])


def test_results_are_replaced_whole_a_failed_write_leaves_the_previous_ones(tmp_path,
                                                                          monkeypatch):
  from experiments import records
  old = [{"point": "E1", "seed": 0, "eval_loss": 1.5}]
  records.write_results(old, tmp_path)
  before = {n: (tmp_path / n).read_text() for n in ("results.json", "results.csv")}
  with open(tmp_path / "results.csv", newline="") as f:
    assert list(csv.DictReader(f)) == [{"point": "E1", "seed": "0", "eval_loss": "1.5"}]
  def killed(self, target):             # the process dies before the new file is complete
    raise KeyboardInterrupt
  monkeypatch.setattr(pathlib.Path, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    records.write_results(old + [{"point": "E2", "seed": 0, "eval_loss": 1.4}], tmp_path)
  assert {n: (tmp_path / n).read_text() for n in before} == before
