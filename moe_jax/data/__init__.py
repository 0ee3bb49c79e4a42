"""Data for LM training: a byte tokenizer, offline corpora from the stdlib, a grain pipeline.

    tokens = load_corpus("pydoc_topics", "train")          # uint8 bytes, documents joined
    it = make_iterator(tokens, seq_len=256, batch_size=8, seed=0)
    batch = next(it)                                       # {'inputs', 'targets'}: int32[8, 256]
    state = it.get_state()                                 # JSON-serialisable; it.set_state(state)

Everything works offline: the corpora come from Python's own standard library.
"""
from __future__ import annotations

from moe_jax.data.corpora import (
    DEFAULT_CORPUS,
    DOC_SEPARATOR,
    SPLITS,
    corpus_names,
    document_names,
    is_validation_document,
    load_corpus,
    unigram_entropy_bits,
)
from moe_jax.data.pipeline import (
    WindowSource,
    eval_batches,
    make_dataset,
    make_iterator,
    num_eval_batches,
    num_windows,
)
from moe_jax.data.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "DEFAULT_CORPUS",
    "DOC_SEPARATOR",
    "SPLITS",
    "WindowSource",
    "corpus_names",
    "document_names",
    "eval_batches",
    "is_validation_document",
    "load_corpus",
    "make_dataset",
    "make_iterator",
    "num_eval_batches",
    "num_windows",
    "unigram_entropy_bits",
]
