"""The `deepseek` router against a direct Python-loop reference of DeepSeek-V3 §2.1.2."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import routing
from moe_jax.routing import losses
from moe_jax.routing.deepseek import balancing_bias_update
from tests.routing.helpers import D_MODEL, NUM_EXPERTS, make_router, route, skewed_tokens, tokens

DEFAULTS = dict(k=2, score="sigmoid", num_groups=1, top_groups=1, renormalize=True,
                routed_scaling_factor=1.0, bias_update_rate=1e-3, init_scale=1.0, group_score="top2_sum")

CONFIGS = [
    dict(),                                                           # the defaults
    dict(score="softmax", renormalize=False),
    dict(k=3, num_groups=4, top_groups=2),
    dict(score="softmax", num_groups=4, top_groups=2, routed_scaling_factor=2.5),
    dict(num_groups=4, top_groups=2, renormalize=False, routed_scaling_factor=2.5),
    dict(k=3, num_groups=8, top_groups=3),                            # one expert per group
]


def _scores(logits, score):
  if score == "sigmoid":
    return 1.0 / (1.0 + np.exp(-logits))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reference(x, w, bias, *, k=2, score="sigmoid", num_groups=1, top_groups=1,
              renormalize=True, routed_scaling_factor=1.0, **_):
  """Per token, in float64: [chosen experts], [{expert: weight}], [kept groups]."""
  logits = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  num_experts = logits.shape[1]
  per_group = num_experts // num_groups
  chosen_T, weights_T, kept_T = [], [], []
  for logit_E in logits:
    s = _scores(logit_E, score)
    c = s + np.asarray(bias, np.float64)
    group_scores = [sum(sorted(c[g * per_group:(g + 1) * per_group], reverse=True)[:2])
                    for g in range(num_groups)]
    kept = sorted(range(num_groups), key=lambda g: -group_scores[g])[:top_groups]
    candidates = [e for e in range(num_experts) if e // per_group in kept]
    chosen = sorted(candidates, key=lambda e: -c[e])[:k]
    w_K = [s[e] for e in chosen]
    if renormalize:
      w_K = [v / sum(w_K) for v in w_K]
    chosen_T.append(chosen)
    weights_T.append({e: v * routed_scaling_factor for e, v in zip(chosen, w_K)})
    kept_T.append(set(kept))
  return chosen_T, weights_T, kept_T


def reference_loss(w, x, chosen_TK, probe_TE, *, k=2, score="sigmoid", renormalize=True,
                   routed_scaling_factor=1.0, **_):
  """jnp: sum(combine * probe) + the two aux losses, written from the formulas, for a fixed
  (reference) choice of experts."""
  logits = x @ w
  s = jax.nn.sigmoid(logits) if score == "sigmoid" else jax.nn.softmax(logits, -1)
  w_TK = jnp.take_along_axis(s, chosen_TK, -1)
  if renormalize:
    w_TK = w_TK / w_TK.sum(-1, keepdims=True)
  w_TK = w_TK * routed_scaling_factor
  num_tokens, num_experts = s.shape
  combine = jnp.zeros_like(s).at[jnp.arange(num_tokens)[:, None], chosen_TK].add(w_TK)
  counts = jnp.zeros(num_experts).at[chosen_TK.reshape(-1)].add(1.0)
  p_E = (s / s.sum(-1, keepdims=True)).mean(0)
  switch = num_experts * jnp.sum(counts / (k * num_tokens) * p_E)
  sequence = jnp.sum(num_experts / (k * num_tokens) * counts * p_E)
  return jnp.sum(combine * probe_TE) + switch + sequence


def _variables(router, bias_scale, seed=0):
  variables = router.init(jax.random.PRNGKey(seed), D_MODEL)
  bias = bias_scale * jax.random.normal(jax.random.PRNGKey(seed + 7), (NUM_EXPERTS,))
  return {"params": variables["params"], "state": {"bias": bias.astype(jnp.float32)}}


def _per_token(r, k):
  expert_TK = np.asarray(r.expert).reshape(k, -1).T
  weight_TK = np.asarray(r.weight).reshape(k, -1).T
  return expert_TK, weight_TK


@pytest.mark.parametrize("bias_scale", [0.0, 0.1])
@pytest.mark.parametrize("config", CONFIGS)
def test_matches_the_python_loop_reference(config, bias_scale):
  router = make_router("deepseek", **config)
  opts = router.options
  variables = _variables(router, bias_scale)
  x = tokens(64, seed=3)
  r = route(router, variables, x)
  chosen_T, weights_T, kept_T = reference(x, variables["params"]["w"],
                                          variables["state"]["bias"], **opts)
  expert_TK, weight_TK = _per_token(r, opts["k"])
  np.testing.assert_array_equal(np.asarray(r.token).reshape(opts["k"], -1),
                                np.tile(np.arange(64), (opts["k"], 1)))  # k-major
  per_group = NUM_EXPERTS // opts["num_groups"]
  for t in range(64):
    assert set(expert_TK[t].tolist()) == set(chosen_T[t]), t
    assert {e // per_group for e in expert_TK[t]} <= kept_T[t]   # never outside the top groups
    np.testing.assert_allclose(weight_TK[t], [weights_T[t][e] for e in expert_TK[t]],
                               rtol=1e-5)
  # The aux losses from the formulas.
  s = _scores(np.asarray(x, np.float64) @ np.asarray(variables["params"]["w"], np.float64),
              opts["score"])
  p_E = (s / s.sum(1, keepdims=True)).mean(0)
  counts = np.bincount(np.concatenate(chosen_T), minlength=NUM_EXPERTS)
  f_E = NUM_EXPERTS / (opts["k"] * 64) * counts
  np.testing.assert_allclose(r.aux_losses["sequence_balance"], np.sum(f_E * p_E), rtol=1e-5)
  np.testing.assert_allclose(r.aux_losses["load_balancing"], np.sum(f_E * p_E), rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_gradients_match_the_reference(config):
  router = make_router("deepseek", **config)
  opts = router.options
  variables = _variables(router, 0.1)
  x = tokens(48, seed=4)
  probe = jax.random.normal(jax.random.PRNGKey(5), (48, NUM_EXPERTS))
  chosen_T, _, _ = reference(x, variables["params"]["w"], variables["state"]["bias"], **opts)
  chosen_TK = jnp.asarray(chosen_T, jnp.int32)

  def scalar(params):
    r = router.route({"params": params, "state": variables["state"]}, x, train=True)
    return jnp.sum(r.combine_matrix() * probe) + sum(r.aux_losses.values())

  grad = jax.grad(scalar)(variables["params"])["w"]
  expected = jax.grad(reference_loss)(variables["params"]["w"], x, chosen_TK, probe, **opts)
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(grad).max()) > 0


def _eye_router(**options):
  """A router whose logits are the tokens themselves (d_model = E, w = I)."""
  router = make_router("deepseek", **options)
  variables = router.init(jax.random.PRNGKey(0), NUM_EXPERTS)
  variables["params"]["w"] = jnp.eye(NUM_EXPERTS)
  return router, variables


def test_group_limiting_changes_the_choice_by_hand():
  logits = jnp.array([[3.0, -5.0, 2.0, 1.9, 0.0, 0.0, 0.0, 0.0]])
  # Plain top-2: experts 0 and 2. Group sums of sigmoid top-2: g0 = .953 + .007 = .96,
  # g1 = .881 + .870 = 1.75, g2 = g3 = 1.0: with one group kept only experts 2 and 3 remain.
  plain, variables = _eye_router(k=2)
  assert set(np.asarray(plain.route(variables, logits).expert).tolist()) == {0, 2}
  grouped, variables = _eye_router(k=2, num_groups=4, top_groups=1)
  r = grouped.route(variables, logits)
  assert set(np.asarray(r.expert).tolist()) == {2, 3}
  s = 1 / (1 + np.exp(-np.array([2.0, 1.9])))
  np.testing.assert_allclose(np.sort(np.asarray(r.weight))[::-1], s / s.sum(), rtol=1e-6)


def test_excluded_experts_lose_even_when_biased_scores_are_negative():
  """-inf, not transformers' 0.0: with every biased score negative, a 0.0 fill would hand the
  top-k to experts outside the kept groups."""
  router, variables = _eye_router(k=3, num_groups=4, top_groups=2)
  variables["state"]["bias"] = jnp.full((NUM_EXPERTS,), -1.0)
  x = tokens(32, d_model=NUM_EXPERTS, seed=6)
  r = router.route(variables, x)
  chosen_T, _, kept_T = reference(x, variables["params"]["w"], variables["state"]["bias"],
                                  **router.options)
  expert_TK, _ = _per_token(r, 3)
  zero_fill_leaves_groups = False
  c = _scores(np.asarray(x, np.float64), "sigmoid") - 1.0
  for t in range(32):
    assert set(expert_TK[t].tolist()) == set(chosen_T[t])
    assert {e // 2 for e in expert_TK[t]} <= kept_T[t]
    filled = np.where([e // 2 in kept_T[t] for e in range(NUM_EXPERTS)], c[t], 0.0)
    zero_fill_leaves_groups |= not {e // 2 for e in np.argsort(-filled)[:3]} <= kept_T[t]
  assert zero_fill_leaves_groups, "the case should tell -inf from a 0.0 fill"


@pytest.mark.parametrize("renormalize", [True, False])
def test_bias_changes_selection_never_weights(renormalize):
  router = make_router("deepseek", renormalize=renormalize)
  variables = _variables(router, 0.0)
  x = tokens(40, seed=8)
  base = route(router, variables, x)
  # A constant bias shifts every score equally: same choice, identical weights.
  shifted = route(router, {**variables, "state": {"bias": jnp.full((NUM_EXPERTS,), 0.3)}}, x)
  chex.assert_trees_all_equal((base.expert, base.weight), (shifted.expert, shifted.weight))
  # A large bias on expert 5 makes every token choose it, at its *unbiased* weight.
  bias = jnp.zeros((NUM_EXPERTS,)).at[5].set(10.0)
  forced = route(router, {**variables, "state": {"bias": bias}}, x)
  expert_TK, weight_TK = _per_token(forced, 2)
  assert np.all(expert_TK[:, 0] == 5)
  s = _scores(np.asarray(x @ variables["params"]["w"], np.float64), "sigmoid")
  chosen = np.take_along_axis(s, expert_TK, 1)
  if renormalize:
    chosen = chosen / chosen.sum(1, keepdims=True)
  np.testing.assert_allclose(weight_TK, chosen, rtol=1e-5)
  assert np.all(weight_TK <= 1.0)


def test_bias_update_direction_and_when_it_happens():
  router = make_router("deepseek", bias_update_rate=0.01)
  variables = _variables(router, 0.1)
  x = skewed_tokens(128, variables["params"]["w"], favoured=2)
  r = route(router, variables, x, train=True)
  counts = np.bincount(np.asarray(r.expert), minlength=NUM_EXPERTS)
  step = np.asarray(r.new_state["bias"]) - np.asarray(variables["state"]["bias"])
  np.testing.assert_allclose(step, 0.01 * np.sign(counts.mean() - counts), atol=1e-7)
  assert counts[2] > counts.mean() and step[2] < 0          # the favoured expert is pushed down
  assert np.all(step[counts < counts.mean()] > 0)
  # No update at evaluation, nor with rate 0.
  chex.assert_trees_all_equal(route(router, variables, x).new_state, variables["state"])
  frozen = make_router("deepseek", bias_update_rate=0.0)
  chex.assert_trees_all_equal(route(frozen, variables, x, train=True).new_state,
                              variables["state"])


def test_defaults_equal_bias_balanced_and_share_its_update():
  """With one group and scale 1 the router is exactly `bias_balanced`."""
  ours = make_router("deepseek")
  theirs = make_router("bias_balanced")
  variables = _variables(ours, 0.1)
  x = skewed_tokens(64, variables["params"]["w"])
  a, b = route(ours, variables, x, train=True), route(theirs, variables, x, train=True)
  chex.assert_trees_all_close((a.expert, a.weight, a.new_state, a.aux_losses["load_balancing"]),
                              (b.expert, b.weight, b.new_state, b.aux_losses["load_balancing"]),
                              rtol=1e-6)
  expert_TK = jnp.asarray(_per_token(a, 2)[0])
  chex.assert_trees_all_equal(balancing_bias_update(variables["state"]["bias"], expert_TK, 1e-3),
                              b.new_state["bias"])


def test_sequence_balance_is_one_for_uniform_scores_and_above_when_skewed():
  router, variables = _eye_router()
  variables["params"]["w"] = jnp.zeros((NUM_EXPERTS, NUM_EXPERTS))  # every score sigmoid(0)
  r = router.route(variables, tokens(16, d_model=NUM_EXPERTS))
  np.testing.assert_allclose(r.aux_losses["sequence_balance"], 1.0, rtol=1e-6)
  skewed = make_router("deepseek")
  v = skewed.init(jax.random.PRNGKey(0), D_MODEL)
  r = skewed.route(v, skewed_tokens(64, v["params"]["w"], strength=4.0))
  assert float(r.aux_losses["sequence_balance"]) > 1.05
  np.testing.assert_allclose(
      r.aux_losses["sequence_balance"],
      losses.sequence_balance_loss(jax.nn.sigmoid(skewed_tokens(64, v["params"]["w"], strength=4.0)
                                                  @ v["params"]["w"]), r.expert, r.valid),
      rtol=1e-6)


def test_defaults_and_options():
  router = routing.get("deepseek", num_experts=8)
  assert router.options == DEFAULTS and router.causal_safe and not router.needs_token_ids
  assert set(routing.options("deepseek")) == {"num_experts", *DEFAULTS}


@pytest.mark.parametrize("options,field", [
    (dict(score="tanh"), "'score'.*sigmoid"),
    (dict(k=0), "'k'"),
    (dict(k=9), "'k'"),
    (dict(num_groups=0), "'num_groups'"),
    (dict(num_groups=3), "'num_groups'=3 must divide"),
    (dict(num_groups=2.0), "'num_groups' must be an integer"),
    (dict(num_groups=4, top_groups=0), "'top_groups'"),
    (dict(num_groups=4, top_groups=5), "'top_groups'"),
    (dict(k=5, num_groups=4, top_groups=2), "'k'=5.*top_groups=2"),
    (dict(renormalize="yes"), "'renormalize'"),
    (dict(routed_scaling_factor=0.0), "'routed_scaling_factor'"),
    (dict(routed_scaling_factor=-1.0), "'routed_scaling_factor'"),
    (dict(bias_update_rate=-1e-3), "'bias_update_rate'"),
    (dict(init_scale=0.0), "'init_scale'"),
])
def test_bad_options_name_the_option(options, field):
  with pytest.raises(ValueError, match=field):
    routing.get("deepseek", num_experts=8, **options)


@pytest.mark.parametrize("train", [False, True])
def test_jit_matches_eager_with_groups(train):
  router = make_router("deepseek", k=3, num_groups=4, top_groups=2, routed_scaling_factor=2.5)
  variables = _variables(router, 0.1)
  x = tokens(40, seed=9)
  eager = route(router, variables, x, train=train)
  jitted = route(router, variables, x, train=train, jit=True)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)
