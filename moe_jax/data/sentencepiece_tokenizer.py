"""A SentencePiece subword tokenizer, trained offline and in memory, with an exact round trip.

Why a trained tokenizer next to `ByteTokenizer`: bytes make sequences ~3x longer than subwords,
so at a fixed context length and compute a byte model sees much less text. A small SentencePiece
vocabulary (a few thousand pieces) trained on the training split of the same offline corpus
keeps everything offline and reproducible while giving the model more text per window.

Why the trainer options below: the research code needs `decode(encode(s)) == s` for *any*
string, and a loss that can still be reported in bits per byte. SentencePiece's defaults
normalize text (NFKC, collapsing whitespace runs, a dummy leading space) and map unseen
characters to <unk>, which breaks both. So `train_sentencepiece` uses

- ``normalization_rule_name='identity'`` and ``remove_extra_whitespaces=False``: the text is
  tokenized exactly as given, tabs, '\\r', runs of spaces and leading/trailing spaces included;
- ``add_dummy_prefix=False``: no space is invented in front of the text (with it, decoding must
  strip a leading space and cannot tell whether the original had one);
- ``byte_fallback=True``: a character that is not a piece is emitted as its UTF-8 bytes
  (pieces ``<0x00>``..``<0xFF>``), so unseen characters (emoji, CJK, ...) never become <unk>;
- ``allow_whitespace_only_pieces=True``: indentation runs such as ``'▁▁▁▁'`` can be pieces.

Newlines need nothing special: a training "sentence" may contain '\\n' (it is an ordinary
character to the trainer and becomes a piece of its own), so documents are fed as chunks of
whole lines with their newlines kept (see `_training_chunks`), not as newline-free lines.

One character needs care in this wrapper: SentencePiece writes a space as U+2581 ('▁'), so a
literal U+2581 in the text would decode as a space. `encode` therefore emits a literal U+2581
as its three byte-fallback pieces, and `decode` maps pieces to bytes itself (a table built
from the vocabulary: '▁' -> b' ', ``<0xNN>`` -> that byte, control tokens -> nothing). The same
table gives `bytes_per_token`, so ``bytes_per_token[encode(s)].sum() == len(s.encode())``
exactly, which converts a loss in nats/token into bits/byte comparable with `ByteTokenizer`.

Special ids: unk=0, bos=1, eos=2, no pad id (-1). eos is meant to join documents in a
token stream; bos is kept for the conventional id layout but never emitted by `encode`.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from moe_jax.validation import check_choice, check_float, check_int

MODEL_TYPES = ("unigram", "bpe")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPACE_SYMBOL = "\u2581"  # '▁', SentencePiece's stand-in for ' '
# 256 byte-fallback pieces + unk/bos/eos + at least a few characters as pieces. The trainer
# additionally needs one piece per character it keeps (see `character_coverage`) and reports
# a too-small vocabulary for the actual text itself.
MIN_VOCAB_SIZE = 256 + 3 + 16
# Training "sentences" are chunks of whole lines of at most this many bytes. SentencePiece
# silently skips sentences longer than `max_sentence_length`, so chunking keeps long documents.
_CHUNK_BYTES = 8192
# Round-trip probe run on every loaded model: catches models trained with normalization, a dummy
# prefix, collapsed whitespace or without byte fallback, which would silently change text.
_PROBE = "A  b\tc\r\n\n  d\x00 \u2581 \U0001f642 \u65e5\u672c "


class SentencePieceTokenizer:
  """Text <-> int32 ids of a trained SentencePiece model; decode(encode(s)) == s for any str s.

  Build one with `train_sentencepiece` or `SentencePieceTokenizer.load`; the constructor takes
  the serialized model proto (`model_proto`, what `save` writes).
  """

  def __init__(self, model_proto: bytes):
    if not isinstance(model_proto, (bytes, bytearray, memoryview)):
      raise ValueError(
          "SentencePieceTokenizer: 'model_proto' must be bytes (a serialized SentencePiece "
          f"model), got {type(model_proto).__name__}")
    model_proto = bytes(model_proto)
    try:
      sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except RuntimeError as e:
      raise ValueError(
          f"SentencePieceTokenizer: 'model_proto' is not a valid SentencePiece model ({e})") from e
    self._sp = sp
    self._model_proto = model_proto
    self._check_model()
    self._piece_bytes = self._build_piece_bytes()
    self._bytes_per_token = np.array([len(b) for b in self._piece_bytes], dtype=np.int64)
    self._bytes_per_token.setflags(write=False)
    # Byte-fallback ids spelling a literal U+2581 (see module docstring).
    self._space_symbol_ids = [self._sp.piece_to_id(f"<0x{b:02X}>")
                              for b in _SPACE_SYMBOL.encode("utf-8")]
    if self.decode(self.encode(_PROBE)) != _PROBE:
      raise ValueError(
          "SentencePieceTokenizer: 'model_proto' does not round-trip text exactly; train it with "
          "`train_sentencepiece` (identity normalization, no dummy prefix, whitespace kept, "
          "byte fallback)")

  def _check_model(self) -> None:
    sp = self._sp
    if sp.vocab_size() <= 0:
      raise ValueError("SentencePieceTokenizer: 'model_proto' holds an empty vocabulary")
    if sp.eos_id() < 0:
      raise ValueError("SentencePieceTokenizer: 'model_proto' has no '</s>' (eos) piece; "
                       "train it with an eos id")
    missing = [b for b in range(256) if not sp.is_byte(sp.piece_to_id(f"<0x{b:02X}>"))]
    if missing:
      raise ValueError(
          "SentencePieceTokenizer: 'model_proto' lacks byte-fallback pieces (e.g. "
          f"<0x{missing[0]:02X}>); train it with byte_fallback=True")

  def _build_piece_bytes(self) -> list[bytes]:
    """The UTF-8 bytes each id contributes to decoded text (b'' for control/unknown/unused)."""
    sp = self._sp
    table = []
    for i in range(sp.vocab_size()):
      if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
        table.append(b"")
      elif sp.is_byte(i):
        table.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))  # '<0xNN>'
      else:
        table.append(sp.id_to_piece(i).replace(_SPACE_SYMBOL, " ").encode("utf-8"))
    return table

  @property
  def vocab_size(self) -> int:
    return int(self._sp.vocab_size())

  @property
  def eos_id(self) -> int:
    """The '</s>' id: the end-of-document token that joins documents in a token stream."""
    return int(self._sp.eos_id())

  @property
  def model_proto(self) -> bytes:
    """The serialized model, exactly what `save` writes."""
    return self._model_proto

  @property
  def bytes_per_token(self) -> np.ndarray:
    """int64 [vocab_size]: UTF-8 bytes each id adds to decoded text (0 for control tokens).

    Sum it over a token stream to get that stream's byte count, e.g. to turn a loss in
    nats/token into bits/byte: ``loss * n_tokens / (ln 2 * bytes_per_token[ids].sum())``.
    """
    return self._bytes_per_token

  def encode(self, text: str) -> np.ndarray:
    """Returns the ids of `text` as an int32 array of shape [n]; no bos/eos is added."""
    if not isinstance(text, str):
      raise ValueError(
          f"SentencePieceTokenizer.encode: 'text' must be a str, got {type(text).__name__}")
    # Strict, as in ByteTokenizer: a str with lone surrogates has no UTF-8 form to round-trip.
    text.encode("utf-8")
    if _SPACE_SYMBOL not in text:
      return np.asarray(self._sp.encode(text), dtype=np.int32)
    ids: list[int] = []
    for k, part in enumerate(text.split(_SPACE_SYMBOL)):
      if k:
        ids.extend(self._space_symbol_ids)
      if part:
        ids.extend(self._sp.encode(part))
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids) -> str:
    """Returns the text for `ids` (any int sequence/array); invalid UTF-8 becomes U+FFFD.

    Control tokens (eos, bos) and unk decode to nothing, so a stream of documents joined with
    eos decodes to the documents concatenated. errors='replace' as in `ByteTokenizer.decode`:
    a model's samples may cut a multi-byte character in half and must still decode.
    """
    arr = np.asarray(ids)
    if arr.size == 0:
      return ""
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(
          f"SentencePieceTokenizer.decode: 'ids' must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= self.vocab_size:
      raise ValueError(
          f"SentencePieceTokenizer.decode: 'ids' must lie in [0, {self.vocab_size}), got values "
          f"in [{lo}, {hi}]")
    table = self._piece_bytes
    return b"".join([table[i] for i in arr.reshape(-1).tolist()]).decode("utf-8",
                                                                         errors="replace")

  def save(self, path: str | os.PathLike) -> None:
    """Writes the model proto to `path` atomically (temp file in the same directory + rename).

    Atomic so a crash or a concurrent reader never sees a half-written model; parent
    directories are created.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(self._model_proto)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      try:
        os.unlink(tmp)
      except FileNotFoundError:
        pass
      raise

  @classmethod
  def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
    """Reads a model written by `save` (or any SentencePiece .model trained as described above).

    Raises FileNotFoundError if `path` does not exist and ValueError if it is not a usable
    SentencePiece model; both name the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SentencePieceTokenizer.load: no model file at {path!r}")
    with open(path, "rb") as f:
      proto = f.read()
    try:
      return cls(proto)
    except ValueError as e:
      raise ValueError(f"SentencePieceTokenizer.load: {path!r} is not a usable SentencePiece "
                       f"model: {e}") from e

  def __repr__(self) -> str:
    digest = hashlib.sha256(self._model_proto).hexdigest()[:12]
    return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"sha256={digest})")


def _training_chunks(texts: Iterable[str], max_bytes: int) -> list[str]:
  """Splits documents into chunks of whole lines (newlines kept), up to `max_bytes` in total.

  Chunks hold at most `_CHUNK_BYTES` bytes; a line longer than that is cut (at character
  boundaries). Reading stops as soon as `max_bytes` are collected, so `texts` may be a lazy
  iterable over a huge corpus.
  """
  if isinstance(texts, str):
    raise ValueError("train_sentencepiece: 'texts' must be an iterable of document strings, "
                     "got a single str (wrap it in a list)")
  chunks: list[str] = []
  budget = max_bytes

  def emit(chunk: str) -> None:
    nonlocal budget
    data = chunk.encode("utf-8")
    if len(data) > budget:  # cut the last chunk to the budget, dropping a split character
      chunk, data = data[:budget].decode("utf-8", errors="ignore"), data[:budget]
    if chunk:
      chunks.append(chunk)
    budget -= len(data)

  for k, doc in enumerate(texts):
    if not isinstance(doc, str):
      raise ValueError(
          f"train_sentencepiece: 'texts' must hold str documents, item {k} is "
          f"{type(doc).__name__}")
    doc.encode("utf-8")  # lone surrogates: fail here with a UnicodeEncodeError (a ValueError)
    current, current_bytes = [], 0
    for line in _lines(doc):
      n = len(line.encode("utf-8"))
      if current and current_bytes + n > _CHUNK_BYTES:
        emit("".join(current))
        current, current_bytes = [], 0
        if budget <= 0:
          return chunks
      if n > _CHUNK_BYTES:
        step = _CHUNK_BYTES // 4  # <= _CHUNK_BYTES bytes whatever the characters
        for start in range(0, len(line), step):
          emit(line[start:start + step])
          if budget <= 0:
            return chunks
      else:
        current.append(line)
        current_bytes += n
    if current:
      emit("".join(current))
    if budget <= 0:
      break
  return chunks


def _lines(doc: str) -> Iterator[str]:
  """The lines of `doc`, each keeping its '\\n' (only '\\n' splits; '\\r' stays in the text)."""
  start = 0
  while start < len(doc):
    end = doc.find("\n", start)
    end = len(doc) if end < 0 else end + 1
    yield doc[start:end]
    start = end


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, model_type: str = "unigram",
                        max_bytes: int = 20_000_000, character_coverage: float = 0.9995,
                        max_sentencepiece_length: int = 16,
                        seed_sentencepiece_size: int = 1_000_000) -> SentencePieceTokenizer:
  """Trains a SentencePiece model in memory on `texts` (document strings) and returns it.

  Args:
    texts: iterable of documents; read lazily, only until `max_bytes` of UTF-8 text are taken.
    vocab_size: total ids, including the 256 byte-fallback pieces and unk/bos/eos; at least
      `MIN_VOCAB_SIZE`. The trainer rejects a vocabulary too large for the text with a
      ValueError that says the largest possible size.
    model_type: 'unigram' (SentencePiece's default; slightly better compression here) or 'bpe'.
    max_bytes: training text budget in UTF-8 bytes.
    character_coverage: fraction of the text's characters that must be single pieces; the rare
      rest is spelled with byte pieces (never <unk>), so < 1 saves vocabulary on rare symbols.
    max_sentencepiece_length: longest piece, in characters.
    seed_sentencepiece_size: unigram only: candidate pieces the EM starts from.

  Training is deterministic (one thread, no sentence sampling): the same arguments and text
  give byte-identical model protos.
  """
  owner = "train_sentencepiece"
  check_int("vocab_size", vocab_size, low=MIN_VOCAB_SIZE, owner=owner)
  check_choice("model_type", model_type, MODEL_TYPES, owner=owner)
  check_int("max_bytes", max_bytes, low=1, owner=owner)
  check_float("character_coverage", character_coverage, low=0.0, high=1.0, low_inclusive=False,
              owner=owner)
  check_int("max_sentencepiece_length", max_sentencepiece_length, low=1, high=512, owner=owner)
  check_int("seed_sentencepiece_size", seed_sentencepiece_size, low=1, owner=owner)
  chunks = _training_chunks(texts, max_bytes)
  if not chunks:
    raise ValueError(f"{owner}: 'texts' holds no text to train on (empty or only empty strings)")
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chunks),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        # Exact round trip (see module docstring).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=True,
        allow_whitespace_only_pieces=True,
        character_coverage=character_coverage,
        max_sentencepiece_length=max_sentencepiece_length,
        seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=_CHUNK_BYTES,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
        # Determinism: use every chunk in order (no sampling/shuffling), one thread.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,  # errors only; the trainer otherwise logs every EM step to stderr
    )
  except RuntimeError as e:
    raise ValueError(
        f"{owner}: SentencePiece training failed for vocab_size={vocab_size}, "
        f"model_type={model_type!r} on {sum(len(c.encode('utf-8')) for c in chunks)} bytes of "
        f"text: {e}") from e
  return SentencePieceTokenizer(writer.getvalue())
