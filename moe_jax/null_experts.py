"""MoE++'s zero-computation experts (Jin et al. 2024), routed beside the FFN experts.

The router chooses among E FFN experts followed by Z zero, P copy and C constant experts:
    zero:      E(x) = 0
    copy:      E(x) = x
    constant:  E(x) = a1 x + a2 v,   [a1, a2] = softmax(x W_c),  W_c [D, 2] and v [D] learned
A token sent to a null expert costs no expert matmul, so its compute adapts to the token. The
layer splits each routing here: the null assignments become invalid in the routing the
dispatcher receives (so they take no capacity slot and no expert FLOPs), and their combine
weights are applied by `apply` on the tokens directly. A capacity counts the null experts
as experts: each FFN expert holds C = ceil(cf * N / (E + Q)) assignments, so with Q = E and
half the assignments on null experts the FFN buffers (and their matmuls) are half the size.
(Dropless' `spill` impl sizes its capacity part by N / E whatever the null share.)

Axis letters: T tokens, D model dim, E FFN experts, N assignments, Q null experts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.routing.base import Routing


def init(rng, d_model: int, num_constant: int) -> dict | None:
  """Params of the constant experts: None without any (zero and copy experts have none)."""
  if not num_constant:
    return None
  w_rng, v_rng = jax.random.split(rng)
  fan_in = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                in_axis=-2, out_axis=-1, batch_axis=(0,))
  return {"w_c": fan_in(w_rng, (num_constant, d_model, 2), jnp.float32),
          # unit-variance entries, like the RMS-normalised tokens it stands in for
          "v": jax.random.normal(v_rng, (num_constant, d_model), jnp.float32)}


def split(routing: Routing, num_ffn: int, num_null: int) -> tuple[Routing, jax.Array]:
  """(the routing of the FFN experts only, the null experts' combine weights [T, Q]).

  The FFN routing keeps the assignment list (so priority order and capacity are unchanged);
  null assignments are marked invalid and pointed at expert 0 with weight 0.
  """
  is_null = routing.expert >= num_ffn
  null_w = jnp.where(routing.valid & is_null, routing.weight, 0)
  null_TQ = jnp.zeros((routing.num_tokens, num_null), null_w.dtype).at[
      routing.token, jnp.where(is_null, routing.expert - num_ffn, 0)].add(null_w)
  ffn = routing.replace(num_experts=num_ffn, valid=routing.valid & ~is_null,
                        expert=jnp.where(is_null, 0, routing.expert),
                        weight=jnp.where(is_null, 0, routing.weight))
  return ffn, null_TQ


def apply(params: dict | None, x_TD, null_TQ, *, zero: int, copy: int, constant: int):
  """sum over null experts q of combine[t, q] * E_q(x_t); zero experts contribute nothing."""
  x = x_TD.astype(jnp.promote_types(x_TD.dtype, null_TQ.dtype))
  y_TD = null_TQ[:, zero:zero + copy].sum(-1, keepdims=True) * x
  if constant:
    gates_TC = null_TQ[:, zero + copy:]
    a_TC2 = jax.nn.softmax(jnp.einsum("td,cdj->tcj", x, params["w_c"].astype(x.dtype)), -1)
    out_TCD = a_TC2[..., :1] * x[:, None, :] + a_TC2[..., 1:] * params["v"].astype(x.dtype)
    y_TD = y_TD + jnp.einsum("tc,tcd->td", gates_TC, out_TCD)
  return y_TD.astype(x_TD.dtype)


def ffn_metrics(routing: Routing, ffn: Routing) -> dict[str, jax.Array]:
  """experts_per_token counted over FFN experts only (what a token costs in expert FLOPs) and
  the share of valid assignments that went to a null expert."""
  n_valid = routing.valid.sum().astype(jnp.float32)
  n_ffn = ffn.valid.sum().astype(jnp.float32)
  return {"experts_per_token": n_ffn / routing.num_tokens,
          "null_fraction": 1.0 - n_ffn / jnp.maximum(n_valid, 1.0)}
