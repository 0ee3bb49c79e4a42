"""The layer's newer options, each against a direct implementation of its paper's formula:
MoE++ null experts, Qwen2-MoE's gated shared expert, global-batch load balancing (Qiu et al.
2025), V-MoE's batch-prioritised routing, NLLB-MoE's renormalisation after drops, router bias,
biases on the expert projections.

The references route one group with the router, then apply the formula with a Python loop
over experts (`loop_reference`) or assignments; they share no code with the layer's fast path.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.experts import loop_reference
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer
from moe_jax.parallel import make_mesh
from tests import dispatchers

D = 8


def _x(shape=(2, 8, D), seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _grads(fn, variables, x, seed=3):
  """Gradient of a random projection of fn's output w.r.t. the variables and x."""
  cot = jax.random.normal(jax.random.PRNGKey(seed), x.shape)
  return jax.grad(lambda v, x: jnp.sum(fn(v, x) * cot), argnums=(0, 1))(variables, x)


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda u, w: np.testing.assert_allclose(u, w, **tol), a, b)


def _assert_same_outputs_and_gradients(fn, reference, variables, x, *, forward=(2e-4, 2e-5),
                                       gradient=(2e-4, 2e-5)):
  """fn's outputs and gradients (`_grads`) equal reference's, each side compiled once for
  both (separate compiles for the forward and the gradient doubled these tests' time)."""
  both = lambda f: jax.jit(lambda v, x: (f(v, x), _grads(f, v, x)))
  (y, g), (y_ref, g_ref) = both(fn)(variables, x), both(reference)(variables, x)
  np.testing.assert_allclose(y, y_ref, rtol=forward[0], atol=forward[1])
  _assert_trees_close(g, g_ref, rtol=gradient[0], atol=gradient[1])


def _per_group(config, reference):
  """Applies `reference(variables, x_SD)` to each routing group of x_BLD."""
  def fn(variables, x_BLD):
    batch, length, d = x_BLD.shape
    size = config.group_size or length
    groups = x_BLD.reshape(-1, size, d)
    return jnp.stack([reference(variables, g) for g in groups]).reshape(x_BLD.shape)
  return fn


# --- MoE++ null experts --------------------------------------------------------------------

def _null_reference(config):
  """y_t = sum_n w_n E_{e_n}(x_t): FFN experts by the loop, zero -> 0, copy -> x,
  constant c -> a1 x + a2 v_c with [a1, a2] = softmax(x W_c)."""
  num_ffn, zero, copy = config.num_experts, config.zero_experts, config.copy_experts

  def reference(variables, x_SD):
    combine = config.built_router.route(variables["router"], x_SD).combine_matrix()
    y = loop_reference(variables["experts"], config.experts, x_SD, combine[:, :num_ffn])
    for q in range(config.num_null_experts):
      w = combine[:, num_ffn + q][:, None]
      if q < zero:
        continue
      if q < zero + copy:
        y = y + w * x_SD
      else:
        c = q - zero - copy
        a = jax.nn.softmax(x_SD @ variables["null"]["w_c"][c], -1)
        y = y + w * (a[:, :1] * x_SD + a[:, 1:] * variables["null"]["v"][c])
    return y
  return reference


@pytest.mark.parametrize("dispatcher", [   # make test's budget: all but einsum's in test-all
    pytest.param(d, marks=pytest.mark.slow) if d != "einsum" else d
    for d in dispatchers.every()])
def test_null_experts_equal_their_formula_forward_and_gradients(dispatcher):
  config = MoEConfig(num_experts=4, expert_d_ff=12, router_options={"k": 2},
                     dispatcher=dispatcher, capacity_factor=8.0, group_size=4, zero_experts=1,
                     copy_experts=1, constant_experts=2)
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  x = _x((2, 4, D))
  layer = lambda v, x: moe_layer(v, x, config)[0]
  reference = _per_group(config, _null_reference(config))
  _assert_same_outputs_and_gradients(layer, reference, variables, x)
  r = jax.jit(lambda v, x: moe_layer(v, x, config)[1])(variables, x)
  routed = np.asarray(r.expert)[np.asarray(r.valid)]
  null = float(np.mean(routed >= 4))
  assert 0 < null < 1, "the test must route some tokens to null experts and some not"
  np.testing.assert_allclose(float(r.metrics["null_fraction"]), null, rtol=1e-6)
  # experts_per_token is what a token costs in expert matmuls: FFN assignments only
  np.testing.assert_allclose(float(r.metrics["experts_per_token"]), 2 * (1 - null), rtol=1e-6)
  assert r.metrics["expert_load"].shape == (8,)     # the router's view: FFN and null experts


