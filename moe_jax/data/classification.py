"""Embedded offline classification tasks with fixed splits, and a batch pipeline for them.

    task = load_task("digits")              # or "stdlib_package"
    task.train["inputs"], task.train["labels"], task.num_classes, task.class_names
    it = make_example_iterator(task.train, batch_size=64, seed=0)   # grain, resumable

`digits` — images: scikit-learn's bundled `load_digits` (1,797 8x8 grey images of handwritten
digits, 16 grey levels), inputs float32 [N, 8, 8, 1] scaled to [0, 1]. Split, stratified: the
j-th example of each class (in file order) is validation iff j % 5 == 0 (364 validation, 1,433
train; 35-37 validation examples per class).

`stdlib_package` — text: which of 10 standard-library packages a 256-byte snippet of Python
source comes from (email, asyncio, unittest, xml, http, multiprocessing, logging, importlib,
urllib, encodings), inputs int32 byte tokens [N, 256]. Snippets are the non-overlapping 256-byte
windows of each package's `.py` files. Split by file, never by window: within each package
the files sorted by md5(relative path) are validation iff their rank % 5 == 0 (so every
package has validation files and no file is in both splits). Classes are balanced by taking at
most 300 train / 60 validation snippets per package, evenly spaced over its windows. The
sources are those of the running Python, so the exact task differs slightly between Python
versions (the baselines in docs/classification.md are for Python 3.11).

`baselines(task)` fits the reference points on the train split and scores validation:
majority class, and logistic regression on pixels (digits) or on byte histograms
(stdlib_package; "bag of bytes").
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sysconfig

import numpy as np

from moe_jax.data.pipeline import batched_dataset
from moe_jax.validation import check_choice

SNIPPET_BYTES = 256
PACKAGES = ("email", "asyncio", "unittest", "xml", "http", "multiprocessing", "logging",
            "importlib", "urllib", "encodings")
DIGITS = tuple(str(d) for d in range(10))
_PER_CLASS = {"train": 300, "validation": 60}


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  train: dict[str, np.ndarray]         # {'inputs', 'labels'}
  validation: dict[str, np.ndarray]
  class_names: tuple[str, ...]
  kind: str                            # 'image' or 'text'

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _digits() -> Task:
  from sklearn.datasets import load_digits
  data = load_digits()
  images = (data.images.astype(np.float32) / 16.0)[..., None]
  labels = data.target.astype(np.int32)
  rank_in_class = np.zeros(len(labels), int)
  for c in range(10):
    rank_in_class[labels == c] = np.arange(np.sum(labels == c))
  val = rank_in_class % 5 == 0
  split = lambda m: {"inputs": images[m], "labels": labels[m]}
  return Task("digits", split(~val), split(val), DIGITS, "image")


def _package_files(package: str) -> list[tuple[str, pathlib.Path]]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = [(str(p.relative_to(root)), p) for p in (root / package).rglob("*.py")]
  if not files:
    raise FileNotFoundError(f"stdlib_package: no .py sources for package {package!r} under "
                            f"{root} (a Python without its library sources?)")
  return sorted(files, key=lambda f: hashlib.md5(f[0].encode()).hexdigest())


def _snippets(paths) -> np.ndarray:
  out = []
  for path in paths:
    data = np.frombuffer(path.read_bytes(), np.uint8)
    n = data.size // SNIPPET_BYTES
    out.append(data[:n * SNIPPET_BYTES].reshape(n, SNIPPET_BYTES))
  return np.concatenate(out) if out else np.zeros((0, SNIPPET_BYTES), np.uint8)


def _evenly(rows: np.ndarray, limit: int) -> np.ndarray:
  if len(rows) <= limit:
    return rows
  return rows[np.linspace(0, len(rows) - 1, limit).round().astype(int)]


def _stdlib_package() -> Task:
  splits = {"train": ([], []), "validation": ([], [])}
  for label, package in enumerate(PACKAGES):
    files = _package_files(package)
    by_split = {"validation": [p for i, (_, p) in enumerate(files) if i % 5 == 0],
                "train": [p for i, (_, p) in enumerate(files) if i % 5 != 0]}
    for split, paths in by_split.items():
      rows = _evenly(_snippets(paths), _PER_CLASS[split])
      splits[split][0].append(rows)
      splits[split][1].append(np.full(len(rows), label, np.int32))
  pack = lambda s: {"inputs": np.concatenate(splits[s][0]).astype(np.int32),
                    "labels": np.concatenate(splits[s][1])}
  return Task("stdlib_package", pack("train"), pack("validation"), PACKAGES, "text")


_TASKS = {"digits": _digits, "stdlib_package": _stdlib_package}
# What a model needs to know before the data is loaded: kind, classes, one example's shape.
TASK_SHAPES = {"digits": ("image", 10, (8, 8, 1)),
               "stdlib_package": ("text", len(PACKAGES), (SNIPPET_BYTES,))}


# The class names without loading the data.
CLASS_NAMES = {"digits": DIGITS, "stdlib_package": PACKAGES}


def task_names() -> tuple[str, ...]:
  return tuple(_TASKS)


def load_task(name: str) -> Task:
  check_choice("name", name, _TASKS, owner="load_task")
  return _TASKS[name]()


def _features(task: Task, inputs: np.ndarray) -> np.ndarray:
  if task.kind == "image":
    return inputs.reshape(len(inputs), -1)
  counts = np.stack([np.bincount(row, minlength=256) for row in inputs]).astype(np.float64)
  return counts / counts.sum(axis=1, keepdims=True)


def baselines(task: Task) -> dict[str, float]:
  """Validation accuracy of the majority class and of logistic regression (fit on train)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  y_train, y_val = task.train["labels"], task.validation["labels"]
  majority = np.bincount(y_train).argmax()
  scaler = StandardScaler().fit(_features(task, task.train["inputs"]))
  model = LogisticRegression(max_iter=2000).fit(
      scaler.transform(_features(task, task.train["inputs"])), y_train)
  predicted = model.predict(scaler.transform(_features(task, task.validation["inputs"])))
  return {"majority": float(np.mean(y_val == majority)),
          "logistic": float(np.mean(predicted == y_val))}


