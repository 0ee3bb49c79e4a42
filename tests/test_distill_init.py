"""Task `distill` at the student's first start: the Switch Transformer recipe's initialisation
from the teacher (`distill.init_from_teacher`), the teacher step used (recorded), a corrupt
teacher checkpoint (the printed command works) and a teacher still being trained (refused)."""
import json
import shlex
import shutil
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

from moe_jax import config as config_lib, run_setup, workdir as workdir_lib
from moe_jax.parallel.mesh import make_mesh
from moe_jax.run_log import read_metrics
from moe_jax.tasks import distill
from moe_jax.train import train
from tests.train_helpers import (REPO, assert_one_line_error, cli_command, run_cli,
                                 small_config, snapshot, subprocess_env)

TEACHER_STEPS = 40
# A 4-layer MoE teacher: layers 0 and 2 dense, 1 and 3 MoE (4 experts).
TEACHER_MODEL = dict(num_layers=4, first_dense_layers=1, moe_every=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  cfg = small_config(steps=TEACHER_STEPS)
  cfg.model.update(TEACHER_MODEL)
  cfg.optim.learning_rate = 1e-2
  cfg.checkpoint.update(every=TEACHER_STEPS // 2, keep=3)
  train(cfg, workdir, progress=False)
  return workdir


def _student(teacher, steps=1, num_layers=4, **distill_options):
  cfg = small_config(steps=steps)
  cfg.model.update(num_experts=0, num_layers=num_layers)
  cfg.task = "distill"
  cfg.distill = dict(teacher_workdir=str(teacher), **distill_options)
  return cfg


def _flat(module) -> dict[str, np.ndarray]:
  return {".".join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _initialized(cfg):
  run = config_lib.validate(cfg, num_devices=jax.device_count())
  mesh = make_mesh(**run.mesh.__dict__)
  model, _ = run_setup.build(run, mesh)
  distill.initialize(run, model, mesh)
  return run, mesh, model


def test_init_from_teacher_copies_exactly_the_non_expert_params(teacher, capsys):
  run, mesh, model = _initialized(_student(teacher, init_from_teacher=True))
  line = capsys.readouterr().out.strip()
  plain = _flat(run_setup.build(run, mesh)[0].student)    # the student's own init (same seed)
  teacher_run, _ = distill._teacher_run(run)  # noqa: SLF001
  graphdef, state, step = run_setup.restore_for_eval(teacher_run, teacher, mesh, None)
  theirs = _flat(nnx.merge(graphdef, state)[0])
  mine = _flat(model.student)

  blocks = "transformer.blocks"
  expected = {"transformer.embed", "transformer.norm.scale"}
  for i in range(4):
    expected |= {f"{blocks}.{i}.attn.qkv.kernel", f"{blocks}.{i}.attn.out.kernel",
                 f"{blocks}.{i}.norm_attn.scale", f"{blocks}.{i}.norm_ffn.scale"}
  for i in (0, 2):                          # dense in the teacher: its FFN is copied
    expected |= {f"{blocks}.{i}.ffn.w_in.kernel", f"{blocks}.{i}.ffn.w_out.kernel"}
  kept = {f"{blocks}.{i}.ffn.{w}.kernel" for i in (1, 3) for w in ("w_in", "w_out")}
  assert set(mine) == expected | kept and not expected & kept
  for name in expected:                     # bit for bit the teacher's
    assert mine[name].dtype == theirs[name].dtype
    assert np.array_equal(mine[name], theirs[name]), name
    assert not np.array_equal(mine[name], plain[name]) or name.endswith("scale"), name
  for name in kept:                          # bit for bit the student's own init
    assert np.array_equal(mine[name], plain[name]), name
  # The teacher inside the student's model is the teacher's checkpoint, untouched.
  assert all(np.array_equal(v, theirs[k]) for k, v in _flat(model.teacher).items())
  assert step == TEACHER_STEPS and run.record["distill"]["teacher_step"] == TEACHER_STEPS
  assert line.startswith(f"init_from_teacher: copied {len(expected)} of "
                         f"{len(expected) + len(kept)} parameter arrays"), line
  assert line.endswith(", ".join(sorted(kept))) and "\n" not in line, line

  # What copy_from_teacher returns is the same split.
  copied, left = distill.copy_from_teacher(model.student, model.teacher, run.model,
                                           teacher_run.model)
  assert set(copied) == expected and set(left) == kept


def test_init_from_teacher_off_leaves_the_student_alone(teacher, capsys):
  run, mesh, model = _initialized(_student(teacher))
  assert capsys.readouterr().out == ""
  plain = _flat(run_setup.build(run, mesh)[0].student)
  assert all(np.array_equal(v, plain[k]) for k, v in _flat(model.student).items())


def test_a_student_of_another_width_is_refused(teacher):
  cfg = _student(teacher, init_from_teacher=True)
  cfg.model.d_model = 64
  with pytest.raises(ValueError, match=r"^config.distill.init_from_teacher=True but no "
                                       r"parameter .* \(student d_model=64, teacher's 32\)"):
    _initialized(cfg)
  with pytest.raises(ValueError, match=r"config.distill.init_from_teacher must be True or "
                                       r"False, got 'yes'"):
    config_lib.validate(_student(teacher, init_from_teacher="yes"),
                        num_devices=jax.device_count())


@pytest.mark.slow   # make test's budget: test-all
def test_switch_recipe_cli_starts_near_the_teacher(teacher, tmp_path):
  """`--config.distill.init_from_teacher=True --config.distill.alpha=0.25` trains; the
  student's first-step CE is much closer to the teacher's loss than a random student's."""
  flags = ["--config.task=distill", "--config.model.num_experts=0",
           "--config.model.num_layers=4", f"--config.distill.teacher_workdir={teacher}",
           "--config.distill.alpha=0.25", "--config.steps=3"]
  proc = run_cli(cli_command(tmp_path / "switch", *flags,
                             "--config.distill.init_from_teacher=True"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("init_from_teacher: copied 22 of 26 parameter arrays") == 1
  random = run_cli(cli_command(tmp_path / "random", *flags))
  assert random.returncode == 0, random.stderr[-3000:]

  def first_ce(workdir):
    return next(r["ce"] for r in read_metrics(workdir) if r.get("step") == 1 and "ce" in r)
  records = [r for r in read_metrics(teacher) if "loss" in r]
  teacher_loss = np.mean([r["loss"] for r in records[-5:]])
  switch, scratch = first_ce(tmp_path / "switch"), first_ce(tmp_path / "random")
  print(f"teacher {teacher_loss:.3f}, init_from_teacher {switch:.3f}, random {scratch:.3f}")
  assert abs(switch - teacher_loss) < 0.5 * abs(scratch - teacher_loss)
  recorded = json.loads((tmp_path / "switch" / "config.json").read_text())["distill"]
  assert recorded["teacher_step"] == TEACHER_STEPS and recorded["init_from_teacher"] is True
  assert recorded["alpha"] == 0.25


@pytest.mark.slow   # make test's budget: test-all
def test_corrupt_teacher_error_prints_a_command_that_works(teacher, tmp_path):
  """Issue 28, 8: the message suggested the student's --config.restore_step; the printed
  command (with --config.distill.teacher_step=N) now runs as printed and records step N."""
  copy = tmp_path / "teacher"
  shutil.copytree(teacher, copy)
  for f in (copy / "checkpoints" / str(TEACHER_STEPS) / "state").rglob("d/*"):
    f.write_bytes(b"not a tensorstore chunk")
  student = tmp_path / "student"
  cmd = cli_command(student, "--config.task=distill", "--config.model.num_experts=0",
                    f"--config.distill.teacher_workdir={copy}", "--config.steps=2",
                    cpu_devices=1)
  older = TEACHER_STEPS // 2
  line = assert_one_line_error(
      run_cli(cmd), rf"^error: the teacher's checkpoint {copy}/checkpoints/{TEACHER_STEPS} is "
                    rf"corrupt or incomplete \(.*\); distill from an older one \(available: "
                    rf"\[{older}\]\) with --config\.distill\.teacher_step={older}: "
                    r"python -m moe_jax\.train ")
  assert "restore_step" not in line
  assert not student.exists()                        # the refused run wrote nothing
  printed = shlex.split(line.split(": python ", 1)[1])
  proc = subprocess.run([subprocess.sys.executable] + printed, cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((student / "config.json").read_text())["distill"]["teacher_step"] == older


def test_a_teacher_still_training_is_refused_unless_its_step_is_pinned(teacher, tmp_path):
  copy = tmp_path / "teacher"
  shutil.copytree(teacher, copy)
  student = tmp_path / "student"
  with workdir_lib.hold(copy):                       # a live run holds the teacher's workdir
    with pytest.raises(ValueError, match=rf"^config.distill.teacher_workdir={copy} is in use by "
                                         r"process \d+ .*: the teacher is still being trained; "
                                         r"wait for that run to end, or pin one of its complete "
                                         rf"checkpoints with --config.distill.teacher_step="
                                         rf"{TEACHER_STEPS} \(available: "):
      train(_student(copy), student, progress=False)
    assert not student.exists()
    before = snapshot(copy)
    train(_student(copy, teacher_step=TEACHER_STEPS // 2), student, progress=False)
    assert snapshot(copy) == before
  recorded = json.loads((student / "config.json").read_text())["distill"]
  assert recorded["teacher_step"] == TEACHER_STEPS // 2


@pytest.mark.slow   # make test's budget: test-all
def test_a_resume_without_teacher_step_keeps_the_recorded_step_and_reports_no_change(teacher,
                                                                                     tmp_path):
  """The first start records the teacher step it chose; resuming with the flag still unset
  does not list it as changed (only the steps this resume extends)."""
  student = tmp_path / "student"
  flags = ["--config.model.num_experts=0", "--config.task=distill",
           f"--config.distill.teacher_workdir={teacher}", "--config.checkpoint.every=2"]
  first = run_cli(cli_command(student, *flags, "--config.steps=2", cpu_devices=1))
  assert first.returncode == 0, first.stderr[-3000:]
  resumed = run_cli(cli_command(student, *flags, "--config.steps=4", cpu_devices=1))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint step 2" in resumed.stdout
  assert "config changed since the last start: steps (recorded" in resumed.stdout
  history = [json.loads(line) for line in
             (student / workdir_lib.HISTORY_FILE).read_text().splitlines()]
  assert [h["changes"] for h in history] == [{"steps": [2, 4]}]
  assert json.loads((student / "config.json").read_text())["distill"]["teacher_step"] == \
      TEACHER_STEPS
