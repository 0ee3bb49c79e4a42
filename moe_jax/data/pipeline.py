"""The LM input pipeline: fixed-length next-token windows, shuffled, sharded and resumable.

Why grain: training must resume from a checkpoint on exactly the batch it would have seen next
(otherwise a restart silently re-trains on some data and skips other data, and runs stop being
reproducible), and must give each host of a multi-host job its own disjoint part of the data.
grain's ``MapDataset`` does both with index arithmetic alone: the order is a pure function of
(seed, epoch, index), so an iterator's whole state is one integer.

Windows. A token array ``t`` of n tokens is cut into windows of L+1 tokens starting at every
multiple of L: window i is ``t[i*L : i*L + L + 1]``, giving ``inputs = w[:-1]`` and
``targets = w[1:]``. Consecutive windows share one token (the last target of window i is the
first input of window i+1), so every token but the first is a target exactly once per epoch.
There are ``(n - 1) // L`` windows; up to L-1 trailing tokens are left unused.

Training batches (`make_iterator`): windows -> shuffle(seed) -> repeat -> this process's rows
-> batch(drop_remainder). grain reseeds the shuffle every epoch (seed + epoch), and batches may
straddle an epoch boundary, so with ``num_epochs=None`` no window is ever dropped.

Sharding: the data order is one global sequence of windows, the same for any number of
processes; global batch j is its elements [j*G, (j+1)*G) with G = ``batch_size * shard_count``,
and process i takes rows [i*b, (i+1)*b) of it (b = ``batch_size``, per process), reading only
those windows. So every process yields the same number of batches (multi-host training needs
that: a process that ran out first would leave the others blocked in a collective), and the
global batch a multi-host run trains on is exactly the batch a single process with
``batch_size * shard_count`` would draw: its losses equal the single-process run's, and a run
may resume on a different number of hosts. The rows of process i are the contiguous block
``jax.make_array_from_process_local_data`` expects for a batch split over the data axes.

Checkpointing: ``it.get_state()`` is a small JSON-serialisable dict (``{'next_index': int}`` in
grain 0.2.x: the number of batches already returned) and ``it.set_state(state)`` on a fresh
iterator built with the same arguments resumes exactly there. The state holds only the
position, so restoring with different tokens, seq_len, batch_size, seed or sharding is not
detected and gives different data. For Orbax, grain ships a handler:
``grain.checkpoint.CheckpointHandler`` (alias ``grain.python.PyGrainCheckpointHandler``) with the
``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)`` args (defined when
``orbax.checkpoint`` is importable); it writes one ``process_<i>-of-<n>.json`` per process.

Evaluation (`eval_batches`): one deterministic pass over every window exactly once, in one fixed
shuffled order (`EVAL_ORDER_SEED`, the same for every run and process count), padded to whole
batches with a ``mask`` so every batch has the same shape (no recompilation, and the batch still
divides over the data-parallel devices). Shuffled because a model whose output depends on its
routing group (a capacity-limited dispatcher, expert choice, soft MoE) must be evaluated on
groups like those it trained on: in file order a batch is one file's contiguous text, whose
tokens crowd the same experts (measured: capacity factor 1.25, 8 experts, step 500, a layer that
dropped 2 % of training assignments dropped 14 % of validation ones in file order). For any other
model the order changes nothing but the summation order of the mean.

The grain API used (``grain.python``: ``MapDataset.source/slice/shuffle/repeat/batch/
to_iter_dataset``, ``ReadOptions``, ``DatasetIterator.get_state/set_state``) is checked against
grain 0.2.18.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Iterator

import grain.python as pygrain
import numpy as np

from moe_jax.validation import check_int

_MAX_SEED = 2**32 - 1  # grain's shuffle takes a uint32 seed
EVAL_ORDER_SEED = 0    # the evaluation order: fixed, so every run scores the same batches


def _as_tokens(tokens, owner: str) -> np.ndarray:
  arr = np.asarray(tokens)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
        f"{owner}: 'tokens' must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
  return arr


def num_windows(num_tokens: int, seq_len: int) -> int:
  """Number of full windows (L+1 tokens, starting at multiples of L) in `num_tokens` tokens."""
  return max((num_tokens - 1) // seq_len, 0)


class WindowSource:
  """grain random-access source: item i is window i as ``{'inputs', 'targets'}`` int32[L].

  Implements grain's ``RandomAccessDataSource`` protocol (``__len__``, ``__getitem__``) by duck
  typing: the protocol needs no base class, and not inheriting keeps this independent of how
  grain declares it.
  """

  def __init__(self, tokens, seq_len: int):
    self._seq_len = check_int("seq_len", seq_len, low=1, owner="WindowSource")
    self._tokens = _as_tokens(tokens, "WindowSource")
    self._len = num_windows(self._tokens.size, self._seq_len)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    index = operator.index(index)
    if not 0 <= index < self._len:
      raise IndexError(f"WindowSource: window index {index} out of range [0, {self._len})")
    start = index * self._seq_len
    window = self._tokens[start:start + self._seq_len + 1].astype(np.int32)
    return {"inputs": window[:-1], "targets": window[1:]}

  def __repr__(self) -> str:
    return (f"WindowSource(num_tokens={self._tokens.size}, seq_len={self._seq_len}, "
            f"num_windows={self._len})")


def _resolve_shard(shard_index: int | None, shard_count: int | None,
                   owner: str) -> tuple[int, int]:
  """Defaults to this JAX process's index/count; checks 0 <= shard_index < shard_count."""
  if shard_index is None or shard_count is None:
    import jax  # lazily: only needed for the multi-host defaults
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  shard_count = check_int("shard_count", shard_count, low=1, owner=owner)
  shard_index = check_int("shard_index", shard_index, low=0, high=shard_count - 1, owner=owner)
  return shard_index, shard_count


