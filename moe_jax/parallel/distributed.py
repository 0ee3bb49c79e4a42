"""Multi-host set-up: start `jax.distributed`, build the global mesh, move batches in and out.

JAX is multi-controller: every host runs this same program, sees only its own devices as
addressable, and must call `jax.distributed.initialize` before anything touches a backend. This
module wraps that call so a run is configured the same way everywhere:

    from moe_jax.parallel import distributed
    distributed.initialize()            # args, else MOE_JAX_* env vars, else auto-detection
    mesh = distributed.global_mesh(data=-1, expert=4)
    x = distributed.host_local_to_global(local_batch, mesh)     # each host: its rows only
    y_np = distributed.global_to_host(y)                          # whole array on every host

Where the settings come from, first hit wins:
  1. the arguments of `initialize`;
  2. env vars MOE_JAX_COORDINATOR (host:port of process 0), MOE_JAX_NUM_PROCESSES,
     MOE_JAX_PROCESS_ID;
  3. JAX's own auto-detection (Cloud TPU pods, GKE TPU, SLURM, Open MPI, Kubernetes jobs,
     JAX_COORDINATOR_ADDRESS): with nothing set in 1 or 2 and such a cluster detected,
     `jax.distributed.initialize()` is called with no arguments and fills everything in.
With none of these, the run is single-process and `initialize` does nothing (returns False), so
the same script runs unchanged on a laptop.

On the CPU backend, cross-process collectives need an implementation chosen before the backend
is created (`jax_cpu_collectives_implementation`, read when the CPU client is built, i.e. at the
first jax.devices()/computation after initialisation); we set it to 'gloo' (TCP, no extra
install) unless told otherwise. It is ignored by GPU/TPU backends.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.parallel.mesh import BATCH_AXES, make_mesh

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "MOE_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "MOE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MOE_JAX_PROCESS_ID"
CPU_COLLECTIVES = ("gloo", "mpi")


def _is_initialized() -> bool:
  fn = getattr(jax.distributed, "is_initialized", None)
  if fn is not None:
    return bool(fn())
  from jax._src import distributed as _dist   # older jax: no public is_initialized
  return _dist.global_state.client is not None


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def _detected_cluster() -> str | None:
  """Name of the cluster environment JAX would auto-detect, or None (best effort: private API,
  so an unknown JAX layout reads as 'none detected' rather than an error)."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  try:
    from jax._src import clusters
    with warnings.catch_warnings():   # e.g. "Kubernetes detected but no `kubernetes` package"
      warnings.simplefilter("ignore")
      for env in clusters.ClusterEnv._cluster_types:
        if not getattr(env, "opt_in_only_method", False) and env.is_env_present():
          return getattr(env, "name", "") or env.__name__
  except Exception as e:  # noqa: BLE001 -- detection must never crash a single-process run
    logger.debug("cluster auto-detection unavailable: %s", e)
  return None


def _parse_int(value: Any, source: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    if isinstance(value, bool):
      raise ValueError
    if isinstance(value, str):
      return int(value.strip())
    if int(value) != value:
      raise ValueError
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"distributed: {source} must be an integer, got {value!r}") from None


def _check_address(address: str, source: str) -> str:
  host, sep, port = address.strip().rpartition(":")
  ok = bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
  if ok and ":" in host and not (host.startswith("[") and host.endswith("]")):
    ok = False   # a bare IPv6 address: the port is ambiguous
  if not ok:
    raise ValueError(f"distributed: {source} must look like host:port (e.g. 10.0.0.1:1234 or "
                     f"[::1]:1234, port 1-65535), got {address!r}")
  return address.strip()


def _settings(coordinator_address, num_processes, process_id):
  """(address, num_processes, process_id, where each came from), args over env vars."""
  def pick(arg, arg_name, env_name):
    if arg is not None:
      return arg, f"argument {arg_name}"
    if os.environ.get(env_name):
      return os.environ[env_name], f"env var {env_name}"
    return None, f"argument {arg_name} / env var {env_name}"

  address, address_src = pick(coordinator_address, "coordinator_address", ENV_COORDINATOR)
  num, num_src = pick(num_processes, "num_processes", ENV_NUM_PROCESSES)
  pid, pid_src = pick(process_id, "process_id", ENV_PROCESS_ID)
  num = _parse_int(num, num_src)
  pid = _parse_int(pid, pid_src)
  if address is not None:
    if not isinstance(address, str):
      raise ValueError(f"distributed: {address_src} must be a 'host:port' string, got "
                       f"{address!r}")
    address = _check_address(address, address_src)
  if num is not None and num < 1:
    raise ValueError(f"distributed: {num_src} must be >= 1, got {num}")
  if pid is not None and pid < 0:
    raise ValueError(f"distributed: {pid_src} must be >= 0, got {pid}")
  if num is not None and pid is not None and pid >= num:
    raise ValueError(f"distributed: {pid_src}={pid} must be in [0, {num}) ({num_src}={num})")
  return address, num, pid, (address_src, num_src, pid_src)


