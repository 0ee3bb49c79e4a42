"""`deepseek`: DeepSeek-V3's router (DeepSeek-AI 2024, §2.1.2; DeepSeekMoE, Dai et al. 2024).

Sigmoid (or softmax) affinities s = σ(x·w); an auxiliary-loss-free selection bias b (router
state) picks the experts; node/group-limited routing keeps only the best `top_groups` of
`num_groups` contiguous expert groups; the combine weights are the *unbiased* s of the chosen k,
renormalised and scaled by `routed_scaling_factor`.

Axis letters: T tokens, D model dim, E experts, K experts per token, G expert groups,
P experts per group (E = G·P), J kept groups.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from moe_jax.routing import losses
from moe_jax.routing.base import Router, token_choice_routing
from moe_jax.routing.linear import (balancing_bias_update, check_common, check_weight_learns,
                                    init_linear, linear_logits)
from moe_jax.routing.registry import register
from moe_jax.validation import check_choice, check_float, check_int

Array = jax.Array

SCORES = ("sigmoid", "softmax")
GROUP_SCORES = ("top2_sum", "max")   # a group's score: V3's sum of its best two, V2's best one
SEQUENCE_BALANCE = 1e-4   # V3's "extremely small" alpha of the sequence-wise balance loss
RENORM_EPS = 1e-20  # transformers' DeepseekV3 adds it to the denominator; harmless otherwise


def group_limited_scores(choice_TE: Array, num_groups: int, top_groups: int,
                         group_score: str = "top2_sum") -> Array:
  """choice_TE with every expert outside each token's `top_groups` best groups set to -inf.

  Groups are contiguous blocks of P = E / num_groups experts; a group's score is the sum of its
  top-2 choice scores (its one score when P = 1), as DeepSeek-V3 and transformers' DeepseekV3
  router do ('top2_sum'), or its best expert's score, as DeepSeek-V2's group_limited_greedy
  ('max'). transformers fills the excluded experts with 0.0 instead of -inf: the two differ
  only when biased scores inside the kept groups are negative, where 0.0 would let an excluded
  expert win; with -inf an expert outside the kept groups is never chosen.
  """
  if top_groups >= num_groups:
    return choice_TE
  num_tokens, num_experts = choice_TE.shape
  per_group = num_experts // num_groups
  choice_TGP = choice_TE.reshape(num_tokens, num_groups, per_group)
  if per_group == 1 or group_score == "max":
    group_TG = choice_TGP.max(-1)
  else:
    group_TG = jax.lax.top_k(choice_TGP, 2)[0].sum(-1)
  _, kept_TJ = jax.lax.top_k(group_TG, top_groups)
  keep_TG = jax.nn.one_hot(kept_TJ, num_groups, dtype=jnp.int32).sum(-2) > 0
  keep_TE = jnp.repeat(keep_TG, per_group, axis=-1)
  return jnp.where(keep_TE, choice_TE, -jnp.inf)


def _check_options(owner, num_experts, k, score, num_groups, top_groups, renormalize,
                   routed_scaling_factor, bias_update_rate, init_scale, group_score):
  check_common(owner, num_experts, k, init_scale)
  check_choice("score", score, SCORES, owner=owner)
  check_choice("group_score", group_score, GROUP_SCORES, owner=owner)
  check_int("num_groups", num_groups, low=1, high=num_experts, owner=owner)
  if num_experts % num_groups:
    raise ValueError(f"{owner}: option 'num_groups'={num_groups} must divide "
                     f"num_experts={num_experts}")
  check_int("top_groups", top_groups, low=1, high=num_groups, owner=owner)
  per_group = num_experts // num_groups
  if k > top_groups * per_group:
    raise ValueError(f"{owner}: option 'k'={k} is more than the {top_groups * per_group} "
                     f"experts in top_groups={top_groups} groups of {per_group}; allowed: "
                     f"1 <= k <= top_groups * num_experts / num_groups")
  if not isinstance(renormalize, bool):
    raise ValueError(f"{owner}: option 'renormalize' must be True or False, got "
                     f"{renormalize!r}")
  check_weight_learns(owner, k, renormalize)
  check_float("routed_scaling_factor", routed_scaling_factor, low=0.0, low_inclusive=False,
              owner=owner)
  check_float("bias_update_rate", bias_update_rate, low=0.0, owner=owner)


def init_biased(rng, d_model, *, num_experts: int, init_scale: float):
  """A linear router's weights and its selection bias (router state, not a parameter)."""
  return {"params": {"w": init_linear(rng, d_model, num_experts, init_scale)},
          "state": {"bias": jnp.zeros((num_experts,), jnp.float32)}}


