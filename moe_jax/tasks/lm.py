"""Task `lm`: next-token prediction on a corpus (embedded or tfds), reported in bits per byte.

Batches: inputs / targets int32 [B, L] (targets are the inputs shifted by one), an optional
mask [B, L] of real targets, and `target_bytes` [B, L] when one token spans several bytes
(SentencePiece), so bits per byte count the text each piece stands for.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from moe_jax.data import datasets, eval_batches as window_batches, local_files
from moe_jax.models import DecoderLM
from moe_jax.tasks.base import Task, TaskData, TaskEval
from moe_jax.tasks.registry import register
from moe_jax.validation import check_choice, check_int


def check_data(data, model, options) -> int:
  del options
  check_choice("corpus", data.corpus, datasets.lm_names(), owner="config.data")
  if data.corpus == local_files.NAME:    # the globs match readable formats (contents: later)
    local_files.check_files(data.files, "files")
    if data.validation_files:
      local_files.check_files(data.validation_files, "validation_files")
  return check_int("seq_len", data.seq_len, low=1, high=model.max_len, owner="config.data")


def build_model(run, mesh, rngs):
  return DecoderLM(run.model, rngs=rngs, mesh=mesh)


def train_iterator(run, tokenizer, **shard):
  return datasets.lm_train_iterator(run.data, tokenizer, **shard)


def validation_data(run, tokenizer) -> np.ndarray:
  return datasets.lm_validation_tokens(run.data, tokenizer)


def eval_batches(run, tokenizer, tokens, **shard):
  for batch in window_batches(tokens, seq_len=run.data.seq_len, **shard):
    if tokenizer.eos_id is not None:   # not one byte per token
      batch["target_bytes"] = tokenizer.bytes_per_token[batch["targets"]] * batch["mask"]
    yield batch


def _nll(model, batch, *, train, rngs=None):
  logits_BLV, routings = model(batch["inputs"], train=train, rngs=rngs)
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
  return nll_BL, routings


def loss(model, batch, *, train, rngs=None):
  """Mean next-token cross-entropy (nats) over the unmasked targets."""
  nll_BL, routings = _nll(model, batch, train=train, rngs=rngs)
  mask_BL = batch.get("mask", jnp.ones_like(nll_BL))
  ce = jnp.sum(nll_BL * mask_BL) / jnp.maximum(jnp.sum(mask_BL), 1.0)
  return ce, {"ce": ce}, routings


def eval_sums(model, batch):
  logits_BLV, routings = model(batch["inputs"], train=False)
  return sums_of(logits_BLV, batch), routings


def sums_of(logits_BLV, batch) -> dict:
  """The validation sums of one batch's logits (what `summarize` reduces)."""
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
  mask_BL = batch["mask"]
  sums = {"nll_sum": jnp.sum(nll_BL * mask_BL), "count": jnp.sum(mask_BL)}
  if "target_bytes" in batch:
    sums["target_bytes"] = jnp.sum(batch["target_bytes"])
  return sums


def summarize(sums: dict) -> dict:
  loss_ = float(sums["nll_sum"] / sums["count"])
  # Byte tokenizer: one token is one byte, so bits/byte = nats/token / ln 2.
  num_bytes = float(sums.get("target_bytes", sums["count"]))
  return {"loss": loss_, "tokens": int(sums["count"]), "perplexity": math.exp(loss_),
          "bits_per_byte": float(sums["nll_sum"]) / num_bytes / math.log(2),
          "bytes": int(num_bytes)}


def headline(metrics: dict) -> str:
  return f"bits/byte {metrics['bits_per_byte']:.4f}"


def _dispatcher_name(model) -> str:
  if model.moe is None:
    return "no MoE"
  d = model.moe.dispatcher
  return d if isinstance(d, str) else d.name


def evaluate_extras(ctx) -> dict:
  """The byte unigram baseline and greedy / sampled continuations of the prompt."""
  from moe_jax import sampling
  run = ctx.run
  baseline, baseline_what = datasets.lm_byte_baseline(run.data, ctx.tokenizer, ctx.data)
  kw = dict(num_tokens=run.eval.sample_tokens, seed=run.seed, tokenizer=ctx.tokenizer)
  model_state = sampling.host_model_state(ctx.graphdef, ctx.state)
  how = sampling.describe(run, len(ctx.tokenizer.encode(run.eval.prompt)) or 1,
                          run.eval.sample_tokens)
  return {
      "unigram_entropy_bits": baseline,
      "unigram_baseline": baseline_what,
      "prompt": run.eval.prompt,
      "sample_greedy": sampling.sample(run, model_state, run.eval.prompt, temperature=0.0,
                                       top_k=0, **kw),
      "sample": sampling.sample(run, model_state, run.eval.prompt,
                                temperature=run.eval.temperature, top_k=run.eval.top_k, **kw),
      "sampling": (f"{how}, window {run.data.seq_len}, "
                   f"{_dispatcher_name(sampling.sampling_model_config(run.model))} "
                   f"dispatcher; temperature {run.eval.temperature}, top_k {run.eval.top_k}"),
  }


def report(result: dict, workdir) -> str:
  ratio = result["bits_per_byte"] / result["unigram_entropy_bits"]
  lines = [
      f"step {result['step']}: validation loss {result['loss']:.4f} nats/token, perplexity "
      f"{result['perplexity']:.3f}, {result['tokens']} tokens",
      f"bits per byte {result['bits_per_byte']:.3f}  vs  {result['unigram_baseline']} "
      f"{result['unigram_entropy_bits']:.3f} ({ratio:.2f}x)",
  ]
  for layer, m in sorted(result.get("layers", {}).items(), key=lambda kv: int(kv[0])):
    if "max_vio" in m:
      load = " ".join(f"{x:.2f}" for x in np.asarray(m["expert_load"]))
      lines.append(f"layer{layer}: MaxVio {float(m['max_vio']):.3f}, dropped "
                   f"{float(m.get('dropped_fraction', 0.0)):.3f}, load [{load}]")
  lines += [f"greedy: {result['prompt']!r} -> {result['sample_greedy']!r}",
            f"sample: {result['prompt']!r} -> {result['sample']!r}",
            f"({result['sampling']})"]
  return "\n".join(lines)


def plots(result: dict, workdir, records) -> list[str]:
  from moe_jax import plots as plot_lib   # matplotlib: only when plotting (0.5 s per CLI start)
  plot_lib.loss_curve(records, workdir / "loss_curve.png",
                      unigram_bits=result["unigram_entropy_bits"])
  return ["loss_curve.png"]


TASK = register(Task(
    name="lm", causal=True,
    data=TaskData(check_data, lambda data: data.corpus, train_iterator, validation_data,
                  eval_batches),
    build_model=build_model, loss=loss,
    eval=TaskEval(eval_sums, summarize, headline, evaluate_extras, report, plots)))
