"""Grouped matmul for dropless dispatch: rows sorted by expert, each group padded to a multiple
of a block size, one [B,I] x [I,O] matmul per block with that block's expert weights.

XLA:CPU lowers `jax.lax.ragged_dot` densely (every row against every expert), so on CPU this
block loop is the fast path; on GPU/TPU `ragged_dot` is native. The custom VJP keeps the weight
gradient an in-place accumulation per block, instead of the [E,I,O]-sized temporary per block
that differentiating a dynamic index inside a scan would produce. Loops run only over the
blocks in use, so a layout sized for the worst case (every row padded, or the expert-parallel
receive buffer sized for all peers' tokens) costs only what it holds.

Axis letters: R padded rows (a multiple of B), B block rows, I in dim, O out dim, E experts.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def blocked_matmul(x_RI, w_EIO, block_expert, block: int, num_blocks=None):
  """y[r] = x[r] @ w[block_expert[r // block]] for the first `num_blocks` blocks, zeros after.

  num_blocks: None (every block: a loop of static length) or a traced count, for layouts sized
  far beyond what they hold (the expert-parallel receive buffer). A traced count makes the loop
  a while loop of unknown length, which XLA:GPU runs about 2x slower per block (measured on an
  H100), so it is worth it only when most blocks are empty.
  """
  # Inside shard_map, x and w may vary over different mesh axes (w replicated over 'data', x
  # over 'model'); the custom VJP's dw (dx) must then be summed over the axes only x (only w)
  # varies over. Adding to each a zero that varies like the other makes autodiff insert those
  # psums, outside the custom rule. Without shard_map this is a no-op.
  x_RI, w_EIO = (x_RI + jnp.zeros_like(w_EIO[0, 0, 0], dtype=x_RI.dtype),
                 w_EIO + jnp.zeros_like(x_RI[0, 0], dtype=w_EIO.dtype))
  if num_blocks is not None:
    num_blocks = jnp.asarray(num_blocks, jnp.int32)
  return _blocked_matmul(x_RI, w_EIO, block_expert, num_blocks, block)


def _block_loop(num_blocks, block, rows, body, init):
  """for i in range(num_blocks or all blocks): carry = body(i, carry)."""
  return jax.lax.fori_loop(0, rows // block if num_blocks is None else num_blocks, body, init)


def _matmul_blocks(a_RI, w_EIO, block_expert, num_blocks, block, transpose_w):
  """out[block i] = a[block i] @ w[block_expert[i]] (or its transpose), first num_blocks."""
  out_dim = w_EIO.shape[1] if transpose_w else w_EIO.shape[2]

  def body(i, out):
    a_BI = jax.lax.dynamic_slice_in_dim(a_RI, i * block, block)
    w_IO = w_EIO[block_expert[i]].astype(a_RI.dtype)
    return jax.lax.dynamic_update_slice_in_dim(out, a_BI @ (w_IO.T if transpose_w else w_IO),
                                               i * block, 0)
  # The loop carry must vary over the same mesh axes as a block's product (under shard_map).
  init = jnp.zeros((a_RI.shape[0], out_dim), a_RI.dtype) + jnp.zeros_like(a_RI[0, 0])
  return _block_loop(num_blocks, block, a_RI.shape[0], body, init)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked_matmul(x_RI, w_EIO, block_expert, num_blocks, block: int):
  return _matmul_blocks(x_RI, w_EIO, block_expert, num_blocks, block, transpose_w=False)


def _fwd(x_RI, w_EIO, block_expert, num_blocks, block):
  y = _blocked_matmul(x_RI, w_EIO, block_expert, num_blocks, block)
  return y, (x_RI, w_EIO, block_expert, num_blocks)


def _bwd(block, residuals, g_RO):
  x_RI, w_EIO, block_expert, num_blocks = residuals
  dx = _matmul_blocks(g_RO, w_EIO, block_expert, num_blocks, block, transpose_w=True)

  def accumulate(i, dw_EIO):   # in place, per block: no [E,I,O] temporary per step
    x_BI = jax.lax.dynamic_slice_in_dim(x_RI, i * block, block)
    g_BO = jax.lax.dynamic_slice_in_dim(g_RO, i * block, block)
    return dw_EIO.at[block_expert[i]].add((x_BI.T @ g_BO).astype(dw_EIO.dtype))

  dw = _block_loop(num_blocks, block, x_RI.shape[0], accumulate, jnp.zeros_like(w_EIO))
  return dx.astype(x_RI.dtype), dw, None, None


_blocked_matmul.defvjp(_fwd, _bwd)
