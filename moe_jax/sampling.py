"""Continuing a prompt with a trained decoder: greedy or temperature / top-k sampling.

With the KV cache (the default): one prefill of the prompt, then one jitted step per token
that attends to the cached keys and values (`DecoderLM.decode`): per-token cost independent of
the context's length. It gives the logits of recomputing the whole window for every new token
(tests/models/test_kv_cache.py), which `cache=False` still does, and which is also used when
the prompt plus the new tokens exceed the window (`data.seq_len`), since recomputation then
slides the window and a cache of the whole text would see more context than training did.
Both run on one device with the `dropless` dispatcher, the one strictly causal dispatcher, so
later positions cannot change which experts earlier tokens use.
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


def nucleus(logits_V, top_p: float):
  """Logits outside the smallest set of likeliest tokens whose probability reaches top_p set
  to -inf (Holtzman et al. 2020); the likeliest token always stays."""
  order = jnp.argsort(-logits_V)
  probs = jax.nn.softmax(logits_V[order])
  before = jnp.cumsum(probs) - probs            # probability of the likelier tokens
  keep_sorted = before < top_p
  keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
  return jnp.where(keep, logits_V, -jnp.inf)


def describe(run, prompt_tokens: int, num_tokens: int) -> str:
  """How `sample` continues a prompt of this many tokens: with the KV cache, or recomputing a
  sliding window when prompt and continuation exceed it."""
  if prompt_tokens + num_tokens <= run.data.seq_len:
    return "KV cache"
  return (f"recomputation of a sliding window ({prompt_tokens} + {num_tokens} tokens exceed "
          "it; no KV cache)")


@nnx.jit
def _decode(model, tokens_1L, caches, start):
  """Logits of the new tokens and the updated caches (compiled once per input length: the
  prefill's and the one-token step's)."""
  logits, _, caches = model.decode(tokens_1L, caches, start)
  return logits, caches


def sample(run, model_state, prompt: str, *, num_tokens: int, temperature: float, top_k: int,
           tokenizer, seed: int = 0, cache: bool = True, top_p: float = 1.0) -> str:
  """Continues `prompt` by `num_tokens` tokens; temperature 0 is greedy; top_k > 0 keeps the
  k likeliest tokens, top_p < 1 the smallest set whose probability reaches p (nucleus);
  `cache=False` recomputes the window for every token instead of decoding with the KV cache.
  `model_state`: the model's nnx.State as host arrays (`host_model_state`)."""
  config = sampling_model_config(run.model)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, model_state)
  window = run.data.seq_len
  ids = list(tokenizer.encode(prompt)) or [0]
  rng = jax.random.PRNGKey(seed)
  cached = cache and len(ids) + num_tokens <= window
  if cached:
    caches = model.init_cache(1, len(ids) + num_tokens)
    logits_1L, caches = _decode(model, jnp.asarray([ids], jnp.int32), caches, 0)
  for _ in range(num_tokens):
    if cached:
      logits = logits_1L[0, -1]
    else:
      context = ids[-window:]
      buffer = np.zeros((1, window), np.int32)
      buffer[0, :len(context)] = context
      logits = _next_logits(model, jnp.asarray(buffer), len(context) - 1)
    logits = logits[:tokenizer.vocab_size]   # only ids the tokenizer can decode
    if temperature == 0:
      token = int(jnp.argmax(logits))
    else:
      rng, key = jax.random.split(rng)
      logits = logits / temperature
      if top_k:
        logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][-1], -jnp.inf, logits)
      if top_p < 1.0:
        logits = nucleus(logits, top_p)
      token = int(jax.random.categorical(key, logits))
    ids.append(token)
    if cached and len(ids) < caches[0][0].shape[1]:   # the last token needs no logits
      logits_1L, caches = _decode(model, jnp.asarray([[token]], jnp.int32), caches,
                                  len(ids) - 1)
  return tokenizer.decode(np.asarray(ids[len(tokenizer.encode(prompt)):], np.int32))
