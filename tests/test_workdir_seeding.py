"""workdir.seeding: what a seeding command (upcycle, hf import) accepts, clears and refuses in
its workdir, without building a model."""
import json

import pytest

from moe_jax import workdir as workdir_lib


def _seed(path, keep=()):
  with workdir_lib.seeding(path, verb="upcycle", command="python -m moe_jax.upcycle ...",
                           outputs=("config.json",), keep=keep):
    (path / "checkpoints").mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")


def test_a_foreign_file_refuses_before_anything_is_touched(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(workdir_lib.WorkdirError, match="already holds a run.*notes.txt"):
    _seed(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_kept_files_are_neither_refused_nor_cleared(tmp_path):
  """A sweep writes its settings and log into the run's directory before it upcycles there."""
  (tmp_path / "sweep_config.json").write_text(json.dumps({"steps": 3}))
  (tmp_path / "train.log").write_text("log\n")
  _seed(tmp_path, keep=("sweep_config.json", "train.log"))
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "checkpoints", "config.json", "sweep_config.json", "train.log"]
  assert json.loads((tmp_path / "sweep_config.json").read_text()) == {"steps": 3}


def test_an_interrupted_seeding_is_cleared_but_kept_files_stay(tmp_path):
  (tmp_path / "train.log").write_text("log\n")
  with pytest.raises(RuntimeError):
    with workdir_lib.seeding(tmp_path, verb="upcycle", command="c", outputs=("config.json",),
                             keep=("train.log",)):
      (tmp_path / "checkpoints").mkdir()
      (tmp_path / "checkpoints" / "partial").write_text("x")
      raise RuntimeError("killed")
  assert (tmp_path / workdir_lib.SEEDING_FILE).exists()
  _seed(tmp_path, keep=("train.log",))
  assert not (tmp_path / "checkpoints" / "partial").exists()
  assert (tmp_path / "train.log").read_text() == "log\n"
  assert not (tmp_path / workdir_lib.SEEDING_FILE).exists()
