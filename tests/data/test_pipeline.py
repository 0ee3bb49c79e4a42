"""The grain input pipeline: windows, shapes, determinism, sharding, resumable state, eval."""
from __future__ import annotations

import json

import numpy as np
import pytest

from moe_jax.data import (
    WindowSource,
    eval_batches,
    load_corpus,
    make_dataset,
    make_iterator,
    num_eval_batches,
)

# Default shard args come from jax.process_*; pass them explicitly so tests need no jax init.
ONE_SHARD = dict(shard_index=0, shard_count=1)


@pytest.fixture(scope="module")
def corpus():
  return load_corpus("pydoc_topics", "validation")


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_windows_are_shifted_by_one():
  tokens = np.arange(100, 141, dtype=np.uint8)  # 41 tokens, seq_len 8 -> 5 windows
  source = WindowSource(tokens, 8)
  assert len(source) == 5
  for i in range(len(source)):
    item = source[i]
    assert item["inputs"].dtype == np.int32 and item["inputs"].shape == (8,)
    np.testing.assert_array_equal(item["inputs"], tokens[i * 8:i * 8 + 8])
    np.testing.assert_array_equal(item["targets"], tokens[i * 8 + 1:i * 8 + 9])
  assert len(WindowSource(tokens[:40], 8)) == 4  # window 4 would need token 40
  with pytest.raises(IndexError):
    source[5]


def test_batches_have_right_shapes_and_content(corpus):
  it = make_iterator(corpus, seq_len=32, batch_size=4, seed=0, **ONE_SHARD)
  for batch in _take(it, 3):
    assert set(batch) == {"inputs", "targets"}
    for v in batch.values():
      assert v.shape == (4, 32) and v.dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    for row in batch["inputs"]:  # each row is a window starting at a multiple of seq_len
      starts = [s for s in range(0, corpus.size - 32, 32) if np.array_equal(corpus[s:s + 32], row)]
      assert starts


def test_same_seed_same_batches_other_seed_differs(corpus):
  kw = dict(seq_len=16, batch_size=4, **ONE_SHARD)
  a = _take(make_iterator(corpus, seed=7, **kw), 4)
  b = _take(make_iterator(corpus, seed=7, **kw), 4)
  c = _take(make_iterator(corpus, seed=8, **kw), 4)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_one_epoch_visits_every_window_once():
  tokens = np.arange(1, 81, dtype=np.int32) * 3  # 80 tokens, seq_len 4 -> 19 windows
  it = make_iterator(tokens, seq_len=4, batch_size=3, seed=1, num_epochs=1, **ONE_SHARD)
  firsts = np.concatenate([b["inputs"][:, 0] for b in it])
  assert len(firsts) == 18  # 19 windows, drop_remainder
  assert len(set(firsts.tolist())) == 18
  assert set(firsts.tolist()) <= set(tokens[0:76:4].tolist())


