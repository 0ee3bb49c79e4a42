"""Benchmarks are not tests; this only checks that the layer benchmark runs and writes JSON."""
import json

import pytest

from benchmarks import moe_layer

# Smoke tests of the benchmark scripts (they compile every variant): `make test-all`.
pytestmark = pytest.mark.slow


def test_moe_layer_benchmark_runs(tmp_path):
  out = tmp_path / "moe_layer.json"
  moe_layer.main(["--experts", "8", "--tokens", "64", "--d_model", "16", "--d_ff", "32",
                  "--rounds", "2", "--ep", "4", "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [r["layer"] for r in rows] == [
      "dense FFN", "naive", "moe/sort", "moe/sort G=8", "moe/dropless", "moe/dropless:blocked",
      "breakdown: sort.run, bare top-k", "breakdown: topk.route + sort.run",
      "moe/sort G=4 (EP baseline)", "moe/sort EP=4", "moe/dropless G=4 (EP baseline)",
      "moe/dropless EP=4"]
  assert all(r["forward_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
  by = {r["layer"]: r for r in rows}
  assert by["moe/sort"]["fwd_bwd_x_baseline"] == pytest.approx(
      by["moe/sort"]["fwd_bwd_ms"] / by["naive"]["fwd_bwd_ms"])
  assert by["moe/sort EP=4"]["baseline"] == "moe/sort G=4 (EP baseline)"


def test_train_step_benchmark_runs(tmp_path):
  from benchmarks import train_step
  out = tmp_path / "train_step.json"
  train_step.main(["--d_model", "32", "--layers", "1", "--experts", "4", "--expert_d_ff", "32",
                   "--seq_len", "16", "--batch", "8", "--rounds", "1", "--steps_per_round", "1",
                   "--mesh", "data=2,expert=4", "--profile", "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [(r["mesh"], r["model"]) for r in rows] == [
      (m, name) for m in ("1 device", "data=2,expert=4")
      for name in ("dense", "moe/sort", "moe/dropless", "moe/einsum")]
  dense, sort = rows[0], rows[1]
  assert sort["params"] > dense["params"]
  # Same active parameters up to the router's D*E weights.
  assert sort["active_params"] - dense["active_params"] == 32 * 4
  assert all(r["tokens_per_sec"] > 0 for r in rows)
  # --profile: op kinds from the trace, the all-to-alls only where experts are exchanged.
  assert all(r["cores_busy"] > 0 and r["op_ms_per_step"] for r in rows)
  assert all(("all-to-all" in r["op_ms_per_step"]) == (r["mesh"] != "1 device" and
                                                      r["model"] != "dense") for r in rows)


def test_batched_matmul_benchmark_runs(tmp_path):
  from benchmarks import batched_matmul
  rows = batched_matmul.main(["--rows", "64", "--d_model", "8", "--d_ff", "16", "--experts",
                              "2", "8", "--rounds", "1", "--out", str(tmp_path / "b.json")])
  assert [r["case"] for r in rows] == ["one matmul", "E=2", "E=8"]
  assert rows[0]["x_one_matmul"] == 1.0 and all(r["ms"] > 0 for r in rows)


def test_decode_benchmark_runs(tmp_path):
  from benchmarks import decode
  out = tmp_path / "decode.json"
  result = decode.main(["--d_model", "32", "--layers", "2", "--window", "64", "--prompt", "4",
                        "--tokens", "8", "--rounds", "1", "--out", str(out)])
  assert [r["path"] for r in json.loads(out.read_text())["rows"]] == ["KV cache",
                                                                      "recompute window"]
  assert result["rows"][0]["x_recompute"] > 0


def test_protocol_step_benchmark_runs(tmp_path):
  from benchmarks import protocol_step
  out = tmp_path / "protocol_step.json"
  protocol_step.main(["--steps", "2", "--out", str(out)])
  result = json.loads(out.read_text())
  assert result["loop_ms"] > 0 and result["step_alone_ms"] > 0 and result["ops_ms_per_step"]
  assert result["fraction_of_matmul_rate"] == pytest.approx(
      result["train_gflops_per_sec"] / result["matmul_gflops_per_sec"])


def test_concurrent_runs_benchmark_runs(tmp_path):
  from benchmarks import concurrent_runs
  out = tmp_path / "concurrent_runs.json"
  result = concurrent_runs.main(["--steps", "4", "--log_every", "1", "--rounds", "1",
                                 "--out", str(out)])
  assert json.loads(out.read_text())["x_per_core"] == pytest.approx(result["x_per_core"])
  assert all(len(v) == 1 and v[0] > 0 for v in result["tokens_per_sec"].values())
