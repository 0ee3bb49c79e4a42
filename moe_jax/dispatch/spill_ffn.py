"""The experts' FFN for dropless's 'spill' layout: a capacity buffer [E, C, D] through the
batched FFN, and the rows it could not hold (the spill) block by block, each block gathering
its tokens, running its one expert and scatter-adding the weighted result:
    y_ECD = FFN(x_ECD),   y_t = sum of weight_r * FFN_{expert of r's block}(x_t) over the
    spill rows r of token t, for the first `num_blocks` blocks (the ones in use).

Nothing of spill-row size is materialised, so memory does not depend on how large the spill
could be (every assignment, at worst). One custom VJP covers both parts so that the spill's
parameter gradient accumulates, block by block and in place, into the capacity part's: a
separate spill gradient would be a second parameter-sized buffer, growing with E.
Differentiating a dynamic index inside a loop would instead make an [E, ...]-sized temporary
per block, and a loop of traced length has no reverse-mode rule. The backward recomputes each
spill block's FFN (the forward keeps nothing per block).

Works with any `Experts.apply`: a spill block runs it on one expert's parameters as a batch of
one.

Axis letters: E experts, C capacity, T tokens, D model dim, R spill rows (a multiple of B),
B block rows.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def capacity_and_spill_ffn(apply, params, x_ECD, x_TD, token_R, weight_R, block_expert,
                           num_blocks, block: int):
  """-> (y_ECD, y_TD). token_R: each spill row's token (T: padding); weight_R: its combine
  weight (0 for padding); block_expert: each block's expert; num_blocks: blocks in use."""
  # Inside shard_map the parameters, tokens and weights may vary over different mesh axes
  # (experts over 'model', tokens over 'data'), and the loops' carries must vary alike: adding
  # to each a zero that varies like the others makes them all vary over the union, and
  # autodiff sums each cotangent over the axes only the others vary over, outside the custom
  # rule (as in grouped_matmul.blocked_matmul). Without shard_map this is a no-op.
  zero_p = sum(jnp.zeros_like(leaf.reshape(-1)[0]) for leaf in jax.tree.leaves(params))
  zero_x = jnp.zeros_like(x_TD[0, 0]) + jnp.zeros_like(weight_R[0])
  params = jax.tree.map(lambda p: p + zero_x.astype(p.dtype), params)
  x_TD = x_TD + zero_p.astype(x_TD.dtype)
  weight_R = weight_R + (zero_p + zero_x).astype(weight_R.dtype)
  return _ffn(apply, block, params, x_ECD, x_TD, token_R, weight_R, block_expert,
              jnp.asarray(num_blocks, jnp.int32))


def _expert(params, e):
  return jax.tree.map(lambda p: p[e][None], params)


def _block_rows(token_R, weight_R, i, block):
  return (jax.lax.dynamic_slice_in_dim(token_R, i * block, block),
          jax.lax.dynamic_slice_in_dim(weight_R, i * block, block))


def _with_pad_row(a_TD):
  return jnp.concatenate([a_TD, jnp.zeros((1, a_TD.shape[1]), a_TD.dtype)])


def _spill_forward(apply, block, params, x_TD, token_R, weight_R, block_expert, num_blocks):
  x_pad = _with_pad_row(x_TD)

  def body(i, y_pad):
    token_B, weight_B = _block_rows(token_R, weight_R, i, block)
    y_BD = apply(_expert(params, block_expert[i]), x_pad[token_B][None])[0]
    return y_pad.at[token_B].add(y_BD * weight_B[:, None].astype(y_BD.dtype))
  return jax.lax.fori_loop(0, num_blocks, body, jnp.zeros_like(x_pad))[:-1]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ffn(apply, block, params, x_ECD, x_TD, token_R, weight_R, block_expert, num_blocks):
  return (apply(params, x_ECD),
          _spill_forward(apply, block, params, x_TD, token_R, weight_R, block_expert,
                         num_blocks))


def _fwd(apply, block, params, x_ECD, x_TD, token_R, weight_R, block_expert, num_blocks):
  y_ECD, capacity_vjp = jax.vjp(apply, params, x_ECD)   # a pytree: its residuals
  y_TD = _spill_forward(apply, block, params, x_TD, token_R, weight_R, block_expert,
                        num_blocks)
  return (y_ECD, y_TD), (capacity_vjp, params, x_TD, token_R, weight_R, block_expert,
                         num_blocks)


def _bwd(apply, block, residuals, cotangents):
  capacity_vjp, params, x_TD, token_R, weight_R, block_expert, num_blocks = residuals
  g_ECD, g_TD = cotangents
  dparams, dx_ECD = capacity_vjp(g_ECD)
  x_pad, g_pad = _with_pad_row(x_TD), _with_pad_row(g_TD.astype(x_TD.dtype))

  def body(i, carry):
    dx_pad, dparams, dweight_R = carry
    token_B, weight_B = _block_rows(token_R, weight_R, i, block)
    e = block_expert[i]
    y_BD, block_vjp = jax.vjp(lambda p, x_BD: apply(p, x_BD[None])[0], _expert(params, e),
                              x_pad[token_B])
    g_BD = g_pad[token_B]
    dp, dx_BD = block_vjp(g_BD * weight_B[:, None].astype(g_BD.dtype))
    dparams = jax.tree.map(lambda d, de: d.at[e].add(de[0].astype(d.dtype)), dparams, dp)
    dweight_B = jnp.sum(y_BD * g_BD, axis=-1).astype(dweight_R.dtype)
    return (dx_pad.at[token_B].add(dx_BD), dparams,
            jax.lax.dynamic_update_slice_in_dim(dweight_R, dweight_B, i * block, 0))

  init = (jnp.zeros_like(x_pad), dparams, jnp.zeros_like(weight_R))
  dx_pad, dparams, dweight_R = jax.lax.fori_loop(0, num_blocks, body, init)
  return dparams, dx_ECD, dx_pad[:-1], None, dweight_R, None, None


_ffn.defvjp(_fwd, _bwd)
