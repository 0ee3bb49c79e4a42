"""The device mesh: named axes `data`, `expert`, `model`, sized from config.

    mesh = make_mesh(data=-1, expert=4, model=1)   # -1: whatever devices are left

Tokens are split over ('data', 'expert') — the expert axis doubles as a data axis outside the
expert FFNs, as in GShard/Switch — and replicated over 'model'; experts are split over 'expert'
and, inside each expert, the hidden dim F over 'model' (tensor parallelism).

The axes are `Auto` (not `Explicit`, jax>=0.10's default for make_mesh): shard_map then
reshards its inputs to the in_specs instead of requiring callers to pre-shard every array.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "expert", "model")
BATCH_AXES = ("data", "expert")   # the axes tokens are split over


def resolve_axis_sizes(sizes: dict[str, int], num_devices: int) -> dict[str, int]:
  """Fills in a single -1 and checks that the sizes multiply to the device count."""
  for name in sizes:
    if name not in AXES:
      raise ValueError(f"mesh: unknown axis {name!r}; allowed: {', '.join(AXES)}")
  sizes = {name: int(sizes.get(name, 1)) for name in AXES}
  bad = [f"{n}={s}" for n, s in sizes.items() if s == 0 or s < -1]
  if bad:
    raise ValueError(f"mesh: axis sizes must be positive or -1 (the rest); got {', '.join(bad)}")
  free = [n for n, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {', '.join(free)}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh: {num_devices} devices cannot be split into "
                       f"{_describe(sizes)}: {fixed} does not divide {num_devices}")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh: {_describe(sizes)} needs {fixed} devices, but there are "
                     f"{num_devices}")
  return sizes


def _describe(sizes):
  return " x ".join(f"{n}={s}" for n, s in sizes.items())


def make_mesh(data: int = -1, expert: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over `devices` (default: all devices of all processes) with axes data/expert/model.

  Uses jax.make_mesh's device order (ICI/NVLink-aware on TPU/GPU) when all devices are used.
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = resolve_axis_sizes({"data": data, "expert": expert, "model": model}, len(devices))
  shape = tuple(sizes[n] for n in AXES)
  axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
  if len(devices) == len(jax.devices()):
    return jax.make_mesh(shape, AXES, axis_types=axis_types)
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=axis_types)


def axis_size(mesh: Mesh | None, name: str) -> int:
  return 1 if mesh is None else int(mesh.shape.get(name, 1))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ('data', 'expert'); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


# Logical axis name -> mesh axis (None: replicated). One table for every param in moe_jax.
LOGICAL_RULES: dict[str, str | None] = {
    "batch": BATCH_AXES,
    "expert": "expert",
    "mlp": "model",
    "heads": "model",
    "embed": None,
    "vocab": None,
}


def logical_to_spec(logical_axes: Sequence[str | None]) -> P:
  """PartitionSpec for an array whose axes have these logical names (unknown -> error)."""
  out = []
  for name in logical_axes:
    if name is not None and name not in LOGICAL_RULES:
      raise ValueError(f"no sharding rule for logical axis {name!r}; known: "
                       f"{', '.join(sorted(LOGICAL_RULES))}")
    out.append(None if name is None else LOGICAL_RULES[name])
  return P(*out)


# Params carry logical axis names as NNX's `out_sharding` metadata (its name since flax
# 0.12.4; 0.12.0-0.12.3 called it `sharding_names`, which 0.12.4+ still accept with a
# DeprecationWarning). With `sharding_rules` alongside, nnx.get_partition_spec maps the names to
# mesh axes by our one rules table, as the layer's shard_map does.
_SHARDING_RULES = tuple(LOGICAL_RULES.items())


def sharded_param(value, logical_axes, mesh: Mesh | None) -> nnx.Param:
  """An nnx.Param annotated with logical axis names (mapped to mesh axes by LOGICAL_RULES).

  Eager sharding (flax's default) needs a mesh to place the value: without one, creating an
  annotated Variable raises, so the annotation is then metadata only.
  """
  return nnx.Param(value, out_sharding=tuple(logical_axes), sharding_rules=_SHARDING_RULES,
                   eager_sharding=mesh is not None, **({} if mesh is None else {"mesh": mesh}))
