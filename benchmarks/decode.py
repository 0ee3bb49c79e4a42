"""Generation speed: KV-cache decoding against recomputing the window for every token.

    python benchmarks/decode.py [--d_model 256] [--layers 4] [--experts 8] [--window 512]
        [--prompt 16] [--tokens 128] [--rounds 3]

A random decoder (MoE FFNs on the dropless dispatcher, as sampling runs them) continues a
prompt greedily with `moe_jax.sampling.sample(cache=True)` and `cache=False`, timed
round-robin in one process (each compiled first: one untimed call of each before the timed
ones; medians), and reports tokens per second and their ratio. The two continuations are
checked equal. Writes benchmarks/results/decode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import types

if __name__ == "__main__":   # run as a script: the repository root, for `benchmarks.timing`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.timing import round_robin_ms, settings  # noqa: E402
from moe_jax import sampling  # noqa: E402
from moe_jax.data.tokenizer import ByteTokenizer  # noqa: E402
from moe_jax.models import DecoderLM  # noqa: E402
from moe_jax.models.transformer import make_config  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--experts", type=int, default=8, help="0: a dense model")
  parser.add_argument("--window", type=int, default=512)
  parser.add_argument("--prompt", type=int, default=16)
  parser.add_argument("--tokens", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=str(RESULTS / "decode.json"))
  args = parser.parse_args(argv)
  moe = dict(num_experts=args.experts, expert_d_ff=2 * args.d_model, dispatcher="dropless",
             router_options={"k": 2}) if args.experts else {}
  config = make_config(vocab_size=256, d_model=args.d_model, num_layers=args.layers,
                       num_heads=max(1, args.d_model // 64), max_len=args.window, **moe)
  state = nnx.state(DecoderLM(config, rngs=nnx.Rngs(0)))
  run = types.SimpleNamespace(model=config, data=types.SimpleNamespace(seq_len=args.window))
  prompt = "".join(chr(97 + i % 26) for i in range(args.prompt))
  calls = [lambda cache=cache: sampling.sample(
      run, state, prompt, num_tokens=args.tokens, temperature=0.0, top_k=0,
      tokenizer=ByteTokenizer(), cache=cache) for cache in (True, False)]
  assert calls[0]() == calls[1](), "the cached and the recomputed continuations differ"
  times = round_robin_ms(calls, args.rounds, say=print)
  rows = []
  for name, ms in zip(("KV cache", "recompute window"), times):
    median = statistics.median(ms)
    rows.append({"path": name, "ms": median, "tokens_per_sec": 1e3 * args.tokens / median})
  rows[0]["x_recompute"] = rows[0]["tokens_per_sec"] / rows[1]["tokens_per_sec"]
  for r in rows:
    print(f"{r['path']:18s} {r['ms']:9.1f} ms  {r['tokens_per_sec']:8.1f} tokens/s"
          + (f"  {r['x_recompute']:.1f}x recompute" if "x_recompute" in r else ""))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {"backend": jax.default_backend(), "jax": jax.__version__, "args": settings(args),
            "rows": rows}
  out.write_text(json.dumps(result, indent=1))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
