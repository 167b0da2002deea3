"""``pyovms.Tensor`` twins: OVMS's documented attributes and datatype mapping, the buffer protocol (compiled twin,
and the pure one on Python 3.12+), request tensors kept as their wire bytes; and the native build guard."""
from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ovms._native import is_native, load
from tests.twins import PURE_RUN, twin_params

TWINS = twin_params("pytensor")
PURE_BUFFERS = sys.version_info >= (3, 12)  # the pure twin exports buffers through PEP 688 __buffer__


def tensor_class(pure: bool):
    return load("pytensor", pure=pure).Tensor


def test_native_build_loaded():
    if PURE_RUN:
        assert not is_native("pytensor")
    else:
        assert is_native("pytensor"), "ovms._native.pytensor_c did not import: run `make build`"


def test_pyovms_is_the_selected_twin():
    import pyovms

    assert pyovms.Tensor is load("pytensor").Tensor


@pytest.mark.parametrize("pure", TWINS)
def test_bytes_output_as_in_the_quickstart(pure):
    tensor = tensor_class(pure)("uppercase", "MAKE THIS TEXT UPPERCASE.".encode())
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.size) == ("uppercase", "UINT8", (25,), 25)
    assert bytes(tensor) == b"MAKE THIS TEXT UPPERCASE."
    assert tensor.data.tobytes() == b"MAKE THIS TEXT UPPERCASE."
    assert tensor.data.format == "B"


@pytest.mark.parametrize("pure", TWINS)
@pytest.mark.parametrize("dtype, datatype", [(np.bool_, "BOOL"), (np.uint8, "UINT8"), (np.uint16, "UINT16"),
                                             (np.uint32, "UINT32"), (np.uint64, "UINT64"), (np.int8, "INT8"),
                                             (np.int16, "INT16"), (np.int32, "INT32"), (np.int64, "INT64"),
                                             (np.dtype("q"), "INT64"), (np.float16, "FP16"), (np.float32, "FP32"),
                                             (np.float64, "FP64")])
def test_datatype_from_the_buffer_format(pure, dtype, datatype):
    array = np.arange(6).astype(dtype).reshape(2, 3)
    tensor = tensor_class(pure)("x", array)
    assert (tensor.datatype, tensor.shape, tensor.size) == (datatype, (2, 3), array.nbytes)
    np.testing.assert_array_equal(np.array(tensor), array)
    assert np.array(tensor).dtype == array.dtype


@pytest.mark.parametrize("pure", TWINS)
def test_shape_and_datatype_override_only_the_attributes(pure):
    tensor = tensor_class(pure)("s", np.array([1, 2], dtype=np.int32), shape=[1, 2, 1], datatype="MY_TYPE")
    assert (tensor.shape, tensor.datatype) == ((1, 2, 1), "MY_TYPE")
    assert tensor.data.shape == (2,) and tensor.data.format == "i"


@pytest.mark.parametrize("pure", TWINS)
def test_unknown_format_becomes_the_datatype(pure):
    tensor = tensor_class(pure)("t", np.array(["ab", "cd"]))  # numpy unicode: format "2w"
    assert tensor.datatype == memoryview(np.array(["ab", "cd"])).format


@pytest.mark.parametrize("pure", TWINS)
def test_request_bytes_tensor_keeps_its_wire_bytes(pure):
    wire = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 2) + b"de"  # BYTES: length-prefixed elements
    tensor = tensor_class(pure)._from_wire("text", wire, (2,), "BYTES")
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.size) == ("text", "BYTES", (2,), len(wire))
    assert bytes(tensor) == wire and tensor.data.format == "B"


@pytest.mark.parametrize("pure", TWINS)
def test_request_fp32_tensor_is_typed_and_shaped(pure):
    array = np.arange(6, dtype="<f4").reshape(3, 2)
    tensor = tensor_class(pure)._from_wire("x", array.tobytes(), (3, 2), "FP32")
    assert (tensor.datatype, tensor.shape, tensor.data.format, tensor.data.shape) == ("FP32", (3, 2), "f", (3, 2))
    np.testing.assert_array_equal(np.array(tensor), array)


@pytest.mark.parametrize("pure", TWINS)
def test_request_tensor_with_the_wrong_byte_count_is_refused(pure):
    with pytest.raises(ValueError, match="expected 24 bytes for FP32 of shape \\[3, 2\\], got 20"):
        tensor_class(pure)._from_wire("x", bytes(20), (3, 2), "FP32")


@pytest.mark.parametrize("pure", TWINS)
def test_data_without_the_buffer_protocol_is_refused_by_name(pure):
    with pytest.raises(TypeError, match="must support the buffer protocol .* got list"):
        tensor_class(pure)("x", [1, 2, 3])


@pytest.mark.parametrize("pure", TWINS)
def test_strided_data_is_made_contiguous(pure):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
    tensor = tensor_class(pure)("x", array)
    assert tensor.shape == (3, 2)
    np.testing.assert_array_equal(np.array(tensor), array)


@pytest.mark.parametrize("pure", TWINS)
def test_tensor_is_read_only(pure):
    tensor = tensor_class(pure)("x", bytearray(b"abc"))
    assert tensor.data.readonly
    if PURE_BUFFERS or not pure:
        view = memoryview(tensor)
        assert view.readonly and view.tobytes() == b"abc"
        with pytest.raises(TypeError):
            view[0] = 1


@pytest.mark.skipif(PURE_RUN and sys.version_info < (3, 12), reason="pure twin exports buffers from Python 3.12")
@pytest.mark.parametrize("pure", [p for p in TWINS if p.values[0] is False or sys.version_info >= (3, 12)])
def test_buffer_protocol_consumers(pure):
    array = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = tensor_class(pure)("x", array)
    view = memoryview(tensor)
    assert (view.format, view.shape, view.itemsize, view.nbytes) == ("f", (2, 4), 4, 32)
    np.testing.assert_array_equal(np.frombuffer(tensor, dtype=np.float32), array.ravel())
    np.testing.assert_array_equal(np.asarray(memoryview(tensor)), array)
    nested = tensor_class(pure)("y", tensor)  # a Tensor is itself valid data
    assert (nested.datatype, nested.shape) == ("FP32", (2, 4))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64]),
                  hnp.array_shapes(max_dims=3, max_side=4)))
def test_wire_round_trip_equals_for_both_twins(array):
    from ovms._native.pyformat import datatype_of_format

    datatype = datatype_of_format(memoryview(array).format, array.itemsize)
    for param in TWINS:
        tensor = tensor_class(param.values[0])._from_wire("x", array.tobytes(), array.shape, datatype)
        assert bytes(tensor) == array.tobytes()
        again = tensor_class(param.values[0])("y", np.array(tensor))
        assert (again.datatype, again.shape) == (datatype, array.shape)


@pytest.mark.parametrize("pure", TWINS)
def test_tensors_in_reference_cycles_are_collected_cleanly(pure):
    """A Tensor caught in a cycle (a traceback's frame, a dict holding itself) is collected without touching its
    buffer's export: the compiled twin once raised "BufferError: memoryview has 1 exported buffer" there and then
    crashed the process."""
    import gc

    unraisable = []
    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        for _ in range(200):
            holder: dict = {"tensor": tensor_class(pure)._from_wire("x", bytes(range(16)), (4,), "FP32")}
            holder["self"], holder["view"] = holder, holder["tensor"].data
            holder["nested"] = tensor_class(pure)("y", holder["tensor"].data)
            try:
                raise ValueError(holder)
            except ValueError as exc:
                holder["error"] = exc
            del holder
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert unraisable == []
