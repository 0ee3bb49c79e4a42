"""Benchmarks are not tests; this only checks that the layer benchmark runs and writes JSON."""
import json

from benchmarks import moe_layer


def test_moe_layer_benchmark_runs(tmp_path):
  out = tmp_path / "moe_layer.json"
  moe_layer.main(["--experts", "8", "--tokens", "64", "--d_model", "16", "--d_ff", "32",
                  "--repeats", "1", "--ep", "4", "--out", str(out)])
  result = json.loads(out.read_text())
  rows = result["rows"]
  assert {r["layer"] for r in rows} == {
      "dense FFN", "moe/sort", "moe/dropless", "moe/einsum", "moe/sort G=4", "moe/sort EP=4",
      "moe/dropless G=4", "moe/dropless EP=4"}
  assert all(r["forward_ms"] > 0 for r in rows)
  assert set(result["sort_phases_ms"]["8"]) == {"route", "pack", "experts", "unpack"}
