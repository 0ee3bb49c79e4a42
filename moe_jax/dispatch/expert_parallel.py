"""Expert-parallel dispatchers: run inside `jax.shard_map`, experts split over the 'expert' axis.

Each device routes its own tokens, packs one buffer per destination device, exchanges them with
an all-to-all over 'expert', runs its local experts, and sends the outputs back by the reverse
all-to-all. The expert hidden dim may also be split over 'model' (tensor parallel): then each
device computes a partial output and a psum over 'model' completes it.

- any dispatcher with halves (`sort`, `einsum`, a user's made `Dispatcher.from_halves`): its
  `pack` gives the [E, C, D] buffer (sort: every routing group at once, capacity per group),
  cut into one [E/ep, C, D] piece per device: one exchange between `pack` and `unpack`, one
  code path for all of them. Same capacity and drop rule as unsharded: identical results.
- dropless, `padded`: a buffer per destination device with room for *all* N assignments (the
  worst case: every token picked an expert on that device), exchanged with a plain all-to-all;
  the receiver runs its experts with the single-device dropless grouped matmul. Works on every
  backend; costs ep times the buffer memory.
- dropless, `ragged`: `jax.lax.ragged_all_to_all` sends only the rows that exist. GPU/TPU only
  (XLA:CPU does not implement it).

`run` has the single-device dispatcher signature, with expert params already local.
Axis letters: T tokens, D model dim, E experts, C capacity, N assignments, R received rows.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from moe_jax.dispatch import dropless, slots
from moe_jax.dispatch.base import Dispatcher

EXCHANGES = ("auto", "padded", "ragged")


def _all_to_all(x, axis):
  """Chunk i of the leading axis goes to device i; chunk i of the result came from device i."""
  return jax.lax.all_to_all(x, axis, 0, 0, tiled=True)


def _run_local_experts(x_RD, local_expert_R, expert_params, experts, num_local: int,
                       model_axis: str, impl: str):
  """Received rows through this device's experts, dropless (rows with expert -1 are padding)."""
  y_RD = dropless.run_rows(x_RD, local_expert_R, expert_params, experts, num_experts=num_local,
                           impl=impl)
  return jax.lax.psum(y_RD, model_axis)


def _halves_run(routing, x_TD, expert_params, experts, *, pack, unpack, ep, expert_axis,
                model_axis, **options):
  x_ECD, carry = pack(routing, x_TD, **options)
  num_experts, rows, d_model = x_ECD.shape
  num_local = num_experts // ep
  x_send = x_ECD.reshape(ep, num_local, rows, d_model)
  x_recv = _all_to_all(x_send, expert_axis)                       # [source, E_local, rows, D]
  x_local = x_recv.transpose(1, 0, 2, 3).reshape(num_local, ep * rows, d_model)
  y_local = jax.lax.psum(experts.apply(expert_params, x_local), model_axis)
  y_back = y_local.reshape(num_local, ep, rows, d_model).transpose(1, 0, 2, 3)
  y_ECD = _all_to_all(y_back, expert_axis).reshape(num_experts, rows, d_model)
  return unpack(routing, y_ECD, carry, x_TD.dtype)