def test_null_experts_take_no_capacity_slot():
  """Only FFN assignments fill an expert's C = ceil(cf * N / (E + Q)) slots (N all
  assignments, E FFN and Q null experts); null assignments neither drop nor push others out."""
  config = MoEConfig(num_experts=2, expert_d_ff=8, router_options={"k": 1},
                     capacity_factor=0.05, zero_experts=2, copy_experts=2)
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  x = _x((1, 32, D))
  _, r = jax.jit(lambda v, x: moe_layer(v, x, config))(variables, x)
  expert = np.asarray(r.expert)[0]
  counts = np.bincount(expert[expert < 2], minlength=2)
  capacity = math.ceil(0.05 * 32 / 6)
  assert counts.max() > capacity and (expert >= 2).any()
  dropped = np.maximum(counts - capacity, 0).sum() / counts.sum()
  np.testing.assert_allclose(float(r.metrics["dropped_fraction"]), dropped, rtol=1e-6)


# --- Qwen2-MoE gated shared expert -----------------------------------------------------------

def test_gated_shared_expert_is_sigmoid_gate_times_shared_ffn():
  config = MoEConfig(num_experts=4, expert_d_ff=12, router_options={"k": 2},
                     capacity_factor=8.0, shared_d_ff=6, shared_gate=True)
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  assert variables["shared"]["gate"].shape == (D, 1)

  def reference(variables, x_SD):
    combine = config.built_router.route(variables["router"], x_SD).combine_matrix()
    y = loop_reference(variables["experts"], config.experts, x_SD, combine)
    shared = {k: v for k, v in variables["shared"].items() if k != "gate"}
    s = loop_reference(shared, config.shared_experts, x_SD, jnp.ones((x_SD.shape[0], 1)))
    return y + jax.nn.sigmoid(x_SD @ variables["shared"]["gate"]) * s

  x = _x((2, 4, D))
  layer = lambda v, x: moe_layer(v, x, config)[0]
  reference = _per_group(config, reference)
  _assert_same_outputs_and_gradients(layer, reference, variables, x)


# --- global-batch load balancing ---------------------------------------------------------

