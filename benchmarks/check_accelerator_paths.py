"""Checks the paths CI (CPU only) cannot run: `ragged_dot` dropless, tokamax's grouped matmul
(when `pip install 'moe_jax[gpu]'` installed it) and the `ragged_all_to_all` expert-parallel
exchange, against the einsum reference, forward and gradients.

    python benchmarks/check_accelerator_paths.py        # on a GPU or TPU host

With one accelerator the exchange runs on a 1-device 'expert' axis (the collective is compiled
and executed, but moves nothing between devices); with several, on all of them.
Prints the largest relative error of each check and exits non-zero if one exceeds 1e-4.
"""
from __future__ import annotations

import dataclasses
import sys
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moe_jax.dispatch import dropless, expert_parallel
from moe_jax.dispatch.base import Dispatcher
from moe_jax.layer import MoEConfig, _local_layer, init_moe_layer, moe_layer, variable_specs
from moe_jax.parallel import make_mesh

E, D, F, K = 8, 64, 128, 2


def _rel_err(a, b):
  return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _loss_and_grads(layer, params, x):
  loss = lambda p, x: jnp.sum(jnp.sin(layer(p, x)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)


def main():
  # Full float32 matmuls: the GPU default (TF32) alone differs from the reference by ~1e-3.
  jax.config.update("jax_default_matmul_precision", "highest")
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), jax {jax.__version__}")
  config = MoEConfig(num_experts=E, expert_d_ff=F, router_options={"k": K}, glu=True,
                     activation="silu", capacity_factor=8.0)
  router, experts = config.built_router, config.experts
  params = init_moe_layer(jax.random.PRNGKey(0), D, config)
  ep = jax.device_count()
  x = jax.random.normal(jax.random.PRNGKey(1), (8 * ep, 32, D))
  layer = lambda dispatcher: lambda p, x: moe_layer(
      p, x, dataclasses.replace(config, dispatcher=dispatcher))[0]
  reference = _loss_and_grads(layer("einsum"), params, x)
  ragged = Dispatcher("dropless", partial(dropless.run, impl="ragged"), False, merge_groups=True)
  errors = {"dropless impl=ragged (ragged_dot)": _rel_err(
      _loss_and_grads(layer(ragged), params, x), reference)}
  if dropless.tokamax_available():
    tokamax = Dispatcher("dropless", partial(dropless.run, impl="tokamax"), False,
                         merge_groups=True)
    errors["dropless impl=tokamax (tokamax.ragged_dot)"] = _rel_err(
        _loss_and_grads(layer(tokamax), params, x), reference)
  else:
    print("(tokamax not installed: its dropless path is not checked)")

  # The ragged exchange itself, even on one device (make() skips the exchange when ep == 1).
  mesh = make_mesh(data=1, expert=ep)
  ep_dispatcher = Dispatcher("dropless[ragged]", lambda r, x, p, e, capacity_factor=None,
                             num_groups=1:
                             expert_parallel._ragged_run(r, x, p, e, ep=ep, expert_axis="expert",
                                                         model_axis="model",
                                                         local_impl="ragged"), False,
                             merge_groups=True)

  def sharded(p, x):
    body = lambda p, x: _local_layer(p, x, None, None, router=router, dispatcher=ep_dispatcher,
                                     experts=experts, shared_experts=None, train=False,
                                     group_size=x.shape[1], capacity_factor=1.0)[0]
    return jax.shard_map(body, mesh=mesh, in_specs=(variable_specs(p, experts),
                                                    P(("data", "expert"))),
                         out_specs=P(("data", "expert")))(p, x)
  errors[f"expert-parallel ragged_all_to_all (ep={ep})"] = _rel_err(
      _loss_and_grads(sharded, params, x), reference)
  for name, err in errors.items():
    print(f"{name:<45} max relative error {err:.2e}")
  return int(max(errors.values()) > 1e-4)


if __name__ == "__main__":
  sys.exit(main())
