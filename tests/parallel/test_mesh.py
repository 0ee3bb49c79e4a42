"""Mesh construction from config sizes, and its errors."""
import jax
import pytest

from moe_jax.parallel import logical_to_spec, make_mesh
from moe_jax.parallel.mesh import resolve_axis_sizes


def test_minus_one_takes_the_rest():
  assert resolve_axis_sizes({"data": -1, "expert": 4}, 8) == {"data": 2, "expert": 4, "model": 1}
  assert resolve_axis_sizes({"expert": -1, "model": 2}, 8) == {"data": 1, "expert": 4, "model": 2}
  mesh = make_mesh(data=-1, expert=4)
  assert dict(mesh.shape) == {"data": 2, "expert": 4, "model": 1}
  assert mesh.devices.size == jax.device_count() == 8


def test_mesh_on_a_subset_of_devices():
  mesh = make_mesh(data=1, expert=4, devices=jax.devices()[:4])
  assert dict(mesh.shape) == {"data": 1, "expert": 4, "model": 1}


@pytest.mark.parametrize("sizes, match", [
    ({"data": 3, "expert": 4}, r"data=3 x expert=4 x model=1 needs 12 devices, but there are 8"),
    ({"data": -1, "expert": 3}, r"3 does not divide 8"),
    ({"data": -1, "expert": -1}, r"only one axis may be -1"),
    ({"data": 0}, r"positive or -1.*data=0"),
    ({"pipeline": 2}, r"unknown axis 'pipeline'"),
])
def test_bad_mesh_sizes_name_the_axes(sizes, match):
  with pytest.raises(ValueError, match=match):
    resolve_axis_sizes(sizes, 8)


def test_logical_rules():
  assert logical_to_spec(("expert", "embed", "mlp")) == jax.sharding.PartitionSpec(
      "expert", None, "model")
  with pytest.raises(ValueError, match="no sharding rule for logical axis 'pixels'"):
    logical_to_spec(("pixels",))
