"""Corpora from local files (config.data.corpus='files'): the documents each format yields, the
held-out split, packing with exact resume, and every bad input as one line, through the CLI.
The tests write their own files."""
import dataclasses
import json
import signal
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_jax.config import DataConfig
from moe_jax.data import datasets, local_files
from moe_jax.data.tokenizer import ByteTokenizer
from tests.test_cli_runs import _start, _wait_until
from tests.train_helpers import assert_one_line_error, cli_command, losses, run_cli, snapshot


def _texts(n, tag):
  return [f"{tag} document {i}: " + "word " * (i % 7 + 1) for i in range(n)]


@pytest.fixture
def corpus(tmp_path):
  """The same 90 documents as .txt blocks, .jsonl lines and a parquet column."""
  docs = _texts(90, "doc")
  (tmp_path / "a.txt").write_text("\n\n\n".join(docs[:30]) + "\n")
  with open(tmp_path / "b.jsonl", "w") as f:
    for d in docs[30:60]:
      f.write(json.dumps({"id": 1, "text": d}) + "\n\n")     # blank lines are skipped
  pq.write_table(pa.table({"text": docs[60:], "n": list(range(30))}), tmp_path / "c.parquet",
                 row_group_size=7)
  return tmp_path, docs


def _data(**fields):
  return dataclasses.replace(DataConfig(), corpus="files", **fields)


def test_every_format_yields_its_documents_and_the_split_is_a_partition(corpus):
  root, docs = corpus
  data = _data(files=f"{root}/*.txt,{root}/*.jsonl,{root}/*.parquet")
  train = local_files.FileDocuments(data, "train")
  held = local_files.FileDocuments(data, "validation")
  got = sorted([train[i] for i in range(len(train))] + [held[i] for i in range(len(held))])
  assert got == sorted(docs)
  assert 0 < len(held) < len(train)
  again = local_files.FileDocuments(data, "validation")     # deterministic
  assert [held[i] for i in range(len(held))] == [again[i] for i in range(len(again))]


def test_validation_files_are_the_held_out_split(corpus):
  root, docs = corpus
  data = _data(files=f"{root}/*", validation_files=f"{root}/b.jsonl")
  held = local_files.FileDocuments(data, "validation")
  train = local_files.FileDocuments(data, "train")
  assert [held[i] for i in range(len(held))] == docs[30:60]
  assert sorted(train[i] for i in range(len(train))) == sorted(docs[:30] + docs[60:])


def test_packed_windows_resume_exactly_and_validation_tokens_are_the_documents(corpus):
  root, _ = corpus
  data = _data(files=f"{root}/*", seq_len=16)
  tok = ByteTokenizer()
  it = datasets.lm_train_iterator(data, tok, batch_size=4, seed=3, shard_index=0,
                                  shard_count=1)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = datasets.lm_train_iterator(data, tok, batch_size=4, seed=3, shard_index=0,
                                       shard_count=1)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])
    np.testing.assert_array_equal(got["targets"], want["targets"])
  held = local_files.FileDocuments(data, "validation")
  tokens = datasets.lm_validation_tokens(data, tok)
  want = np.concatenate([datasets.document_tokens(held[i], tok) for i in range(len(held))])
  np.testing.assert_array_equal(tokens, want)


