"""Language-model corpora from a user's own files: `config.data.corpus='files'`.

    --config.data.corpus=files --config.data.files='~/data/tinystories/*.jsonl'
        [--config.data.text_field=text] [--config.data.validation_files='~/data/val/*.jsonl']

`data.files` is a glob (several separated by commas; `~` expanded; `**` recurses). Documents,
by file extension:
  - `.txt`: one document per blank-line-separated block (a file without blank lines is one
    document);
  - `.jsonl`: one document per non-empty line, the string in `data.text_field`;
  - `.parquet`: one document per row, the column `data.text_field` (read with pyarrow).
Compressed text (`.gz`, `.zst`) is refused with a one-line error: random access into it would
mean decompressing a whole file per document; decompress it once instead.

Validation: the documents of `data.validation_files` if set; otherwise ~1/10 of the documents,
chosen by the md5 of (file name, document number), as the embedded corpora hold out theirs, so
the split is the same on every machine and for every process.

Streamed: the files are scanned once to index their documents (byte offsets for text and
jsonl, row numbers for parquet: about 24 bytes a document), and a document is read when the
iterator needs it, so a corpus need not fit in memory. Training packs shuffled documents into
windows with `packing.PackedWindows` (per-process document shards, exact resume from
(document, offset) in the checkpoint), as lm1b does.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import pathlib

import numpy as np

NAME = "files"
FORMATS = (".txt", ".jsonl", ".parquet")
COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".xz")
VALIDATION_MODULUS = 10   # as moe_jax.data.corpora: ~1/10 of documents held out


def expand(patterns: str) -> list[pathlib.Path]:
  """The files a comma-separated list of globs names, sorted, each once."""
  found: set[str] = set()
  for pattern in (p.strip() for p in patterns.split(",")):
    if pattern:
      found.update(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p))
  return [pathlib.Path(p) for p in sorted(found)]


def check_files(patterns: str, field: str) -> list[pathlib.Path]:
  """The files of `data.<field>`, or ValueError in one line: none set, none matched, or a
  format that is not read."""
  if not patterns:
    raise ValueError(f"config.data.corpus='files' needs config.data.{field}: a glob of .txt, "
                     ".jsonl or .parquet files, e.g. --config.data.files='data/*.jsonl'")
  files = expand(patterns)
  if not files:
    raise ValueError(f"config.data.{field}={patterns!r} matches no file")
  for path in files:
    suffix = path.suffix.lower()
    if suffix in COMPRESSED:
      raise ValueError(f"config.data.{field}: {path} is compressed ({suffix}); decompress it "
                       "first (documents are read at random, which compressed text does not "
                       "allow)")
    if suffix not in FORMATS:
      raise ValueError(f"config.data.{field}: {path} is not one of {', '.join(FORMATS)}")
  return files


def _text_spans(data: bytes, jsonl: bool) -> list[tuple[int, int]]:
  """(offset, length) of each document: non-empty lines (jsonl) or blank-line blocks (txt)."""
  spans, start, pos = [], None, 0
  for line in data.splitlines(keepends=True):
    blank = not line.strip()
    if jsonl:
      if not blank:
        spans.append((pos, len(line)))
    elif blank and start is not None:
      spans.append((start, pos - start))
      start = None
    elif not blank and start is None:
      start = pos
    pos += len(line)
  if not jsonl and start is not None:
    spans.append((start, pos - start))
  return spans


def _json_text(line: bytes, path, field: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: a line is not valid JSON ({e.msg})") from e
  if not isinstance(record, dict) or field not in record:
    fields = ", ".join(record) if isinstance(record, dict) else "none (not an object)"
    raise ValueError(f"{path}: no field {field!r} (config.data.text_field); its fields: "
                     f"{fields}")
  if not isinstance(record[field], str):
    raise ValueError(f"{path}: field {field!r} is {type(record[field]).__name__}, not text")
  return record[field]


def _parquet(path):
  import pyarrow.parquet as pq   # imported when a parquet corpus is read
  try:
    return pq.ParquetFile(path)
  except Exception as e:   # pyarrow's errors for a truncated or foreign file vary by version
    raise ValueError(f"{path}: not a readable parquet file ({e})") from e


class _File:
  """One file's documents: an index built by one scan, a document read on demand."""

  def __init__(self, path: pathlib.Path, text_field: str):
    self.path, self.field = path, text_field
    self.kind = path.suffix.lower()
    if self.kind == ".parquet":
      pf = _parquet(path)
      names = pf.schema_arrow.names
      if text_field not in names:
        raise ValueError(f"{path}: no column {text_field!r} (config.data.text_field); its "
                         f"columns: {', '.join(names)}")
      rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
      self.group_ends = np.cumsum(rows)
      self.count = int(self.group_ends[-1]) if rows else 0
    else:
      try:
        data = path.read_bytes()
      except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror})") from e
      spans = _text_spans(data, jsonl=self.kind == ".jsonl")
      self.spans = np.asarray(spans, np.int64).reshape(-1, 2)
      self.count = len(spans)
      if self.kind == ".jsonl" and self.count:
        _json_text(data[spans[0][0]:sum(spans[0])], path, text_field)   # the field is there

  def document(self, i: int) -> str:
    if self.kind == ".parquet":
      group = int(np.searchsorted(self.group_ends, i, side="right"))
      first = int(self.group_ends[group - 1]) if group else 0
      column = _row_group(self.path, group, self.field)
      return str(column[i - first])
    offset, length = self.spans[i]
    with open(self.path, "rb") as f:
      f.seek(int(offset))
      raw = f.read(int(length))
    if self.kind == ".jsonl":
      return _json_text(raw, self.path, self.field)
    return raw.decode("utf-8", errors="replace").strip("\n")


