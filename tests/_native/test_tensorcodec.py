"""The tensor codec twins: round trips, native == pure, error messages; and the native build guard."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ovms._native import is_native, load
from ovms._native.codec_errors import CodecError

PURE = load("tensorcodec", pure=True)
TWINS = [pytest.param(PURE, id="pure")]
try:
    NATIVE = load("tensorcodec", pure=False)
    TWINS.append(pytest.param(NATIVE, id="native"))
except ImportError:
    NATIVE = None

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
DTYPES = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def test_native_build_loaded():
    """A build with extensions must use them; only OVMS_NO_EXTENSIONS=1 allows the pure twin."""
    if os.environ.get("OVMS_NO_EXTENSIONS") == "1":
        assert not is_native("tensorcodec")
    else:
        assert NATIVE is not None, "ovms._native.tensorcodec_c did not import: run `make build`"
        assert is_native("tensorcodec")


def arrays(datatype: str):
    return hnp.arrays(np.dtype(DTYPES[datatype]), hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                      elements=hnp.from_dtype(np.dtype(DTYPES[datatype]), allow_nan=False))


byte_items = st.lists(st.binary(max_size=40), max_size=20)


@pytest.mark.parametrize("codec", TWINS)
@given(items=byte_items)
@settings(max_examples=60, deadline=None)
def test_bytes_round_trip(codec, items):
    packed = codec.pack_bytes(items)
    assert len(packed) == sum(4 + len(i) for i in items)
    assert codec.unpack_bytes(packed) == items
    assert codec.unpack_bytes(memoryview(packed)) == items
    assert codec.unpack_bytes(bytearray(packed)) == items


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize("datatype", NUMERIC)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_raw_and_json_round_trip(codec, datatype, data):
    array = data.draw(arrays(datatype))
    raw = codec.array_to_raw(array, datatype)
    assert np.array_equal(codec.raw_to_array(raw, datatype, array.shape), array)
    text = codec.array_to_json(array, datatype)
    decoded = codec.json_to_array(json.loads(text), datatype, array.shape)
    assert decoded.dtype == np.dtype(DTYPES[datatype])
    assert np.array_equal(decoded, array)
    contents = codec.array_to_contents(array, datatype)
    assert np.array_equal(codec.contents_to_array(contents, datatype, array.shape), array)


@pytest.mark.skipif(NATIVE is None, reason="covered by test_native_build_loaded")
@pytest.mark.parametrize("datatype", NUMERIC)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_native_equals_pure(datatype, data):
    array = data.draw(arrays(datatype))
    # The same values; FP32 digits may differ ("0.1" vs "0.10000000149011612": both are the same float32).
    dtype = np.dtype(DTYPES[datatype])
    assert np.array_equal(np.array(json.loads(NATIVE.array_to_json(array, datatype)), dtype=dtype),
                          np.array(json.loads(PURE.array_to_json(array, datatype)), dtype=dtype))
    assert NATIVE.array_to_raw(array, datatype) == PURE.array_to_raw(array, datatype)
    nested = array.tolist()
    assert np.array_equal(NATIVE.json_to_array(nested, datatype, array.shape),
                          PURE.json_to_array(nested, datatype, array.shape))


@pytest.mark.parametrize("codec", TWINS)
def test_nested_and_flat_json(codec):
    flat = codec.json_to_array([1, 2, 3, 4, 5, 6], "INT32", (2, 3))
    nested = codec.json_to_array([[1, 2, 3], [4, 5, 6]], "INT32", (2, 3))
    assert np.array_equal(flat, nested) and flat.shape == (2, 3)
    assert codec.array_to_json(np.array([[1.5, np.nan], [np.inf, -np.inf]]), "FP64") == \
        "[1.5,NaN,Infinity,-Infinity]"
    strings = codec.json_to_array(["zażółć", "🙂"], "BYTES", (2,))
    assert strings.tolist() == ["zażółć".encode(), "🙂".encode()]
    assert json.loads(codec.array_to_json(strings, "BYTES")) == ["zażółć", "🙂"]


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize("buffer, message", [
    (b"\x05\x00\x00\x00ab", "BYTES element of 5 bytes at offset 0 runs past the end (6)"),
    (b"\x01\x00\x00\x00a\x02\x00", "truncated BYTES length prefix at offset 5 of 7"),
])
def test_truncated_bytes_rejected(codec, buffer, message):
    with pytest.raises(CodecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        codec.unpack_bytes(buffer)


@pytest.mark.parametrize("codec", TWINS)
def test_wrong_sizes_and_types_rejected(codec):
    with pytest.raises(CodecError, match="Expected: 64 bytes; Actual: 60 bytes"):
        codec.raw_to_array(b"\0" * 60, "FP32", (1, 16))
    with pytest.raises(CodecError, match="Expected: 6 values; Actual: 5"):
        codec.json_to_array([1, 2, 3, 4, 5], "INT32", (2, 3))
    with pytest.raises(CodecError, match="INT32 data must be integers, got 2.5"):
        codec.json_to_array([1, 2.5], "INT32", (2,))
    with pytest.raises(CodecError, match="BYTES data must be strings"):
        codec.json_to_array([1], "BYTES", (1,))
    with pytest.raises(CodecError, match="BOOL data must be true or false"):
        codec.json_to_array([1], "BOOL", (1,))
    with pytest.raises(CodecError, match="Expected: 2 BYTES elements; Actual: 1"):
        codec.raw_to_array(codec.pack_bytes([b"x"]), "BYTES", (2,))
    with pytest.raises(CodecError, match="out of range for UINT8"):
        codec.json_to_array([300], "UINT8", (1,))


@pytest.mark.parametrize("codec", TWINS)
def test_raw_to_array_is_zero_copy(codec):
    raw = np.arange(16, dtype="<i4").tobytes()
    array = codec.raw_to_array(raw, "INT32", (1, 16))
    assert array.base is not None and not array.flags.owndata
    assert array[0, 15] == 15
