"""The transformer: MoE placement, causality, the dense baseline, sharding, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from moe_jax.models import DecoderLM, make_config
from moe_jax.parallel import make_mesh


def _config(**overrides):
  base = dict(vocab_size=64, d_model=16, num_layers=3, num_heads=2, d_ff=32, num_experts=4,
              router="topk", router_options={"k": 2}, dispatcher="dropless", max_len=32)
  return make_config(**{**base, **overrides})


def _tokens(seed=0, batch=8, length=8):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, 64)


def test_moe_layer_placement_and_outputs():
  config = _config(num_layers=4, first_dense_layers=1, moe_every=2)
  model = DecoderLM(config, rngs=nnx.Rngs(0))
  logits, routings = nnx.jit(lambda m, t: m(t))(model, _tokens())
  assert logits.shape == (8, 8, 64) and logits.dtype == jnp.float32
  assert [r is not None for r in routings] == [False, True, False, True]
  assert routings[1].aux_losses["load_balancing"].shape == ()


def test_dense_baseline_has_no_moe_layers():
  model = DecoderLM(_config(num_experts=0), rngs=nnx.Rngs(0))
  _, routings = model(_tokens())
  assert routings == [None, None, None]


@pytest.mark.parametrize("remat", [False, True])
def test_decoder_is_causal(remat):
  """Changing tokens from position 5 on leaves logits before 5 unchanged (dropless routing)."""
  model = DecoderLM(_config(remat=remat), rngs=nnx.Rngs(0))
  a = _tokens(1)
  b = a.at[:, 5:].set(_tokens(2)[:, 5:])
  la, _ = nnx.jit(lambda m, t: m(t))(model, a)
  lb, _ = nnx.jit(lambda m, t: m(t))(model, b)
  np.testing.assert_allclose(la[:, :5], lb[:, :5], rtol=1e-5, atol=1e-5)
  assert not np.allclose(la[:, 5:], lb[:, 5:])


def test_gradients_flow_to_every_param():
  model = DecoderLM(_config(tie_embeddings=False), rngs=nnx.Rngs(0))
  tokens = _tokens()

  def loss(m):
    logits, routings = m(tokens, train=True)
    aux = sum(r.aux_losses["load_balancing"] for r in routings if r is not None)
    return jnp.mean(logits ** 2) + aux

  grads = nnx.jit(nnx.grad(loss))(model)   # jitted: op by op this takes ~30 s
  norms = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads))
  assert norms and all(n > 0 for n in norms)


def test_sharded_model_equals_unsharded_and_params_carry_logical_axes():
  config = _config(dispatcher="sort", capacity_factor=2.0)
  mesh = make_mesh(data=2, expert=4)
  sharded = DecoderLM(config, rngs=nnx.Rngs(0), mesh=mesh)
  plain = DecoderLM(config, rngs=nnx.Rngs(0))
  tokens = _tokens()
  ls, _ = nnx.jit(lambda m, t: m(t))(sharded, tokens)
  lp, _ = nnx.jit(lambda m, t: m(t))(plain, tokens)
  np.testing.assert_allclose(ls, lp, rtol=1e-4, atol=1e-5)
  specs = nnx.get_partition_spec(nnx.state(sharded, nnx.Param))
  block = specs["transformer"]["blocks"][0]
  assert block["attn"]["qkv"]["kernel"].get_value() == P(None, "model")
  assert block["ffn"]["expert_params"]["w_in"].get_value() == P("expert", None, "model")


def test_invalid_model_configs_name_the_field():
  with pytest.raises(ValueError, match=r"router 'expert_choice' is not causal-safe.*"
                                       r"allow_non_causal_router=True"):
    DecoderLM(_config(router="expert_choice", router_options={}), rngs=nnx.Rngs(0))
  DecoderLM(_config(router="expert_choice", router_options={}, allow_non_causal_router=True),
            rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"d_model=16 must split into num_heads=3"):
    DecoderLM(_config(num_heads=3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_layers"):
    DecoderLM(_config(num_layers=0), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"sequence length 40 exceeds max_len=32"):
    DecoderLM(_config(), rngs=nnx.Rngs(0))(_tokens(length=40))


# --- grouped-query attention, head_dim, RoPE base, norm epsilon, q/k norms (moe_jax.hf) ------

def _attention(**fields):
  from moe_jax.models.transformer import Attention
  config = _config(**fields)
  return Attention(config, causal=True, rngs=nnx.Rngs(3)), config


def _x(d=16, seed=4):
  return jax.random.normal(jax.random.PRNGKey(seed), (2, 6, d))


def _original_attention(attn, x_BLD):
  """The attention as it was before num_kv_heads / head_dim / qk_norm existed, op for op."""
  from moe_jax.models.transformer import rope
  batch, length, d = x_BLD.shape
  q, k, v = jnp.split(attn.qkv(x_BLD).reshape(batch, length, 3 * attn.num_heads, -1), 3, axis=2)
  positions = jnp.arange(length)
  q, k = rope(q, positions), rope(k, positions)
  scores = jnp.einsum("blhk,bmhk->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
  scores = jnp.where(jnp.tril(jnp.ones((length, length), bool))[None, None], scores,
                     jnp.finfo(jnp.float32).min)
  attn_w = jax.nn.softmax(scores, axis=-1).astype(x_BLD.dtype)
  return attn.out(jnp.einsum("bhlm,bmhk->blhk", attn_w, v).reshape(batch, length, d))


def test_defaults_and_kv_heads_equal_to_heads_are_the_original_model_bit_for_bit():
  x = _x()
  plain, _ = _attention()
  explicit, _ = _attention(num_kv_heads=2, head_dim=8, rope_theta=10000.0, norm_eps=1e-6)
  assert plain.qkv.kernel.shape == explicit.qkv.kernel.shape == (16, 48)   # 3 * d, as before
  want = _original_attention(plain, x)
  np.testing.assert_array_equal(plain(x), want)
  np.testing.assert_array_equal(explicit(x), want)
  # The whole model: the same params (names, shapes, values); the rest of the block is unchanged.
  shapes = lambda **f: jax.tree.map(lambda a: (a.shape, a.dtype), nnx.to_pure_dict(nnx.state(
      nnx.eval_shape(lambda: DecoderLM(_config(**f), rngs=nnx.Rngs(0))))))
  assert shapes() == shapes(num_kv_heads=2, norm_eps=1e-6)
  a = DecoderLM(_config(num_layers=1), rngs=nnx.Rngs(0))
  b = DecoderLM(_config(num_layers=1, num_kv_heads=2, norm_eps=1e-6), rngs=nnx.Rngs(0))
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(a)),
               nnx.to_pure_dict(nnx.state(b)))


def _rms(x, scale, eps):
  return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + eps) * scale


def _rope_hf(x_BLHK, theta):
  """Hugging Face's formulation: cos/sin of cat(freqs, freqs), x * cos + rotate_half(x) * sin."""
  k = x_BLHK.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, k, 2) / k)
  freqs = np.arange(x_BLHK.shape[1])[:, None] * inv_freq[None]
  emb = np.concatenate([freqs, freqs], -1)[None, :, None, :]
  rotated = np.concatenate([-x_BLHK[..., k // 2:], x_BLHK[..., :k // 2]], -1)
  return x_BLHK * np.cos(emb) + rotated * np.sin(emb)


@pytest.mark.parametrize("qk_norm", ["none", "head", "full"])
def test_grouped_query_attention_equals_a_direct_implementation(qk_norm):
  heads, kv, size, theta, eps = 4, 2, 6, 500.0, 1e-5
  attn, _ = _attention(num_heads=heads, num_kv_heads=kv, head_dim=size, rope_theta=theta,
                       norm_eps=eps, qk_norm=qk_norm)
  assert attn.qkv.kernel.shape == (16, (heads + 2 * kv) * size)
  assert attn.out.kernel.shape == (heads * size, 16)
  if qk_norm != "none":   # non-trivial norm scales, so a misplaced norm shows
    for norm in (attn.q_norm, attn.k_norm):
      norm.scale[...] = 1 + 0.3 * jax.random.normal(jax.random.PRNGKey(7), norm.scale.shape)
  x = np.asarray(_x(), np.float64)
  w = np.asarray(attn.qkv.kernel[...], np.float64)
  q, k, v = np.split(x @ w, [heads * size, (heads + kv) * size], axis=-1)
  if qk_norm == "full":
    q = _rms(q, np.asarray(attn.q_norm.scale[...]), eps)
    k = _rms(k, np.asarray(attn.k_norm.scale[...]), eps)
  q, k, v = (a.reshape(2, 6, -1, size) for a in (q, k, v))
  if qk_norm == "head":
    q = _rms(q, np.asarray(attn.q_norm.scale[...]), eps)
    k = _rms(k, np.asarray(attn.k_norm.scale[...]), eps)
  q, k = _rope_hf(q, theta), _rope_hf(k, theta)
  out = np.zeros((2, 6, heads, size))
  causal = np.tril(np.ones((6, 6), bool))
  for h in range(heads):
    g = h // (heads // kv)       # query head h reads key/value head h // group
    scores = np.einsum("blk,bmk->blm", q[:, :, h], k[:, :, g]) / np.sqrt(size)
    scores = np.where(causal, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    out[:, :, h] = np.einsum("blm,bmk->blk", p / p.sum(-1, keepdims=True), v[:, :, g])
  want = out.reshape(2, 6, -1) @ np.asarray(attn.out.kernel[...], np.float64)
  np.testing.assert_allclose(attn(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)


def test_norm_eps_reaches_every_rmsnorm_and_untied_logits_are_unscaled():
  model = DecoderLM(_config(num_layers=1, num_experts=0, norm_eps=1e-3, qk_norm="head",
                            tie_embeddings=False), rngs=nnx.Rngs(0))
  block = model.transformer.blocks[0]
  norms = [block.norm_attn, block.norm_ffn, block.attn.q_norm, block.attn.k_norm,
           model.transformer.norm]
  assert [n.epsilon for n in norms] == [1e-3] * 5
  tokens = _tokens()
  hidden, _ = model.transformer.hidden(tokens)
  logits, _ = model(tokens)    # HF's lm_head: h @ W, no 1/sqrt(d) (that is the tied path's)
  np.testing.assert_allclose(logits, hidden @ model.unembed.kernel[...], rtol=1e-6)


def test_attention_fields_are_validated_and_reach_the_run_config():
  for fields, message in [
      (dict(num_kv_heads=3, num_heads=4), r"num_kv_heads=3 must divide num_heads=4"),
      (dict(num_kv_heads=0), r"'num_kv_heads'=0 is out of range"),
      (dict(head_dim=7), r"head_dim=7 must be even"),
      (dict(qk_norm="layer"), r"'qk_norm'='layer' is not allowed"),
      (dict(rope_theta=0.0), r"'rope_theta'=0.0 is invalid"),
      (dict(norm_eps=0.0), r"'norm_eps'=0.0 is invalid"),
      (dict(rope_fraction=1.5), r"'rope_fraction'=1.5 is invalid"),
      (dict(rope_fraction=0.4), r"rope_fraction=0.4 of head size 8 rotates 3 dims"),
      (dict(rope_fraction=0.2), r"rotates 1 dims; RoPE needs an even number, at least 2")]:
    with pytest.raises(ValueError, match=message):
      DecoderLM(_config(**fields), rngs=nnx.Rngs(0))
  # d_model need not split into heads when head_dim is given (Qwen3: 4 x 16 heads on d=16).
  DecoderLM(_config(num_heads=4, head_dim=16), rngs=nnx.Rngs(0))
  from moe_jax import config as config_lib
  from tests.train_helpers import small_config
  run = config_lib.validate(small_config(), num_devices=8, overrides=[
      "--config.model.num_kv_heads=1", "--config.model.head_dim=8", "--config.model.qk_norm=full",
      "--config.model.rope_theta=1e6", "--config.model.norm_eps=1e-5"])
  assert (run.model.num_kv_heads, run.model.head_dim, run.model.qk_norm, run.model.rope_theta,
          run.model.norm_eps) == (1, 8, "full", 1e6, 1e-5)
  with pytest.raises(ValueError, match=r"config.model: option 'qk_norm'='x' is not allowed"):
    config_lib.validate(small_config(), num_devices=8, overrides=["model.qk_norm=x"])


def test_partial_rotary_rotates_the_leading_dims_as_gpt_neox_does():
  """rope(..., rotary=R): the pair (x_i, x_{i+R/2}), i < R/2, turned by the angle
  position * base^(-2i/R), written out pair by pair; dims R.. untouched (GLM-4.5: R = K/2)."""
  from moe_jax.models.transformer import rope
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (1, 5, 2, 12)))
  positions, base, rotary = np.arange(3, 8), 500.0, 8
  got = np.asarray(rope(jnp.asarray(x), jnp.asarray(positions), base, rotary))
  want = x.copy()
  half = rotary // 2
  for l, p in enumerate(positions):
    for i in range(half):
      angle = p * base ** (-2 * i / rotary)
      a, b = x[0, l, :, i], x[0, l, :, i + half]
      want[0, l, :, i] = a * np.cos(angle) - b * np.sin(angle)
      want[0, l, :, i + half] = b * np.cos(angle) + a * np.sin(angle)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[..., rotary:], x[..., rotary:])
  # rope_fraction 1 is the full rotation, bit for bit
  full = rope(jnp.asarray(x), jnp.asarray(positions), base)
  np.testing.assert_array_equal(full, rope(jnp.asarray(x), jnp.asarray(positions), base, 12))

