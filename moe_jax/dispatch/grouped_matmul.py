"""Grouped matmul for dropless dispatch: rows sorted by expert, each group padded to a multiple
of a block size, one [B,I] x [I,O] matmul per block with that block's expert weights.

XLA:CPU lowers `jax.lax.ragged_dot` densely (every row against every expert), so on CPU this
block loop is the fast path; on GPU/TPU `ragged_dot` is native. The custom VJP keeps the weight
gradient an in-place accumulation per block, instead of the [E,I,O]-sized temporary per block
that differentiating a dynamic index inside a scan would produce.

Axis letters: R padded rows (a multiple of B), B block rows, I in dim, O out dim, E experts.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _blocks(x_RI, block: int):
  return x_RI.reshape(x_RI.shape[0] // block, block, x_RI.shape[1])


def blocked_matmul(x_RI, w_EIO, block_expert, block: int):
  """y[r] = x[r] @ w[block_expert[r // block]]."""
  # Inside shard_map, x and w may vary over different mesh axes (w replicated over 'data', x
  # over 'model'); the custom VJP's dw (dx) must then be summed over the axes only x (only w)
  # varies over. Adding to each a zero that varies like the other makes autodiff insert those
  # psums, outside the custom rule. Without shard_map this is a no-op.
  x_RI, w_EIO = (x_RI + jnp.zeros_like(w_EIO[0, 0, 0], dtype=x_RI.dtype),
                 w_EIO + jnp.zeros_like(x_RI[0, 0], dtype=w_EIO.dtype))
  return _blocked_matmul(x_RI, w_EIO, block_expert, block)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked_matmul(x_RI, w_EIO, block_expert, block: int):
  def one(args):
    x_BI, e = args
    return x_BI @ w_EIO[e].astype(x_BI.dtype)
  return jax.lax.map(one, (_blocks(x_RI, block), block_expert)).reshape(x_RI.shape[0], -1)


def _fwd(x_RI, w_EIO, block_expert, block):
  return _blocked_matmul(x_RI, w_EIO, block_expert, block), (x_RI, w_EIO, block_expert)


def _bwd(block, residuals, g_RO):
  x_RI, w_EIO, block_expert = residuals
  g_blocks = _blocks(g_RO, block)
  dx = jax.lax.map(lambda a: a[0] @ w_EIO[a[1]].T.astype(a[0].dtype), (g_blocks, block_expert))

  def accumulate(dw_EIO, args):
    x_BI, g_BO, e = args
    return dw_EIO.at[e].add((x_BI.T @ g_BO).astype(dw_EIO.dtype)), None

  dw, _ = jax.lax.scan(accumulate, jnp.zeros_like(w_EIO),
                       (_blocks(x_RI, block), g_blocks, block_expert))
  return dx.reshape(x_RI.shape).astype(x_RI.dtype), dw, None


_blocked_matmul.defvjp(_fwd, _bwd)
