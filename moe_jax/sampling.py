"""Continuing a prompt with a trained decoder: greedy or temperature / top-k sampling.

Sampling recomputes the whole window for every new token (no KV cache): simple and exactly the
training forward pass, and cheap at these sizes. It runs on one device with the `dropless`
dispatcher, the one strictly causal dispatcher, so the positions after the cursor (zeros)
cannot change which experts earlier tokens use.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.models import DecoderLM
from moe_jax.parallel.distributed import global_to_host


def host_model_state(graphdef, state):
  """The model part of a (model, optimizer) state, as host arrays."""
  return global_to_host(nnx.state(nnx.merge(graphdef, state)[0]))


def sampling_model_config(model):
  """The model's config for sampling: one routing group, and every MoE layer on the dropless
  dispatcher (no token of the window is dropped) - except a soft router's, which has no
  token -> expert list for dropless to run and keeps the dispatcher it trained with."""
  if model.moe is None:
    return model
  dispatcher = model.moe.dispatcher if model.moe.built_router.soft else "dropless"
  return dataclasses.replace(model, moe=dataclasses.replace(model.moe, dispatcher=dispatcher,
                                                            group_size=None))


@nnx.jit
def _next_logits(model, tokens_1L, position):
  """Logits at `position` of a one-sequence window (module level: compiled once per model
  structure, shared by the greedy and the sampled continuation)."""
  logits, _ = model(tokens_1L, train=False)
  return logits[0, position]


def sample(run, model_state, prompt: str, *, num_tokens: int, temperature: float, top_k: int,
           tokenizer, seed: int = 0) -> str:
  """Continues `prompt` by `num_tokens` tokens; temperature 0 is greedy.
  `model_state`: the model's nnx.State as host arrays (`host_model_state`)."""
  config = sampling_model_config(run.model)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, model_state)
  window = run.data.seq_len
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