def make_dataset(tokens, *, seq_len: int, batch_size: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None) -> pygrain.MapDataset:
  """The training pipeline as a grain ``MapDataset`` of batches (see `make_iterator`)."""
  owner = "make_iterator"
  seq_len = check_int("seq_len", seq_len, low=1, owner=owner)
  tokens = _as_tokens(tokens, owner)
  source = WindowSource(tokens, seq_len)
  batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
  _, count = _resolve_shard(shard_index, shard_count, owner)
  return batched_dataset(source, batch_size=batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, shard_index=shard_index,
                         shard_count=shard_count, owner=owner,
                         describe=f"{tokens.size} tokens give {len(source)} windows of "
                                  f"seq_len+1={seq_len + 1} tokens (need "
                                  f"{batch_size * count * seq_len + 1} tokens)")


def batched_dataset(source, *, batch_size: int, seed: int, shuffle: bool = True,
                    num_epochs: int | None = None, shard_index: int | None = None,
                    shard_count: int | None = None, owner: str = "batched_dataset",
                    describe: str = "") -> pygrain.MapDataset:
  """Any random-access source -> shuffle(seed) -> repeat -> this process's rows -> batches
  (the module docstring's training order and sharding, for windows or examples alike)."""
  batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
  seed = check_int("seed", seed, low=0, high=_MAX_SEED, owner=owner)
  if num_epochs is not None:
    num_epochs = check_int("num_epochs", num_epochs, low=1, owner=owner)
  shard_index, shard_count = _resolve_shard(shard_index, shard_count, owner)
  if len(source) < batch_size * shard_count:
    raise ValueError(f"{owner}: corpus too short for one batch: {describe or len(source)}, "
                     f"fewer than batch_size x shard_count = {batch_size} x {shard_count}")
  ds = pygrain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if shard_count > 1:
    ds = _rows_of_process(ds, batch_size, shard_index, shard_count)
  return ds.batch(batch_size, drop_remainder=True)


