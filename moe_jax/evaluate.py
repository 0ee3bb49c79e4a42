"""Evaluate a trained LM: python -m moe_jax.evaluate --workdir DIR [--step N].

Loads the run's config (DIR/config.json) and its newest (or step N's) checkpoint. Classifiers:
accuracy, per-class accuracy, confusion matrix, the dataset's baselines and, per class, which
experts each MoE layer uses (confusion.png, class_expert_load.png). Language models: on the
validation split it reports loss (nats/token), perplexity and bits per byte, each MoE layer's
expert load, MaxVio and dropped fraction; continues a prompt greedily and by temperature/top-k
sampling; writes DIR/eval.json, DIR/expert_load.png (load by layer and expert) and
DIR/loss_curve.png (from metrics.jsonl).

Sampling recomputes the whole window for every new token (no KV cache): simple and exactly the
training forward pass, and cheap at these sizes. It runs on one device with the `dropless`
dispatcher, the one strictly causal dispatcher, so the positions after the cursor (zeros)
cannot change which experts earlier tokens use.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax import config as config_lib
from moe_jax.models import DecoderLM
from moe_jax.data import datasets, eval_batches
from moe_jax.data.classification import eval_example_batches
from moe_jax.parallel.distributed import global_to_host, host_local_to_global

_LAYER_METRICS = ("expert_load", "max_vio", "dropped_fraction")


def make_eval_step(graphdef, task: str = "lm"):
  """jitted fn(state, batch) -> summed NLL, counts and per-layer routing metrics (and, for
  classification, correct predictions and the confusion matrix), where state is the
  nnx.State of (model, optimizer) the training loop carries."""

  @jax.jit
  def step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    if task == "lm":
      logits, routings = model(batch["inputs"], train=False)
    else:
      logits, routings = model(batch["inputs"], train=False, mask_BL=batch.get("token_mask"))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    mask = batch["mask"]
    if task == "lm":
      nll = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
      # Bytes of text the targets stand for (SentencePiece pieces span several bytes).
      out = {"target_bytes": jnp.sum(batch["target_bytes"])} if "target_bytes" in batch else {}
    else:
      labels = batch["labels"]
      nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
      predicted = jnp.argmax(logits, axis=-1)
      classes = logits.shape[-1]
      out = {"correct": jnp.sum((predicted == labels) * mask),
             "confusion": jnp.einsum("b,bi,bj->ij", mask, jax.nn.one_hot(labels, classes),
                                     jax.nn.one_hot(predicted, classes))}
    out.update({"nll_sum": jnp.sum(nll * mask), "count": jnp.sum(mask)})
    for i, r in enumerate(routings):
      if r is not None:
        out.update({f"layer{i}/{k}": r.metrics[k] for k in _LAYER_METRICS if k in r.metrics})
    return out

  return step


def validation_data(run: config_lib.RunConfig, tokenizer):
  """The validation split, read once: LM token array, or classification arrays."""
  if run.task == "lm":
    return datasets.lm_validation_tokens(run.data, tokenizer)
  return datasets.classification_validation(run.data, tokenizer)


def _batches(run: config_lib.RunConfig, tokenizer, data):
  processes = jax.process_count()
  shard = dict(batch_size=run.data.eval_batch_size // processes,
               shard_index=jax.process_index(), shard_count=processes)
  if run.task != "lm":
    yield from eval_example_batches(data, **shard)
    return
  for batch in eval_batches(data, seq_len=run.data.seq_len, **shard):
    if tokenizer.eos_id is not None:   # not one byte per token
      batch["target_bytes"] = tokenizer.bytes_per_token[batch["targets"]] * batch["mask"]
    yield batch


def validation_metrics(eval_step, state, run: config_lib.RunConfig, mesh, tokenizer=None,
                       data=None) -> dict:
  """Over the validation split (or its first data.eval_max_batches batches): loss and, for
  LMs, perplexity and bits_per_byte; for classifiers accuracy, per-class accuracy and the
  confusion matrix (rows: true class); per-layer routing metrics averaged over batches.
  `data`: `validation_data(run, tokenizer)` when the caller keeps it between evaluations."""
  if tokenizer is None:
    tokenizer = datasets.load_or_train_tokenizer(run, may_train=False)
  if data is None:
    data = validation_data(run, tokenizer)
  sums: dict[str, np.ndarray] = {}
  n = 0
  for batch in _batches(run, tokenizer, data):
    if run.data.eval_max_batches and n == run.data.eval_max_batches:
      break
    out = jax.device_get(eval_step(state, host_local_to_global(batch, mesh)))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    n += 1
  loss = float(sums["nll_sum"] / sums["count"])
  result = {"loss": loss, "examples" if run.task != "lm" else "tokens": int(sums["count"])}
  if run.task == "lm":
    # Byte tokenizer: one token is one byte, so bits/byte = nats/token / ln 2.
    num_bytes = float(sums.pop("target_bytes", sums["count"]))
    result.update(perplexity=math.exp(loss),
                  bits_per_byte=float(sums["nll_sum"]) / num_bytes / math.log(2),
                  bytes=int(num_bytes))
  else:
    confusion = sums["confusion"]
    result.update(accuracy=float(sums["correct"] / sums["count"]),
                  per_class_accuracy=(np.diag(confusion) / np.maximum(confusion.sum(1), 1)),
                  confusion=confusion.astype(int))
  result.update({k: v / n for k, v in sums.items() if k.startswith("layer")})
  return result


@nnx.jit
def _next_logits(model, tokens_1L, position):
  """Logits at `position` of a one-sequence window (module level: compiled once per model
  structure, shared by the greedy and the sampled continuation)."""
  logits, _ = model(tokens_1L, train=False)
  return logits[0, position]


def sample(run: config_lib.RunConfig, model_state, prompt: str, *, num_tokens: int,
           temperature: float, top_k: int, seed: int = 0, tokenizer=None) -> str:
  """Continues `prompt` by `num_tokens` tokens; temperature 0 is greedy (see module docstring).
  `model_state`: the model's nnx.State as host arrays."""
  config = dataclasses.replace(run.model, dispatcher="dropless", group_size=None)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, model_state)
  window = run.data.seq_len
  tokenizer = tokenizer or datasets.load_or_train_tokenizer(run, may_train=False)

  ids = list(tokenizer.encode(prompt)) or [0]
  rng = jax.random.PRNGKey(seed)
  for _ in range(num_tokens):
    context = ids[-window:]
    buffer = np.zeros((1, window), np.int32)
    buffer[0, :len(context)] = context
    # Only ids the tokenizer can decode (the embedding table may be larger).
    logits = _next_logits(model, jnp.asarray(buffer), len(context) - 1)[:tokenizer.vocab_size]
    if temperature == 0:
      token = int(jnp.argmax(logits))
    else:
      rng, key = jax.random.split(rng)
      logits = logits / temperature
      if top_k:
        logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][-1], -jnp.inf, logits)
      token = int(jax.random.categorical(key, logits))
    ids.append(token)
  return tokenizer.decode(np.asarray(ids[len(tokenizer.encode(prompt)):], np.int32))