class ExampleSource:
  """grain random-access source over a dict of equal-length arrays: item i is row i of each."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ExampleSource: arrays of different lengths {lengths}")
    self._arrays = arrays
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self._arrays.items()}


def make_example_iterator(examples, *, batch_size: int, seed: int, shuffle: bool = True,
                          num_epochs: int | None = None, shard_index: int | None = None,
                          shard_count: int | None = None):
  """Shuffled training batches of examples, sharded and resumable as `make_iterator`'s.
  `examples`: a dict of equal-length arrays, or any random-access source of example dicts."""
  source = ExampleSource(examples) if isinstance(examples, dict) else examples
  ds = batched_dataset(source, batch_size=batch_size, seed=seed,
                       shuffle=shuffle, num_epochs=num_epochs, shard_index=shard_index,
                       shard_count=shard_count, owner="make_example_iterator")
  return iter(ds.to_iter_dataset())


def eval_example_batches(arrays: dict[str, np.ndarray], *, batch_size: int, shard_index: int = 0,
                         shard_count: int = 1):
  """One ordered pass over every example, padded to whole batches: each batch also has
  ``mask`` float32[B] (0 on padding rows). Shard i takes examples i::shard_count and every
  shard yields the same number of batches."""
  n = len(next(iter(arrays.values())))
  ids = np.arange(shard_index, n, shard_count)
  num_batches = -(-(-(-n // shard_count)) // batch_size)
  for b in range(num_batches):
    rows = ids[b * batch_size:(b + 1) * batch_size]
    batch = {}
    for k, v in arrays.items():
      block = np.zeros((batch_size,) + v.shape[1:], v.dtype)
      block[:len(rows)] = v[rows]
      batch[k] = block
    mask = np.zeros(batch_size, np.float32)
    mask[:len(rows)] = 1.0
    batch["mask"] = mask
    yield batch
