"""safetensors checkpoints through the `safetensors` package, one file or sharded with an index.

    tensors = open_checkpoint(directory)      # model.safetensors or a sharded index
    tensors.names(), tensors.shape(name), tensors.dtype(name), tensors[name] -> np.ndarray
    write_checkpoint(directory, {name: array}, max_shard_bytes=5 * 2**30)

The package (`safe_open`, memory-mapped: a tensor is read only when asked for; it checks each
header against the file before any tensor is read) reads and writes every file. What it does not
do, and this module does:
- the sharded index (`model.safetensors.index.json`: {"metadata": {...}, "weight_map": {name:
  file}}), read and written here, with every shard name checked to be a plain file name beside
  the index (`_check_shard_name`) and links followed only inside the checkpoint (`links`);
- bfloat16 and float8 reads: the package's numpy frontend cannot hold them ("data type
  'bfloat16' not understood", safetensors 0.8), so those tensors come through its flax frontend
  on the CPU and leave as ml_dtypes numpy arrays, the same bytes;
- one-line errors naming the file, the package's own message kept.
"""
from __future__ import annotations

import json
import os
import pathlib

import jax
import ml_dtypes
import numpy as np

from moe_jax.hf.links import resolve_member

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_CODES = {v: k for k, v in DTYPES.items()}
_NOT_NUMPY = ("BF16", "F8_E4M3", "F8_E5M2")     # read through the package's flax frontend


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
  """One .safetensors file, opened (and its header checked) by the package."""

  def __init__(self, path):
    from safetensors import safe_open
    self.path = pathlib.Path(path)
    try:
      self._np = safe_open(str(self.path), framework="np")
      names = list(self._np.keys())
      slices = {name: self._np.get_slice(name) for name in names}
      self.metadata = self._np.metadata() or {}
    except Exception as e:  # noqa: BLE001 -- the package raises its own SafetensorError
      raise ValueError(f"{self.path}: not a safetensors file the safetensors library can "
                       f"read: {_first_line(e)}") from None
    self.entries = {}
    for name, piece in slices.items():
      code = piece.get_dtype()
      if code not in DTYPES:
        raise ValueError(f"{self.path}: tensor {name!r}: dtype {code!r} is not supported; "
                         "allowed: " + ", ".join(DTYPES))
      self.entries[name] = {"dtype": code, "shape": list(piece.get_shape())}
    self._flax = None

  def __getitem__(self, name: str) -> np.ndarray:
    """The tensor, read from the file now."""
    if self.entries[name]["dtype"] not in _NOT_NUMPY:
      return self._np.get_tensor(name)
    from safetensors import safe_open
    if self._flax is None:
      self._flax = safe_open(str(self.path), framework="flax")
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      return np.asarray(self._flax.get_tensor(name))


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


class Checkpoint:
  """The tensors of a checkpoint directory, by name, over one file or an index's shards."""

  def __init__(self, files: dict[str, SafetensorsFile], metadata: dict):
    self.files, self.metadata = files, metadata      # files: tensor name -> its file

  def names(self) -> list[str]:
    return sorted(self.files)

  def without(self, names) -> "Checkpoint":
    """The same checkpoint with those tensors left out (never read)."""
    drop = set(names)
    return Checkpoint({n: f for n, f in self.files.items() if n not in drop}, self.metadata)

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
  """One .safetensors file, written by the package (any dtype `dtype_code` accepts)."""
  from safetensors.numpy import save_file
  for array in tensors.values():
    dtype_code(array.dtype)
  save_file({name: np.ascontiguousarray(a) for name, a in tensors.items()}, str(path),
            metadata=dict(metadata) if metadata else None)


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
