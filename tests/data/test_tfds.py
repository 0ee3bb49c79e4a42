"""tfds datasets through the real pipelines, on tfds.testing.mock_data (random examples of each
dataset's real feature spec: the datasets themselves cannot be downloaded here)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from moe_jax import config as config_lib
from moe_jax.data import datasets, tfds_data
from moe_jax.data.packing import PackedWindows

NUM_EXAMPLES = 48


def make_run(task: str, **data):
  cfg = dict(task=task, steps=1, mesh=dict(data=1, expert=1), optim=dict(warmup_steps=0),
             model=dict(vocab_size=512, d_model=16, num_layers=1, num_heads=2, max_len=80,
                        num_experts=0),
             data=dict(seq_len=32, batch_size=8, eval_batch_size=8, **data))
  if task == "classification":
    cfg["classifier"] = dict(patch_size=4)
  return config_lib.validate(config_lib.from_json(__import__("json").dumps(cfg)),
                             num_devices=1)


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    yield


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


CLASSIFICATION = {
    "mnist": {"inputs": ((8, 28, 28, 1), np.float32), "labels": ((8,), np.int32)},
    "cifar10": {"inputs": ((8, 32, 32, 3), np.float32), "labels": ((8,), np.int32)},
    "imdb_reviews": {"inputs": ((8, 32), np.int32), "token_mask": ((8, 32), np.float32),
                     "labels": ((8,), np.int32)},
    "ag_news_subset": {"inputs": ((8, 32), np.int32), "token_mask": ((8, 32), np.float32),
                       "labels": ((8,), np.int32)},
}


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_batches_and_exact_resume(mock_tfds, name):
  run = make_run("classification", dataset=name)
  tokenizer = datasets.load_or_train_tokenizer(run.data, run.data.dataset)
  make = lambda: datasets.classification_train_iterator(run.data, tokenizer, batch_size=8,
                                                        seed=3)
  it = make()
  first = _take(it, 3)
  for batch in first:
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == CLASSIFICATION[name]
  spec = tfds_data.spec(name)
  labels = np.concatenate([b["labels"] for b in first])
  assert labels.min() >= 0 and labels.max() < spec.num_classes
  if spec.kind == "image":
    assert 0.0 <= first[0]["inputs"].min() and first[0]["inputs"].max() <= 1.0
    assert first[0]["inputs"].max() > 0.5          # scaled from uint8, not all zeros
  else:
    # Real tokens where the mask is 1, zero padding where it is 0.
    mask, inputs = first[0]["token_mask"], first[0]["inputs"]
    assert np.all(inputs[mask == 0] == 0) and mask.sum() > 0
  state = it.get_state()
  expected = _take(it, 4)                           # crosses the 48-example epoch boundary
  resumed = make()
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 4), expected)

  val = datasets.classification_validation(run.data, tokenizer)
  assert len(val["labels"]) == NUM_EXAMPLES
  assert {k: v.shape[1:] for k, v in val.items()} == {
      k: shape[1:] for k, (shape, _) in CLASSIFICATION[name].items()}


@pytest.mark.parametrize("name,iterator", [("lm1b", PackedWindows),
                                           ("tiny_shakespeare", None)])
def test_lm_batches_and_exact_resume(mock_tfds, name, iterator):
  run = make_run("lm", corpus=name)
  tokenizer = datasets.load_or_train_tokenizer(run.data, run.data.corpus)
  make = lambda: datasets.lm_train_iterator(run.data, tokenizer, batch_size=8, seed=5)
  it = make()
  if iterator is not None:
    assert isinstance(it, iterator)
  first = _take(it, 2)
  for batch in first:
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "inputs": ((8, 32), np.int32), "targets": ((8, 32), np.int32)}
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  state = it.get_state()
  expected = _take(it, 5)
  resumed = make()
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 5), expected)
  val = datasets.lm_validation_tokens(run.data, tokenizer)
  assert val.ndim == 1 and val.size > 32


def test_packed_windows_cut_the_document_stream_exactly():
  """Unshuffled, one process: window k is tokens [kL, kL+L] of the marked document stream,
  whatever the documents' lengths (some longer than a window, some a single token)."""
  rng = np.random.default_rng(0)
  docs = [rng.integers(1, 50, size=n).astype(np.int32) for n in (3, 40, 1, 7, 90, 2, 15)]
  marked = lambda d: np.concatenate([d, [0]])
  stream = np.concatenate([marked(d) for d in docs] * 4)
  L = 8
  it = PackedWindows(docs, marked, seq_len=L, batch_size=3, shuffle=False, shard_index=0,
                     shard_count=1)
  rows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)
                         for b in _take(it, 10)])
  for k, row in enumerate(rows):
    np.testing.assert_array_equal(row, stream[k * L:k * L + L + 1])


def test_packed_windows_shards_are_disjoint_documents():
  docs = [np.full(5, i, np.int32) for i in range(12)]   # document i is all i
  seen = []
  for index in range(3):
    it = PackedWindows(docs, lambda d: d, seq_len=5, batch_size=1, seed=1, shard_index=index,
                       shard_count=3)
    seen.append({int(next(it)["inputs"][0, 0]) for _ in range(4)})
  assert set.union(*seen) == set(range(12))
  assert sum(map(len, seen)) == 12


def test_missing_dataset_names_dataset_dir_and_command(tmp_path):
  with pytest.raises(tfds_data.DatasetNotPreparedError) as e:
    tfds_data.open_split("mnist", "train", str(tmp_path))
  message = str(e.value)
  assert "'mnist'" in message and str(tmp_path) in message
  assert "tfds build mnist" in message and "[tf]" in message
  assert "--file_format array_record" in message


def test_missing_dataset_fails_train_before_compiling(tmp_path):
  from moe_jax.train import train
  cfg = config_lib.from_json(__import__("json").dumps(dict(
      task="classification", steps=1, mesh=dict(data=-1, expert=1), optim=dict(warmup_steps=0),
      classifier=dict(patch_size=4),
      model=dict(vocab_size=256, d_model=16, num_layers=1, num_heads=2, max_len=64,
                 num_experts=0),
      data=dict(dataset="cifar10", data_dir=str(tmp_path / "nothing"), batch_size=8,
                eval_batch_size=8))))
  with pytest.raises(tfds_data.DatasetNotPreparedError, match="cifar10"):
    train(cfg, tmp_path / "run", progress=False)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_split_and_unknown_dataset():
  with pytest.raises(ValueError, match="has no split 'validation'.*train, test"):
    tfds_data.open_split("mnist", "validation")
  with pytest.raises(ValueError, match="has no split 'dev'"):
    tfds_data.check_split("imdb_reviews", "train[:90%]+dev")
  assert tfds_data.check_split("imdb_reviews", "train[:90%]+unsupervised")
  with pytest.raises(ValueError, match="imagenet"):
    tfds_data.open_split("imagenet", "train")
  with pytest.raises(ValueError, match="config.data.*dataset.*'imagenet2012'.*cifar10"):
    make_run("classification", dataset="imagenet2012")
  with pytest.raises(ValueError, match="config.data.*corpus.*'c4'.*lm1b"):
    make_run("lm", corpus="c4")
