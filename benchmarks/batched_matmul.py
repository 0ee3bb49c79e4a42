"""The floor under every capacity-based MoE layer on this backend: E experts' batched matmul
[E, C, D] x [E, D, F] against one [E*C, D] x [D, F] matmul of the same FLOPs.

    python benchmarks/batched_matmul.py [--rows 10240] [--d_model 512] [--d_ff 1024]
        [--experts 8 32 64] [--rounds 9]

rows = E*C is fixed (10,240 = the capacity buffer of T = 4096, k = 2, capacity factor 1.25,
as in moe_layer.py), so every case does the same FLOPs and only the split into experts changes.
Round-robin in one process (every case compiled first; each round times every case once, right
after an untimed call of it; medians). Writes benchmarks/results/batched_matmul.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import os
import statistics
import sys
from functools import partial

if __name__ == "__main__":   # run as a script: the repository root, for `benchmarks.timing`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.timing import round_robin_ms, settings  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def cases(rows: int, d_model: int, d_ff: int, experts: list[int]) -> dict:
  """{name: (jitted fn, args)}: the one matmul and the batched one per E."""
  key = jax.random.PRNGKey(0)
  out = {"one matmul": (jax.jit(jnp.matmul), (jax.random.normal(key, (rows, d_model)),
                                               jax.random.normal(key, (d_model, d_ff))))}
  batched = jax.jit(lambda x, w: jnp.einsum("ecd,edf->ecf", x, w))
  for e in experts:
    if rows % e:
      raise ValueError(f"--rows {rows} is not divisible by E={e}")
    out[f"E={e}"] = (batched, (jax.random.normal(key, (e, rows // e, d_model)),
                               jax.random.normal(key, (e, d_model, d_ff))))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=10240)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--d_ff", type=int, default=1024)
  parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 64])
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--out", default=str(RESULTS / "batched_matmul.json"))
  args = parser.parse_args(argv)
  todo = cases(args.rows, args.d_model, args.d_ff, args.experts)
  for fn, fn_args in todo.values():
    jax.block_until_ready(fn(*fn_args))      # compile everything first
  times = round_robin_ms([partial(fn, *fn_args) for fn, fn_args in todo.values()], args.rounds)
  median = {name: statistics.median(ts) / 1e3 for name, ts in zip(todo, times)}
  print(f"{jax.default_backend()}, jax {jax.__version__}; {args.rows} rows x {args.d_model} x "
        f"{args.d_ff}, {args.rounds} round-robin rounds")
  rows = []
  for name, seconds in median.items():
    ratio = seconds / median["one matmul"]
    rows.append({"case": name, "ms": 1e3 * seconds, "x_one_matmul": ratio})
    print(f"{name:<12}{1e3 * seconds:>9.1f} ms{ratio:>8.2f}x")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__,
                             "args": settings(args), "rows": rows}, indent=1))
  print(f"wrote {out}")
  return rows


if __name__ == "__main__":
  main()
