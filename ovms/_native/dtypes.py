"""KServe datatypes, their numpy dtypes, and the checked element count of a shape.

Shared by both tensor-codec twins and by ``ovms.types``: the native layer depends on nothing above it. Both
lookups refuse bad input with CodecError (the error the protocols turn into OVMS's messages), never KeyError
or OverflowError, which would reach a client as an internal error.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ovms._native.codec_errors import CodecError

# KServe v2 datatype -> numpy dtype. Fixed-size types are little-endian on the wire (spec: "Tensor Data").
NUMPY_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# JSON "data" nested deeper than this is refused (a tensor has a handful of dimensions; deep nesting only
# costs stack: Python's recursion limit is 1000).
MAX_DATA_DEPTH = 64

# No tensor has more elements: 2^40 (a terabyte of UINT8); larger counts overflow the native code's sizes.
MAX_ELEMENTS = 1 << 40


def numpy_dtype(datatype: Any) -> np.dtype:
    dtype = NUMPY_DTYPE.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise CodecError(f"Unknown datatype: {datatype!r}; use one of {', '.join(NUMPY_DTYPE)}")
    return dtype


def element_count(shape: Sequence[Any]) -> int:
    """The number of elements of a tensor of ``shape``; a negative, non-integer or too large shape is refused."""
    count = 1
    for dim in shape:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 0:
            raise CodecError(f"shape {list(shape)} has a dimension that is not a non-negative integer")
        count *= int(dim)
        if count > MAX_ELEMENTS:
            raise CodecError(f"shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    return count
