"""Byte-level tokenizer: token id == UTF-8 byte value, so there is nothing to train or download.

Why bytes: the research runs must work offline and be comparable across corpora, and a byte
vocabulary makes the validation loss directly a bits-per-byte number (loss in nats / ln 2) with
no tokenizer-dependent normalisation. The price is longer sequences, which is fine at the
scales this codebase trains.

The vocabulary is exactly the 256 byte values, with no special tokens: the corpora separate
documents with ordinary bytes (see `corpora.DOC_SEPARATOR`) and the LM trains on fixed-length
windows, so neither BOS/EOS nor padding ids are needed (evaluation pads with a mask instead, see
`pipeline.eval_batches`). A model's embedding table may still be larger than 256 (e.g. rounded
up for sharding); ids >= 256 are then simply never produced.
"""
from __future__ import annotations

import numpy as np


class ByteTokenizer:
  """UTF-8 bytes <-> int32 ids in [0, 256). decode(encode(s)) == s for any UTF-8-encodable s."""

  vocab_size: int = 256
  # No end-of-document id: the corpora join documents with ordinary bytes (DOC_SEPARATOR).
  eos_id: int | None = None

  @property
  def bytes_per_token(self) -> np.ndarray:
    """int64 [256] of ones: every id is one byte, so a loss in nats/token is already per byte."""
    return np.ones(self.vocab_size, dtype=np.int64)

  def encode(self, text: str) -> np.ndarray:
    """Returns the UTF-8 bytes of `text` as an int32 array of shape [len(bytes)]."""
    if not isinstance(text, str):
      raise ValueError(f"ByteTokenizer.encode: 'text' must be a str, got {type(text).__name__}")
    # Strict: a str holding lone surrogates has no UTF-8 form; UnicodeEncodeError (a ValueError)
    # is clearer than silently producing bytes that would not decode back to the same text.
    data = text.encode("utf-8")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """Returns the text for `ids` (any int sequence/array); invalid UTF-8 becomes U+FFFD.

    errors='replace' because a model's samples are arbitrary byte strings (e.g. a multi-byte
    character cut in half) and decoding them must never fail.
    """
    arr = np.asarray(ids)
    if arr.size == 0:
      return ""
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"ByteTokenizer.decode: 'ids' must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= self.vocab_size:
      raise ValueError(
          f"ByteTokenizer.decode: 'ids' must lie in [0, {self.vocab_size}), got values in "
          f"[{lo}, {hi}]")
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return f"ByteTokenizer(vocab_size={self.vocab_size})"
