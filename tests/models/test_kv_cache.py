"""KV-cache decoding equals the full forward pass: a prefill then one token at a time gives the
logits the whole sequence gives at every position (1e-5), for dense and MoE decoders with
grouped-query attention, RoPE (also partial), q/k norms, tied and untied heads; and cached greedy sampling
picks the same ids as recomputing the window."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax import sampling
from moe_jax.data.tokenizer import ByteTokenizer
from moe_jax.models import DecoderLM
from moe_jax.models.transformer import make_config

CASES = {
    "dense-gqa": dict(num_kv_heads=2),
    # with GLM-4.5's partial rotary: RoPE on the first half of each head
    "moe-dropless-headnorm": dict(num_experts=4, expert_d_ff=32, dispatcher="dropless",
                                  router_options={"k": 2}, qk_norm="head", num_kv_heads=2,
                                  rope_fraction=0.5),
    "moe-hash-fullnorm-untied": dict(num_experts=4, expert_d_ff=32, dispatcher="dropless",
                                     router="hash", qk_norm="full", tie_embeddings=False),
    # GPT-OSS's pieces: sinks, a sliding window on every other layer, q/k/v and output biases,
    # YaRN, the clamped SwiGLU, a biased router taking the softmax of its top-k logits
    "moe-gpt-oss": dict(
        num_experts=4, expert_d_ff=32, dispatcher="dropless", num_kv_heads=2, qkv_bias=True,
        out_bias=True, attention_sinks=True, sliding_window=3, sliding_every=2,
        activation="clamped_swiglu", glu=True, expert_bias=True,
        router_options={"k": 2, "order": "topk_softmax", "bias": True},
        rope_scaling={"factor": 4.0, "original_max_position_embeddings": 8,
                      "truncate": False}),
    # Qwen2-MoE's pieces: q/k/v biases, a sigmoid-gated shared expert
    "moe-shared-gated-qkv-bias-first-dense": dict(
        num_experts=4, expert_d_ff=32, dispatcher="dropless", shared_d_ff=16, shared_gate=True,
        qkv_bias=True, first_dense_layers=1, head_dim=16),
}


def _model(**fields):
  config = make_config(vocab_size=64, d_model=32, num_layers=3, num_heads=4, max_len=32,
                       **fields)
  model = DecoderLM(config, rngs=nnx.Rngs(0))
  for i, block in enumerate(model.transformer.blocks):   # biases start at 0: make them count
    for bias in (block.attn.qkv_bias, getattr(block.attn, "out_bias", None),
                 getattr(block.attn, "sinks", None)):
      if bias is not None:
        bias[...] = jax.random.normal(jax.random.PRNGKey(i), bias[...].shape)
  return model


# make test's budget: dense-gqa (the MoE cases have GQA too), the hash router's case, and the
# GLM-like and GPT-OSS-like cases in test-all (make test decodes GLM-4.5 and GPT-OSS against
# transformers' logits: tests/test_hf_glm.py, tests/test_hf_gpt_oss.py); latent attention
# (DeepSeek) decodes in tests/test_hf_deepseek.py.
SLOW_CASES = ("dense-gqa", "moe-hash-fullnorm-untied", "moe-dropless-headnorm", "moe-gpt-oss")


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_prefill_then_one_token_at_a_time_equals_the_full_forward(case):
  model = _model(**CASES[case])
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 64)
  full, _ = jax.jit(lambda m, t: m(t))(model, tokens)
  decode = nnx.jit(lambda m, t, c, s: m.decode(t, c, s)[::2])
  caches = model.init_cache(2, 16)
  logits, caches = decode(model, tokens[:, :5], caches, 0)             # the prompt at once
  steps = [logits]
  for i in range(5, 12):                                                  # then one by one
    logits, caches = decode(model, tokens[:, i:i + 1], caches, i)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_cached_greedy_sampling_picks_the_recomputed_ids():
  model = _model(**CASES["moe-dropless-headnorm"])
  run = type("Run", (), {})()
  run.model, run.data = model.transformer.config, type("D", (), {"seq_len": 32})()
  state = nnx.state(model)
  kwargs = dict(num_tokens=20, temperature=0.0, top_k=0, tokenizer=ByteTokenizer())
  cached = sampling.sample(run, state, "ab", cache=True, **kwargs)
  recomputed = sampling.sample(run, state, "ab", cache=False, **kwargs)
  assert cached == recomputed and len(cached.encode("latin-1", "replace")) > 0
  sampled = [sampling.sample(run, state, "ab", cache=c, seed=3, **{**kwargs, "temperature": 1.0,
                                                                   "top_k": 8})
             for c in (True, False)]
  assert sampled[0] == sampled[1]      # the same key per step: the same draws


def test_decode_refuses_a_full_cache():
  model = _model(**CASES["dense-gqa"])
  assert dataclasses.is_dataclass(model.transformer.config)
  with pytest.raises(ValueError, match="cache holds 4 positions"):
    model.decode(jnp.zeros((1, 5), jnp.int32), model.init_cache(1, 4), 0)


def test_nucleus_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([0.5, 0.05, 0.3, 0.15]))
  kept = np.isfinite(np.asarray(sampling.nucleus(logits, 0.75)))
  np.testing.assert_array_equal(kept, [True, False, True, False])     # 0.5 + 0.3 >= 0.75
  assert np.isfinite(np.asarray(sampling.nucleus(logits, 1e-6))).sum() == 1


def test_generate_cli_continues_a_prompt_and_refuses_bad_flags(tmp_path):
  import sys
  from tests.train_helpers import assert_one_line_error, cli_command, run_cli, snapshot
  workdir = tmp_path / "run"
  assert run_cli(cli_command(workdir, "--config.steps=2", cpu_devices=1)).returncode == 0
  before = snapshot(workdir)
  command = [sys.executable, "-m", "moe_jax.generate", f"--workdir={workdir}",
             "--cpu_devices=1", "--prompt=def ", "--tokens=12"]
  # One run (make test's budget): nucleus and top-k sampling, recomputing the window; greedy
  # and the cache are the library's (test_cached_greedy_sampling_picks_the_recomputed_ids).
  nucleus_run = run_cli(command + ["--top_p=0.9", "--top_k=20", "--seed=1", "--no_cache"])
  assert nucleus_run.returncode == 0, nucleus_run.stderr[-3000:]
  assert nucleus_run.stdout.startswith("def ")
  assert snapshot(workdir) == before                                  # writes nothing
  assert_one_line_error(run_cli(command + ["--top_p=0"]), r"generate: option 'top_p'=0\.0")