def evaluate(config=None, workdir=".", *, step: int | None = None, plots: bool = True) -> dict:
  """Evaluates the checkpoint `step` (default: newest) of the run in `workdir`; `config`
  defaults to the run's own (workdir/config.json). Writes eval.json (and plots) there."""
  from moe_jax.checkpoint import Checkpoints
  from moe_jax.parallel.mesh import make_mesh
  from moe_jax.train import build, checkpoint_meta
  workdir = pathlib.Path(workdir).absolute()
  if config is None:
    path = workdir / "config.json"
    if not path.exists():
      raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
    config = config_lib.from_json(path.read_text())
  run = config_lib.validate(config, num_devices=jax.device_count(),
                            num_processes=jax.process_count())
  mesh = make_mesh(**dataclasses.asdict(run.mesh))
  ckpts = Checkpoints(workdir / "checkpoints", keep=run.checkpoint.keep)
  step = ckpts.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpts.directory}: train first")
  abstract_model, abstract_opt = nnx.eval_shape(lambda: build(run, mesh))
  graphdef, abstract = nnx.split((abstract_model, abstract_opt))
  state, _ = ckpts.restore(step, abstract, expect_meta=checkpoint_meta(run))
  ckpts.close()
  tokenizer = datasets.load_or_train_tokenizer(run, workdir, may_train=False)
  data = validation_data(run, tokenizer)
  eval_step = make_eval_step(graphdef, run.task)   # compiled once, used by both passes
  result = {"step": step, "task": run.task,
            **validation_metrics(eval_step, state, run, mesh, tokenizer, data)}
  if run.task == "lm":
    result.update(_lm_extras(run, graphdef, state, tokenizer, data))
  else:
    result["class_names"] = list(datasets.class_names(run.data))
    result["baselines"] = datasets.classification_baselines(run.data, data)
    result["class_expert_load"] = per_class_expert_load(eval_step, state, run, mesh, data,
                                                        len(result["class_names"]))
  if jax.process_index() == 0:
    _write(workdir, result, run, plots)
  return result