@functools.lru_cache(maxsize=4)
def _row_group(path: pathlib.Path, group: int, field: str) -> list:
  """One parquet row group's text column (the last few cached: rows are read in order within
  a shuffled document's neighbourhood only by chance, so the cache is small)."""
  return _parquet(path).read_row_group(group, columns=[field]).column(0).to_pylist()


def is_validation_document(path: pathlib.Path, index: int) -> bool:
  digest = hashlib.md5(f"{path.name}:{index}".encode("utf-8")).digest()
  return int.from_bytes(digest, "big") % VALIDATION_MODULUS == 0


class FileDocuments:
  """Random-access documents (len, [i] -> str) of one split of a `files` corpus."""

  def __init__(self, data, split: str):
    train = check_files(data.files, "files")
    held_out = check_files(data.validation_files, "validation_files") if (
        data.validation_files) else []
    if held_out:
      paths = held_out if split == "validation" else [p for p in train if p not in held_out]
    else:
      paths = train
    self._files = [_File(p, data.text_field) for p in paths]
    files, docs = [], []     # (file, document in it) of each document of the split
    other = 0                # documents of the other split (both must hold some)
    for f, file in enumerate(self._files):
      index = np.arange(file.count, dtype=np.int64)
      if not held_out:
        held = np.array([is_validation_document(file.path, i) for i in index], bool)
        index, rest = (index[held], index[~held]) if split == "validation" else (
            index[~held], index[held])
        other += rest.size
      files.append(np.full(index.size, f, np.int32))
      docs.append(index)
    self._file_of = np.concatenate(files) if files else np.zeros(0, np.int32)
    self._doc_of = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    if not self._doc_of.size:
      where = data.validation_files if (held_out and split == "validation") else data.files
      raise ValueError(f"config.data.corpus='files': the {split} split of {where!r} holds no "
                       "document (empty files?)")
    if not held_out and not other:   # found now, not when the first evaluation starts
      raise ValueError(f"config.data.corpus='files': none of the {self._doc_of.size} "
                       f"documents of {data.files!r} falls in the held-out 1/"
                       f"{VALIDATION_MODULUS}; name validation documents with "
                       "config.data.validation_files")

  def __len__(self) -> int:
    return int(self._doc_of.size)

  def __getitem__(self, i: int) -> str:
    return self._files[int(self._file_of[i])].document(int(self._doc_of[i]))


