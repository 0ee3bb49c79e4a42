"""Byte tokenizer round trips and the offline corpora's fixed document split."""
from __future__ import annotations

import numpy as np
import pytest

from moe_jax.data import (
    DOC_SEPARATOR,
    SPLITS,
    ByteTokenizer,
    corpus_names,
    document_names,
    is_validation_document,
    load_corpus,
    unigram_entropy_bits,
)


@pytest.mark.parametrize("text", ["", "hello, world\n", "naïve café — 日本語 🙂", "\x00\x7f"])
def test_tokenizer_round_trip(text):
  tok = ByteTokenizer()
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert ids.tolist() == list(text.encode("utf-8"))
  assert tok.decode(ids) == text
  assert tok.decode(ids.tolist()) == text


def test_tokenizer_vocab_and_bad_input():
  tok = ByteTokenizer()
  assert tok.vocab_size == 256
  assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # half a character decodes, replaced
  with pytest.raises(ValueError, match=r"\[0, 256\)"):
    tok.decode([65, 256])
  with pytest.raises(ValueError, match="'ids' must be integers"):
    tok.decode(np.array([1.5]))
  with pytest.raises(ValueError, match="'text' must be a str"):
    tok.encode(b"bytes")


def test_corpus_names_and_errors():
  assert corpus_names()[0] == "pydoc_topics" and "stdlib_py" in corpus_names()
  with pytest.raises(ValueError, match="allowed: pydoc_topics, stdlib_py"):
    load_corpus("wikipedia")
  with pytest.raises(ValueError, match="allowed: train, validation"):
    load_corpus("pydoc_topics", "test")
  with pytest.raises(ValueError, match="'max_bytes'"):
    load_corpus("pydoc_topics", max_bytes=0)


def test_pydoc_split_is_fixed_disjoint_and_non_empty():
  from pydoc_data.topics import topics
  train = document_names("pydoc_topics", "train")
  val = document_names("pydoc_topics", "validation")
  assert train and val
  assert not set(train) & set(val)
  assert sorted(train + val) == sorted(topics)
  assert train == sorted(train) and val == sorted(val)
  assert all(is_validation_document(name) for name in val)
  # The rule is a fixed md5 hash, not Python's per-process salted hash(): pin two names.
  assert is_validation_document("dict") and not is_validation_document("if")
  assert document_names("pydoc_topics", "validation") == val


def test_load_corpus_is_documents_joined_by_separator():
  from pydoc_data.topics import topics
  for split in SPLITS:
    tokens = load_corpus("pydoc_topics", split)
    assert tokens.dtype == np.uint8 and tokens.ndim == 1
    expected = DOC_SEPARATOR.join(
        topics[name].encode("utf-8") for name in document_names("pydoc_topics", split))
    assert tokens.tobytes() == expected
  assert np.array_equal(load_corpus(), load_corpus("pydoc_topics", "train"))


def test_stdlib_corpus_capped():
  docs = document_names("stdlib_py", "train", max_bytes=300_000)
  assert docs and all(name.endswith(".py") for name in docs)
  assert not any(part in ("test", "tests", "idlelib", "site-packages")
                 for name in docs for part in name.split("/")[:-1])
  tokens = load_corpus("stdlib_py", "train", max_bytes=300_000)
  assert 0 < tokens.size <= 300_000 + len(DOC_SEPARATOR) * len(docs)
  # A larger cap only adds documents: the split of a document never depends on the cap.
  assert set(docs) <= set(document_names("stdlib_py", "train", max_bytes=600_000))


def test_unigram_entropy():
  assert unigram_entropy_bits(np.zeros(10, np.int32)) == 0.0
  assert unigram_entropy_bits(np.arange(256)) == pytest.approx(8.0)
  assert unigram_entropy_bits([0, 1]) == pytest.approx(1.0)
  for split in SPLITS:  # English text: well below 8 bits, well above 0
    assert 3.5 < unigram_entropy_bits(load_corpus("pydoc_topics", split)) < 6.0
  with pytest.raises(ValueError, match="'tokens' is empty"):
    unigram_entropy_bits(np.array([], np.int32))
  with pytest.raises(ValueError, match="non-negative"):
    unigram_entropy_bits([-1, 2])
