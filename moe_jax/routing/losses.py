"""Auxiliary router losses, unweighted (the coefficients live in the config).

Axis letters: T tokens, E experts, N assignments.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Paper defaults for the coefficients, used by configs.
LOAD_BALANCING_COEF = 1e-2  # Switch Transformer (Fedus et al. 2021)
Z_LOSS_COEF = 1e-3          # ST-MoE (Zoph et al. 2022)
IMPORTANCE_COEF = 1e-2      # Shazeer et al. 2017 use w_importance = 0.1 with batches of experts


def load_balancing_loss(probs_TE: Array, expert_N: Array, valid_N: Array) -> Array:
  """Switch load-balancing loss  E * sum_e f_e * P_e.

  f_e is the fraction of valid assignments that go to expert e (so for top-k it is normalised
  by T*k, and a perfectly balanced router scores exactly 1 for every k); P_e is the mean router
  probability of expert e. Gradients flow through P only, as in the paper.
  """
  num_experts = probs_TE.shape[-1]
  counts_E = jax.ops.segment_sum(valid_N.astype(probs_TE.dtype), expert_N,
                                 num_segments=num_experts)
  frac_E = counts_E / jnp.maximum(counts_E.sum(), 1)
  return num_experts * jnp.sum(jax.lax.stop_gradient(frac_E) * probs_TE.mean(0))


def router_z_loss(logits_TE: Array) -> Array:
  """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2; keeps logits small."""
  return jnp.mean(jax.nn.logsumexp(logits_TE, axis=-1) ** 2)


def importance_loss(gates_TE: Array) -> Array:
  """Shazeer et al. 2017: squared coefficient of variation of the experts' importance.

  importance_e = sum over tokens of the gate (combine weight) of expert e; CV^2 = var / mean^2
  with the population variance. 0 when every expert gets the same total gate.
  """
  importance_E = gates_TE.sum(0)
  return jnp.var(importance_E) / (jnp.mean(importance_E) ** 2 + 1e-10)


def sequence_balance_loss(scores_TE: Array, expert: Array, valid_N: Array | None = None) -> Array:
  """DeepSeek-V3's complementary sequence-wise balance loss  sum_i f_i * P_i  (eqs. 17-20).

  f_i = E / (K T) * #{assignments to expert i}, P_i = mean_t s'_{i,t} with s' = s / sum_j s_j
  the normalised, unbiased affinities `scores_TE` (sigmoid or softmax). `expert` is either the
  choices [T,K] or a k-major assignment list [N] (N = K T) with `valid_N` (invalid slots count
  for no expert but K T stays the list length). Computed over the tokens given, i.e. per
  routing group: one sequence under the layer's default group_size, as in the paper. A
  balanced router (f_i = 1) scores exactly 1 for any k. Gradients flow through P only.

  With every slot valid this equals `load_balancing_loss(s', ...)`; it is kept apart because
  it takes raw scores, normalises f by K T, and stays per group when the layer rebuilds
  'load_balancing' over the global batch (balance_scope='global').
  """
  num_tokens, num_experts = scores_TE.shape
  expert_N = expert.reshape(-1)
  if valid_N is None:
    valid_N = jnp.ones(expert_N.shape, bool)
  counts_E = jax.ops.segment_sum(valid_N.astype(scores_TE.dtype), expert_N,
                                 num_segments=num_experts)
  frac_E = num_experts * counts_E / max(expert_N.shape[0], 1)   # f_i: E / (K T) * count_i
  normed_TE = scores_TE / scores_TE.sum(-1, keepdims=True)
  return jnp.sum(jax.lax.stop_gradient(frac_E) * normed_TE.mean(0))
