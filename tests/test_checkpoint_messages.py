"""The one-line reasons checkpoint errors give: the OS error when there is one, never a
TensorStore spec or its pybind11 details."""
import errno

from moe_jax.checkpoint import short_reason


def test_os_errors_in_the_chain_win():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/ckpt/8")
    except OSError as inner:
      raise RuntimeError("commit failed") from inner
  except RuntimeError as e:
    assert short_reason(e) == "No space left on device: /ckpt/8"
  assert short_reason(ValueError("... DATA_LOSS: Read-only file system ...")) == (
      "Read-only file system")


def test_tensorstore_details_are_cut():
  # What Orbax raised for an overwritten chunk (jax 0.10 / orbax 0.11), shortened.
  message = ("Encountered error while reading array index: (slice(0, 128, 1), slice(0, 128, "
             "1)). See full TensorStore details: <bound method pybind11_detail_function_record"
             "_v1_system_libstdcpp_gxx_abi_1xxx_use_cxx11 of ...>")
  assert short_reason(Exception(message)) == "Exception: Encountered error while reading array"
  spec = 'OUT_OF_RANGE: bad chunk [tensorstore_spec=\'{\n  "driver": "zarr"\n}\']'
  assert short_reason(ValueError(spec)) == "ValueError: OUT_OF_RANGE: bad chunk"
  assert len(short_reason(ValueError("x" * 1000))) < 230
