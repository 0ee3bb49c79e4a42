"""The trained SentencePiece tokenizer: exact round trips, compression, bits/byte accounting,
save/load, determinism and argument errors. Trained once per module on the pydoc_topics train
split (~1.5 s), so the file stays fast."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import sentencepiece as spm

from moe_jax.data.corpora import load_corpus
from moe_jax.data.sentencepiece_tokenizer import (
    MIN_VOCAB_SIZE,
    SentencePieceTokenizer,
    _training_chunks,
    train_sentencepiece,
)
from moe_jax.data.tokenizer import ByteTokenizer

VOCAB = 1024
# Strings the training text never shows this way: unseen scripts and emoji (byte fallback),
# whitespace runs, tabs, '\r\n', leading/trailing spaces, control bytes, SentencePiece's own
# space symbol U+2581 (must not turn into a space), combining marks, zero-width characters.
TRICKY = [
    "",
    " ",
    "\n",
    "  leading spaces",
    "trailing spaces   ",
    "tabs\t\tand  runs   of    spaces",
    "windows\r\nline\r\nends\r\n",
    "\n\n\nblank lines\n\n",
    "emoji 🙂🚀 and CJK 日本語の文 and Ελληνικά",
    "\x00\x01\x7f control bytes",
    "\u2581 literal space symbol \u2581\u2581x\u2581",
    "e\u0301 combining vs é precomposed",
    "zero\u200bwidth\ufeffchars",
    "    def f(x):\n        return x  # indented\n",
]


def _text(split: str) -> str:
  return load_corpus("pydoc_topics", split).tobytes().decode("utf-8")


@pytest.fixture(scope="module")
def train_text() -> str:
  return _text("train")


@pytest.fixture(scope="module")
def val_text() -> str:
  return _text("validation")


@pytest.fixture(scope="module")
def tok(train_text) -> SentencePieceTokenizer:
  return train_sentencepiece([train_text], VOCAB)


@pytest.fixture(scope="module")
def bpe_tok(train_text) -> SentencePieceTokenizer:
  return train_sentencepiece([train_text], VOCAB, model_type="bpe")


def _tokens_per_byte(tokenizer, text: str) -> float:
  return len(tokenizer.encode(text)) / len(text.encode("utf-8"))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_corpus_round_trip_is_exact(tok, train_text, val_text, split):
  text = train_text if split == "train" else val_text
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert 0 <= ids.min() and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text
  # Our table-based decode agrees with SentencePiece's own.
  assert tok._sp.decode(ids.tolist()) == text


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_round_trip(tok, bpe_tok, text):
  for tokenizer in (tok, bpe_tok):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids.tolist()) == text
    assert tokenizer.bytes_per_token[ids].sum() == len(text.encode("utf-8"))


def test_unseen_characters_use_byte_pieces_not_unk(tok):
  ids = tok.encode("🙂")
  assert len(ids) == 4  # one byte piece per UTF-8 byte
  assert tok.bytes_per_token[ids].tolist() == [1, 1, 1, 1]
  assert 0 not in tok.encode("".join(TRICKY)).tolist()  # unk id never produced


def test_compression_well_below_one_token_per_byte(tok, bpe_tok, train_text, val_text):
  # Measured at vocab 1024: unigram 0.345 train / 0.355 validation, bpe 0.351 / 0.355.
  for tokenizer in (tok, bpe_tok):
    assert _tokens_per_byte(tokenizer, val_text) < 0.42
    assert _tokens_per_byte(tokenizer, train_text) < 0.42


def test_bytes_per_token_counts_utf8_bytes(tok, train_text, val_text):
  bpt = tok.bytes_per_token
  assert bpt.dtype == np.int64 and bpt.shape == (tok.vocab_size,)
  for text in (train_text, val_text):
    assert tok.bytes_per_token[tok.encode(text)].sum() == len(text.encode("utf-8"))
  assert bpt[tok.eos_id] == 0 and bpt[0] == 0  # eos and unk add no text
  assert bpt[tok._sp.piece_to_id("<0x41>")] == 1
  space_run = tok._sp.piece_to_id("\u2581\u2581")  # '▁▁' is a piece in this corpus (indents)
  assert tok._sp.id_to_piece(space_run) == "\u2581\u2581" and bpt[space_run] == 2
  assert bpt.max() > 1 and (bpt >= 0).all()


def test_special_ids_and_decode_skips_control_tokens(tok):
  assert tok.vocab_size == VOCAB
  assert tok.eos_id == tok._sp.piece_to_id("</s>") == 2
  a, b = "first document\n", "second one"
  stream = np.concatenate([tok.encode(a), [tok.eos_id], tok.encode(b), [tok.eos_id, 1, 0]])
  assert tok.decode(stream) == a + b
  assert tok.eos_id not in tok.encode("</s> <s> <unk>").tolist()  # literal text, not specials
  assert tok.decode(tok.encode("</s> <s> <unk>")) == "</s> <s> <unk>"
  assert "vocab_size=1024" in repr(tok) and "eos_id=2" in repr(tok)


def test_decode_errors_and_partial_characters(tok):
  with pytest.raises(ValueError, match=r"\[0, 1024\)"):
    tok.decode([5, VOCAB])
  with pytest.raises(ValueError, match=r"\[0, 1024\)"):
    tok.decode(np.array([-1, 3]))
  with pytest.raises(ValueError, match="'ids' must be integers"):
    tok.decode(np.array([1.5]))
  with pytest.raises(ValueError, match="'text' must be a str"):
    tok.encode(b"bytes")
  assert tok.decode([]) == ""
  half = tok.encode("🙂")[:2]  # a model sample may cut a character; it still decodes
  assert tok.decode(half) == "\ufffd"  # b'\xf0\x9f': one replacement for the cut prefix


def test_save_load_round_trip(tok, val_text, tmp_path):
  path = tmp_path / "nested" / "dir" / "tok.model"
  tok.save(path)
  assert path.read_bytes() == tok.model_proto
  loaded = SentencePieceTokenizer.load(path)
  assert loaded.model_proto == tok.model_proto and loaded.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(loaded.encode(val_text), tok.encode(val_text))
  np.testing.assert_array_equal(loaded.bytes_per_token, tok.bytes_per_token)
  assert repr(loaded) == repr(tok)
  # Overwriting works and leaves no temporary files behind.
  tok.save(str(path))
  assert os.listdir(path.parent) == ["tok.model"]


def test_load_errors_name_the_path(tmp_path, train_text):
  missing = tmp_path / "missing.model"
  with pytest.raises(FileNotFoundError, match="missing.model"):
    SentencePieceTokenizer.load(missing)
  corrupt = tmp_path / "corrupt.model"
  corrupt.write_bytes(b"this is not a sentencepiece model")
  with pytest.raises(ValueError, match="corrupt.model"):
    SentencePieceTokenizer.load(corrupt)
  empty = tmp_path / "empty.model"  # parses as an empty proto: rejected, not a 0-id vocabulary
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match="empty.model.*empty vocabulary"):
    SentencePieceTokenizer.load(empty)
  with pytest.raises(ValueError, match="'model_proto' must be bytes"):
    SentencePieceTokenizer("not bytes")


def test_models_that_change_text_are_rejected(train_text):
  # Valid models trained with SentencePiece's defaults (NFKC, dummy prefix, whitespace
  # collapsing) would silently alter text, so they are refused: with byte fallback by the
  # round-trip probe, without it already for the missing byte pieces.
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(train_text[:50_000].split("\n")), model_writer=writer,
      vocab_size=400, byte_fallback=True, minloglevel=2, num_threads=1)
  with pytest.raises(ValueError, match="does not round-trip text exactly"):
    SentencePieceTokenizer(writer.getvalue())
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(train_text[:50_000].split("\n")), model_writer=writer,
      vocab_size=300, minloglevel=2, num_threads=1)
  with pytest.raises(ValueError, match="lacks byte-fallback pieces"):
    SentencePieceTokenizer(writer.getvalue())


def test_training_is_deterministic(train_text):
  docs = [train_text[:60_000], "odd doc: \u2581\u2581 \x00 \r\n 日本語 🙂\n\n  indented\n"]
  a = train_sentencepiece(docs, 512)
  b = train_sentencepiece(iter(docs), 512)  # a one-shot iterator gives the same model
  assert a.model_proto == b.model_proto
  assert train_sentencepiece(docs, 520).model_proto != a.model_proto
  for text in TRICKY + docs:
    assert a.decode(a.encode(text)) == text


def test_max_bytes_stops_reading(train_text):
  def docs():
    yield train_text[:40_000]
    raise AssertionError("read past max_bytes")

  small = train_sentencepiece(docs(), 400, max_bytes=30_000)
  assert small.decode(small.encode(train_text[:5000])) == train_text[:5000]


def test_training_chunks_keep_all_text_and_cut_at_the_budget():
  doc = "x" * 20_000 + "\nshort line\r\n\n" + "é" * 5000  # a line longer than a chunk
  chunks = _training_chunks([doc, "", "tail"], max_bytes=10**9)
  assert "".join(chunks) == doc + "tail"
  assert max(len(c.encode("utf-8")) for c in chunks) <= 8192
  cut = _training_chunks(["é" * 5000, "never read"], max_bytes=1001)
  assert "".join(cut) == "é" * 500  # 1000 bytes: the half character at the budget is dropped


def test_argument_errors(train_text):
  with pytest.raises(ValueError, match=f"'vocab_size'=100 is out of range.*{MIN_VOCAB_SIZE}"):
    train_sentencepiece([train_text], 100)
  with pytest.raises(ValueError, match="'vocab_size' must be an integer"):
    train_sentencepiece([train_text], 1024.0)
  with pytest.raises(ValueError, match="'model_type'='wordpiece'.*'unigram', 'bpe'"):
    train_sentencepiece([train_text], VOCAB, model_type="wordpiece")
  with pytest.raises(ValueError, match="'max_bytes'"):
    train_sentencepiece([train_text], VOCAB, max_bytes=0)
  with pytest.raises(ValueError, match="'character_coverage'"):
    train_sentencepiece([train_text], VOCAB, character_coverage=0.0)
  for empty in ([], [""], iter(())):
    with pytest.raises(ValueError, match="no text to train on"):
      train_sentencepiece(empty, VOCAB)
  with pytest.raises(ValueError, match="got a single str"):
    train_sentencepiece(train_text, VOCAB)
  with pytest.raises(ValueError, match="item 1 is bytes"):
    train_sentencepiece(["ok", b"bytes"], VOCAB)
  # Too large for the text: the trainer's limit is passed on as a ValueError.
  with pytest.raises(ValueError, match="vocab_size=1024.*Vocabulary size too high"):
    train_sentencepiece(["hello world, hello tokenizer\n"] * 10, VOCAB)
  # Too small for the characters that must be pieces at full coverage.
  with pytest.raises(ValueError, match="vocab_size=280.*required_chars"):
    train_sentencepiece([train_text[:20_000]], 280, character_coverage=1.0)


def test_byte_tokenizer_has_the_same_accounting_interface(val_text):
  byte_tok = ByteTokenizer()
  assert byte_tok.eos_id is None
  bpt = byte_tok.bytes_per_token
  assert bpt.dtype == np.int64 and bpt.shape == (256,) and (bpt == 1).all()
  assert bpt[byte_tok.encode(val_text)].sum() == len(val_text.encode("utf-8"))
