"""Each router does what its paper says, on real computation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe_jax import routing
from moe_jax.routing.expert_choice import expert_capacity
from tests.routing.helpers import (D_MODEL, NUM_EXPERTS, make_router, route, skewed_tokens,
                                   token_ids, tokens)


def _init(router, seed=0):
  return router.init(jax.random.PRNGKey(seed), D_MODEL)


def _assignments(r):
  """[(token, expert, weight)] of the valid assignments, as numpy."""
  valid = np.asarray(r.valid)
  return (np.asarray(r.token)[valid], np.asarray(r.expert)[valid], np.asarray(r.weight)[valid])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("order,renormalize", [("softmax_topk", False), ("softmax_topk", True),
                                               ("topk_softmax", False)])
def test_topk_picks_exactly_the_k_largest(k, order, renormalize):
  if k == 1 and (renormalize or order == "topk_softmax"):
    pytest.skip("refused: a constant combine weight (test_contract tests the refusal)")
  router = make_router("topk", k=k, order=order, renormalize=renormalize)
  variables = _init(router)
  x = tokens(50)
  r = route(router, variables, x)
  logits = np.asarray(x @ variables["params"]["w"], np.float64)
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  expected_experts = np.argsort(-logits, axis=1)[:, :k]
  expert_TK = np.asarray(r.expert).reshape(k, 50).T
  np.testing.assert_array_equal(expert_TK, expected_experts)
  np.testing.assert_array_equal(np.asarray(r.token).reshape(k, 50), np.tile(np.arange(50), (k, 1)))
  weight_TK = np.asarray(r.weight).reshape(k, 50).T
  chosen = np.take_along_axis(probs, expected_experts, 1)
  if order == "topk_softmax" or renormalize:
    chosen = chosen / chosen.sum(1, keepdims=True)
  np.testing.assert_allclose(weight_TK, chosen, rtol=1e-5)


def test_topk_noise_and_jitter_only_in_training():
  router = make_router("topk", k=2, jitter_eps=0.1, noisy_gating=True)
  variables = _init(router)
  variables["params"]["w_noise"] = variables["params"]["w"]  # make the noise non-zero
  x = tokens(64)
  eval_a, eval_b = route(router, variables, x, seed=1), route(router, variables, x, seed=2)
  np.testing.assert_array_equal(eval_a.weight, eval_b.weight)
  train_a = route(router, variables, x, train=True, seed=1)
  train_b = route(router, variables, x, train=True, seed=2)
  assert not np.allclose(train_a.weight, train_b.weight)
  with pytest.raises(ValueError, match="rng"):
    router.route(variables, x, train=True)


def test_dense_weights_sum_to_one_over_all_experts():
  router = make_router("dense")
  r = route(router, _init(router), tokens(30))
  assert r.num_assignments == 30 * NUM_EXPERTS
  combine = np.asarray(r.combine_matrix())
  np.testing.assert_allclose(combine.sum(1), 1.0, rtol=1e-6)
  assert np.all(combine > 0)


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 2.0])
def test_expert_choice_gives_each_expert_exactly_capacity_tokens(capacity_factor):
  router = make_router("expert_choice", capacity_factor=capacity_factor)
  variables = _init(router)
  x = tokens(64)
  r = route(router, variables, x)
  capacity = expert_capacity(64, NUM_EXPERTS, capacity_factor)
  token, expert, weight = _assignments(r)
  np.testing.assert_array_equal(np.bincount(expert, minlength=NUM_EXPERTS),
                                np.full(NUM_EXPERTS, capacity))
  logits = np.asarray(x @ variables["params"]["w"])
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  for e in range(NUM_EXPERTS):  # each expert holds its C highest-probability tokens
    picked = set(token[expert == e].tolist())
    assert picked == set(np.argsort(-probs[:, e])[:capacity].tolist())
  np.testing.assert_allclose(r.metrics["max_vio"], 0.0, atol=1e-6)


@pytest.mark.parametrize("options,tolerance", [({}, 0.3),
                                               ({"temperature": 0.1, "num_iters": 50}, 0.1)])
def test_sinkhorn_balances_load_in_training_and_is_plain_topk_at_eval(options, tolerance):
  router = make_router("sinkhorn", k=1, **options)
  variables = _init(router)
  x = skewed_tokens(512, variables["params"]["w"])
  trained, evaluated = route(router, variables, x, train=True), route(router, variables, x)
  assert float(evaluated.metrics["max_vio"]) > 3.0, "input should be skewed for plain top-k"
  assert float(trained.metrics["max_vio"]) < tolerance
  plain = make_router("topk", k=1)
  np.testing.assert_array_equal(evaluated.expert, route(plain, variables, x).expert)


def test_relu_coefficient_moves_toward_target_sparsity():
  router = make_router("relu", k=2)   # target sparsity 1 - 2/8 = 0.75
  variables = _init(router)
  x = tokens(128)
  coef0 = float(variables["state"]["l1_coef"])
  r = route(router, variables, x, train=True)
  assert float(r.metrics["sparsity"]) < 0.75               # random init: about half the gates on
  np.testing.assert_allclose(r.new_state["l1_coef"], coef0 * 1.2, rtol=1e-6)   # so lambda grows
  dead = {"params": {"w": -jnp.abs(variables["params"]["w"])}, "state": variables["state"]}
  r = route(router, dead, jnp.abs(x), train=True)          # every gate zero: sparsity 1 > target
  np.testing.assert_allclose(r.new_state["l1_coef"], coef0 / 1.2, rtol=1e-6)


def test_relu_training_settles_at_target_sparsity():
  """Closed loop: a task that wants ~42% sparse gates, plus the adaptive L1, trained with Adam,
  hovers around the target sparsity 0.75 (the coefficient rises, then oscillates)."""
  router = make_router("relu", k=2, l1_init=1e-4)
  variables = _init(router)
  x = tokens(256) + 0.5   # a mean offset, as in a residual stream, lets gates switch off
  target_TE = jax.nn.relu(x @ jax.random.normal(jax.random.PRNGKey(7), (D_MODEL, 8)) * 0.25)
  tx = optax.adam(1e-2)

  def loss_fn(params, state):
    r = router.route({"params": params, "state": state}, x, train=True)
    task = jnp.mean((r.combine_matrix() - target_TE) ** 2)
    return task + r.aux_losses["l1_sparsity"], r

  @jax.jit
  def step(params, state, opt_state):
    (_, r), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), r.new_state, opt_state, r.metrics["sparsity"]

  params, state = variables["params"], variables["state"]
  opt_state = tx.init(params)
  history = []
  for _ in range(400):
    params, state, opt_state, sparsity = step(params, state, opt_state)
    history.append(float(sparsity))
  assert history[0] < 0.5
  assert abs(np.mean(history[-150:]) - 0.75) < 0.05, np.mean(history[-150:])


def test_relu_max_active_caps_experts_per_token():
  router = make_router("relu", k=2, max_active=2)
  r = route(router, _init(router), tokens(64))
  token, _, _ = _assignments(r)
  assert np.bincount(token, minlength=64).max() <= 2
  assert r.num_assignments == 64 * 2


def test_hash_is_a_pure_function_of_token_id():
  router = make_router("hash", k=2)
  variables = _init(router)
  ids = token_ids(100)
  a = router.route(variables, tokens(100, seed=0), token_ids=ids)
  b = router.route(variables, tokens(100, seed=5), token_ids=ids)   # other activations
  np.testing.assert_array_equal(a.expert, b.expert)
  perm = np.random.default_rng(0).permutation(100)
  c = router.route(variables, tokens(100)[perm], token_ids=ids[perm])  # other positions
  combine_a, combine_c = np.asarray(a.combine_matrix()), np.asarray(c.combine_matrix())
  np.testing.assert_array_equal(combine_a[perm], combine_c)
  assert np.all((combine_a > 0).sum(1) == 2)                   # two distinct experts each
  many = router.route(variables, tokens(4096, seed=1), token_ids=jnp.arange(4096))
  assert float(many.metrics["max_vio"]) < 0.1                  # a hash spreads ids evenly
  with pytest.raises(ValueError, match="token_ids"):
    router.route(variables, tokens(4))


def test_cluster_finds_the_clusters_in_the_data():
  num_clusters, per_cluster = 4, 64
  router = make_router("cluster", num_experts=num_clusters, update_rate=0.5)
  variables = _init(router)
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(num_clusters, D_MODEL)) * 3
  labels = rng.permutation(np.repeat(np.arange(num_clusters), per_cluster))
  x = jnp.asarray(centres[labels] + rng.normal(size=(labels.size, D_MODEL)) * 0.3, jnp.float32)
  state = variables["state"]
  for _ in range(5):
    r = router.route({"params": {}, "state": state}, x, train=True)
    state = r.new_state
  r = router.route({"params": {}, "state": state}, x)
  expert = np.asarray(r.expert)
  for c in range(num_clusters):   # every cluster maps to one expert, and to its own
    assert len(set(expert[labels == c].tolist())) == 1
  assert len(set(expert.tolist())) == num_clusters
  # The centroids sit on the (normalised) cluster centres.
  unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
  sims = np.asarray(state["centroids"]) @ unit.T
  assert sims.max(1).min() > 0.95


def test_bias_update_lowers_load_imbalance_on_skewed_input():
  router = make_router("bias_balanced", k=2, bias_update_rate=0.01)
  variables = _init(router)
  x = skewed_tokens(256, variables["params"]["w"])

  def step(state, _):
    r = router.route({"params": variables["params"], "state": state}, x, train=True)
    return r.new_state, r.metrics["max_vio"]

  _, max_vio = jax.jit(lambda s: jax.lax.scan(step, s, None, length=400))(variables["state"])
  max_vio = np.asarray(max_vio)
  assert max_vio[0] > 1.0, "input should start unbalanced"
  assert max_vio[-20:].mean() < 0.25 * max_vio[0]
  # The bias changes selection only: weights are still the unbiased renormalised scores.
  final = route(router, variables, x)
  logits = np.asarray(x @ variables["params"]["w"])
  scores = 1 / (1 + np.exp(-logits))
  expert_TK = np.asarray(final.expert).reshape(2, -1).T
  chosen = np.take_along_axis(scores, expert_TK, 1)
  np.testing.assert_allclose(np.asarray(final.weight).reshape(2, -1).T,
                             chosen / chosen.sum(1, keepdims=True), rtol=1e-5)


def test_soft_slots_are_convex_mixtures():
  router = make_router("soft", slots_per_expert=2)
  r = route(router, _init(router), tokens(20))
  assert r.is_soft and r.num_assignments == NUM_EXPERTS * 2
  with pytest.raises(ValueError, match="soft"):
    r.combine_matrix()


@pytest.mark.parametrize("name,expected", [("topk", True), ("dense", True), ("relu", True),
                                           ("hash", True), ("cluster", True),
                                           ("bias_balanced", True), ("expert_choice", False),
                                           ("soft", False), ("sinkhorn", False)])
def test_causal_safety_is_declared(name, expected):
  assert make_router(name).causal_safe is expected


@pytest.mark.parametrize("name", ["topk", "dense", "relu", "hash", "cluster", "bias_balanced"])
def test_causal_safe_routers_ignore_later_tokens(name):
  """The claim behind causal_safe: changing later tokens never changes earlier tokens' routing."""
  router = make_router(name)
  variables = _init(router)
  x, ids = tokens(32), token_ids(32)
  x2 = x.at[16:].set(tokens(16, seed=9))
  a = router.route(variables, x, token_ids=ids)
  b = router.route(variables, x2, token_ids=ids.at[16:].set(7))
  np.testing.assert_allclose(a.combine_matrix()[:16], b.combine_matrix()[:16], rtol=1e-6)


