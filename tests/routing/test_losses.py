"""Aux losses against values worked out by hand."""
import jax.numpy as jnp
import numpy as np

from moe_jax.routing import losses


def test_load_balancing_hand_computed():
  probs = jnp.array([[0.7, 0.3], [0.4, 0.6]])
  # Both tokens chose expert 0: f = [1, 0], P = [0.55, 0.45] -> 2 * 0.55.
  loss = losses.load_balancing_loss(probs, jnp.array([0, 0]), jnp.array([True, True]))
  np.testing.assert_allclose(loss, 1.1, rtol=1e-6)
  # One each: f = [0.5, 0.5] -> 2 * (0.275 + 0.225) = 1.
  loss = losses.load_balancing_loss(probs, jnp.array([0, 1]), jnp.array([True, True]))
  np.testing.assert_allclose(loss, 1.0, rtol=1e-6)


def test_load_balancing_ignores_invalid_and_is_one_when_balanced_for_any_k():
  probs = jnp.full((4, 4), 0.25)
  expert = jnp.array([0, 1, 2, 3, 1, 2, 3, 0, 3, 3])      # top-2 of 4 tokens + 2 padding slots
  valid = jnp.array([True] * 8 + [False] * 2)
  np.testing.assert_allclose(losses.load_balancing_loss(probs, expert, valid), 1.0, rtol=1e-6)


def test_z_loss_hand_computed():
  logits = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0]])
  expected = (np.log(2.0) ** 2 + np.log(4.0) ** 2) / 2
  np.testing.assert_allclose(losses.router_z_loss(logits), expected, rtol=1e-6)


def test_importance_hand_computed():
  gates = jnp.array([[1.0, 0.0], [1.0, 0.0]])   # importance [2, 0]: var 1, mean 1
  np.testing.assert_allclose(losses.importance_loss(gates), 1.0, rtol=1e-6)
  gates = jnp.array([[0.5, 0.5], [0.2, 0.8], [0.8, 0.2]])   # importance [1.5, 1.5]
  np.testing.assert_allclose(losses.importance_loss(gates), 0.0, atol=1e-9)
  gates = jnp.array([[3.0, 1.0, 2.0]])   # mean 2, var 2/3
  np.testing.assert_allclose(losses.importance_loss(gates), (2 / 3) / 4, rtol=1e-6)


def test_sequence_balance_hand_computed_and_one_when_balanced():
  scores = jnp.array([[0.8, 0.2], [0.3, 0.3]])   # s' = [[0.8, 0.2], [0.5, 0.5]]; P = [0.65, 0.35]
  # k = 1, both tokens chose expert 0: f = 2 / (1 * 2) * [2, 0] = [2, 0] -> 1.3.
  loss = losses.sequence_balance_loss(scores, jnp.array([[0], [0]]))
  np.testing.assert_allclose(loss, 1.3, rtol=1e-6)
  # The same as a [N] list with valid slots; an invalid slot counts for no expert.
  loss = losses.sequence_balance_loss(scores, jnp.array([0, 0]), jnp.array([True, False]))
  np.testing.assert_allclose(loss, 0.65, rtol=1e-6)
  # Balanced uniform top-2 of 4 experts: f = 1, P = 1/4 -> exactly 1, for unnormalised scores.
  uniform = jnp.full((4, 4), 0.3)
  expert_TK = jnp.array([[0, 1], [2, 3], [1, 2], [3, 0]])
  np.testing.assert_allclose(losses.sequence_balance_loss(uniform, expert_TK), 1.0, rtol=1e-6)
