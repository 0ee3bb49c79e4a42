"""GPT-OSS's attention and expert pieces as model options, each against a direct
implementation of its formula: a learned per-head sink logit in the softmax, sliding windows
on every other layer, an output-projection bias, YaRN on grouped-query attention, and the
clamped SwiGLU; and their errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax import experts
from moe_jax.models import attention_mask
from moe_jax.models.attention import Attention, window_of
from moe_jax.models.transformer import make_config


# Latent attention's sizes (DeepSeek-V2's options, at a toy size)
MLA = dict(attention="mla", kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4)


def _config(**fields):
  base = dict(vocab_size=64, d_model=16, num_layers=2, num_heads=2, max_len=32)
  return make_config(**{**base, **fields})


def test_a_sink_takes_probability_mass_and_gives_no_value():
  scores = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 3, 3))
  allowed = attention_mask.allowed_keys(3, causal=True)
  sinks = jnp.array([0.5, -1.0])
  got = np.asarray(attention_mask.softmax(scores, allowed, jnp.float32, sinks_H=sinks))
  s, a = np.asarray(scores), np.asarray(allowed)[0, 0]
  for h in range(2):
    for q in range(3):
      e = np.where(a[q], np.exp(s[0, h, q]), 0.0)
      np.testing.assert_allclose(got[0, h, q], e / (e.sum() + np.exp(float(sinks[h]))),
                                 rtol=1e-6)


def test_a_sliding_window_keeps_the_last_keys_on_the_layers_it_names():
  allowed = np.asarray(attention_mask.allowed_keys(6, causal=True, window=3))[0, 0]
  want = np.array([[0 <= q - k < 3 for k in range(6)] for q in range(6)])
  np.testing.assert_array_equal(allowed, want)
  cached = np.asarray(attention_mask.cached_keys(8, jnp.arange(4, 6), window=3))[0, 0]
  np.testing.assert_array_equal(cached, [[0 <= p - k < 3 for k in range(8)] for p in (4, 5)])
  config = _config(sliding_window=3, sliding_every=2, num_layers=4)
  assert [window_of(config, i) for i in range(4)] == [3, None, 3, None]   # GPT-OSS: even ones


def _direct_attention(attn, x):
  """The layer op for op from its params: biases, RoPE, window, sink, output bias."""
  from moe_jax.models.attention import rope
  heads, size = attn.num_heads, x.shape[-1] // attn.num_heads
  qkv = attn.qkv(x) + attn.qkv_bias[...]
  q, k, v = (a.reshape(1, x.shape[1], heads, size) for a in jnp.split(qkv, 3, axis=-1))
  pos = jnp.arange(x.shape[1])
  q, k = rope(q, pos), rope(k, pos)
  s = np.asarray(jnp.einsum("blhk,bmhk->bhlm", q, k)) / np.sqrt(size)
  out = np.zeros((1, x.shape[1], heads, size))
  for h in range(heads):
    for i in range(x.shape[1]):
      keys = [j for j in range(x.shape[1]) if 0 <= i - j < attn.window]
      e = np.exp(s[0, h, i, keys])
      w = e / (e.sum() + np.exp(float(attn.sinks[...][h])))
      out[0, i, h] = w @ np.asarray(v)[0, keys, h]
  return attn.out(jnp.asarray(out.reshape(1, x.shape[1], -1), jnp.float32)) + attn.out_bias[...]


def test_the_gpt_oss_attention_equals_its_direct_computation():
  config = _config(qkv_bias=True, out_bias=True, attention_sinks=True, sliding_window=3)
  attn = Attention(config, causal=True, rngs=nnx.Rngs(1), layer=0)
  for p in (attn.qkv_bias, attn.out_bias, attn.sinks):   # zeros at init: make them count
    p[...] = jax.random.normal(jax.random.PRNGKey(p[...].size), p[...].shape)
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 7, 16))
  np.testing.assert_allclose(attn(x), _direct_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_yarn_on_grouped_query_attention_turns_by_its_frequencies_times_its_factor():
  from moe_jax.models import rope as rope_lib
  scaling = {"factor": 8.0, "original_max_position_embeddings": 4, "beta_fast": 32.0,
             "beta_slow": 1.0, "truncate": False}
  attn = Attention(_config(rope_scaling=scaling), causal=True, rngs=nnx.Rngs(0))
  inv_freq, factor = rope_lib.frequencies(8, 10000.0, scaling)
  assert factor == pytest.approx(0.1 * np.log(8.0) + 1)
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 2, 8))
  q, _ = attn._rope(x, x, jnp.arange(5))
  half = 4
  angle = np.arange(5)[:, None] * inv_freq[None, :]
  cos, sin = np.cos(angle)[None, :, None] * factor, np.sin(angle)[None, :, None] * factor
  x1, x2 = np.asarray(x)[..., :half], np.asarray(x)[..., half:]
  np.testing.assert_allclose(q, np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1),
                             rtol=1e-5, atol=1e-6)


def test_the_clamped_swiglu_is_gpt_oss_formula():
  gate = jnp.array([-9.0, -1.0, 0.5, 6.0, 8.0])
  up = jnp.array([-8.0, 2.0, -0.5, 7.5, 1.0])
  g, u = np.minimum(np.asarray(gate), 7.0), np.clip(np.asarray(up), -7.0, 7.0)
  want = (u + 1) * g / (1 + np.exp(-1.702 * g))
  np.testing.assert_allclose(experts.clamped_swiglu(gate, up), want, rtol=1e-6)
  # (a model with it: tests/test_hf_gpt_oss.py, against transformers)


@pytest.mark.parametrize("fields,causal,message", [
    (dict(sliding_window=4), False, r"sliding_window=4 is for decoders"),
    (dict(sliding_window=0), True, r"'sliding_window'=0 is out of range"),
    (dict(sliding_every=0), True, r"'sliding_every'=0 is out of range"),
    (dict(activation="clamped_swiglu"), True, r"'clamped_swiglu' is a GLU form: it needs "
                                              r"glu=True"),
    (dict(rope_scaling={"factor": 2.0}), True, r"rope_scaling.original_max_position_embeddings"),
    # The mha-only options, on latent attention (which has none of them)
    *[(dict(MLA, **{name: value}), True, rf"{name}={value!r} does not apply to attention='mla' "
       rf"\(leave it {off!r}\)")
      for name, value, off in (("rope_fraction", 0.5, 1.0), ("out_bias", True, False),
                               ("attention_sinks", True, False), ("sliding_window", 4, None))],
])
def test_bad_options_are_errors_naming_them(fields, causal, message):
  from moe_jax.models.transformer import validate
  with pytest.raises(ValueError, match=message):
    validate(_config(**fields), causal=causal)
