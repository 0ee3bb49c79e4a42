"""experiments.queue: sweep commands from a file, one per core, pinned; a sweep's commands one
at a time; a line removed when its command succeeds, a failed one kept and reported."""
import csv
import sys

import pytest

from experiments import queue
from tests.train_helpers import assert_one_line_error, run_cli


def test_lines_comments_and_one_command_per_sweep_at_a_time(tmp_path):
  path = tmp_path / "q.txt"
  path.write_text("# the routers first\nexperiments/routers.py --only=relu  # 5 seeds\n\n"
                  "experiments/routers.py --only=hash\nexperiments/balancing.py --only=x\n"
                  "experiments/routers.py --only=relu\n")
  lines = queue.read_lines(path)
  assert lines == ["experiments/routers.py --only=relu", "experiments/routers.py --only=hash",
                   "experiments/balancing.py --only=x", "experiments/routers.py --only=relu"]
  assert queue.next_line(lines, []) == lines[0]
  assert queue.next_line(lines, [lines[0]]) == lines[2]      # routers busy: balancing
  assert queue.next_line(lines, [lines[0], lines[2]]) is None
  queue.remove_line(path, lines[0])                          # the first occurrence only
  assert queue.read_lines(path) == lines[1:]
  assert path.read_text().startswith("# the routers first\n\nexperiments/routers.py --only=h")


def test_a_missing_queue_file_is_one_line(tmp_path):
  proc = run_cli([sys.executable, "-m", "experiments.queue", str(tmp_path / "none.txt")])
  assert_one_line_error(proc, r"none.txt is not a file \(one experiments.run command per line\)")


# ~25 s: make test's budget: test-all.
@pytest.mark.slow
def test_a_queue_runs_its_commands_and_keeps_the_failed_one(tmp_path):
  out = tmp_path / "results"
  path = tmp_path / "q.txt"
  common = f"--quick --seeds=1 --out={out}"
  path.write_text(f"experiments/num_experts.py --only=E1 {common}\n"
                  f"experiments/num_experts.py --only=E2 {common}\n"
                  "experiments/no_such_sweep.py\n")
  proc = run_cli([sys.executable, "-m", "experiments.queue", str(path)])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert queue.read_lines(path) == ["experiments/no_such_sweep.py"]
  assert "FAILED" in proc.stdout and "1 commands left, 1 failed" in proc.stdout
  with open(out / "results.csv") as f:     # one after the other: the second wrote both
    assert [r["point"] for r in csv.DictReader(f)] == ["E1", "E2"]
  log = (tmp_path / "q.txt.logs" / "num_experts.log").read_text()
  assert log.count("=== ") == 2 and "E2 seed 0: 6 steps" in log
