"""Packing a stream of shuffled documents into fixed-length LM windows, resumably.

    it = PackedWindows(doc_source, tokenize, seq_len=256, batch_size=8, seed=0)
    batch = next(it)        # {'inputs', 'targets'}: int32[8, 256]
    state = it.get_state()  # {'doc': 1234, 'offset': 17}; it.set_state(state) resumes there

For datasets too large to hold as one token array (lm1b: 30M sentences). The documents are
shuffled (grain's index shuffle, reseeded every epoch) and repeated forever; this process
reads documents ``index, index + count, index + 2*count, ...`` of that order. Each document is
tokenized with its end-of-document marker (`tokenize` appends it), and the token stream they
form is cut exactly like `pipeline.WindowSource` cuts an array: windows of L+1 tokens, starting
every L tokens, so every token is a target exactly once and nothing is padded. A window may
span the end of one document and the start of the next.

Document boundaries are *marked*, not masked: the end-of-document token (SentencePiece's
``</s>``, or the byte tokenizer's blank-line separator) tells the model a new, unrelated
document starts, and attention may still look across it. We chose marking because it keeps
the model's inputs plain token arrays (the dispatchers, the sharded attention and sampling all
stay unchanged), and at lm1b's ~30-token sentences the model learns quickly that context before
the marker is uninformative; masking (segment ids in the attention) would remove that noise at
the cost of a second input everywhere. Evaluation uses the same packing, so losses are
comparable.

State: the next window's start as (document counter, token offset in that document) - two
integers, whatever the documents' lengths. Restoring re-reads and re-tokenizes that document.
Unlike the window pipeline, the per-process streams are disjoint document shards, so a
multi-process run sees different (equally distributed) batches than a single process.
"""
from __future__ import annotations

from collections.abc import Callable

import grain.python as pygrain
import numpy as np

from moe_jax.data.pipeline import _MAX_SEED, _resolve_shard
from moe_jax.validation import check_int


class PackedWindows(pygrain.DatasetIterator):
  """Batches ``{'inputs', 'targets'}`` int32[batch_size, seq_len] of packed documents.

  Args:
    documents: random-access source of raw documents (e.g. a ``tfds.data_source``).
    tokenize: document -> 1-D int token array ending with the end-of-document marker (must
      not be empty).
    seq_len, batch_size: L and rows per batch on this process.
    seed, shuffle: document order; shuffle=False reads documents in source order.
    shard_index, shard_count: this process's document shard (default: the JAX process).
  """

  def __init__(self, documents, tokenize: Callable[[object], np.ndarray], *, seq_len: int,
               batch_size: int, seed: int = 0, shuffle: bool = True,
               shard_index: int | None = None, shard_count: int | None = None):
    super().__init__()
    owner = "PackedWindows"
    self._seq_len = check_int("seq_len", seq_len, low=1, owner=owner)
    self._batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
    seed = check_int("seed", seed, low=0, high=_MAX_SEED, owner=owner)
    self._index, self._count = _resolve_shard(shard_index, shard_count, owner)
    if len(documents) < self._count:
      raise ValueError(f"{owner}: {len(documents)} documents cannot be shared by "
                       f"{self._count} processes")
    ds = pygrain.MapDataset.source(documents)
    self._docs = (ds.shuffle(seed=seed) if shuffle else ds).repeat(None)
    self._tokenize = tokenize
    self._doc, self._offset = 0, 0
    self._cache: dict[int, np.ndarray] = {}

  def _tokens(self, j: int) -> np.ndarray:
    if j not in self._cache:
      tokens = np.asarray(self._tokenize(self._docs[j * self._count + self._index]))
      if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"PackedWindows: tokenize must return a non-empty 1-D array (with "
                         f"the end-of-document marker), got shape {tokens.shape}")
      self._cache[j] = tokens
    return self._cache[j]

  def _window(self) -> np.ndarray:
    """The L+1 tokens from the current position; then moves the position on by L."""
    out = np.empty(self._seq_len + 1, np.int32)
    filled, j, offset = 0, self._doc, self._offset
    while True:
      tokens = self._tokens(j)
      take = min(out.size - filled, tokens.size - offset)
      out[filled:filled + take] = tokens[offset:offset + take]
      filled += take
      if filled == out.size:
        break
      j, offset = j + 1, 0
    # The next window starts at this window's last token: L tokens on from its start.
    j, offset, remaining = self._doc, self._offset, self._seq_len
    while remaining >= self._tokens(j).size - offset:
      remaining -= self._tokens(j).size - offset
      j, offset = j + 1, 0
    self._doc, self._offset = j, offset + remaining
    for old in [k for k in self._cache if k < j]:
      del self._cache[old]
    return out

  def __next__(self) -> dict[str, np.ndarray]:
    windows = np.stack([self._window() for _ in range(self._batch_size)])
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

  def get_state(self) -> dict:
    return {"doc": self._doc, "offset": self._offset}

  def set_state(self, state: dict) -> None:
    self._doc = check_int("doc", state["doc"], low=0, owner="PackedWindows.set_state")
    self._offset = check_int("offset", state["offset"], low=0, owner="PackedWindows.set_state")
    self._cache.clear()