def test_process_rows_tile_the_single_process_global_batch():
  """Processes split each global batch into contiguous row blocks: together they are exactly
  the batches one process with the global batch size draws, so multi-host losses equal
  single-process losses."""
  seq_len = 4
  tokens = np.arange(4 * 23 + 1, dtype=np.int32)  # 23 windows; a window's first input = start

  def batches(index, batch_size, count):
    ds = make_dataset(tokens, seq_len=seq_len, batch_size=batch_size, seed=3, num_epochs=2,
                      shard_index=index, shard_count=count)
    return [batch["inputs"] for batch in ds]

  whole = batches(0, 6, 1)
  for count in (2, 3):
    parts = [batches(i, 6 // count, count) for i in range(count)]
    assert all(len(p) == len(whole) for p in parts)     # every process: the same batch count
    for j, batch in enumerate(whole):
      np.testing.assert_array_equal(np.concatenate([p[j] for p in parts]), batch)
  a, b = batches(0, 3, 2), batches(1, 3, 2)
  assert not {int(r[0]) for x in a[:3] for r in x} & {int(r[0]) for x in b[:3] for r in x}


@pytest.mark.parametrize("read_threads,prefetch", [(1, 4), (0, 0)])
def test_iterator_state_round_trip(corpus, read_threads, prefetch):
  kw = dict(seq_len=16, batch_size=4, seed=5, read_threads=read_threads, prefetch=prefetch,
            **ONE_SHARD)
  it = make_iterator(corpus, **kw)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # must survive JSON (Orbax's grain handler)
  a = _take(it, 2)
  fresh = make_iterator(corpus, **kw)
  fresh.set_state(state)
  b = _take(fresh, 2)
  _assert_batches_equal(a, b)
  # ...and it continues where an uninterrupted run would be.
  _assert_batches_equal(_take(make_iterator(corpus, **kw), 5)[3:], a)


def test_state_round_trip_across_epoch_boundary():
  tokens = np.arange(50, dtype=np.int32)  # 12 windows of seq_len 4 -> 4 batches of 3 per epoch
  kw = dict(seq_len=4, batch_size=3, seed=0, **ONE_SHARD)
  it = make_iterator(tokens, **kw)
  _take(it, 3)
  state = it.get_state()
  a = _take(it, 3)  # crosses into epoch 2, which is shuffled differently
  fresh = make_iterator(tokens, **kw)
  fresh.set_state(state)
  _assert_batches_equal(a, _take(fresh, 3))


def test_eval_batches_cover_each_window_once(corpus):
  seq_len, batch = 64, 5
  batches = list(eval_batches(corpus, seq_len=seq_len, batch_size=batch, **ONE_SHARD))
  n_windows = (corpus.size - 1) // seq_len
  assert len(batches) == num_eval_batches(corpus.size, seq_len=seq_len, batch_size=batch)
  assert len(batches) == -(-n_windows // batch)
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (batch, seq_len)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32 and b["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n_windows * seq_len and mask[:n_windows].all()
  targets = np.concatenate([b["targets"] for b in batches])[:n_windows]
  starts = np.concatenate([b["inputs"] for b in batches])[:n_windows, 0]
  windows = corpus[1:1 + n_windows * seq_len].reshape(n_windows, seq_len)
  # The order depends on the number of windows only: read it off a corpus of positions.
  positions = list(eval_batches(np.arange(corpus.size), seq_len=seq_len, batch_size=batch,
                                **ONE_SHARD))
  order = list(np.concatenate([b["inputs"] for b in positions])[:n_windows, 0] // seq_len)
  assert sorted(order) == list(range(n_windows))          # every window once
  np.testing.assert_array_equal(targets, windows[order])
  np.testing.assert_array_equal(starts, corpus[np.array(order) * seq_len])
  # Shuffled: a batch's windows come from across the split, not one stretch of text (a routing
  # group at evaluation should look like a training batch's).
  assert order != sorted(order)
  first = sorted(order[:batch])
  assert first[-1] - first[0] > n_windows // 2
  # Deterministic: a second pass is identical.
  _assert_batches_equal(batches, list(eval_batches(corpus, seq_len=seq_len, batch_size=batch,
                                                   **ONE_SHARD)))


def test_eval_shards_split_windows_with_equal_batch_counts():
  tokens = np.arange(4 * 7 + 1, dtype=np.int32)  # 7 windows of seq_len 4
  shards = [list(eval_batches(tokens, seq_len=4, batch_size=2, shard_index=i, shard_count=2))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 2
  firsts = [b["inputs"][r, 0] for s in shards for b in s for r in range(2) if b["mask"][r, 0]]
  assert sorted(firsts) == list(range(0, 28, 4))
  # The shards interleave the one order a single process reads: the same batches, split.
  one = list(eval_batches(tokens, seq_len=4, batch_size=4, shard_index=0, shard_count=1))
  single = [b["inputs"][r, 0] for b in one for r in range(4) if b["mask"][r, 0]]
  interleaved = [s[b]["inputs"][r, 0] for b in range(2) for r in range(2) for s in shards
                 if s[b]["mask"][r, 0]]
  assert interleaved == single


def test_bad_arguments(corpus):
  ok = dict(seq_len=8, batch_size=2, seed=0, **ONE_SHARD)
  for field, value in [("seq_len", 0), ("batch_size", -1), ("seed", -1), ("seed", 2**32),
                       ("num_epochs", 0), ("shard_count", 0), ("read_threads", -1)]:
    with pytest.raises(ValueError, match=field):
      make_iterator(corpus, **{**ok, field: value})
  with pytest.raises(ValueError, match="'shard_index'=2"):
    make_iterator(corpus, **{**ok, "shard_index": 2, "shard_count": 2})
  with pytest.raises(ValueError, match=r"too short for one batch: 20 tokens give 2 windows"):
    make_iterator(np.arange(20), seq_len=8, batch_size=4, seed=0, **ONE_SHARD)
  with pytest.raises(ValueError, match="1-D integer array"):
    make_iterator(np.zeros((4, 4), np.int32), **ok)
  for field, value in [("seq_len", 0), ("batch_size", 0)]:
    with pytest.raises(ValueError, match=field):
      eval_batches(corpus, **{**dict(seq_len=8, batch_size=2, **ONE_SHARD), field: value})
  with pytest.raises(ValueError, match="8 tokens hold no window"):
    eval_batches(np.arange(8), seq_len=8, batch_size=2, **ONE_SHARD)


def test_grain_checkpoint_handler_round_trip(corpus, tmp_path):
  # The handler the training job will give Orbax: it writes get_state() as JSON per process.
  import grain.python as pygrain
  from etils import epath
  kw = dict(seq_len=16, batch_size=4, seed=9, **ONE_SHARD)
  it = make_iterator(corpus, **kw)
  _take(it, 2)
  handler = pygrain.PyGrainCheckpointHandler()
  handler.save(epath.Path(tmp_path), item=it)
  expected = _take(it, 2)
  restored = handler.restore(epath.Path(tmp_path), item=make_iterator(corpus, **kw))
  _assert_batches_equal(expected, _take(restored, 2))