def _rows_of_process(ds: pygrain.MapDataset, batch_size: int, index: int,
                     count: int) -> pygrain.MapDataset:
  """Element k of the result is row k % b of this process's block of global batch k // b."""
  global_batch = batch_size * count
  num_local = len(ds) // global_batch * batch_size     # whole global batches only

  def element(k):
    return ds[(k // batch_size) * global_batch + index * batch_size + k % batch_size]

  return pygrain.MapDataset.range(num_local).map(element)


def make_iterator(tokens, *, seq_len: int, batch_size: int, seed: int, shuffle: bool = True,
                  num_epochs: int | None = None, shard_index: int | None = None,
                  shard_count: int | None = None, read_threads: int = 1,
                  prefetch: int = 4) -> pygrain.DatasetIterator:
  """Iterator over training batches ``{'inputs': int32[B, L], 'targets': int32[B, L]}``.

  Args:
    tokens: 1-D integer token array (e.g. `load_corpus(..., 'train')`).
    seq_len: L, tokens per example.
    batch_size: B, examples per batch *on this process*; incomplete batches are dropped.
    seed: shuffle seed in [0, 2**32-1]; the same seed gives the same batches.
    shuffle: False keeps window order (still sharded and repeated).
    num_epochs: passes over the data, or None to repeat forever.
    shard_index, shard_count: this process's shard; default ``jax.process_index()`` /
      ``jax.process_count()``.
    read_threads, prefetch: grain ``ReadOptions(num_threads, prefetch_buffer_size)``, i.e.
      background threads building batches ahead of the training step. Small defaults because
      a batch is a cheap slice of an in-memory array; 0 and 0 build batches synchronously.

  Returns a grain ``DatasetIterator``: ``get_state()`` / ``set_state()`` save and resume the
  position exactly (see the module docstring).
  """
  read_threads = check_int("read_threads", read_threads, low=0, owner="make_iterator")
  prefetch = check_int("prefetch", prefetch, low=0, owner="make_iterator")
  ds = make_dataset(tokens, seq_len=seq_len, batch_size=batch_size, seed=seed, shuffle=shuffle,
                    num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count)
  read_options = pygrain.ReadOptions(num_threads=read_threads,
                                     prefetch_buffer_size=max(prefetch, read_threads))
  return iter(ds.to_iter_dataset(read_options))


def num_eval_batches(num_tokens: int, *, seq_len: int, batch_size: int,
                     shard_count: int = 1) -> int:
  """How many batches `eval_batches` yields on every process."""
  per_shard = math.ceil(num_windows(num_tokens, seq_len) / shard_count)
  return math.ceil(per_shard / batch_size)


def eval_batches(tokens, *, seq_len: int, batch_size: int, shard_index: int | None = None,
                 shard_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over every window of `tokens`, in a fixed shuffled order (the
  module's docstring says why), for evaluation.

  Yields ``{'inputs': int32[B, L], 'targets': int32[B, L], 'mask': float32[B, L]}``. Every
  window is scored exactly once (so every token but the first and the < L trailing ones is a
  target once). The last batch is padded with all-zero rows whose ``mask`` is 0, so all batches
  have the same shape; average a loss as ``sum(loss * mask) / sum(mask)``. With several shards,
  shard i takes every shard_count-th window of that order from the i-th, and every shard
  yields the same number of batches (`num_eval_batches`), padding as needed, so no process
  waits on another.
  """
  owner = "eval_batches"
  seq_len = check_int("seq_len", seq_len, low=1, owner=owner)
  batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
  shard_index, shard_count = _resolve_shard(shard_index, shard_count, owner)
  tokens = _as_tokens(tokens, owner)
  total = num_windows(tokens.size, seq_len)
  if total == 0:
    raise ValueError(
        f"{owner}: corpus too short: {tokens.size} tokens hold no window of "
        f"seq_len+1={seq_len + 1} tokens")
  n_batches = num_eval_batches(tokens.size, seq_len=seq_len, batch_size=batch_size,
                               shard_count=shard_count)
  order = np.random.default_rng(EVAL_ORDER_SEED).permutation(total)
  return _eval_generator(tokens, seq_len, batch_size, order[shard_index::shard_count], n_batches)


def _eval_generator(tokens: np.ndarray, seq_len: int, batch_size: int, windows: np.ndarray,
                    n_batches: int) -> Iterator[dict[str, np.ndarray]]:
  # A separate generator so that eval_batches checks its arguments when called, not when the
  # first batch is requested.
  offsets = np.arange(seq_len + 1)
  for b in range(n_batches):
    ids = windows[b * batch_size:(b + 1) * batch_size]
    block = np.zeros((batch_size, seq_len + 1), np.int32)
    block[:len(ids)] = tokens[ids[:, None] * seq_len + offsets]
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[:len(ids)] = 1.0
    yield {"inputs": np.ascontiguousarray(block[:, :-1]),
           "targets": np.ascontiguousarray(block[:, 1:]), "mask": mask}