def test_expert_choice_is_not_causal_safe_in_fact():
  router = make_router("expert_choice")
  variables = _init(router)
  x = tokens(32)
  a = route(router, variables, x)
  b = route(router, variables, x.at[16:].multiply(5.0))
  assert not np.allclose(a.combine_matrix()[:16], b.combine_matrix()[:16])


@pytest.mark.parametrize("name", ["topk", "sinkhorn", "expert_choice"])
def test_input_jitter_wraps_any_router_as_its_formula(name):
  """with_input_jitter(router, eps): in training the router sees x * U(1-eps, 1+eps) drawn from
  split(rng)[0] and routes with split(rng)[1]; in evaluation it is the router unchanged."""
  inner = make_router(name)
  router = routing.with_input_jitter(inner, 0.2)
  variables = _init(inner)
  x = tokens(64)
  key = jax.random.PRNGKey(7)
  jitter_key, inner_key = jax.random.split(key)
  noise = jax.random.uniform(jitter_key, x.shape, x.dtype, 0.8, 1.2)
  got = router.route(variables, x, rng=key, train=True)
  want = inner.route(variables, x * noise, rng=inner_key, train=True)
  np.testing.assert_array_equal(got.expert, want.expert)
  np.testing.assert_allclose(got.weight, want.weight, rtol=1e-6)
  plain = inner.route(variables, x, rng=inner_key, train=True)
  assert not np.allclose(got.weight, plain.weight)          # the jitter moved the weights
  np.testing.assert_array_equal(router.route(variables, x).weight, inner.route(variables, x).weight)
  assert routing.with_input_jitter(inner, 0.0) is inner
  with pytest.raises(ValueError, match="jitter_eps"):
    routing.with_input_jitter(inner, 1.5)
