"""experiments.compare: a router against baselines as paired runs, its table, reuse on rerun,
and bad arguments refused before any run."""
import pytest

from experiments import bases, stats
from experiments.compare import compare


def _tiny():
  return bases.lm(quick=True)


@pytest.fixture
def compared(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("compare")
  said = []
  result = compare(("topk", {"k": 2}), {"top-1": ("topk", {"k": 1})}, seeds=2, base=_tiny,
                   workdir=workdir, say=said.append)
  return workdir, result, said


def test_the_comparison_is_the_paired_one_over_the_runs_records_a_rerun_reuses_them(compared):
  _, result, said = compared
  assert said[0].startswith("sweep compare-topk_k=2: 4 runs (2 points x 2 seeds)")
  assert sorted((r["arm"], r["seed"]) for r in result.records) == [
      ("top-1", 0), ("top-1", 1), ("topk k=2", 0), ("topk k=2", 1)]
  new = {r["seed"]: r["eval_loss"] for r in result.arm("topk k=2")}
  old = {r["seed"]: r["eval_loss"] for r in result.arm("top-1")}
  assert result.comparisons["top-1"] == stats.compare(new, old)
  assert result.comparisons["top-1"].delta == pytest.approx(
      sum(new[s] - old[s] for s in (0, 1)) / 2)
  text = str(result)
  assert "| topk k=2 - top-1 | 2 |" in text and result.comparisons["top-1"].verdict in text
  assert result._repr_markdown_() == text
  # experts per token as measured: top-2 uses two, top-1 one
  assert [r["experts_per_token"] for r in result.arm("topk k=2")] == pytest.approx([2, 2])
  assert [r["experts_per_token"] for r in result.arm("top-1")] == pytest.approx([1, 1])
  _a_rerun_reuses_the_finished_runs(compared)
  _other_settings_in_the_same_workdir_are_refused(compared)


# Parts of the test above, which builds the runs once (xdist's loadgroup does not always keep
# the tests of one group on one worker: then each worker would build them).
def _a_rerun_reuses_the_finished_runs(compared):
  workdir, result, _ = compared
  said = []
  again = compare(("topk", {"k": 2}), {"top-1": ("topk", {"k": 1})}, seeds=2, base=_tiny,
                  workdir=workdir, say=said.append)
  assert said == [f"sweep compare-topk_k=2: 4 runs (2 points x 2 seeds) in {workdir}; "
                  "4 finished earlier, skipped"]
  assert again.comparisons == result.comparisons


def _other_settings_in_the_same_workdir_are_refused(compared):
  workdir, _, _ = compared
  with pytest.raises(Exception, match="optim.learning_rate"):
    compare(("topk", {"k": 2}), {"top-1": ("topk", {"k": 1})}, seeds=2, base=_tiny,
            workdir=workdir, overrides=["optim.learning_rate=0.01"], say=lambda _: None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(router="no_such_router", against=["topk"]), "no_such_router"),
    (dict(router=("topk", {"k": 0}), against=["topk"]), "k"),
    (dict(router="topk", against=["topk"]), "also one of its baselines"),
    (dict(router="topk", against=[]), "no baseline"),
    (dict(router="topk", against=["hash"], seeds=1), "at least 2 seeds"),
    (dict(router=("topk", 2), against=["hash"]), r"\(name, options\)"),
])
def test_bad_arguments_are_refused_before_any_run(kwargs, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    compare(base=_tiny, workdir=tmp_path / "w", say=lambda _: None, **kwargs)
  assert not (tmp_path / "w").exists()