def is_multiprocess_configured(coordinator_address: str | None = None,
                               num_processes: int | None = None,
                               process_id: int | None = None) -> bool:
  """True if the arguments, the MOE_JAX_* env vars or a cluster JAX can auto-detect ask for a
  multi-process run (or one is already running)."""
  if _is_initialized():
    return True
  address, num, pid, _ = _settings(coordinator_address, num_processes, process_id)
  if (address, num, pid) != (None, None, None):
    return True
  return _detected_cluster() is not None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None,
               cpu_collectives: str | None = "gloo") -> bool:
  """Starts `jax.distributed` if a multi-process run is configured; returns whether it runs.

  Call it first thing, before any jax.devices()/computation. Settings come from the arguments,
  else MOE_JAX_COORDINATOR / MOE_JAX_NUM_PROCESSES / MOE_JAX_PROCESS_ID, else JAX's cluster
  auto-detection (TPU pods, SLURM, Open MPI, ...: `jax.distributed.initialize()` with no
  arguments). With none of them it is a no-op returning False (a plain single-process run).
  Values given explicitly may be partial only where a detected cluster fills in the rest.
  Calling it again once initialised does nothing and returns True. `cpu_collectives`
  ('gloo', 'mpi' or None to leave JAX's setting) picks the CPU backend's cross-process
  collectives; GPU/TPU backends ignore it.
  """
  if cpu_collectives is not None and cpu_collectives not in CPU_COLLECTIVES:
    raise ValueError(f"distributed: cpu_collectives must be one of "
                     f"{', '.join(CPU_COLLECTIVES)} or None, got {cpu_collectives!r}")
  address, num, pid, (address_src, num_src, pid_src) = _settings(
      coordinator_address, num_processes, process_id)
  if _is_initialized():
    _check_matches_running(num, pid, num_src, pid_src)
    return True
  explicit = (address, num, pid) != (None, None, None)
  cluster = None if explicit and None not in (address, num, pid) else _detected_cluster()
  if not explicit and cluster is None:
    logger.info("distributed: nothing configured and no cluster detected; single process")
    return False
  if explicit and cluster is None:
    missing = [src for value, src in ((address, address_src), (num, num_src), (pid, pid_src))
               if value is None]
    if missing:
      raise ValueError(f"distributed: a multi-process run needs all of coordinator address, "
                       f"number of processes and process id, and no cluster was detected to "
                       f"fill them in; missing: {'; '.join(missing)}")
  if _backends_initialized():
    raise RuntimeError("distributed: initialize() must run before any JAX call that starts a "
                       "backend (jax.devices(), device_put, any computation)")
  if cpu_collectives is not None:
    # Read when the CPU client is created (after this call), so setting it here is in time.
    try:
      jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    except AttributeError:   # a JAX without this option: keep its own CPU collectives
      logger.warning("distributed: this JAX has no jax_cpu_collectives_implementation option; "
                     "cpu_collectives=%r ignored", cpu_collectives)
  kwargs = {}
  if local_device_ids is not None:
    kwargs["local_device_ids"] = local_device_ids
  logger.info("distributed: initialising (coordinator=%s, processes=%s, id=%s, detected=%s)",
              address, num, pid, cluster)
  jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid,
                             **kwargs)
  return True


def _check_matches_running(num, pid, num_src, pid_src):
  if num is not None and num != jax.process_count():
    raise ValueError(f"distributed: already initialised with {jax.process_count()} processes, "
                     f"but {num_src}={num}")
  if pid is not None and pid != jax.process_index():
    raise ValueError(f"distributed: already initialised as process {jax.process_index()}, "
                     f"but {pid_src}={pid}")


def shutdown() -> None:
  """Stops `jax.distributed` (no-op when it is not running)."""
  jax.distributed.shutdown()


def global_mesh(data: int = -1, expert: int = 1, model: int = 1) -> Mesh:
  """The data/expert/model mesh over every process's devices (call `initialize` first).

  jax.devices() lists devices process by process, so the trailing axes (model, then expert) stay
  within a host where they fit, and 'data' spans hosts: expert all-to-alls remain intra-host.
  """
  return make_mesh(data=data, expert=expert, model=model)


def _sharding(mesh_or_sharding, spec) -> jax.sharding.Sharding:
  if isinstance(mesh_or_sharding, jax.sharding.Sharding):
    if spec is not None:
      raise ValueError("distributed: pass either a Sharding or a mesh and a spec, not both")
    return mesh_or_sharding
  if not isinstance(mesh_or_sharding, Mesh):
    raise ValueError(f"distributed: expected a Mesh or a Sharding, got "
                     f"{type(mesh_or_sharding).__name__}")
  return NamedSharding(mesh_or_sharding, P(BATCH_AXES) if spec is None else spec)


def host_local_to_global(x_local, mesh: Mesh | jax.sharding.Sharding, spec: P | None = None,
                         global_shape: Sequence[int] | None = None):
  """A global jax.Array (pytree of them) from each process's own slice of the data.

  Default spec: batch (leading axis) over ('data', 'expert'). Each process passes the rows its
  devices own, in order: for the default spec with 'data' spanning hosts that is a contiguous
  block of B / process_count rows, process p holding block p (see
  `jax.make_array_from_process_local_data` for other layouts).
  """
  sharding = _sharding(mesh, spec)
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(
          sharding, np.asarray(a), None if global_shape is None else tuple(global_shape)),
      x_local)


def host_full_to_global(x_full, mesh: Mesh | jax.sharding.Sharding, spec: P | None = None):
  """A global jax.Array (pytree of them) from a full copy that every process holds (e.g. params
  built from the same seed everywhere); each process copies only the shards its devices own.
  Default spec: replicated."""
  sharding = _sharding(mesh, P() if spec is None else spec)

  def one(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
  return jax.tree.map(one, x_full)


def global_to_host(x):
  """The whole value of a global jax.Array (pytree of them) as numpy, on every process.

  A collective: every process must call it, in the same order."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, x)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(x, tiled=True)
