"""The routing contract: what every gating function returns (`Routing`) and is (`Router`).

Axis letters: T tokens in a routing group, D model dim, E experts, K experts per token,
S slots per expert (soft MoE), N assignments.

A sparse `Routing` lists N assignments (token -> expert with a combine weight; `valid` marks real
slots). The order of the list is the *priority order*: when a capacity-limited dispatcher has to
drop assignments for an expert, it keeps the earliest ones. Token-choice routers therefore list
all tokens' first choices before any second choice (k-major), as GShard and Switch prioritise.

Soft MoE mixes tokens into slots, so no token -> expert list exists; its `Routing` carries dense
`dispatch_weights[T,E,S]` and `combine_weights[T,E,S]` instead and the sparse fields are None.
That is the single special case: `Routing.is_soft` tells dispatchers which form they hold.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
PyTree = Any


# The per-layer routing metrics a run logs, in training (metrics.jsonl) and evaluation alike, as
# layer<i>/<name> where a router reports them (see `assignment_metrics`, `logit_metrics`).
LAYER_METRICS = ("expert_load", "max_vio", "dropped_fraction", "experts_per_token",
                 "router_logit_abs", "null_fraction")


@struct.dataclass
class Routing:
  """Assignment of T tokens to E experts plus the router's telemetry. A pytree."""
  num_tokens: int = struct.field(pytree_node=False)
  num_experts: int = struct.field(pytree_node=False)
  token: Array | None = None    # [N] int32 index into the T tokens
  expert: Array | None = None   # [N] int32 expert index
  weight: Array | None = None   # [N] float combine weight (0 where not valid)
  valid: Array | None = None    # [N] bool, False for padding / unselected slots
  dispatch_weights: Array | None = None  # [T,E,S] soft MoE only: token mass in each slot
  combine_weights: Array | None = None   # [T,E,S] soft MoE only: slot mass in each token
  aux_losses: dict[str, Array] = struct.field(default_factory=dict)  # unweighted scalars
  metrics: dict[str, Array] = struct.field(default_factory=dict)     # see `assignment_metrics`
  new_state: PyTree = struct.field(default_factory=dict)  # router state after this call

  @property
  def is_soft(self) -> bool:
    return self.dispatch_weights is not None

  @property
  def num_assignments(self) -> int:
    """N: the fixed length of the assignment list (slots E*S for soft MoE)."""
    if self.is_soft:
      return self.dispatch_weights.shape[1] * self.dispatch_weights.shape[2]
    return self.token.shape[0]

  def combine_matrix(self) -> Array:
    """[T,E] summed combine weight of each token at each expert (sparse routings only)."""
    if self.is_soft:
      raise ValueError("combine_matrix() is undefined for soft MoE routings: tokens are mixed "
                       "into slots; use dispatch_weights / combine_weights")
    w = jnp.where(self.valid, self.weight, 0)
    return jnp.zeros((self.num_tokens, self.num_experts), w.dtype).at[self.token, self.expert].add(w)


class Router(NamedTuple):
  """A gating function as a pair of pure functions, optax-style.

  init(rng, d_model) -> {'params': ..., 'state': ...}
  route(variables, x_TD, *, token_ids=None, rng=None, train=False) -> Routing
  """
  init: Callable[..., dict]
  route: Callable[..., Routing]
  name: str
  num_experts: int
  causal_safe: bool        # True iff a token's routing depends only on it and earlier tokens
  # the resolved options, for logs and configs (a registered factory's: filled in from its
  # signature by routing.register)
  options: dict[str, Any] | None = None
  needs_token_ids: bool = False   # routes by token id: route() needs token_ids (hash)
  soft: bool = False       # returns dense dispatch/combine weights (soft MoE), not assignments
  # The default training weight of every aux loss route() returns (0.0: reported, not trained
  # on); a run's config.aux_loss_weights overrides them by name. None: not declared (a router
  # written elsewhere): its losses are weighted by the config alone.
  loss_weights: dict[str, float] | None = None


# The coefficients of the papers the routers come from, as their defaults.
SWITCH_BALANCE = 1e-2     # Switch Transformer's load-balancing loss
ST_MOE_Z_LOSS = 1e-3      # ST-MoE's router z-loss


def compute_dtype(x: Array):
  """Routers compute in at least float32 (ST-MoE's selective precision), float64 if given."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _entropy(p_TE: Array) -> Array:
  """Mean over tokens of the entropy (nats) of each row, rows normalised; zero rows give 0."""
  total = p_TE.sum(-1, keepdims=True)
  p = jnp.where(total > 0, p_TE / jnp.where(total > 0, total, 1), 0)
  return jnp.sum(jnp.where(p > 0, -p * jnp.log(jnp.where(p > 0, p, 1)), 0), -1).mean()


def _load_metrics(load_E: Array, has_expert_T: Array, entropy: Array,
                  experts_per_token: Array) -> dict[str, Array]:
  num_experts = load_E.shape[0]
  return {
      "expert_load": load_E,                               # [E], sums to 1
      "max_vio": num_experts * load_E.max() - 1.0,         # max load / mean load - 1
      "router_entropy": entropy,
      "no_expert_fraction": 1.0 - has_expert_T.astype(load_E.dtype).mean(),
      # The expert compute a token gets, in experts' worth: k for top-k, variable for ReLU /
      # expert choice, E for dense routing (a capacity's drops not subtracted).
      "experts_per_token": experts_per_token,
  }


def logit_metrics(logits_TE: Array) -> dict[str, Array]:
  """Router logit magnitude (mean |logit|), what ST-MoE's z-loss keeps small."""
  return {"router_logit_abs": jnp.abs(jax.lax.stop_gradient(logits_TE)).mean()}


