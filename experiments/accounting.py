"""Parameter and FLOP accounting of a run's model, the x-axes of the scaling plots.

    counts = account(run, experts_per_token={1: 2.0, 3: 2.0})

total_params: every parameter. expert_params: the routed experts' (all E of them).
active_params: what one token uses: everything but the routed experts, plus, per MoE layer,
  experts_per_token / E of that layer's experts (the router's weights count in full: every
  token computes all E logits). experts_per_token is measured (the routing's valid
  assignments per token at the final validation), so variable-k routers (ReLU, expert choice)
  and dense / soft routing are counted as they ran; assignments a capacity drops still count;
  assignments to MoE++'s null experts count nothing (the layer's experts_per_token counts FFN
  experts only).
non_embedding_params: total minus the token embedding table (Kaplan et al.'s N).
flops_per_token: forward FLOPs per token,
  2 * (active_params - embedding table)        one multiply-add per weight the token meets
  + 2 * vocab_size * d_model                   a tied LM's output projection (untied, and a
                                               classifier's head, are weights counted above)
  + 2 * num_layers * P * H * d_head * a        attention scores and the weighted values, over
                                               the P positions of one example (an LM's
                                               seq_len; a classifier's patches or bytes + CLS)
with a = 1 for a causal decoder (a token attends to seq_len / 2 positions on average, QK^T and
AV each 2 * H * d_head FLOPs per position: every query head attends, also when grouped-query
attention shares keys and values) and a = 2 for a bidirectional encoder; H * d_head is d_model
unless `head_dim` is set (latent attention: QK^T over qk_nope + qk_rope dims, AV over
v_head_dim, so d_head counts as their mean). Training costs 3x
the forward (Kaplan et al. 2020); `train_flops` is 3 * flops_per_token * tokens_seen.
"""
from __future__ import annotations

import math

from flax import nnx

from moe_jax import tasks


def param_sizes(run) -> dict[str, int]:
  """{path: number of weights} of the run's trained model (the task's `trainable` params: a
  distilled student's, not its teacher's), built abstractly (nothing allocated, no mesh: the
  counts do not depend on the placement)."""
  task = tasks.get(run.task)
  model = nnx.eval_shape(lambda: task.build_model(run, None, nnx.Rngs(0)))
  return {"/".join(map(str, path)): math.prod(leaf.get_value().shape)
          for path, leaf in nnx.to_flat_state(nnx.state(model, task.trainable))}


def account(run, experts_per_token: dict[int, float] | None = None) -> dict:
  """The counts of the docstring for `run` (a validated RunConfig). experts_per_token: MoE
  layer index -> measured experts per token; a layer not in it counts the router's `k` option
  (1 if it has none)."""
  sizes = param_sizes(run)
  model, moe = run.model, run.model.moe
  total = sum(sizes.values())
  embed = sum(v for k, v in sizes.items() if k.split("/")[-1] == "embed")
  experts_by_layer: dict[int, int] = {}
  for path, size in sizes.items():
    if "/expert_params/" in path:
      layer = int(path.split("/blocks/")[1].split("/")[0])
      experts_by_layer[layer] = experts_by_layer.get(layer, 0) + size
  nominal = float(moe.built_router.options.get("k", 1)) if moe is not None else 0.0
  active = float(total)
  for layer, size in experts_by_layer.items():
    k = (experts_per_token or {}).get(layer, nominal)
    active -= size * (1.0 - min(k, moe.num_experts) / moe.num_experts)
  causal = tasks.get(run.task).causal
  query_width = model.num_heads * model.head_size
  if model.attention == "mla":   # QK^T over nope + rope dims, AV over v_head_dim: their mean
    query_width = model.num_heads * (model.qk_nope_head_dim + model.qk_rope_head_dim
                                     + model.v_head_dim) / 2
  positions = run.positions or run.data.seq_len     # a classifier's own length
  attention = 2 * model.num_layers * positions * query_width * (1 if causal else 2)
  # A tied LM's output projection is the embedding table, excluded above as a lookup.
  tied_output = causal and model.tie_embeddings
  flops = (2 * (active - embed) + (2 * model.vocab_size * model.d_model if tied_output else 0)
           + attention)
  return {"total_params": int(total), "expert_params": int(sum(experts_by_layer.values())),
          "active_params": int(round(active)), "non_embedding_params": int(total - embed),
          "flops_per_token": int(round(flops))}