def per_class_expert_load(eval_step, state, run, mesh, val: dict[str, np.ndarray],
                          num_classes: int) -> np.ndarray | None:
  """[classes, MoE layers, E]: each layer's expert load over the validation examples of one
  class alone (its batches are filled by repeating that class's examples), i.e. which experts
  each class uses. None for a model without MoE layers. `val`: the validation arrays."""
  batch_size = run.data.eval_batch_size
  processes, index = jax.process_count(), jax.process_index()
  local = slice(index * batch_size // processes, (index + 1) * batch_size // processes)
  per_class = []
  for c in range(num_classes):
    ids = np.flatnonzero(val["labels"] == c)
    loads = []
    for start in range(0, len(ids), batch_size):
      rows = np.resize(ids[start:start + batch_size], batch_size)[local]
      batch = {k: v[rows] for k, v in val.items()}
      batch["mask"] = np.ones(len(rows), np.float32)
      out = jax.device_get(eval_step(state, host_local_to_global(batch, mesh)))
      keys = sorted((k for k in out if k.endswith("/expert_load")),
                    key=lambda k: int(k.split("/")[0][5:]))
      if not keys:
        return None
      loads.append(np.stack([np.asarray(out[k]) for k in keys]))
    per_class.append(np.mean(loads, axis=0))
  return np.stack(per_class)


def _lm_extras(run, graphdef, state, tokenizer, tokens) -> dict:
  """The byte unigram baseline and greedy / sampled continuations of the prompt."""
  model_state = global_to_host(nnx.state(nnx.merge(graphdef, state)[0]))
  kw = dict(num_tokens=run.eval.sample_tokens, seed=run.seed, tokenizer=tokenizer)
  baseline, baseline_what = datasets.lm_byte_baseline(run.data, tokenizer, tokens)
  return {
      "unigram_entropy_bits": baseline,
      "unigram_baseline": baseline_what,
      "prompt": run.eval.prompt,
      "sample_greedy": sample(run, model_state, run.eval.prompt, temperature=0.0, top_k=0,
                              **kw),
      "sample": sample(run, model_state, run.eval.prompt, temperature=run.eval.temperature,
                       top_k=run.eval.top_k, **kw),
      "sampling": (f"recomputation (no KV cache), window {run.data.seq_len}, dropless "
                   f"dispatcher; temperature {run.eval.temperature}, top_k {run.eval.top_k}"),
  }


def _write(workdir: pathlib.Path, result: dict, run, plots: bool) -> None:
  from moe_jax import plots as plot_lib
  from moe_jax.run_log import read_metrics
  layers = sorted({int(k.split("/")[0][5:]) for k in result if k.startswith("layer")})
  out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()
         if not k.startswith("layer")}
  out["layers"] = {str(i): {m: np.asarray(result[f"layer{i}/{m}"]).tolist()
                            for m in _LAYER_METRICS if f"layer{i}/{m}" in result}
                   for i in layers}
  (workdir / "eval.json").write_text(json.dumps(out, indent=2))
  if not plots:
    return
  step = result["step"]
  if layers:
    plot_lib.expert_load_heatmap(
        np.stack([np.asarray(result[f"layer{i}/expert_load"]) for i in layers]), layers,
        workdir / "expert_load.png", title=f"expert load, validation, step {step}")
  if run.task == "lm":
    plot_lib.loss_curve(read_metrics(workdir), workdir / "loss_curve.png",
                        unigram_bits=result["unigram_entropy_bits"])
    return
  plot_lib.loss_curve(read_metrics(workdir), workdir / "loss_curve.png", bits_per_byte=False)
  plot_lib.confusion_matrix(result["confusion"], result["class_names"],
                            workdir / "confusion.png",
                            title=f"validation, step {step}: accuracy {result['accuracy']:.3f}")
  if result.get("class_expert_load") is not None:
    plot_lib.class_expert_load(result["class_expert_load"], result["class_names"], layers,
                               workdir / "class_expert_load.png",
                               title=f"which experts each class uses (validation, step {step})")