def _global_switch_loss(config, variables, x_BLD):
  """E * sum_e f_e P_e with f and P over every token of the batch at once."""
  router = config.built_router
  x_TD = x_BLD.reshape(-1, x_BLD.shape[-1])
  group = config.group_size or x_BLD.shape[1]
  counts = jnp.zeros((config.num_routed,))
  for g in range(x_TD.shape[0] // group):
    r = router.route(variables["router"], x_TD[g * group:(g + 1) * group])
    counts = counts.at[r.expert].add(r.valid.astype(jnp.float32))
  f = jax.lax.stop_gradient(counts / counts.sum())
  probs = jax.nn.softmax(x_TD @ variables["router"]["params"]["w"], -1)
  return config.num_routed * jnp.sum(f * probs.mean(0))


def test_global_balance_equals_the_formula_over_the_batch_and_its_gradient():
  config = MoEConfig(num_experts=8, expert_d_ff=8, router_options={"k": 2}, group_size=4,
                     balance_scope="global")
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  x = _x((2, 8, D))
  loss = lambda v: moe_layer(v, x, config)[1].aux_losses["load_balancing"]
  expected = lambda v: _global_switch_loss(config, v, x)
  np.testing.assert_allclose(jax.jit(loss)(variables), jax.jit(expected)(variables), rtol=1e-5)
  _assert_trees_close(jax.jit(jax.grad(loss))(variables)["router"],
                      jax.jit(jax.grad(expected))(variables)["router"], rtol=1e-4, atol=1e-7)
  per_group = MoEConfig(num_experts=8, expert_d_ff=8, router_options={"k": 2}, group_size=4)
  group_loss = moe_layer(variables, x, per_group)[1].aux_losses["load_balancing"]
  assert abs(float(group_loss) - float(loss(variables))) > 1e-3   # the scopes differ here


def test_global_balance_sharded_equals_unsharded():
  config = MoEConfig(num_experts=8, expert_d_ff=8, router_options={"k": 2},
                     balance_scope="global")
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  x = _x((8, 4, D))
  mesh = make_mesh(data=2, expert=4)
  def loss(v, mesh):
    y, r = moe_layer(v, x, config, mesh=mesh)
    return r.aux_losses["load_balancing"] + 1e-3 * jnp.sum(y)
  unsharded = jax.jit(jax.value_and_grad(lambda v: loss(v, None)))(variables)
  sharded = jax.jit(jax.value_and_grad(lambda v: loss(v, mesh)))(variables)
  _assert_trees_close(sharded, unsharded, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(unsharded[0] - 1e-3 * jnp.sum(moe_layer(variables, x, config)[0]),
                             _global_switch_loss(config, variables, x), rtol=1e-5)


# --- capacity: batch-prioritised routing and renormalisation after drops ----------------------

def _capacity_reference(config, *, by_score: bool, renormalize: bool):
  """Top-k choices; ranks k-major, tokens by position or (V-MoE) by descending top-1 prob;
  an assignment is kept while its expert has fewer than C kept; optionally (NLLB) a token's
  kept weights are rescaled to sum to 1."""
  k = config.built_router.options["k"]

  def reference(variables, x_SD):
    probs = np.asarray(jax.nn.softmax(x_SD @ variables["router"]["params"]["w"], -1))
    tokens = len(probs)
    capacity = math.ceil(config.capacity_factor * tokens * k / config.num_experts)
    order = np.argsort(-probs.max(-1), kind="stable") if by_score else np.arange(tokens)
    choice = np.argsort(-probs, -1, kind="stable")[:, :k]
    used = np.zeros(config.num_experts, int)
    combine = np.zeros_like(probs)
    for rank in range(k):
      for t in order:
        e = choice[t, rank]
        if used[e] < capacity:
          used[e] += 1
          combine[t, e] = probs[t, e]
    if renormalize:
      total = combine.sum(-1, keepdims=True)
      combine = np.where(total > 0, combine / np.where(total > 0, total, 1), 0)
    return loop_reference(variables["experts"], config.experts, x_SD, jnp.asarray(combine))
  return reference


@pytest.mark.parametrize("dispatcher", dispatchers.dropping())
@pytest.mark.parametrize("by_score,renormalize", [(True, False), (False, True), (True, True)])
def test_capacity_options_equal_their_reference(dispatcher, by_score, renormalize):
  config = MoEConfig(num_experts=4, expert_d_ff=8, capacity_factor=0.5, dispatcher=dispatcher,
                     router_options={"k": 2, "batch_prioritized": by_score},
                     drop_renormalize=renormalize)
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  x = _x((2, 16, D))
  y, r = jax.jit(lambda v, x: moe_layer(v, x, config))(variables, x)
  expected = _per_group(config, _capacity_reference(config, by_score=by_score,
                                                    renormalize=renormalize))(variables, x)
  np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)
  assert float(r.metrics["dropped_fraction"]) > 0.3
  plain = _per_group(config, _capacity_reference(config, by_score=False,
                                                 renormalize=False))(variables, x)
  assert not np.allclose(y, plain, atol=1e-3)   # the option changed which slots were kept


def test_batch_prioritized_routing_is_not_causal_safe():
  assert MoEConfig(num_experts=4, expert_d_ff=8).built_router.causal_safe
  config = MoEConfig(num_experts=4, expert_d_ff=8, router_options={"batch_prioritized": True})
  assert not config.built_router.causal_safe


def test_router_bias_adds_to_the_logits():
  config = MoEConfig(num_experts=4, expert_d_ff=8, router_options={"k": 2, "bias": True})
  variables = init_moe_layer(jax.random.PRNGKey(0), D, config)
  b = jnp.array([3.0, -1.0, 0.5, 0.0])
  variables["router"]["params"]["b"] = b
  x = _x((1, 8, D))
  r = config.built_router.route(variables["router"], x[0])
  probs = jax.nn.softmax(x[0] @ variables["router"]["params"]["w"] + b, -1)
  np.testing.assert_allclose(r.metrics["router_prob"], probs.mean(0), rtol=1e-6)
  grad = jax.jit(jax.grad(lambda v: moe_layer(v, x, config)[0].sum()))(variables)
  assert grad["router"]["params"]["b"].any()


# --- biases on the expert projections ------------------------------------------------------

def _with_random_biases(variables, seed=5):
  """Biases are zeros at init; random ones so the test sees them."""
  def fill(path, leaf):
    name = path[-1].key
    if not name.startswith("b_"):
      return leaf
    return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), hash(name) % 997),
                             leaf.shape)
  return {**variables, **{k: jax.tree_util.tree_map_with_path(fill, variables[k])
                          for k in ("experts", "shared") if k in variables}}


