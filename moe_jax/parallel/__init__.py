"""Device meshes, expert parallelism and multi-host set-up."""
from moe_jax.parallel.mesh import (AXES, BATCH_AXES, LOGICAL_RULES, axis_size, batch_sharding,
                                   logical_to_spec, make_mesh)

__all__ = ["AXES", "BATCH_AXES", "LOGICAL_RULES", "axis_size", "batch_sharding", "logical_to_spec",
           "make_mesh"]