def test_train_and_evaluate_on_local_files_from_the_cli(corpus, tmp_path_factory):
  root, _ = corpus
  workdir = tmp_path_factory.mktemp("run")
  flags = ["--config.data.corpus=files", f"--config.data.files={root}/*.jsonl,{root}/*.txt",
           "--config.steps=4"]
  proc = run_cli(cli_command(workdir, *flags, cpu_devices=1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(losses(workdir)) == [1, 2, 3, 4]
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["data"]["files"].endswith("*.txt")
  # Resuming on other files is refused, naming the field; nothing in the workdir changes.
  before = snapshot(workdir)
  other = run_cli(cli_command(workdir, "--config.data.corpus=files",
                              f"--config.data.files={root}/*.jsonl", "--config.steps=6",
                              cpu_devices=1))
  assert_one_line_error(other, r"config\.data\.files=.* but it was .*resuming on other data")
  assert snapshot(workdir) == before
  # evaluate --text: a report on those files, the workdir untouched; a glob matching nothing
  # is one line.
  proc = run_cli([sys.executable, "-m", "moe_jax.evaluate", f"--workdir={workdir}",
                  "--cpu_devices=1", f"--text={root}/a.txt"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bits per byte" in proc.stdout and "a.txt" in proc.stdout, proc.stdout
  assert snapshot(workdir) == before
  missing = run_cli([sys.executable, "-m", "moe_jax.evaluate", f"--workdir={workdir}",
                     "--cpu_devices=1", f"--text={root}/nothing*.txt"])
  assert_one_line_error(missing, r"config\.data\.files=.*nothing\*\.txt' matches no file")


@pytest.mark.parametrize("make, flags, message", [
    (lambda r: None, ["--config.data.files={r}/none/*.txt"], r"matches no file"),
    (lambda r: None, [], r"needs config\.data\.files"),
    (lambda r: (r / "x.txt.gz").write_bytes(b"\x1f\x8b"), ["--config.data.files={r}/x.txt.gz"],
     r"x\.txt\.gz is compressed \(\.gz\); decompress it first"),
    (lambda r: (r / "x.jsonl").write_text('{"body": "hi", "id": 1}\n'),
     ["--config.data.files={r}/x.jsonl"],
     r"x\.jsonl: no field 'text' \(config\.data\.text_field\); its fields: body, id"),
    (lambda r: (r / "x.parquet").write_bytes(b"PAR1 truncated"),
     ["--config.data.files={r}/x.parquet"], r"x\.parquet: not a readable parquet file"),
    (lambda r: pq.write_table(pa.table({"body": ["a"]}), r / "y.parquet"),
     ["--config.data.files={r}/y.parquet"],
     r"y\.parquet: no column 'text' \(config\.data\.text_field\); its columns: body"),
    (lambda r: (r / "empty.txt").write_text("\n\n"), ["--config.data.files={r}/empty.txt"],
     r"the train split of .*empty\.txt' holds no document"),
    (lambda r: (r / "two.txt").write_text("one\n\ntwo\n"), ["--config.data.files={r}/two.txt"],
     r"none of the 2 documents of .*two\.txt' falls in the held-out 1/10; name validation "
     r"documents with config\.data\.validation_files"),
], ids=["no-match", "unset", "gzip", "jsonl-field", "truncated-parquet", "parquet-column",
        "empty", "no-held-out"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, make, flags, message):
  make(tmp_path)
  workdir = tmp_path / "run"
  cmd = cli_command(workdir, "--config.data.corpus=files", "--config.steps=2",
                    *[f.format(r=tmp_path) for f in flags], cpu_devices=1)
  assert_one_line_error(run_cli(cmd), message)
  assert not (workdir / "checkpoints").exists()


def test_a_sentencepiece_tokenizer_trains_on_the_training_files(tmp_path):
  from moe_jax.data import corpora
  texts = [t.decode() for _, t in corpora.split_documents("pydoc_topics", "train")[:60]]
  with open(tmp_path / "topics.jsonl", "w") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
  data = _data(files=f"{tmp_path}/*.jsonl", tokenizer="sentencepiece", vocab_size=512,
               tokenizer_train_bytes=100_000)
  tok = datasets.load_or_train_tokenizer(data, "files", tmp_path)
  assert tok.vocab_size == 512 and (tmp_path / datasets.TOKENIZER_FILE).exists()
  assert tok.decode(tok.encode(texts[0])) == texts[0]


# make test's budget: test-all (make test resumes a packed stream exactly in
# tests/test_tfds_training.py's mock lm1b run, the same iterator over other documents)
@pytest.mark.slow
@pytest.mark.xdist_group("subprocess_training")
def test_a_run_killed_mid_training_resumes_with_the_uninterrupted_losses(corpus,
                                                                         tmp_path_factory):
  """SIGKILL after checkpoint 3 of an 8-step run on local files; the rerun restores the packed
  iterator's (document, offset) and logs exactly the uninterrupted run's losses."""
  root, _ = corpus
  flags = ["--config.data.corpus=files", f"--config.data.files={root}/*", "--config.steps=8",
           "--config.checkpoint.every=3"]
  tmp_path = tmp_path_factory.mktemp("runs")     # beside the corpus, not in it
  reference = tmp_path / "reference"
  assert run_cli(cli_command(reference, *flags, cpu_devices=1)).returncode == 0
  workdir, log = tmp_path / "run", tmp_path / "killed.log"
  killed = _start(cli_command(workdir, *flags, cpu_devices=1), log)
  _wait_until(lambda: max(losses(workdir), default=0) >= 5, killed, log)
  killed.send_signal(signal.SIGKILL)
  killed.wait(timeout=60)
  rerun = run_cli(cli_command(workdir, *flags, cpu_devices=1))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resumed from checkpoint step" in rerun.stdout
  assert losses(workdir) == losses(reference)
