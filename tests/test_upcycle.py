"""Sparse upcycling: the upcycled model against the dense one it came from."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.models.classifier import EncoderClassifier
from moe_jax.models.transformer import DecoderLM, make_config
from moe_jax.upcycle import UpcycleOptions, check_compatible, expert_copies, upcycle_model

SHAPE = dict(vocab_size=40, d_model=16, num_layers=3, num_heads=2, max_len=16, d_ff=32)
# Renormalised top-2 over a zero router: two experts, weights 1/2 each.
MOE = dict(num_experts=4, expert_d_ff=32, router="topk",
           router_options={"k": 2, "renormalize": True}, dispatcher="dropless")


def _models(build, glu: bool, **moe):
  dense = build(make_config(**SHAPE, glu=glu), nnx.Rngs(0))
  target = build(make_config(**SHAPE, glu=glu, **{**MOE, **moe}), nnx.Rngs(1))
  return dense, target


def _lm(config, rngs):
  return DecoderLM(config, rngs=rngs)


def _classifier(config, rngs):
  return EncoderClassifier(config, num_classes=5, pool="cls", rngs=rngs)


# The GLU variants are marked slow to keep `make test` within its budget (`make test-all`).
# The classifier's experts have biases (expert_bias): the copies keep them at zero.
@pytest.mark.parametrize("glu", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("build,expert_bias", [
    pytest.param(_lm, False, marks=pytest.mark.slow),   # the CLI test covers it in make test
    pytest.param(_classifier, True, marks=pytest.mark.slow)],   # make test's budget: test-all
                         ids=["lm", "classifier+expert_bias"])
def test_identical_copies_and_a_uniform_router_reproduce_the_dense_model(build, expert_bias,
                                                                         glu):
  dense, moe = _models(build, glu, first_dense_layers=1, expert_bias=expert_bias)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 12), 0, SHAPE["vocab_size"])
  before = moe(tokens)[0]
  upcycle_model(dense, moe, UpcycleOptions(router_init="zeros"))
  want, got = dense(tokens)[0], moe(tokens)[0]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  assert not np.allclose(before, want, atol=1e-3)        # the copy is what made them equal
  # Everything outside the FFNs is the dense model's own array values.
  np.testing.assert_array_equal(moe.transformer.blocks[2].attn.qkv.kernel[...],
                                dense.transformer.blocks[2].attn.qkv.kernel[...])


def test_a_fresh_router_keeps_the_target_init_and_changes_the_output():
  dense, moe = _models(_lm, False)
  router_before = np.asarray(moe.transformer.blocks[0].ffn.router_params["w"][...])
  upcycle_model(dense, moe)
  np.testing.assert_array_equal(moe.transformer.blocks[0].ffn.router_params["w"][...],
                                router_before)
  experts = moe.transformer.blocks[0].ffn.expert_params
  for e in range(MOE["num_experts"]):
    np.testing.assert_array_equal(experts["w_in"][...][e],
                                  dense.transformer.blocks[0].ffn.w_in.kernel[...])


def _dense_ffn(glu: bool, d=6, f=16, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  ffn = {"w_in": {"kernel": jax.random.normal(keys[0], (d, f))},
         "w_out": {"kernel": jax.random.normal(keys[1], (f, d))}}
  if glu:
    ffn["w_up"] = {"kernel": jax.random.normal(keys[2], (d, f))}
  return ffn


def _changed_units(experts, copy, glu: bool):
  """[E, Fe] bool: hidden units where any projection differs from the plain copy."""
  out_name = "w_down" if glu else "w_out"
  changed = experts[out_name] != copy[out_name]
  changed = np.asarray(changed).any(axis=2)
  for name in (("w_gate", "w_up") if glu else ("w_in",)):
    changed |= np.asarray(experts[name] != copy[name]).any(axis=1)
  return changed


@pytest.mark.parametrize("glu", [False, True])
def test_drop_upcycling_redraws_exactly_r_of_each_experts_units(glu):
  ffn = _dense_ffn(glu)
  copy = expert_copies(ffn, num_experts=8, expert_d_ff=16, glu=glu)
  dropped = expert_copies(ffn, num_experts=8, expert_d_ff=16, glu=glu,
                          options=UpcycleOptions(drop_ratio=0.25, seed=3))
  changed = _changed_units(dropped, copy, glu)
  assert changed.sum(axis=1).tolist() == [4] * 8              # round(0.25 * 16) per expert
  assert len({tuple(row) for row in changed.tolist()}) > 1    # a different draw per expert
  # The re-drawn units follow the dense matrix's statistics.
  w = np.asarray(ffn["w_out"]["kernel"])
  fresh = np.asarray(dropped["w_down" if glu else "w_out"])[changed]
  assert abs(fresh.mean() - w.mean()) < 0.5 and 0.5 < fresh.std() / w.std() < 1.5


def test_carried_moments_are_copies_zero_where_drop_upcycling_redraws_and_without_noise():
  """--carry_moments: Adam's moments are copied like the weights (the same hidden units per
  expert), never noised, and zero at exactly the units the weights re-draw."""
  moments = {k: {"kernel": jnp.abs(v["kernel"])} for k, v in _dense_ffn(False).items()}
  options = UpcycleOptions(drop_ratio=0.25, expert_noise=0.1, seed=3)
  plain = expert_copies(moments, num_experts=8, expert_d_ff=16, glu=False)
  got = expert_copies(moments, num_experts=8, expert_d_ff=16, glu=False, options=options,
                      moments=True)
  weights = expert_copies(moments, num_experts=8, expert_d_ff=16, glu=False,
                          options=UpcycleOptions(drop_ratio=0.25, seed=3))
  dropped = _changed_units(weights, plain, False)               # the units the weights re-draw
  assert dropped.sum(axis=1).tolist() == [4] * 8
  assert _changed_units(got, plain, False).tolist() == dropped.tolist()
  assert not np.asarray(got["w_in"]).transpose(0, 2, 1)[dropped].any()
  assert not np.asarray(got["w_out"])[dropped].any()
  kept = ~dropped
  np.testing.assert_array_equal(np.asarray(got["w_out"])[kept], np.asarray(plain["w_out"])[kept])


def test_expert_noise_is_relative_and_differs_per_expert():
  ffn = _dense_ffn(False)
  noisy = expert_copies(ffn, num_experts=4, expert_d_ff=16, glu=False,
                        options=UpcycleOptions(expert_noise=0.01))
  ratio = np.asarray(noisy["w_in"]) / np.asarray(ffn["w_in"]["kernel"])[None]
  assert 0.005 < np.std(ratio - 1) < 0.02
  assert not np.allclose(noisy["w_in"][0], noisy["w_in"][1])


def test_fine_grained_experts_split_the_dense_hidden_units():
  ffn = _dense_ffn(True, f=16)
  experts = expert_copies(ffn, num_experts=8, expert_d_ff=4, glu=True)     # 4 segments, 2 copies
  for name, dense in (("w_gate", ffn["w_in"]), ("w_up", ffn["w_up"])):
    whole = jnp.concatenate(list(experts[name][:4]), axis=1)
    np.testing.assert_array_equal(whole, dense["kernel"])
    np.testing.assert_array_equal(experts[name][4:], experts[name][:4])
  np.testing.assert_array_equal(jnp.concatenate(list(experts["w_down"][:4]), axis=0),
                                ffn["w_out"]["kernel"])


@pytest.mark.parametrize("change,message", [
    (dict(d_model=32), "config.model.d_model=32 but the dense run's is 16"),
    (dict(expert_d_ff=12), "config.model.expert_d_ff=12 does not split the dense run's d_ff=32"),
    (dict(expert_d_ff=8, num_experts=6), "num_experts=6 must be a multiple of"),
    (dict(glu=True), "config.model.glu=True but the dense run's is False"),
])
def test_incompatible_targets_name_the_field(change, message):
  target = make_config(**{**SHAPE, **MOE, **change})
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    check_compatible(make_config(**SHAPE), target)


def test_only_a_dense_run_is_upcycled():
  moe = make_config(**SHAPE, **MOE)
  with pytest.raises(ValueError, match="source run is not dense"):
    check_compatible(moe, moe)
  with pytest.raises(ValueError, match="must be an MoE model"):
    check_compatible(make_config(**SHAPE), make_config(**SHAPE))