def _biased_ffn(params, e, x, glu):
  """One expert's FFN written out: act(x W_in + b_in) W_out + b_out, or the GLU form."""
  act = jax.nn.silu if glu else jax.nn.gelu
  if glu:
    h = (act(x @ params["w_gate"][e] + params["b_gate"][e])
         * (x @ params["w_up"][e] + params["b_up"][e]))
    return h @ params["w_down"][e] + params["b_down"][e]
  return act(x @ params["w_in"][e] + params["b_in"][e]) @ params["w_out"][e] + params["b_out"][e]


def _biased_reference(config):
  def reference(variables, x_SD):
    combine = config.built_router.route(variables["router"], x_SD).combine_matrix()
    y = sum(combine[:, e:e + 1] * _biased_ffn(variables["experts"], e, x_SD, config.glu)
            for e in range(config.num_experts))
    if "shared" in variables:
      y = y + _biased_ffn(variables["shared"], 0, x_SD, config.glu)
    return y
  return reference


def _biased_config(dispatcher, glu=False, **fields):
  return MoEConfig(num_experts=4, expert_d_ff=12, router_options={"k": 2}, dispatcher=dispatcher,
                   capacity_factor=8.0, expert_bias=True, glu=glu,
                   activation="silu" if glu else "gelu", **fields)


@pytest.mark.parametrize("dispatcher,glu", [(d, glu) for d in dispatchers.every()
                                            for glu in (False, True)])
def test_expert_biases_equal_their_formula_forward_and_gradients(dispatcher, glu):
  config = _biased_config(dispatcher, glu, shared_d_ff=8)
  variables = _with_random_biases(init_moe_layer(jax.random.PRNGKey(0), D, config))
  assert variables["experts"]["b_down" if glu else "b_out"].shape == (4, D)
  x = _x((2, 4, D))
  layer = lambda v, x: moe_layer(v, x, config)[0]
  reference = _per_group(config, _biased_reference(config))
  _assert_same_outputs_and_gradients(layer, reference, variables, x)


@pytest.mark.parametrize("dispatcher", dispatchers.parallel())
def test_expert_biases_sharded_with_tensor_parallelism_equal_unsharded(dispatcher):
  """data=2 x expert=2 x model=2: the output bias is added once, not once per model shard."""
  config = _biased_config(dispatcher)
  variables = _with_random_biases(init_moe_layer(jax.random.PRNGKey(0), D, config))
  x = _x((4, 4, D))
  mesh = make_mesh(data=2, expert=2, model=2)
  layer = lambda mesh: lambda v, x: moe_layer(v, x, config, mesh=mesh)[0]
  _assert_same_outputs_and_gradients(layer(mesh), layer(None), variables, x,
                                     forward=(2e-5, 2e-6), gradient=(2e-4, 2e-6))


BAD = [
    (dict(shared_gate=True), "shared_gate=True gates the shared expert, but there is none"),
    (dict(zero_experts=-1), "option 'zero_experts'=-1"),
    (dict(balance_scope="batch"), "option 'balance_scope'='batch' is not allowed"),
    (dict(balance_scope="global", router="hash"), "balance_scope='global' needs a router with "
                                                  "a load_balancing loss"),
    (dict(drop_renormalize=True, dispatcher="dropless"), "dispatcher 'dropless' drops nothing"),
    (dict(copy_experts=1, router="soft", dispatcher="einsum"), "router 'soft' is soft"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[str(f) for f, _ in BAD])
def test_bad_options_name_their_field(fields, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    MoEConfig(**{"num_experts": 4, "expert_d_ff": 8, **fields})


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_a_run_with_every_new_layer_option_trains_resumes_and_evaluates(tmp_path):
  """Through the public train / evaluate on the data=2 x expert=4 mesh: null experts (their
  params checkpointed and restored), a gated shared expert, global balancing, expert biases."""
  from moe_jax.evaluate import evaluate
  from moe_jax.train import train
  from tests.train_helpers import losses, small_config

  def config(steps):
    c = small_config(steps=steps)
    c.model.update(shared_d_ff=16, shared_gate=True, zero_experts=1, copy_experts=1,
                   constant_experts=1, balance_scope="global", expert_bias=True)
    return c

  workdir = tmp_path / "run"
  train(config(4), workdir, progress=False)
  train(config(6), workdir, progress=False)       # resumes from checkpoint 4
  assert sorted(losses(workdir)) == list(range(1, 7))
  assert all(np.isfinite(v) for v in losses(workdir).values())
  result = evaluate(None, workdir, plots=False, write=False)
  layer = result["layers"]["1"]
  assert 0 < layer["null_fraction"] < 1
  np.testing.assert_allclose(layer["experts_per_token"], 2 * (1 - layer["null_fraction"]),
                             rtol=1e-5)