def main(argv):
  del argv
  from moe_jax import cli
  cli.init_runtime()
  result = cli.run_reporting_errors(evaluate, None, cli.FLAGS.workdir, step=cli.FLAGS.step)
  if jax.process_index() == 0:
    print(report(result, pathlib.Path(cli.FLAGS.workdir)))


def report(result: dict, workdir: pathlib.Path) -> str:
  if result["task"] != "lm":
    per_class = ", ".join(f"{n} {a:.2f}" for n, a in zip(result["class_names"],
                                                        result["per_class_accuracy"]))
    return "\n".join([
        f"step {result['step']}: validation accuracy {result['accuracy']:.4f} on "
        f"{result['examples']} examples (loss {result['loss']:.4f})",
        "baselines: " + ", ".join(f"{name} {value:.4f}"
                                  for name, value in result["baselines"].items()),
        f"per class: {per_class}",
        f"wrote {workdir / 'eval.json'}, confusion.png, class_expert_load.png, "
        "expert_load.png, loss_curve.png"])
  ratio = result["bits_per_byte"] / result["unigram_entropy_bits"]
  lines = [
      f"step {result['step']}: validation loss {result['loss']:.4f} nats/token, perplexity "
      f"{result['perplexity']:.3f}, {result['tokens']} tokens",
      f"bits per byte {result['bits_per_byte']:.3f}  vs  {result['unigram_baseline']} "
      f"{result['unigram_entropy_bits']:.3f} ({ratio:.2f}x)",
  ]
  for k in sorted(k for k in result if k.endswith("/max_vio")):
    layer = k.split("/")[0]
    load = " ".join(f"{x:.2f}" for x in np.asarray(result[f"{layer}/expert_load"]))
    lines.append(f"{layer}: MaxVio {float(result[k]):.3f}, dropped "
                 f"{float(result.get(f'{layer}/dropped_fraction', 0.0)):.3f}, load [{load}]")
  lines += [f"greedy: {result['prompt']!r} -> {result['sample_greedy']!r}",
            f"sample: {result['prompt']!r} -> {result['sample']!r}",
            f"({result['sampling']})",
            f"wrote {workdir / 'eval.json'}, {workdir / 'expert_load.png'}, "
            f"{workdir / 'loss_curve.png'}; TensorBoard: tensorboard --logdir "
            f"{workdir / 'tensorboard'}"]
  return "\n".join(lines)


if __name__ == "__main__":
  from absl import app, flags

  from moe_jax import cli
  cli.define_flags(with_config=False)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
  app.run(main)
