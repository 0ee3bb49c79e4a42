"""`dropless`: no capacity, no token dropped. Every expert runs on exactly its tokens:
  - 'spill' (CPU, and GPU without tokamax): each expert's first C = ceil(1.1 N/E) assignments
    through sort's batched [E,C,D] FFN, the rest (the spill, however large) block by block
    over only the blocks it fills (`spill_ffn`). At balanced load it costs what sort does.
  - 'ragged' (TPU): `jax.lax.ragged_dot`, a native grouped matmul there.
  - 'tokamax' (GPU, with the optional package: `pip install 'moe_jax[gpu]'`): tokamax's
    grouped-matmul kernels (`tokamax.ragged_dot`: Pallas Mosaic-GPU on SM90 / SM100, Triton and
    XLA fallbacks).
  - 'blocked': every assignment in expert-sorted, block-padded rows through `blocked_matmul`;
    also what 'spill' becomes for a layout that is mostly padding (`sparse_rows`: the
    expert-parallel receive buffer).
XLA lowers `jax.lax.ragged_dot` densely on CPU and GPU (see `default_impl`). `impl` picks one
explicitly; 'auto' decides by backend.

Axis letters: T tokens, D model dim, E experts, N assignments, R padded rows.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import partial

import jax
from absl import flags
import jax.numpy as jnp

from moe_jax.dispatch import slots
from moe_jax.dispatch.base import Dispatcher
from moe_jax.dispatch.slots import expert_capacity, position_in_expert
from moe_jax.routing.base import Routing
from moe_jax.dispatch.spill_ffn import capacity_and_spill_ffn
from moe_jax.dispatch.grouped_matmul import blocked_matmul

IMPLS = ("auto", "spill", "blocked", "ragged", "tokamax")


def block_size(num_assignments: int, num_experts: int) -> int:
  """A power of two near N/(2E), in [8, 256]: big enough for efficient matmuls, small enough
  that padding each expert's group to a whole block wastes little."""
  target = max(1, num_assignments // (2 * num_experts))
  return int(min(256, max(8, 1 << (target.bit_length() - 1))))


def _expert_sorted_rows(routing, group_rows_E, rows: int):
  """Row of each assignment when expert e's group occupies group_rows_E[e] consecutive rows
  (its count, or that rounded up to whole blocks); invalid assignments get `rows` (none)."""
  ends_E = jnp.cumsum(group_rows_E)
  rank_N = position_in_expert(routing.expert, routing.valid, routing.num_experts)
  row_N = jnp.where(routing.valid, ends_E[routing.expert] - group_rows_E[routing.expert] + rank_N,
                    rows)
  return row_N, ends_E


def _counts(routing):
  return jnp.zeros((routing.num_experts,), jnp.int32).at[routing.expert].add(
      routing.valid.astype(jnp.int32))


def _layout(routing, block: int):
  """Rows in the expert-sorted, block-padded layout, each block's expert, blocks in use."""
  num, num_experts = routing.num_assignments, routing.num_experts
  padded_E = (_counts(routing) + block - 1) // block * block
  num_rows = (num + num_experts * (block - 1) + block - 1) // block * block
  row_N, ends_E = _expert_sorted_rows(routing, padded_E, num_rows)
  block_starts = jnp.arange(num_rows // block) * block
  block_expert = jnp.minimum(jnp.searchsorted(ends_E, block_starts, side="right"),
                             num_experts - 1).astype(jnp.int32)
  return row_N, block_expert, num_rows, ends_E[-1] // block


def _ragged_layout(routing):
  """Rows in the expert-sorted layout without padding, and each expert's group size."""
  counts_E = _counts(routing)
  row_N, _ = _expert_sorted_rows(routing, counts_E, routing.num_assignments)
  return row_N, counts_E, routing.num_assignments


def tokamax_available() -> bool:
  return importlib.util.find_spec("tokamax") is not None


def default_impl(backend: str | None = None) -> str:
  """'ragged' on TPU, where ragged_dot is a native grouped matmul; on GPU 'tokamax' when the
  package is importable, else 'spill'; 'spill' on CPU. XLA:CPU lowers ragged_dot densely,
  and so did XLA:GPU as measured (jax 0.11.2, H100: temp memory grew linearly in E, 5.3 GB at
  T=4096, E=64, and an out-of-memory at T=65536), while spill's memory stays flat in E. On
  CPU spill is 1.5-2x faster than the blocked loop (benchmarks/README.md); on GPU it is
  unmeasured, but its bulk is sort's batched matmul (1.75x dense on an H100, where the blocked
  loop was 10-13x). See benchmarks/README.md."""
  backend = jax.default_backend() if backend is None else backend
  if backend == "tpu":
    return "ragged"
  if backend in ("gpu", "cuda", "rocm") and tokamax_available():
    return "tokamax"
  return "spill"


def _ragged_matmul(x_RI, w_EIO, group_sizes):
  return jax.lax.ragged_dot(x_RI, w_EIO.astype(x_RI.dtype), group_sizes)


def _tokamax_matmul(x_RI, w_EIO, group_sizes):
  tokamax = importlib.import_module("tokamax")    # optional: imported only when used
  if not flags.FLAGS.is_parsed():
    # tokamax reads its settings from absl flags and, while they are unparsed, parses
    # sys.argv, which fails outside an absl program (a notebook, pytest): parse the program
    # name only, so its flags keep their defaults (what tokamax's own tests do).
    flags.FLAGS(sys.argv[:1])
  # implementation=None: tokamax picks its fastest kernel for the device, falling back to
  # XLA where none applies (and on CPU).
  return tokamax.ragged_dot(x_RI, w_EIO.astype(x_RI.dtype), group_sizes)


def _spill_run(routing, x_TD, expert_params, experts):
  """Every expert's first C = ceil(N/E) assignments through sort's batched [E,C,D] matmul (no
  padding when the load is balanced), the rest -- the spill, however large -- block by block
  through `blocked_ffn`, over only the blocks the spill fills. Each assignment is computed
  once, so the sum is the dropless layer; its cost is sort's at capacity factor 1 plus the
  spill's blocks, and its memory sort's plus [T, D]. The batched matmul runs at full speed,
  which a loop of small per-block products does not on CPU (benchmarks/README.md)."""
  num_experts = routing.num_experts
  capacity = expert_capacity(routing.num_assignments, num_experts, MAIN_CAPACITY_FACTOR)
  main = slots.plan(routing.expert, routing.valid, num_experts, capacity)
  x_ECD = slots.pack_slots(routing, x_TD, main).reshape(num_experts, capacity, -1)
  spill = routing.replace(valid=routing.valid & ~main.kept_N)
  row_N, block_expert, num_rows, used_blocks = _layout(spill, SPILL_BLOCK)
  token_R = jnp.full((num_rows + 1,), routing.num_tokens, jnp.int32).at[row_N].set(
      routing.token)[:num_rows]
  weight_R = jnp.zeros((num_rows + 1,), routing.weight.dtype).at[row_N].set(
      jnp.where(spill.valid, routing.weight, 0))[:num_rows]
  y_ECD, y_spill = capacity_and_spill_ffn(experts.apply, expert_params, x_ECD, x_TD, token_R,
                                          weight_R, block_expert, used_blocks, SPILL_BLOCK)
  y_TD = slots.unpack_slots(routing, y_ECD.reshape(num_experts * capacity, -1), main,
                            x_TD.dtype)
  return y_TD + y_spill.astype(y_TD.dtype)


# Small blocks: the spill is a few rows per overloaded expert, each padded to whole blocks.
SPILL_BLOCK = 32
# The capacity part's C = ceil(1.1 N / E): a little room over the balanced load costs less than
# the spill it saves (a spilled row costs several times a capacity row: small matmuls, and
# recomputed in the backward). Measured round-robin at E=8 and 64: 1.0, 1.1, 1.2; 1.1 best.
MAIN_CAPACITY_FACTOR = 1.1


def _blocked_run(routing, x_TD, expert_params, experts, *, sparse_rows: bool, block: int):
  row_N, block_expert, num_rows, used_blocks = _layout(routing, block)
  matmul = partial(blocked_matmul, block_expert=block_expert, block=block,
                   num_blocks=used_blocks if sparse_rows else None)
  return _rows_run(routing, x_TD, expert_params, experts, row_N, num_rows, matmul)


def run(routing, x_TD, expert_params, experts, *, capacity_factor: float | None = None,
        num_groups: int = 1, impl: str = "auto", sparse_rows: bool = False):
  """sparse_rows: most assignments are invalid (padding), so the blocked matmul should loop
  only over the blocks in use (see blocked_matmul's num_blocks)."""
  del capacity_factor, num_groups  # dropless: no capacity, so groups change nothing
  slots.check_sparse(routing, "dropless")
  if impl == "auto":
    impl = default_impl()
  if impl == "spill" and not sparse_rows:
    return _spill_run(routing, x_TD, expert_params, experts), _no_drops()
  if impl in ("blocked", "spill"):   # spill of a mostly-padding layout: the blocked loop
    return _blocked_run(routing, x_TD, expert_params, experts, sparse_rows=sparse_rows,
                        block=block_size(routing.num_assignments, routing.num_experts)
                        ), _no_drops()
  if impl in ("ragged", "tokamax"):
    if impl == "tokamax" and not tokamax_available():
      raise ValueError("dispatcher 'dropless': impl='tokamax' needs the tokamax package: "
                       "pip install 'moe_jax[gpu]' (or pip install tokamax)")
    row_N, group_sizes, num_rows = _ragged_layout(routing)
    matmul = partial(_ragged_matmul if impl == "ragged" else _tokamax_matmul,
                     group_sizes=group_sizes)
  else:
    raise ValueError(f"dispatcher 'dropless': impl={impl!r}; allowed: {', '.join(IMPLS)}")
  return _rows_run(routing, x_TD, expert_params, experts, row_N, num_rows, matmul), _no_drops()


def _rows_run(routing, x_TD, expert_params, experts, row_N, num_rows: int, matmul):
  """Gather each assignment's token into its row, the experts through `matmul`, and the
  weighted scatter-add back to tokens."""
  token_of_row = jnp.full((num_rows + 1,), routing.num_tokens, jnp.int32).at[row_N].set(
      routing.token)
  x_pad = jnp.concatenate([x_TD, jnp.zeros((1, x_TD.shape[1]), x_TD.dtype)])
  y_R = experts.apply(expert_params, x_pad[token_of_row[:num_rows]], matmul=matmul)
  y_pad = jnp.concatenate([y_R, jnp.zeros((1, y_R.shape[1]), y_R.dtype)])
  weight_N = jnp.where(routing.valid, routing.weight, 0).astype(y_pad.dtype)
  return jnp.zeros_like(x_TD).at[routing.token].add(y_pad[row_N] * weight_N[:, None])


def run_rows(x_RD, expert_R, expert_params, experts, *, num_experts: int, impl: str = "auto"):
  """Rows already gathered (the expert-parallel receive buffer): row r through expert
  expert_R[r], or nothing where expert_R[r] < 0 (padding); -> [R, D]. Most rows are padding
  there, so the layout loops only over the blocks in use (`sparse_rows`)."""
  valid_R = expert_R >= 0
  rows = Routing(num_tokens=x_RD.shape[0], num_experts=num_experts,
                 token=jnp.arange(x_RD.shape[0], dtype=jnp.int32),
                 expert=jnp.maximum(expert_R, 0).astype(jnp.int32),
                 weight=valid_R.astype(x_RD.dtype), valid=valid_R)
  return run(rows, x_RD, expert_params, experts, impl=impl, sparse_rows=True)[0]


def _no_drops():   # a function: an array made at import would start the backend too early
  return {"dropped_fraction": jnp.zeros((), jnp.float32)}


DISPATCHER = Dispatcher("dropless", run, supports_soft=False, merge_groups=True)
