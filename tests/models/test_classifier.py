"""The encoder classifier: every router (non-causal ones included), text and image inputs,
bidirectional attention, padding, sharded == unsharded, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax import routing
from moe_jax.models import EncoderClassifier, make_config
from moe_jax.models.classifier import patchify
from moe_jax.parallel import make_mesh


def _config(**overrides):
  base = dict(vocab_size=64, d_model=16, num_layers=2, num_heads=2, d_ff=32, num_experts=4,
              router="topk", router_options={"k": 2}, dispatcher="dropless", max_len=32)
  return make_config(**{**base, **overrides})


def _tokens(seed=0, batch=8, length=8):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, 64)


@nnx.jit
def _forward(model, inputs, mask=None):
  return model(inputs, mask_BL=mask)


def _router_config(name):
  return _config(router=name, router_options={},
                 dispatcher="einsum" if name == "soft" else "sort", capacity_factor=2.0)


@pytest.mark.parametrize("name", routing.names())
def test_every_router_classifies(name):
  """Non-causal routers are allowed in an encoder (a decoder rejects them)."""
  model = EncoderClassifier(_router_config(name), num_classes=3, rngs=nnx.Rngs(0))
  logits, routings = nnx.jit(lambda m, t: m(t, train=True, rngs=nnx.Rngs(router=1)))(
      model, _tokens())
  assert logits.shape == (8, 3) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert all(r is not None for r in routings)          # every layer is MoE here


@pytest.mark.parametrize("name", ["expert_choice", "soft"])
def test_gradients_reach_every_param(name):
  model = EncoderClassifier(_router_config(name), num_classes=3, pool="cls", rngs=nnx.Rngs(0))
  tokens = _tokens()

  @nnx.jit
  def grads(model):
    return nnx.grad(lambda m: jnp.mean(m(tokens, train=True)[0] ** 2))(model)

  norms = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads(model)))
  assert norms and all(n > 0 for n in norms)


def test_encoder_is_bidirectional_and_cls_sees_later_tokens():
  model = EncoderClassifier(_config(num_experts=0), num_classes=3, pool="cls", rngs=nnx.Rngs(0))
  tokens = _tokens()
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 64)
  a, _ = _forward(model, tokens)
  b, _ = _forward(model, changed)
  assert np.abs(np.asarray(a - b)).max() > 1e-4       # position 0 (CLS) attends to the end


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padding_does_not_change_the_logits(pool):
  model = EncoderClassifier(_config(), num_classes=3, pool=pool, rngs=nnx.Rngs(0))
  tokens = _tokens(length=6)
  padded = jnp.concatenate([tokens, _tokens(seed=5, length=2)], axis=1)
  mask = jnp.concatenate([jnp.ones((8, 6)), jnp.zeros((8, 2))], axis=1)
  plain, _ = _forward(model, tokens)
  masked, _ = _forward(model, padded, mask)
  np.testing.assert_allclose(masked, plain, rtol=1e-5, atol=1e-6)


def test_images_become_patches():
  images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  patches = patchify(images, 2)
  assert patches.shape == (2, 4, 4)
  np.testing.assert_array_equal(patches[0, 1], [2, 3, 6, 7])   # top-right 2x2 patch
  model = EncoderClassifier(_config(router="expert_choice", router_options={}), num_classes=10,
                            patch_size=2, image_shape=(8, 8, 1), pool="cls", rngs=nnx.Rngs(0))
  logits, routings = _forward(model, jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1)))
  assert logits.shape == (4, 10) and len(routings) == 2


def test_sharded_classifier_equals_unsharded():
  config = _config(dispatcher="sort", capacity_factor=2.0)
  mesh = make_mesh(data=2, expert=4)
  sharded = EncoderClassifier(config, num_classes=5, rngs=nnx.Rngs(0), mesh=mesh)
  plain = EncoderClassifier(config, num_classes=5, rngs=nnx.Rngs(0))
  tokens = _tokens()
  ls, _ = _forward(sharded, tokens)
  lp, _ = _forward(plain, tokens)
  np.testing.assert_allclose(ls, lp, rtol=1e-4, atol=1e-5)


def test_classifier_errors_name_the_field():
  with pytest.raises(ValueError, match=r"'pool'='max' is not allowed; allowed: 'mean', 'cls'"):
    EncoderClassifier(_config(), num_classes=3, pool="max", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"'num_classes'=1"):
    EncoderClassifier(_config(), num_classes=1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"router 'hash' routes by token id"):
    EncoderClassifier(_config(router="hash", router_options={}), num_classes=3, patch_size=2,
                      image_shape=(8, 8, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"7x7 is not divisible into 2x2 patches"):
    EncoderClassifier(_config(), num_classes=3, patch_size=2, image_shape=(7, 7, 1),
                      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"65 patches exceed max_len=32"):
    EncoderClassifier(_config(), num_classes=3, patch_size=1, image_shape=(8, 8, 1),
                      pool="cls", rngs=nnx.Rngs(0))
