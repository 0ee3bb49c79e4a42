"""OS errors through the CLI: a read-only file system and a full disk are one `error:` line
each, the checkpoints already written stay intact, and `evaluate` prints its results before
it tries to write any file. The file systems are real: small tmpfs mounts (root only, as on
the machines this project is developed and tested on; skipped elsewhere)."""
import contextlib
import subprocess

import pytest

from tests.train_helpers import (REPO, assert_one_line_error, cli_command, eval_command, losses,
                                 run_cli, subprocess_env)

pytestmark = pytest.mark.xdist_group("subprocess_training")


@contextlib.contextmanager
def tmpfs(path, size: str):
  path.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path, options: str):
  subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def _checkpoints(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_read_only_file_system(tmp_path):
  with tmpfs(tmp_path / "fs", "64m") as fs:
    workdir = fs / "run"
    assert run_cli(cli_command(workdir, "--config.steps=8", cpu_devices=1)).returncode == 0
    remount(fs, "ro")
    # Training on: refused at once, nothing changed.
    assert_one_line_error(run_cli(cli_command(workdir, "--config.steps=12", cpu_devices=1)),
                          r"cannot write to --workdir .*/run: Read-only file system")
    # A new run in it.
    assert_one_line_error(run_cli(cli_command(fs / "new", "--config.steps=8", cpu_devices=1)),
                          r"cannot create --workdir .*/new: Read-only file system")
    # evaluate computes and prints everything, then says in one line what it could not write.
    proc = run_cli(eval_command(workdir, cpu_devices=1))
    assert "bits per byte" in proc.stdout and "greedy:" in proc.stdout
    assert_one_line_error(proc, r"Read-only file system: .*eval\.json")
    remount(fs, "rw")
    assert _checkpoints(workdir) == [4, 8] and sorted(losses(workdir)) == list(range(1, 9))


@pytest.mark.slow   # make test's budget: test-all
def test_full_disk_is_one_line_and_the_run_resumes_after_freeing_space(tmp_path):
  with tmpfs(tmp_path / "fs", "3m") as fs:
    workdir = fs / "run"
    cmd = cli_command(workdir, "--config.steps=40", "--config.checkpoint.every=1",
                      "--config.checkpoint.keep=100", cpu_devices=1)
    line = assert_one_line_error(run_cli(cmd), r"No space left on device")
    assert "could not save checkpoint step" in line or "metrics" in line or "tensorboard" in line
    saved = _checkpoints(workdir)
    assert saved, "the disk filled before the first checkpoint; make the tmpfs larger"
    remount(fs, "size=256m")                          # space freed
    proc = run_cli(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from checkpoint step {saved[-1]}" in proc.stdout
    assert sorted(losses(workdir)) == list(range(1, 41))


def test_a_full_disk_that_tensorboard_hits_first_is_one_line_not_a_hang(tmp_path):
  """Issue 28, 1: tensorboardX's writer thread died on the full disk and the training loop
  blocked forever in its queue (SIGTERM did not stop it either). Here only tensorboard/ is on
  a full (4 KiB) tmpfs, so its events file is the first to hit it, a few steps in. The run
  stops with one line naming the directory; the checkpoints saved stay intact and resume."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  cmd = cli_command(workdir, "--config.steps=16", cpu_devices=1)
  with tmpfs(workdir / "tensorboard", "4k"):
    # Bounded: the old code hung here (at about step 12) until killed.
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=150)
    assert_one_line_error(proc, rf"^error: could not write TensorBoard events to "
                                rf"{workdir}/tensorboard \(No space left on device\); the "
                                r"checkpoints already saved are intact: free space, then "
                                r"rerun the same command to resume$")
  saved, logged = _checkpoints(workdir), sorted(losses(workdir))
  assert saved and logged == list(range(1, logged[-1] + 1)) and saved[-1] <= logged[-1] < 16
  proc = run_cli(cmd)                                # space freed (the tmpfs is gone)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from checkpoint step {saved[-1]}" in proc.stdout
  assert sorted(losses(workdir)) == list(range(1, 17))