def assignment_metrics(token_N: Array, expert_N: Array, valid_N: Array, num_tokens: int,
                       num_experts: int, probs_TE: Array | None = None,
                       weight_N: Array | None = None) -> dict[str, Array]:
  """The telemetry every sparse router reports.

  expert_load: fraction of valid assignments per expert; max_vio: MaxVio of the loss-free
  balancing paper; router_entropy: mean entropy of the router's distribution over experts
  (`probs_TE`, or the normalised combine weights for routers without one);
  no_expert_fraction: tokens with no valid assignment; experts_per_token: valid assignments
  per token.
  """
  valid_f = valid_N.astype(jnp.float32)
  counts_E = jax.ops.segment_sum(valid_f, expert_N, num_segments=num_experts)
  load_E = counts_E / jnp.maximum(counts_E.sum(), 1.0)
  has_expert_T = jax.ops.segment_max(valid_f, token_N, num_segments=num_tokens) > 0
  if probs_TE is None:
    w = jnp.where(valid_N, weight_N, 0)
    probs_TE = jnp.zeros((num_tokens, num_experts), w.dtype).at[token_N, expert_N].add(w)
  return _load_metrics(load_E, has_expert_T, _entropy(jax.lax.stop_gradient(probs_TE)),
                       valid_f.sum() / num_tokens)


def soft_metrics(dispatch_TES: Array, combine_TES: Array) -> dict[str, Array]:
  """The same telemetry for soft MoE: load is each expert's share of the dispatched mass."""
  mass_E = dispatch_TES.sum((0, 2))
  load_E = mass_E / jnp.maximum(mass_E.sum(), 1e-9)
  num_tokens, num_experts, slots = combine_TES.shape
  combine_TE = jax.lax.stop_gradient(combine_TES.sum(-1))
  # Every expert processes its slots whatever the tokens: E * S slots' compute per T tokens.
  per_token = jnp.asarray(num_experts * slots / num_tokens, load_E.dtype)
  return _load_metrics(load_E, jnp.ones((num_tokens,), bool), _entropy(combine_TE), per_token)


def sparse_routing(token_N: Array, expert_N: Array, weight_N: Array, valid_N: Array, *,
                   num_tokens: int, num_experts: int, probs_TE: Array | None = None,
                   logits_TE: Array | None = None, aux_losses: dict | None = None,
                   new_state: PyTree = None) -> Routing:
  """Builds a sparse Routing and fills in the shared telemetry (with `logits_TE`, a learned
  router's logits, their magnitude too). With `probs_TE`, the router's distribution, its mean
  over tokens is reported as `router_prob` [E] *with* its gradient: with `expert_load` it is
  what the Switch loss is made of, so the layer can rebuild that loss over the global batch
  (MoEConfig.balance_scope='global')."""
  weight_N = jnp.where(valid_N, weight_N, 0)
  metrics = assignment_metrics(token_N, expert_N, valid_N, num_tokens, num_experts,
                               probs_TE=probs_TE, weight_N=weight_N)
  if probs_TE is not None:
    metrics["router_prob"] = probs_TE.mean(0)
  if logits_TE is not None:
    metrics.update(logit_metrics(logits_TE))
  return Routing(num_tokens=num_tokens, num_experts=num_experts,
                 token=token_N.astype(jnp.int32), expert=expert_N.astype(jnp.int32),
                 weight=weight_N, valid=valid_N, aux_losses=aux_losses or {}, metrics=metrics,
                 new_state={} if new_state is None else new_state)


def token_choice_routing(expert_TK: Array, weight_TK: Array, *, num_experts: int,
                         valid_TK: Array | None = None, priority_T: Array | None = None,
                         **kwargs) -> Routing:
  """A sparse Routing from per-token choices, listed k-major (all first choices first).

  Within each of the k ranks tokens are listed by position, or, with `priority_T`, by
  descending priority (V-MoE's batch-prioritised routing, Riquelme et al. 2021: priority = the
  token's top-1 router probability, so under a capacity the most confident tokens keep their
  slots; ties keep position order).
  """
  num_tokens, k = expert_TK.shape
  if valid_TK is None:
    valid_TK = jnp.ones(expert_TK.shape, bool)
  order_T = jnp.arange(num_tokens, dtype=jnp.int32)
  if priority_T is None:
    flat = lambda a: a.T.reshape(-1)  # [T,K] -> [K*T], k-major priority order
  else:
    order_T = jnp.argsort(-jax.lax.stop_gradient(priority_T), stable=True).astype(jnp.int32)
    flat = lambda a: a[order_T].T.reshape(-1)
  return sparse_routing(jnp.tile(order_T, k), flat(expert_TK), flat(weight_TK),
                        flat(valid_TK), num_tokens=num_tokens, num_experts=num_experts,
                        **kwargs)
