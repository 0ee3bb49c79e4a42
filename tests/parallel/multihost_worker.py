"""One process of the 2-process CPU test in test_multihost.py (run with `python -m`).

Each process holds 4 simulated CPU devices; jax.distributed (gloo collectives) joins them into 8.
Both build the same variables and input from fixed seeds, run the jitted expert-parallel forward
+ gradient over a data=2 x expert=4 mesh, gather the results to every host, and process 0 saves
them for the parent test to compare with an unsharded single-process run.

The computation itself lives in `compute`, which the parent test also calls (with mesh=None), so
both sides run the very same code.

    MOE_JAX_COORDINATOR=127.0.0.1:PORT MOE_JAX_NUM_PROCESSES=2 MOE_JAX_PROCESS_ID=0 \\
        python -m tests.parallel.multihost_worker OUT.npz
"""
from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer, variable_specs
from moe_jax.parallel import distributed
from moe_jax.parallel.mesh import batch_sharding

D_MODEL, SHAPE = 16, (8, 16, 16)
CASES = {"sort": 1.0, "dropless": 1.25}   # dispatcher -> capacity_factor (1.0: some drop)


def build():
  """The layer's config, variables and input as host numpy, identical in every process."""
  config = MoEConfig(num_experts=8, expert_d_ff=32, router="topk", router_options={"k": 2})
  # The layer's own init, shapes only: compiling it costs each of 3 processes seconds on CPU.
  shapes = jax.eval_shape(lambda: init_moe_layer(jax.random.key(0), D_MODEL, config))
  rng = np.random.default_rng(0)
  fan_in = lambda s: s.shape[-2] if len(s.shape) >= 2 else 1   # N(0, 1/fan_in) weights
  variables = jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(fan_in(s))).astype(s.dtype), shapes)
  x = rng.standard_normal(SHAPE).astype(np.float32)
  return config, variables, x


def compute(variables, x, *, config, mesh=None):
  """{name: array}: y, loss, aux and grads (w.r.t. variables and x) for each dispatcher."""
  out = {}
  for name, capacity_factor in CASES.items():
    case = dataclasses.replace(config, dispatcher=name, capacity_factor=capacity_factor)

    def loss_fn(variables, x, case=case):
      y, r = moe_layer(variables, x, case, mesh=mesh)
      aux = r.aux_losses["load_balancing"]
      return jnp.sum(y ** 2) + aux, (y, aux)

    (loss, (y, aux)), (g_vars, g_x) = jax.jit(
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(variables, x)
    result = {"y": y, "loss": loss, "aux": aux, "grad_x": g_x}
    for path, leaf in jax.tree_util.tree_flatten_with_path(g_vars)[0]:
      result["grad" + jax.tree_util.keystr(path)] = leaf
    result = distributed.global_to_host(result)
    out.update({f"{name}/{k}": np.asarray(v) for k, v in result.items()})
  return out


def main(out_path: str) -> None:
  assert distributed.initialize(cpu_collectives="gloo"), "expected a multi-process run"
  assert distributed.initialize(), "a second initialize() must be a harmless no-op"
  assert jax.process_count() == 2, jax.process_count()
  assert jax.device_count() == 8, jax.device_count()
  assert jax.local_device_count() == 4, jax.local_device_count()
  mesh = distributed.global_mesh(data=2, expert=4)
  config, variables, x_np = build()

  # Variables: every process has the full copy; each places the shards its devices own.
  specs = variable_specs(variables, config.experts)
  g_vars = {"router": distributed.host_full_to_global(variables["router"], mesh),
            "experts": {k: distributed.host_full_to_global(v, mesh, specs["experts"][k])
                        for k, v in variables["experts"].items()},
            "shared": None}
  x = distributed.host_full_to_global(x_np, mesh, batch_sharding(mesh).spec)

  # The other way in: each process supplies only its own rows (which rows: ask the sharding).
  rows = sorted({idx[0].start or 0 for idx in
                 batch_sharding(mesh).addressable_devices_indices_map(SHAPE).values()})
  per_device = SHAPE[0] // (mesh.shape["data"] * mesh.shape["expert"])
  local_rows = np.concatenate([x_np[r:r + per_device] for r in rows])
  x_from_local = distributed.host_local_to_global(local_rows, mesh)
  assert not x.is_fully_addressable and x.sharding == x_from_local.sharding
  np.testing.assert_array_equal(distributed.global_to_host(x_from_local), x_np)

  out = compute(g_vars, x, config=config, mesh=mesh)
  out["process_rows"] = np.asarray(rows)
  if jax.process_index() == 0:
    np.savez(out_path, **out)
  print(f"process {jax.process_index()}: ok, rows {rows}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
