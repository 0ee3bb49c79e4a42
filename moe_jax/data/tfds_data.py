"""Real datasets through tensorflow-datasets: read with ``tfds.data_source``, never downloaded.

    source = open_split("mnist", "train", data_dir="~/tensorflow_datasets")
    len(source), source[0]          # {'image': uint8[28, 28, 1], 'label': int64}

Why ``tfds.data_source``: it reads the prepared ``array_record`` files by index, with no
TensorFlow at read time, so it plugs into grain's random-access pipeline exactly like the
embedded data (shuffling, per-process sharding and a resumable iterator state are index
arithmetic). Nothing is ever downloaded at run time (``download=False`` always): a dataset that
is not prepared in ``data_dir`` is an error saying which dataset, where it was looked for, and
the command that prepares it on a machine with internet:

    pip install -e '.[tf]'
    tfds build mnist --data_dir ~/tensorflow_datasets --file_format array_record

(``--file_format array_record`` matters: tfds's default TFRecord files cannot be read by index.)

The supported datasets are listed in `DATASETS` with what the pipeline needs to know before
reading anything: the kind ('lm', 'text' classification, 'image' classification), the split
names, which split trains and which validates, the text fields, the image shape and the class
names. Tests run every one of them on ``tfds.testing.mock_data`` (random examples of the real
feature spec), since the real data cannot be fetched on the test machines.
"""
from __future__ import annotations

import dataclasses
import os
import re

from moe_jax.data.classification import DIGITS
from moe_jax.validation import check_choice


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  name: str
  kind: str                               # 'lm', 'text' or 'image'
  splits: tuple[str, ...]                 # the builder's split names
  train_split: str
  validation_split: str
  text_fields: tuple[str, ...] = ()       # joined with '\n' (e.g. ag_news title + description)
  image_shape: tuple[int, ...] = ()
  class_names: tuple[str, ...] = ()
  # LM only: True when the split is one long document (tiny_shakespeare) or small enough to hold
  # as one token array and cut into shuffled windows; False streams shuffled documents through
  # a packer (lm1b: 30M sentences).
  materialize: bool = True

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


DATASETS: dict[str, TfdsSpec] = {s.name: s for s in (
    TfdsSpec("lm1b", "lm", ("train", "test"), "train", "test", ("text",), materialize=False),
    TfdsSpec("tiny_shakespeare", "lm", ("train", "validation", "test"), "train", "validation",
             ("text",)),
    TfdsSpec("imdb_reviews", "text", ("train", "test", "unsupervised"), "train", "test",
             ("text",), class_names=("negative", "positive")),
    TfdsSpec("ag_news_subset", "text", ("train", "test"), "train", "test",
             ("title", "description"), class_names=("World", "Sports", "Business", "Sci/Tech")),
    TfdsSpec("mnist", "image", ("train", "test"), "train", "test", image_shape=(28, 28, 1),
             class_names=DIGITS),
    TfdsSpec("cifar10", "image", ("train", "test"), "train", "test", image_shape=(32, 32, 3),
             class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                          "horse", "ship", "truck")),
)}


class DatasetNotPreparedError(FileNotFoundError):
  """The tfds dataset has no array_record files in the data_dir searched."""


def names(kind: str | None = None) -> tuple[str, ...]:
  """Supported tfds datasets, all or those of one kind ('lm', 'text', 'image')."""
  return tuple(n for n, s in DATASETS.items() if kind is None or s.kind == kind)


def spec(name: str) -> TfdsSpec:
  check_choice("dataset", name, DATASETS, owner="tfds")
  return DATASETS[name]


def default_data_dir() -> str:
  """Where tfds looks when no data_dir is given: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                        "tensorflow_datasets")


def prepare_command(name: str, data_dir: str | None = None) -> str:
  return (f"pip install -e '.[tf]' && tfds build {name} --data_dir "
          f"{data_dir or default_data_dir()} --file_format array_record")


def check_split(name: str, split: str) -> str:
  """Checks every part of a tfds split expression ('train', 'train[:90%]', 'train+test')
  names one of the dataset's splits; returns `split`."""
  known = spec(name).splits
  if not isinstance(split, str) or not split:
    raise ValueError(f"tfds {name!r}: split must be a non-empty string, got {split!r}")
  for part in split.split("+"):
    base = re.sub(r"\[.*\]$", "", part.strip())
    if base not in known:
      raise ValueError(f"tfds {name!r} has no split {base!r} (in {split!r}); its splits: "
                       + ", ".join(known))
  return split


def open_split(name: str, split: str, data_dir: str | None = None):
  """The random-access source (``len``, ``[i]`` -> feature dict of numpy values) of one split.

  Raises ValueError for an unknown dataset or split, DatasetNotPreparedError (naming the
  dataset, the data_dir searched and the prepare command) when it is not prepared there.
  """
  spec(name)
  check_split(name, split)
  import tensorflow_datasets as tfds   # lazily: a second or two of imports
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:   # tfds raises several types here; diagnose with the builder
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise DatasetNotPreparedError(
          f"tfds dataset {name!r} is not prepared in {data_dir or default_data_dir()} (looked "
          f"for {builder.data_dir}); nothing is downloaded at run time. On a machine with "
          f"internet run: {prepare_command(name, data_dir)} (and point config.data.data_dir "
          "at that directory)") from e
    raise ValueError(
        f"tfds dataset {name!r} in {builder.data_dir} cannot be read by index ({e}); it must "
        f"be built with --file_format array_record: {prepare_command(name, data_dir)}") from e


def example_text(example: dict, fields: tuple[str, ...]) -> str:
  """The example's text fields joined with newlines (tfds gives bytes or str)."""
  parts = []
  for field in fields:
    value = example[field]
    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
    parts.append(value.decode("utf-8", errors="replace") if isinstance(value, bytes)
                 else str(value))
  return "\n".join(parts)