def biased_topk(variables, x_TD, *, k: int, score: str, num_groups: int, top_groups: int,
                renormalize: bool, routed_scaling_factor: float, bias_update_rate: float,
                train: bool, group_score: str = "top2_sum"):
  """(routing without aux losses, scores_TE, probs_TE) of the loss-free-balanced top-k that
  `deepseek` and `bias_balanced` share: the bias (and the group limit) choose, the unbiased
  scores weigh; with train=True the bias moves towards balance (in routing.new_state)."""
  logits_TE = linear_logits(variables["params"]["w"], x_TD)
  bias_E = variables["state"]["bias"]
  if score == "sigmoid":
    scores_TE = jax.nn.sigmoid(logits_TE)
  else:
    scores_TE = jax.nn.softmax(logits_TE, axis=-1)
  choice_TE = jax.lax.stop_gradient(scores_TE) + bias_E
  choice_TE = group_limited_scores(choice_TE, num_groups, top_groups, group_score)
  _, expert_TK = jax.lax.top_k(choice_TE, k)
  weight_TK = jnp.take_along_axis(scores_TE, expert_TK, axis=-1)
  if renormalize:
    weight_TK = weight_TK / (weight_TK.sum(-1, keepdims=True) + RENORM_EPS)
  weight_TK = weight_TK * routed_scaling_factor
  if train:
    bias_E = balancing_bias_update(bias_E, expert_TK, bias_update_rate)
  probs_TE = scores_TE / scores_TE.sum(-1, keepdims=True)
  routing = token_choice_routing(expert_TK, weight_TK, num_experts=scores_TE.shape[-1],
                                 probs_TE=probs_TE, logits_TE=logits_TE,
                                 new_state={"bias": bias_E})
  return routing, scores_TE, probs_TE


@register("deepseek")
def deepseek(*, num_experts: int, k: int = 2, score: str = "sigmoid", num_groups: int = 1,
             top_groups: int = 1, renormalize: bool = True, routed_scaling_factor: float = 1.0,
             bias_update_rate: float = 1e-3, init_scale: float = 1.0,
             group_score: str = "top2_sum") -> Router:
  """DeepSeek-V3 routing: biased group-limited top-k selection, unbiased combine weights.

  score: 'sigmoid' (V3) or 'softmax' (V2) affinities s. The selection bias (state 'bias' [E])
    is added to s for selection only (group scores and the top-k), never to the weights; after
    each train=True call it moves by `bias_update_rate` towards balance
    (`balancing_bias_update`).
  num_groups / top_groups: DeepSeek's n_group / topk_group; only experts in the `top_groups`
    best groups can be chosen (`group_limited_scores`, -inf outside, not transformers' 0.0).
  group_score: how a group scores: 'top2_sum' (V3: the sum of its best two biased scores) or
    'max' (V2's group_limited_greedy: its best expert's score).
  renormalize: weights are s / sum(s) over the chosen k (V3 with sigmoid); then times
    `routed_scaling_factor`.
  Aux losses: 'load_balancing' (Switch, on s / sum s) and 'sequence_balance' (V3's
    complementary loss, `losses.sequence_balance_loss`, over this call's tokens: one sequence
    with the layer's default group_size, so per sequence as in the paper).
  """
  owner = "router 'deepseek'"
  _check_options(owner, num_experts, k, score, num_groups, top_groups, renormalize,
                 routed_scaling_factor, bias_update_rate, init_scale, group_score)

  def route(variables, x_TD, *, token_ids=None, rng=None, train=False):
    del token_ids, rng
    routing, scores_TE, probs_TE = biased_topk(
        variables, x_TD, k=k, score=score, num_groups=num_groups, top_groups=top_groups,
        renormalize=renormalize, routed_scaling_factor=routed_scaling_factor,
        bias_update_rate=bias_update_rate, train=train, group_score=group_score)
    aux = {
        "load_balancing": losses.load_balancing_loss(probs_TE, routing.expert, routing.valid),
        "sequence_balance": losses.sequence_balance_loss(scores_TE, routing.expert,
                                                         routing.valid),
    }
    return routing.replace(aux_losses=aux)

  return Router(partial(init_biased, num_experts=num_experts, init_scale=init_scale), route,
                "deepseek", num_experts, causal_safe=True,
                # V3: no Switch loss (reported only); its sequence-wise loss at alpha = 1e-4
                loss_weights={"load_balancing": 0.0, "sequence_balance": SEQUENCE_BALANCE})
