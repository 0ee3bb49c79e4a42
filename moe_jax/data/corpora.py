"""Offline text corpora shipped with Python itself, byte-tokenized, with a fixed document split.

Why these: the training job must run with no network and no data files in the repo, yet on real
text, so a bits-per-byte number means something. Python's standard library carries two such
corpora on every machine:

- ``'pydoc_topics'`` (the default): the English help texts of ``pydoc_data.topics.topics``
  (one document per topic, 79 topics, ~466 KB). Small enough to load in milliseconds and to
  overfit on purpose, large enough to show a language model beating the unigram baseline.
- ``'stdlib_py'``: the standard library's own ``.py`` sources (one document per file, 674 files,
  ~11.4 MB on CPython 3.11), for scaling runs. Files under ``site-packages``/``dist-packages``,
  ``test``/``tests``, ``idlelib`` and ``__pycache__`` directories are left out (third-party code,
  huge generated test data, GUI code), as is any file that cannot be read or is not UTF-8.

Both are ordered deterministically (topic name / POSIX relative path, sorted), so the same
Python version gives the same token stream on every machine. The texts do change between
Python versions (new topics, edited docs, new modules), so sizes below are for CPython 3.11.7
and results should be compared on the same version.

Split: by document, never by random windows, so no validation text is ever seen in training
(windows of one document overlap heavily in style and content). A document is validation iff

    int(md5(name.encode('utf-8')).hexdigest(), 16) % 10 == 0

(the name being the topic name or the relative path). md5, not ``hash()``: Python salts
``hash(str)`` per process, which would give each run and each host a different split. This
selects ~10% of documents in expectation; for the 79 pydoc topics it happens to pick 7.

Measured on CPython 3.11.7 (bytes include the separators):

==============  ==========  ====  ==========  ===============
corpus          split       docs  bytes       unigram entropy
==============  ==========  ====  ==========  ===============
pydoc_topics    train         72     445,553  4.7017 bits/byte
pydoc_topics    validation     7      20,718  4.7021 bits/byte
stdlib_py       train        616  10,706,539  4.6729 bits/byte
stdlib_py       validation    58     648,967  4.7311 bits/byte
==============  ==========  ====  ==========  ===============

(The held-out baseline is a bit higher: pydoc_topics validation under the add-one-smoothed train
unigram costs 4.771 bits/byte.)

Tokens: the corpora are byte-tokenized, i.e. ids are the UTF-8 bytes, exactly what
`ByteTokenizer.encode` gives; arrays are uint8 to keep ``stdlib_py`` at 1 byte per token (the
input pipeline casts windows to int32). Documents of a split are joined with
``DOC_SEPARATOR = b'\\n\\n'`` (a blank line, which the texts already use between paragraphs), so
a training window that crosses a document boundary sees an ordinary paragraph break rather than
an id the model never sees elsewhere.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from collections.abc import Callable

import numpy as np

DOC_SEPARATOR = b"\n\n"
SPLITS = ("train", "validation")
DEFAULT_CORPUS = "pydoc_topics"
# A document is validation iff md5(name) % VALIDATION_MODULUS == 0 (~1/10 of documents).
VALIDATION_MODULUS = 10
# Directory names pruned from the stdlib walk (see module docstring for why).
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})

Documents = tuple[tuple[str, bytes], ...]  # (name, UTF-8 text), in corpus order


def is_validation_document(doc_name: str) -> bool:
  """True iff the document named `doc_name` belongs to the validation split (stable md5 rule)."""
  digest = hashlib.md5(doc_name.encode("utf-8")).digest()
  return int.from_bytes(digest, "big") % VALIDATION_MODULUS == 0


@functools.lru_cache(maxsize=None)
def _pydoc_topics_documents() -> Documents:
  from pydoc_data.topics import topics  # stdlib; imported lazily as it is ~0.5 MB of strings
  return tuple((name, topics[name].encode("utf-8")) for name in sorted(topics))


@functools.lru_cache(maxsize=None)
def _stdlib_py_documents() -> Documents:
  root = sysconfig.get_paths()["stdlib"]
  docs = []
  # os.walk without following links, so a symlinked directory cannot pull in unrelated trees or
  # the same files twice.
  for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
    dirnames[:] = [d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS]
    for filename in filenames:
      if not filename.endswith(".py"):
        continue
      path = os.path.join(dirpath, filename)
      try:
        with open(path, "rb") as f:
          data = f.read()
        data.decode("utf-8")
      except (OSError, UnicodeDecodeError):
        continue  # unreadable or not UTF-8: documented as excluded
      # POSIX-style relative path: the document's name for sorting and for the split hash, so
      # the split does not depend on where Python is installed or on the OS path separator.
      docs.append((os.path.relpath(path, root).replace(os.sep, "/"), data))
  docs.sort(key=lambda doc: doc[0])
  return tuple(docs)


_CORPORA: dict[str, Callable[[], Documents]] = {
    "pydoc_topics": _pydoc_topics_documents,
    "stdlib_py": _stdlib_py_documents,
}


def corpus_names() -> tuple[str, ...]:
  """Names accepted by `load_corpus`; the first is the default."""
  return tuple(_CORPORA)


def _check_name_and_split(name: str, split: str) -> None:
  if name not in _CORPORA:
    raise ValueError(f"option 'corpus'={name!r} is unknown; allowed: {', '.join(_CORPORA)}")
  if split not in SPLITS:
    raise ValueError(f"option 'split'={split!r} is unknown; allowed: {', '.join(SPLITS)}")


def _capped_documents(name: str, max_bytes: int | None) -> Documents:
  """The corpus's documents in order, keeping whole documents while they fit in `max_bytes`.

  The cap is applied to the whole corpus before splitting, so a smaller cap gives a subset of
  the larger cap's train and validation documents (never moves a document between splits).
  Being a prefix in path order, a small cap is not a uniform sample (``stdlib_py`` starts with
  the ``_private`` and ``a*`` modules); it is meant for quick runs, not for comparing results.
  """
  docs = _CORPORA[name]()
  if max_bytes is None:
    return docs
  if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
    raise ValueError(f"option 'max_bytes' must be a positive int or None, got {max_bytes!r}")
  kept, total = [], 0
  for doc in docs:
    total += len(doc[1])
    if total > max_bytes:
      break
    kept.append(doc)
  return tuple(kept)


def _split_documents(name: str, split: str, max_bytes: int | None) -> Documents:
  _check_name_and_split(name, split)
  want_validation = split == "validation"
  docs = tuple(doc for doc in _capped_documents(name, max_bytes)
               if is_validation_document(doc[0]) == want_validation)
  if not docs:
    raise ValueError(
        f"corpus {name!r} split {split!r} has no documents with max_bytes={max_bytes}; "
        f"raise 'max_bytes' (or use None for the whole corpus)")
  return docs


def split_documents(name: str = DEFAULT_CORPUS, split: str = "train", *,
                    max_bytes: int | None = None) -> Documents:
  """(name, UTF-8 bytes) of each document of `split`, in corpus order."""
  return _split_documents(name, split, max_bytes)


def document_names(name: str = DEFAULT_CORPUS, split: str = "train", *,
                   max_bytes: int | None = None) -> list[str]:
  """Names of the documents in `split` of corpus `name`, in the order they are concatenated."""
  return [doc_name for doc_name, _ in _split_documents(name, split, max_bytes)]


def load_corpus(name: str = DEFAULT_CORPUS, split: str = "train", *,
                max_bytes: int | None = None) -> np.ndarray:
  """Returns the byte tokens (uint8, shape [n]) of `split` of corpus `name`.

  The split's documents are joined, in corpus order, with `DOC_SEPARATOR`. `max_bytes` caps the
  whole corpus (before splitting) to its leading documents that fit; mostly for ``stdlib_py``.
  Raises ValueError for an unknown corpus or split, naming the allowed values.
  """
  joined = DOC_SEPARATOR.join(data for _, data in _split_documents(name, split, max_bytes))
  # bytearray -> a writable array that owns its memory (np.frombuffer on bytes is read-only).
  return np.frombuffer(bytearray(joined), dtype=np.uint8)


def unigram_entropy_bits(tokens) -> float:
  """Entropy in bits per token of the empirical unigram distribution of `tokens`.

  For byte tokens this is the bits-per-byte of the best context-free model fitted to the same
  text: the baseline a language model's validation bits-per-byte must beat to show it learned
  anything beyond byte frequencies. (Fitted on the text it is measured on, so it is a slightly
  optimistic baseline for a held-out split.)
  """
  arr = np.asarray(tokens)
  if arr.size == 0:
    raise ValueError("unigram_entropy_bits: 'tokens' is empty; need at least one token")
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"unigram_entropy_bits: 'tokens' must be integers, got dtype {arr.dtype}")
  if int(arr.min()) < 0:
    raise ValueError("unigram_entropy_bits: 'tokens' must be non-negative ids")
  counts = np.bincount(arr.ravel().astype(np.int64))
  p = counts[counts > 0] / arr.size
  return max(float(-(p * np.log2(p)).sum()), 0.0)  # max: -0.0 -> 0.0 for a single symbol
