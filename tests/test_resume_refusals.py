"""Resuming a run on other data, or with its tokenizer file gone, is refused in one line that
names what changed and writes nothing (issue 28 items 4 and 5): the checkpoint would restore
one data set's position into another's, and a retrained SentencePiece model can differ."""
import json
import shutil

import pytest

from moe_jax import config as config_lib, run_setup
from tests.train_helpers import assert_one_line_error, cli_command, run_cli, small_config, snapshot

# A SentencePiece run (a small tokenizer, trained in about a second) on one device.
SP = ["--config.data.tokenizer=sentencepiece", "--config.data.vocab_size=512",
      "--config.model.vocab_size=512", "--config.data.tokenizer_train_bytes=50000"]


def _command(workdir, *flags):
  return cli_command(workdir, *SP, *flags, cpu_devices=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resume") / "base"
  proc = run_cli(_command(workdir, "--config.steps=4"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / "tokenizer.model").exists() and (workdir / "checkpoints" / "4").is_dir()
  return workdir


@pytest.mark.parametrize("flag,message", [
    ("--config.data.corpus=stdlib_py",
     r"config.data.corpus='stdlib_py' but it was 'pydoc_topics' when checkpoint 4 in \S+ was "
     r"trained: resuming on other data is refused; resume with "
     r"--config.data.corpus=pydoc_topics, or train on the new data in a new --workdir"),
    ("--config.data.seq_len=16",
     r"config.data.seq_len=16 but it was 32 .*--config.data.seq_len=32"),
])
def test_resuming_on_other_data_is_refused(base, tmp_path, flag, message):
  workdir = tmp_path / "w"
  shutil.copytree(base, workdir, symlinks=True)          # cp -a base W
  before = snapshot(workdir)
  assert_one_line_error(run_cli(_command(workdir, "--config.steps=8", flag)), message)
  assert snapshot(workdir) == before


def test_resuming_without_the_tokenizer_file_is_refused(base, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(base, workdir, symlinks=True)
  (workdir / "tokenizer.model").unlink()
  before = snapshot(workdir)
  assert_one_line_error(run_cli(_command(workdir, "--config.steps=8")),
                        rf"{workdir / 'tokenizer.model'} is missing: checkpoint 4 was trained "
                        "with the SentencePiece tokenizer saved there")
  assert snapshot(workdir) == before and not (workdir / "tokenizer.model").exists()


def test_checkpoints_written_before_data_was_recorded_are_checked_against_config_json(tmp_path):
  """A checkpoint whose meta lacks 'data' (older runs): the recorded config decides."""
  cfg = small_config()
  recorded = config_lib.validate(cfg, num_devices=8)
  (tmp_path / "config.json").write_text(json.dumps(recorded.record))
  run_setup.check_same_data(recorded, tmp_path, {}, 4)       # the same data: accepted
  changed = config_lib.validate(cfg, num_devices=8, overrides=["data.corpus=stdlib_py"])
  with pytest.raises(ValueError, match="config.data.corpus='stdlib_py' but it was "
                                       "'pydoc_topics'"):
    run_setup.check_same_data(changed, tmp_path, {}, 4)
  run_setup.check_same_data(changed, tmp_path / "none", {}, 4)   # no record: nothing to check
