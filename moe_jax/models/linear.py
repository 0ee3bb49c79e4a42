"""x @ W without bias, W annotated with logical axes: the projection every model module uses."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.parallel.mesh import sharded_param


def _init(scale=1.0):
  return jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class Linear(nnx.Module):
  """x @ W without bias, W annotated with logical axes."""

  def __init__(self, d_in: int, d_out: int, axes, *, rngs: nnx.Rngs, mesh=None,
               param_dtype=jnp.float32):
    self.kernel = sharded_param(_init()(rngs.params(), (d_in, d_out), param_dtype), axes, mesh)

  def __call__(self, x):
    return x @ self.kernel[...].astype(x.dtype)
