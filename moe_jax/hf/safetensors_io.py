"""A small safetensors reader and writer (numpy only; bfloat16 and float8 via ml_dtypes).

    tensors = open_checkpoint(directory)      # model.safetensors or a sharded index
    tensors.names(), tensors.shape(name), tensors.dtype(name), tensors[name] -> np.ndarray
    write_checkpoint(directory, {name: array}, max_shard_bytes=5 * 2**30)

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, then N
bytes of JSON {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, optional
"__metadata__": {str: str}}, then the raw little-endian bytes, offsets relative to the end of
the header. Files are memory-mapped, so a tensor is read only when asked for. A sharded
checkpoint is `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {name: file}})
beside its shard files. Arrays are written byte for byte as given, so a bfloat16 tensor read and
written again is the same bytes.
"""
from __future__ import annotations

import json
import mmap
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

from moe_jax.hf.links import resolve_member

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_HEADER_LIMIT = 100 * 2**20      # the reference implementation refuses larger headers too

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_CODES = {v: k for k, v in DTYPES.items()}


def dtype_code(dtype) -> str:
  """'F32', 'BF16', ... of a numpy dtype; ValueError for one safetensors cannot hold."""
  dtype = np.dtype(dtype)
  if dtype.byteorder == ">":
    raise ValueError(f"safetensors: big-endian dtype {dtype} is not allowed")
  code = _CODES.get(dtype)
  if code is None:
    raise ValueError(f"safetensors: dtype {dtype} has no safetensors code; allowed: "
                     + ", ".join(str(d) for d in DTYPES.values()))
  return code


