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
