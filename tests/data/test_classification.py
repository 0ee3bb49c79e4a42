"""Embedded classification tasks: shapes, fixed disjoint splits, balance, baselines, batches."""
import numpy as np
import pytest

from moe_jax.data.classification import (PACKAGES, SNIPPET_BYTES, baselines, load_task,
                                         make_example_iterator, task_names)


@pytest.fixture(scope="module", params=["digits", "stdlib_package"])
def task(request):
  return load_task(request.param)


def test_shapes_dtypes_and_labels(task):
  for split in (task.train, task.validation):
    assert len(split["inputs"]) == len(split["labels"]) > 0
    assert split["labels"].dtype == np.int32
    assert set(np.unique(split["labels"])) == set(range(task.num_classes))
  if task.kind == "image":
    assert task.train["inputs"].shape[1:] == (8, 8, 1) and task.train["inputs"].dtype == np.float32
    assert 0.0 <= task.train["inputs"].min() and task.train["inputs"].max() <= 1.0
    assert len(task.train["labels"]) + len(task.validation["labels"]) == 1797
  else:
    assert task.train["inputs"].shape[1:] == (SNIPPET_BYTES,)
    assert task.train["inputs"].max() < 256 and task.class_names == PACKAGES


def test_splits_are_fixed_disjoint_and_balanced(task):
  again = load_task(task.name)
  np.testing.assert_array_equal(again.validation["inputs"], task.validation["inputs"])
  train_rows = {row.tobytes() for row in task.train["inputs"]}
  shared = sum(row.tobytes() in train_rows for row in task.validation["inputs"])
  assert shared <= 2, shared     # (digits has a couple of pixel-identical images)
  counts = np.bincount(task.train["labels"])
  assert counts.max() <= 1.2 * counts.min() if task.kind == "image" else counts.min() == 300


def test_baselines_are_what_the_readme_says(task):
  """The reference points a model must beat (Python 3.11 numbers for the stdlib task)."""
  result = baselines(task)
  assert result["majority"] < 0.11
  if task.name == "digits":
    assert result["logistic"] == pytest.approx(0.9725, abs=0.01)
  else:
    assert 0.3 < result["logistic"] < 0.6        # bag of bytes: far from solved


def test_example_batches_resume_exactly(task):
  kw = dict(batch_size=16, seed=3, shard_index=0, shard_count=1)
  it = make_example_iterator(task.train, **kw)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["labels"] for _ in range(2)]
  resumed = make_example_iterator(task.train, **kw)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["labels"], want)
  batch = next(make_example_iterator(task.train, **kw))
  assert batch["inputs"].shape == (16,) + task.train["inputs"].shape[1:]


def test_unknown_task():
  with pytest.raises(ValueError, match=r"'name'='mnist' is not allowed; allowed: 'digits', "
                                       r"'stdlib_package'"):
    load_task("mnist")
  assert task_names() == ("digits", "stdlib_package")