class SafetensorsFile:
  """One .safetensors file: its header parsed and checked, its data memory-mapped."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
      (length,) = struct.unpack("<Q", head)
      if length > _HEADER_LIMIT:
        raise ValueError(f"{self.path}: not a safetensors file (header length {length})")
      try:
        header = json.loads(f.read(length))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{self.path}: not a safetensors file (header is not JSON: {e})") from e
    size = self.path.stat().st_size
    self.metadata = header.pop("__metadata__", None) or {}
    self.entries, self._start = header, 8 + length
    for name, entry in header.items():
      self._check(name, entry, size - self._start)
    self._mmap = None

  def _check(self, name, entry, data_size: int) -> None:
    where = f"{self.path}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
      raise ValueError(f"{where}: header entry {entry!r} is not {{dtype, shape, data_offsets}}")
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"{where}: dtype {entry['dtype']!r} is not supported; allowed: "
                       + ", ".join(DTYPES))
    begin, end = entry["data_offsets"]
    count = int(np.prod(entry["shape"], dtype=np.int64))
    if not 0 <= begin <= end <= data_size or end - begin != count * DTYPES[entry["dtype"]].itemsize:
      raise ValueError(f"{where}: data_offsets {entry['data_offsets']} do not hold shape "
                       f"{entry['shape']} of {entry['dtype']} in {data_size} data bytes")

  def __getitem__(self, name: str) -> np.ndarray:
    """The tensor as a read-only array backed by the file (copy it to keep it)."""
    if self._mmap is None:
      with open(self.path, "rb") as f:
        self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    entry = self.entries[name]
    begin, end = entry["data_offsets"]
    dtype = DTYPES[entry["dtype"]]
    data = np.frombuffer(self._mmap, dtype=dtype, count=(end - begin) // dtype.itemsize,
                         offset=self._start + begin)
    return data.reshape(entry["shape"])


class Checkpoint:
  """The tensors of a checkpoint directory, by name, over one file or an index's shards."""

  def __init__(self, files: dict[str, SafetensorsFile], metadata: dict):
    self.files, self.metadata = files, metadata      # files: tensor name -> its file

  def names(self) -> list[str]:
    return sorted(self.files)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.files[name].entries[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    return DTYPES[self.files[name].entries[name]["dtype"]]

  def __getitem__(self, name: str) -> np.ndarray:
    return self.files[name][name]

  def __contains__(self, name: str) -> bool:
    return name in self.files


def open_checkpoint(directory) -> Checkpoint:
  """The safetensors checkpoint in `directory` (sharded with an index, or one file)."""
  directory = pathlib.Path(directory)
  index = directory / INDEX_FILE
  if index.is_file():
    text = resolve_member(index, directory).read_text()
    try:
      weight_map = json.loads(text)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{index}: not a safetensors index (no weight_map: {e})") from e
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: weight_map is not a JSON object")
    first = {}                          # shard -> the first tensor the index puts there
    for name, shard in weight_map.items():
      _check_shard_name(index, name, shard)
      first.setdefault(shard, name)
    for shard, name in sorted(first.items()):
      if not (directory / shard).is_file():
        raise FileNotFoundError(f"{index}: weight_map puts tensor {name!r} in {shard}, which is "
                                f"not in {directory} (a shard missing from the download?)")
    shards = {f: SafetensorsFile(resolve_member(directory / f, directory))
              for f in sorted(set(weight_map.values()))}
    files = {}
    for name, shard in weight_map.items():
      if name not in shards[shard].entries:
        raise ValueError(f"{index}: weight_map puts tensor {name!r} in {shard}, which does "
                         "not hold it")
      files[name] = shards[shard]
    for shard, f in shards.items():
      extra = sorted(set(f.entries) - set(weight_map))
      if extra:
        raise ValueError(f"{directory / shard}: tensor {extra[0]!r} is not in {INDEX_FILE}")
    return Checkpoint(files, {})
  single = directory / SINGLE_FILE
  if single.is_file():
    f = SafetensorsFile(resolve_member(single, directory))
    return Checkpoint({name: f for name in f.entries}, f.metadata)
  raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (moe_jax.hf reads "
                          "safetensors checkpoints only, not pytorch_model.bin)")


def _check_shard_name(index: pathlib.Path, name, shard) -> None:
  """A shard is a plain file name beside the index: never a path (`../x`, `/etc/passwd`,
  `sub/x`), so an index cannot point the reader at files outside its directory."""
  if (not isinstance(shard, str) or shard in ("", ".", "..") or "/" in shard or "\\" in shard
      or (os.altsep and os.altsep in shard) or "\0" in shard
      or pathlib.PurePath(shard).is_absolute()):
    raise ValueError(f"{index}: weight_map entry {name!r}: {shard!r} is not a shard file name "
                     "(shards must be plain file names in the index's directory)")


def write_file(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
  """One .safetensors file; tensors in name order, the header padded to 8 bytes (as the
  reference implementation does, so readers can map the data aligned)."""
  header, offset = {}, 0
  for name in sorted(tensors):
    array = tensors[name]
    size = array.size * array.dtype.itemsize
    header[name] = {"dtype": dtype_code(array.dtype), "shape": list(array.shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  if metadata:
    header = {"__metadata__": dict(metadata), **header}
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name in sorted(tensors):
      f.write(np.ascontiguousarray(tensors[name]).tobytes())


def write_checkpoint(directory, tensors: dict[str, np.ndarray], *,
                     max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """model.safetensors, or shards model-0000i-of-0000n.safetensors and their index when the
  tensors take more than `max_shard_bytes`; returns the file names written. The metadata says
  format 'pt': transformers refuses files without it."""
  directory = pathlib.Path(directory)
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].size * tensors[name].dtype.itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name], size = tensors[name], size + nbytes
  shards.append(current)
  metadata = {"format": "pt"}
  if len(shards) == 1:
    write_file(directory / SINGLE_FILE, shards[0], metadata)
    return [SINGLE_FILE]
  names, weight_map = [], {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_file(directory / name, shard, metadata)
    names.append(name)
    weight_map.update({t: name for t in shard})
  total = sum(a.size * a.dtype.itemsize for a in tensors.values())
  (directory / INDEX_FILE).write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
  return names + [INDEX_FILE]