def _padded_run(routing, x_TD, expert_params, experts, *, ep, expert_axis, model_axis,
                local_impl, capacity_factor=None, num_groups=1):
  del capacity_factor, num_groups  # dropless: no capacity, groups change nothing
  slots.check_sparse(routing, "expert-parallel dropless")
  num, num_local, d_model = routing.num_assignments, routing.num_experts // ep, x_TD.shape[1]
  plan = slots.plan(routing.expert // num_local, routing.valid, ep, num)   # capacity N: no drops
  x_send = slots.pack_slots(routing, x_TD, plan).reshape(ep, num, d_model)
  local_expert_N = jnp.where(routing.valid, routing.expert % num_local, -1)
  e_send = slots.gather_slots(local_expert_N, plan, -1).reshape(ep, num)
  x_recv, e_recv = _all_to_all(x_send, expert_axis), _all_to_all(e_send, expert_axis)
  y_recv = _run_local_experts(x_recv.reshape(ep * num, d_model), e_recv.reshape(-1),
                              expert_params, experts, num_local, model_axis, local_impl)
  y_slots = _all_to_all(y_recv.reshape(ep, num, d_model), expert_axis)
  y_TD = slots.unpack_slots(routing, y_slots.reshape(ep * num, d_model), plan, x_TD.dtype)
  return y_TD, {"dropped_fraction": jnp.zeros((), jnp.float32)}


def _ragged_run(routing, x_TD, expert_params, experts, *, ep, expert_axis, model_axis,
                local_impl, capacity_factor=None, num_groups=1):
  del capacity_factor, num_groups  # dropless: no capacity, groups change nothing
  slots.check_sparse(routing, "expert-parallel dropless")
  num, num_local, d_model = routing.num_assignments, routing.num_experts // ep, x_TD.shape[1]
  order_N = jnp.argsort(jnp.where(routing.valid, routing.expert, routing.num_experts),
                        stable=True)                        # by expert, hence by destination
  token_N, valid_N = routing.token[order_N], routing.valid[order_N]
  expert_N = routing.expert[order_N]
  send_sizes = jnp.zeros((ep,), jnp.int32).at[expert_N // num_local].add(valid_N.astype(jnp.int32))
  send_offsets = jnp.cumsum(send_sizes) - send_sizes
  recv_sizes = _all_to_all(send_sizes, expert_axis)
  recv_offsets = jnp.cumsum(recv_sizes) - recv_sizes
  # ragged_all_to_all wants, per destination, the offset in *its* output: ask it.
  remote_recv_offsets = _all_to_all(recv_offsets, expert_axis)
  remote_send_offsets = _all_to_all(send_offsets, expert_axis)
  rows = ep * num                                           # worst case: all N from every peer
  forward = partial(jax.lax.ragged_all_to_all, input_offsets=send_offsets,
                    send_sizes=send_sizes, output_offsets=remote_recv_offsets,
                    recv_sizes=recv_sizes, axis_name=expert_axis)
  x_recv = forward(x_TD[token_N], jnp.zeros((rows, d_model), x_TD.dtype))
  local_expert = jnp.where(valid_N, expert_N % num_local, -1)[:, None]
  e_recv = forward(local_expert, jnp.full((rows, 1), -1, jnp.int32))[:, 0]
  y_recv = _run_local_experts(x_recv, e_recv, expert_params, experts, num_local, model_axis,
                              local_impl)
  y_N = jax.lax.ragged_all_to_all(y_recv, jnp.zeros((num, d_model), y_recv.dtype), recv_offsets,
                                  recv_sizes, remote_send_offsets, send_sizes,
                                  axis_name=expert_axis)
  weight_N = jnp.where(valid_N, routing.weight[order_N], 0).astype(y_N.dtype)
  y_TD = jnp.zeros_like(x_TD).at[token_N].add((y_N * weight_N[:, None]).astype(x_TD.dtype))
  return y_TD, {"dropped_fraction": jnp.zeros((), jnp.float32)}


def resolve_exchange(exchange: str, backend: str | None = None) -> str:
  """'auto' -> 'ragged' where the backend implements ragged_all_to_all, else 'padded'."""
  backend = jax.default_backend() if backend is None else backend
  if exchange not in EXCHANGES:
    raise ValueError(f"moe: exchange={exchange!r}; allowed: {', '.join(EXCHANGES)}")
  if exchange == "auto":
    return "padded" if backend == "cpu" else "ragged"
  if exchange == "ragged" and backend == "cpu":
    raise ValueError("moe: exchange='ragged' needs ragged_all_to_all, which XLA:CPU does not "
                     "implement; use exchange='padded' (or 'auto') on CPU")
  return exchange


def halves_exchange(dispatcher: Dispatcher, *, ep, expert_axis, model_axis) -> Dispatcher:
  """The expert-parallel version of a dispatcher with halves: its own pack and unpack, the
  all-to-all of the [E, C, D] buffer between them."""
  return dispatcher._replace(
      name=f"{dispatcher.name}[ep={ep}]", expert_parallel=None,
      run=partial(_halves_run, pack=dispatcher.pack, unpack=dispatcher.unpack, ep=ep,
                  expert_axis=expert_axis, model_axis=model_axis))


def is_available(dispatcher: Dispatcher) -> bool:
  """Whether `dispatcher` has an expert-parallel version: its own factory or its halves."""
  return dispatcher.expert_parallel is not None or dispatcher.pack is not None


def dropless_exchange(*, ep, expert_axis, model_axis, exchange):
  """The expert-parallel factory of `dropless`: the padded or the ragged all-to-all."""
  body = _ragged_run if resolve_exchange(exchange) == "ragged" else _padded_run
  return Dispatcher(f"dropless[ep={ep}]",
                    partial(body, local_impl=dropless.default_impl(), ep=ep,
                            expert_axis=expert_axis, model_axis=model_axis),
                    supports_soft=False, merge_groups=True)


def make(dispatcher: Dispatcher, *, ep: int, expert_axis: str = "expert",
         model_axis: str = "model", exchange: str = "auto") -> Dispatcher:
  """The expert-parallel version of a single-device dispatcher, for use inside shard_map:
  what its `expert_parallel` factory builds, else the exchange between its halves.

  With nothing to exchange (ep == 1) it is the dispatcher itself followed by the 'model' psum,
  so every dispatcher and router, soft MoE included, runs data- and tensor-parallel.
  """
  if ep == 1:
    def run_local(*args, **kwargs):
      y_TD, metrics = dispatcher.run(*args, **kwargs)
      return jax.lax.psum(y_TD, model_axis), metrics
    return dispatcher._replace(run=run_local)
  if dispatcher.expert_parallel is not None:
    return dispatcher.expert_parallel(ep=ep, expert_axis=expert_axis, model_axis=model_axis,
                                      exchange=exchange)
  if dispatcher.pack is None:
    raise ValueError(f"moe: dispatcher {dispatcher.name!r} has no expert-parallel version "
                     "(no pack/unpack halves and no expert_parallel factory); use a mesh with "
                     "expert=1 or a dispatcher that has one (e.g. 'sort', 'einsum', 'dropless')")
  return halves_exchange(dispatcher, ep=ep, expert_axis=expert_axis, model_axis=model_axis)
