"""Pieces shared by the routers whose logits are a linear map of the token: x_TD @ w_DE."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing.base import compute_dtype
from moe_jax.validation import check_float, check_int

Array = jax.Array


def init_linear(rng: Array, d_model: int, num_experts: int, scale: float = 1.0) -> Array:
  """w_DE with variance scale/D, so logits start O(1) for unit-variance tokens."""
  d_model = check_int("d_model", d_model, low=1)
  init = jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
  return init(rng, (d_model, num_experts), jnp.float32)


def linear_logits(w_DE: Array, x_TD: Array) -> Array:
  """[T,E] router logits in at least float32."""
  dtype = compute_dtype(x_TD)
  return x_TD.astype(dtype) @ w_DE.astype(dtype)


def check_common(owner: str, num_experts: int, k: int | None = None,
                 init_scale: float | None = None) -> None:
  """Validates the options most routers share; errors name the option and the allowed range."""
  check_int("num_experts", num_experts, low=1, owner=owner)
  if k is not None:
    check_int("k", k, low=1, high=num_experts, owner=owner)
  if init_scale is not None:
    check_float("init_scale", init_scale, low=0.0, low_inclusive=False, owner=owner)


def check_weight_learns(owner: str, k: int, renormalize: bool, *, order: str | None = None
                        ) -> None:
  """Refuses settings under which every token's combine weight is the constant 1: the router
  then gets no gradient from the task loss (only aux losses or a balancing rule move it), which
  silently tests something else than a learned gate."""
  if k != 1:
    return
  if renormalize:
    raise ValueError(f"{owner}: k=1 with renormalize=True makes every token's combine weight "
                     "s/s = 1, so the router gets no gradient from the loss; set "
                     "renormalize=False or k >= 2")
  if order == "topk_softmax":
    raise ValueError(f"{owner}: k=1 with order='topk_softmax' makes every token's combine "
                     "weight a softmax over one logit = 1, so the router gets no gradient from "
                     "the loss; use order='softmax_topk' or k >= 2")


def require_rng(owner: str, rng, why: str) -> None:
  if rng is None:
    raise ValueError(f"router {owner!r}: route(..., train=True) needs `rng` because {why}")


def balancing_bias_update(bias_E: Array, expert_TK: Array, rate: float) -> Array:
  """One step of auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3 eq. 16 ff.):
  b_i += rate * sign(mean_j c_j - c_i), c_i = how many of this call's assignments chose expert
  i. Overloaded experts' bias goes down, underloaded ones' up; rate 0 keeps it. Used by
  `bias_balanced` and `deepseek`."""
  counts_E = jnp.zeros(bias_E.shape, jnp.float32).at[expert_TK.reshape(-1)].add(1.0)
  return bias_E + (rate * jnp.sign(counts_E.mean() - counts_E)).astype(bias_E.dtype)
