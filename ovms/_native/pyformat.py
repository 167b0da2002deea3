"""What both ``pyovms.Tensor`` twins share: KServe datatype <-> buffer format, and the buffers they wrap.

OVMS documents the mapping (docs/python_support/reference.md, "Datatype considerations"): a tensor from a request
gets the struct format character of its KServe datatype; a tensor built in ``execute`` gets the datatype of its
buffer's format, or the format itself when no datatype fits (``datatype=`` overrides either). BYTES and unknown
datatypes are 1-D raw binary ("B") buffers whose ``shape`` is the one the request gave.

One deliberate difference: OVMS maps the format "l" to INT32 whatever its size, so an ``np.int64`` array (format
"l" on 64-bit Linux) goes out as INT32 with 8-byte items (its CLIP demo works around it with ``np.dtype("q")``).
Here "l" and "L" map by item size: 8 bytes are INT64 / UINT64.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FORMAT_OF_DATATYPE = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b",
                      "INT16": "h", "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}
_DATATYPE_OF_FORMAT = {fmt: datatype for datatype, fmt in FORMAT_OF_DATATYPE.items()}
_DTYPE_OF_DATATYPE = {datatype: np.dtype(fmt) for datatype, fmt in FORMAT_OF_DATATYPE.items()}


def datatype_of_format(fmt: str, itemsize: int) -> str:
    """The KServe datatype of a buffer format ("<f" -> FP32, "l" of 8 bytes -> INT64), or the format itself."""
    bare = fmt[1:] if fmt[:1] in ("@", "=", "<") else fmt
    if bare in ("l", "L"):
        signed = bare == "l"
        return {4: "INT32", 8: "INT64"}[itemsize] if signed else {4: "UINT32", 8: "UINT64"}[itemsize]
    return _DATATYPE_OF_FORMAT.get(bare, fmt)


def source_view(data: Any) -> memoryview:
    """A C-contiguous memoryview of ``data`` (anything with the buffer protocol); a strided one is copied."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"pyovms.Tensor data must support the buffer protocol (bytes, bytearray, memoryview, "
                        f"numpy.ndarray, pyovms.Tensor), got {type(data).__name__}") from None
    if not view.c_contiguous:
        view = memoryview(np.ascontiguousarray(np.asarray(view)))
    return view


def wire_view(raw: Any, shape: Sequence[int], datatype: str) -> memoryview:
    """The buffer of a tensor from a request: typed and shaped for known datatypes, raw bytes otherwise."""
    view = memoryview(raw).cast("B") if not isinstance(raw, memoryview) or raw.format != "B" else raw
    dtype = _DTYPE_OF_DATATYPE.get(datatype)
    if dtype is None:  # BYTES (4-byte length prefixed elements) and custom datatypes: raw binary, as OVMS
        return view
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != view.nbytes:
        raise ValueError(f"expected {count * dtype.itemsize} bytes for {datatype} of shape {list(shape)}, "
                         f"got {view.nbytes}")
    return memoryview(np.frombuffer(view, dtype=dtype).reshape(tuple(shape)))
