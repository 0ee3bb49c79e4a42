"""Continue a prompt with a trained language model:

    python -m moe_jax.generate --workdir runs/lm_tiny --prompt 'def ' [--tokens 200]
        [--temperature 0.8] [--top_k 40] [--top_p 0.95] [--seed 0] [--step N] [--no_cache]

Restores the run's newest (or step N's) checkpoint and continues the prompt with its own
tokenizer: temperature 0 is greedy; top_k / top_p restrict sampling to the k likeliest tokens /
the nucleus of probability p. Decoding uses the KV cache when prompt and continuation fit in
the run's window (`data.seq_len`), else recomputes the sliding window (moe_jax/sampling.py);
`--no_cache` always recomputes. Prints the continuation; writes nothing. `--config.a.b=v`
overrides apply as for `evaluate` (e.g. the mesh).
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax

from moe_jax import run_setup, sampling
from moe_jax.parallel.mesh import make_mesh
from moe_jax.validation import check_float, check_int


def generate(workdir, prompt: str, *, tokens: int = 200, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, step: int | None = None,
             cache: bool = True, overrides=()) -> str:
  """The continuation of `prompt` by the language model in `workdir`."""
  check_int("tokens", tokens, low=1, owner="generate")
  check_float("temperature", temperature, low=0.0, owner="generate")
  check_int("top_k", top_k, low=0, owner="generate")
  check_float("top_p", top_p, low=0.0, high=1.0, low_inclusive=False, owner="generate")
  workdir = pathlib.Path(workdir).expanduser().absolute()
  run = run_setup.open_run(workdir, overrides)
  if run.task not in ("lm", "distill"):
    raise ValueError(f"generate: the run in {workdir} is a {run.task!r} run, not a language "
                     "model")
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  graphdef, state, _ = run_setup.restore_for_eval(run, workdir, mesh, step)
  tokenizer = run_setup.tokenizer(run, workdir, may_train=False)
  return sampling.sample(run, sampling.host_model_state(graphdef, state), prompt,
                         num_tokens=tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         tokenizer=tokenizer, seed=seed, cache=cache)


def main(argv):
  del argv
  from moe_jax import cli
  cli.init_runtime()
  f = cli.FLAGS
  text = cli.run_reporting_errors(
      generate, f.workdir, f.prompt, tokens=f.tokens, temperature=f.temperature,
      top_k=f.top_k, top_p=f.top_p, seed=f.seed, step=f.step, cache=not f.no_cache,
      overrides=cli.config_overrides())
  if jax.process_index() == 0:
    print(f.prompt + text, flush=True)


if __name__ == "__main__":
  from absl import flags

  from moe_jax import cli
  cli.define_flags(with_config=False)
  flags.DEFINE_string("prompt", "", "The text to continue.")
  flags.DEFINE_integer("tokens", 200, "New tokens.")
  flags.DEFINE_float("temperature", 0.8, "0: greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sample within the nucleus of probability p (1: all).")
  flags.DEFINE_integer("seed", 0, "The sampling key.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_bool("no_cache", False, "Recompute the window for every token.")
  cli.run(main)
