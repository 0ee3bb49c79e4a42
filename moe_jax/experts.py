"""Batched expert FFNs on stacked parameters: one matmul per projection for all experts.

Axis letters: E experts, C tokens per expert (capacity), D model dim, F expert hidden dim.

The FFN is written once against a `matmul(x, w_EIO)` primitive so the same expert code runs on a
capacity buffer x_ECD (batched einsum) and on a flat, expert-sorted x_ND with group sizes
(grouped / ragged matmul, for dropless dispatch).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.validation import check_choice, check_int

ACTIVATIONS: dict[str, Callable] = {
    "gelu": jax.nn.gelu,                                   # tanh approximation
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
# GPT-OSS's clamped SwiGLU (its experts' swiglu_alpha and swiglu_limit): a GLU form, not an
# elementwise activation, so it needs glu=True.
SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0


def clamped_swiglu(gate, up):
  """(clip(up, -7, 7) + 1) * g * sigmoid(1.702 g), g = min(gate, 7) (GPT-OSS)."""
  g = jnp.minimum(gate, SWIGLU_LIMIT)
  return (jnp.clip(up, -SWIGLU_LIMIT, SWIGLU_LIMIT) + 1) * g * jax.nn.sigmoid(SWIGLU_ALPHA * g)


GLU_FORMS: dict[str, Callable] = {"clamped_swiglu": clamped_swiglu}
FFN_ACTIVATIONS = (*ACTIVATIONS, *GLU_FORMS)     # what a config's `activation` may name


def check_activation(activation: str, glu: bool, owner: str) -> None:
  check_choice("activation", activation, FFN_ACTIVATIONS, owner=owner)
  if activation in GLU_FORMS and not glu:
    raise ValueError(f"{owner}: activation={activation!r} is a GLU form: it needs glu=True")


def glu_hidden(activation: str, gate, up):
  """A GLU's hidden units: act(gate) * up, or the named GLU form of (gate, up)."""
  if activation in GLU_FORMS:
    return GLU_FORMS[activation](gate, up)
  return ACTIVATIONS[activation](gate) * up


def batched_matmul(x_ECI, w_EIO):
  """[E,C,I] x [E,I,O] -> [E,C,O]: every expert's tokens through its own weights at once."""
  return jnp.einsum("eci,eio->eco", x_ECI, w_EIO.astype(x_ECI.dtype))


class Experts(NamedTuple):
  """init(rng, num_experts, d_model) -> params; apply(params, x, matmul=batched_matmul) -> y.

  param_axes names each param's axes logically ('expert', 'embed', 'mlp'); a rules table
  (moe_jax.parallel.mesh.LOGICAL_RULES) maps them to mesh axes. With bias, every projection
  'w_*' has a bias 'b_*' [E, out]; `output_bias` names the output projection's (None without).
  """
  init: Callable
  apply: Callable
  d_ff: int
  activation: str
  glu: bool
  param_axes: dict[str, tuple[str, ...]]
  output_bias: str | None = None


def _add_bias(y, b_EO, matmul):
  """y + b[expert of each row], written as ones[.., 1] x b[E, 1, O] through the same `matmul`,
  so it needs no knowledge of the row layout (capacity buffer, sorted or blocked rows).
  ones_like(y): under shard_map the ones must vary over y's mesh axes, as the rows do."""
  ones = jnp.ones_like(y[..., :1])
  return y + matmul(ones, b_EO[:, None, :])


def make_experts(d_ff: int, *, activation: str = "gelu", glu: bool = False, bias: bool = False,
                 param_dtype=jnp.float32) -> Experts:
  """FFN  act(x W_in) W_out  or, with glu, GLU  (act(x W_gate) * x W_up) W_down (SwiGLU = silu;
  activation='clamped_swiglu': GPT-OSS's form of the two); with bias, each projection x W + b
  (zeros at init)."""
  check_int("d_ff", d_ff, low=1, owner="experts")
  check_activation(activation, glu, owner="experts")
  act = ACTIVATIONS.get(activation)
  names_in = ("w_gate", "w_up") if glu else ("w_in",)
  out_name = "w_down" if glu else "w_out"
  bias_of = lambda name: "b" + name[1:]

  def init(rng, num_experts: int, d_model: int):
    rngs = jax.random.split(rng, len(names_in) + 1)
    fan_in = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                  in_axis=-2, out_axis=-1, batch_axis=(0,))
    params = {n: fan_in(r, (num_experts, d_model, d_ff), param_dtype)
              for n, r in zip(names_in, rngs)}
    params[out_name] = fan_in(rngs[-1], (num_experts, d_ff, d_model), param_dtype)
    if bias:
      params.update({bias_of(n): jnp.zeros((num_experts, d_ff), param_dtype) for n in names_in})
      params[bias_of(out_name)] = jnp.zeros((num_experts, d_model), param_dtype)
    return params

  def project(params, x, name, matmul):
    y = matmul(x, params[name])
    return _add_bias(y, params[bias_of(name)], matmul) if bias else y

  def apply(params, x, matmul=batched_matmul):
    if glu:
      h = glu_hidden(activation, project(params, x, "w_gate", matmul),
                     project(params, x, "w_up", matmul))
    else:
      h = act(project(params, x, "w_in", matmul))
    return project(params, h, out_name, matmul)

  param_axes = {n: ("expert", "embed", "mlp") for n in names_in}
  param_axes[out_name] = ("expert", "mlp", "embed")
  if bias:
    param_axes.update({bias_of(n): ("expert", "mlp") for n in names_in})
    param_axes[bias_of(out_name)] = ("expert", "embed")
  return Experts(init, apply, d_ff, activation, glu, param_axes,
                 bias_of(out_name) if bias else None)


def loop_reference(params, experts: Experts, x_TD, combine_TE):
  """The naive reference: a Python loop over experts, each on every token, weighted.

  y_t = sum_e combine[t, e] * FFN_e(x_t). Only for tests on tiny shapes.
  """
  num_experts = combine_TE.shape[1]
  y = jnp.zeros_like(x_TD)
  for e in range(num_experts):
    params_e = jax.tree.map(lambda w: w[e:e + 1], params)
    y_e = experts.apply(params_e, x_TD[None])[0]
    y = y + combine_TE[:, e:e + 1].astype(y.dtype) * y_e
  return y
