"""Tensor codec, pure-Python reference twin of ``tensorcodec_c``.

Formats (KServe v2 / Open Inference Protocol):
- raw: fixed-size elements little-endian, row-major; BYTES elements each prefixed by a 4-byte little-endian
  length ("raw_input_contents" and the HTTP binary-data extension).
- typed contents: one flat sequence of Python values per tensor (``fp32_contents`` ...).
- JSON ``data``: a flat or nested (row-major) list; BYTES elements are strings.
"""
from __future__ import annotations

import json
import math
import struct
from typing import Any, Sequence

import numpy as np

from ovms._native.codec_errors import CodecError
from ovms._native.dtypes import MAX_DATA_DEPTH, element_count, numpy_dtype

_LENGTH = struct.Struct("<I")


def unpack_bytes(buffer: Any) -> list[bytes]:
    """Split a length-prefixed BYTES buffer into its elements."""
    view = memoryview(buffer).cast("B")
    items = []
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 4:
            raise CodecError(f"truncated BYTES length prefix at offset {offset} of {end}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if length > end - offset:
            raise CodecError(f"BYTES element of {length} bytes at offset {offset - 4} runs past the end ({end})")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    return items


def pack_bytes(items: Sequence[Any]) -> bytes:
    """Join elements (bytes, or str encoded as UTF-8) with 4-byte little-endian length prefixes."""
    parts = []
    for item in items:
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _bytes_array(items: list, shape: Sequence[int]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def raw_to_array(buffer: Any, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode raw wire bytes into an array of ``shape`` (a zero-copy view for fixed-size types)."""
    count = element_count(shape)
    if datatype == "BYTES":
        items = unpack_bytes(buffer)
        if len(items) != count:
            raise CodecError(f"Expected: {count} BYTES elements; Actual: {len(items)}")
        return _bytes_array(items, shape)
    dtype = numpy_dtype(datatype)
    size = memoryview(buffer).nbytes
    if size != count * dtype.itemsize:
        raise CodecError(f"Expected: {count * dtype.itemsize} bytes; Actual: {size} bytes")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def array_to_raw(array: np.ndarray, datatype: str) -> bytes:
    """Encode an array as raw wire bytes."""
    if datatype == "BYTES":
        return pack_bytes(array.reshape(-1).tolist())
    dtype = numpy_dtype(datatype)
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def contents_to_array(values: Sequence[Any], datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode typed contents (a flat sequence of values) into an array of ``shape``."""
    count = element_count(shape)
    if len(values) != count:
        raise CodecError(f"Expected: {count} values; Actual: {len(values)}")
    try:
        if datatype == "BYTES":
            return _bytes_array([bytes(v) for v in values], shape)
        return np.array(values, dtype=numpy_dtype(datatype)).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:  # CodecError is a ValueError: kept as it is
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"{datatype} values could not be read: {exc}") from None


def array_to_contents(array: np.ndarray, datatype: str) -> list:
    """Encode an array as a flat list of Python values for a typed contents field."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [v.encode() if isinstance(v, str) else bytes(v) for v in flat.tolist()]
    return flat.tolist()


def _flatten(data: Any, out: list, depth: int = 1) -> None:
    if depth > MAX_DATA_DEPTH:
        raise CodecError(f"data is nested deeper than {MAX_DATA_DEPTH} levels")
    for item in data:
        if isinstance(item, list):
            _flatten(item, out, depth + 1)
        else:
            out.append(item)


def json_to_array(data: Any, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode a KServe JSON ``data`` value (flat or nested list) into an array of ``shape``."""
    if not isinstance(data, list):
        raise CodecError("data must be a JSON array")
    flat: list = []
    _flatten(data, flat)
    count = element_count(shape)
    if len(flat) != count:
        raise CodecError(f"Expected: {count} values; Actual: {len(flat)}")
    if datatype == "BYTES":
        items = []
        for value in flat:
            if not isinstance(value, str):
                raise CodecError(f"BYTES data must be strings, got {type(value).__name__}")
            items.append(value.encode())
        return _bytes_array(items, shape)
    kind = numpy_dtype(datatype).kind
    for value in flat:
        if isinstance(value, bool):
            if kind != "b":
                raise CodecError(f"{datatype} data must be numbers, got a boolean")
        elif isinstance(value, int):
            if kind == "b":
                raise CodecError("BOOL data must be true or false")
        elif isinstance(value, float):
            if kind != "f":
                raise CodecError(f"{datatype} data must be integers, got {value!r}")
        else:
            raise CodecError(f"{datatype} data must be numbers, got {type(value).__name__}")
    try:
        return np.array(flat, dtype=numpy_dtype(datatype)).reshape(shape)
    except OverflowError as exc:
        raise CodecError(f"value out of range for {datatype}: {exc}") from None


def _float_json(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def array_to_json(array: np.ndarray, datatype: str) -> str:
    """Encode an array as the JSON text of its flat ``data`` list (BYTES as UTF-8 strings)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return json.dumps([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat.tolist()])
    if flat.dtype.kind == "f":
        return "[" + ",".join(_float_json(v) for v in flat.tolist()) + "]"
    if flat.dtype.kind == "b":
        return "[" + ",".join("true" if v else "false" for v in flat.tolist()) + "]"
    return "[" + ",".join(str(v) for v in flat.tolist()) + "]"
