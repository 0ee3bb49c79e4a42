"""The validation pass shared by training (periodic and final evaluation) and `evaluate`.

    eval_step = make_eval_step(graphdef, task)       # jitted (state, global batch) -> sums
    metrics = evaluate_split(eval_step, state, run, task, mesh, tokenizer, data)

`state` is the nnx.State of (model, optimizer) the training loop carries. The task supplies
the per-batch sums and how to summarise them; the per-layer routing metrics (expert load,
MaxVio, dropped fraction) are added here for every task, averaged over batches.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from moe_jax.parallel.distributed import host_local_to_global
from moe_jax.routing.base import LAYER_METRICS


def make_eval_step(graphdef, task):
  @jax.jit
  def step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    out, routings = task.eval.sums(model, batch)
    for i, r in enumerate(routings):
      if r is not None:
        out.update({f"layer{i}/{k}": r.metrics[k] for k in LAYER_METRICS if k in r.metrics})
    return out

  return step


def evaluate_split(eval_step, state, run, task, mesh, tokenizer, data) -> dict:
  """The task's metrics over the validation split (or its first data.eval_max_batches
  batches), plus 'layer{i}/{metric}' averaged over batches. `data`: the task's
  validation_data, read once by the caller."""
  processes = jax.process_count()
  shard = dict(batch_size=run.data.eval_batch_size // processes,
               shard_index=jax.process_index(), shard_count=processes)
  sums: dict[str, np.ndarray] = {}
  n = 0
  for batch in task.data.eval_batches(run, tokenizer, data, **shard):
    if run.data.eval_max_batches and n == run.data.eval_max_batches:
      break
    out = jax.device_get(eval_step(state, host_local_to_global(batch, mesh)))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    n += 1
  layers = {k: v / n for k, v in sums.items() if k.startswith("layer")}
  result = task.eval.summarize({k: v for k, v in sums.items() if not k.startswith("layer")})
  return {**result, **layers}


def nest_layers(result: dict) -> dict:
  """{'layer1/max_vio': x, ...} -> {'layers': {'1': {'max_vio': x, ...}}} (the rest kept)."""
  out = {k: v for k, v in result.items() if not k.startswith("layer")}
  layers: dict[str, dict] = {}
  for key, value in result.items():
    if key.startswith("layer"):
      layer, metric = key.split("/", 1)
      layers.setdefault(layer[5:], {})[metric] = value
  out["layers"] = dict(sorted(layers.items(), key=lambda kv: int(kv[0])))
  return out
