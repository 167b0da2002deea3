"""Neutral core types shared by protocols, the data plane and backends.

A ``Tensor`` keeps the wire bytes it arrived with until a backend asks for an array (``np.frombuffer``, no
copy); arrays produced by backends are serialized straight from their buffers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ovms._native.dtypes import NUMPY_DTYPE, element_count  # noqa: F401 (re-exported)

DATATYPE_OF: dict[np.dtype, str] = {dtype: name for name, dtype in NUMPY_DTYPE.items()}
DATATYPE_OF[np.dtype(np.bytes_)] = "BYTES"


def datatype_of(array: np.ndarray) -> str:
    """KServe datatype name of a numpy array (strings and bytes map to BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    return DATATYPE_OF[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]


@dataclasses.dataclass(slots=True)
class TensorSpec:
    """Name, datatype and shape of a servable input or output; -1 marks a dynamic dimension.

    ``layout``: how a client lays the tensor out (e.g. "NHWC"), where the backend knows it; binary image inputs
    follow it.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    layout: str | None = None


class Tensor:
    """A named tensor; holds either wire bytes (``raw``) or a decoded array until asked.

    ``raw`` is any buffer (bytes, memoryview); for BYTES it holds 4-byte length-prefixed elements.
    """

    __slots__ = ("name", "datatype", "shape", "raw", "_array", "parameters")

    def __init__(self, name: str, datatype: str, shape: Sequence[int], *, raw: Any = None,
                 array: np.ndarray | None = None, parameters: dict[str, Any] | None = None) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = tuple(shape)
        self.raw = raw
        self._array = array
        self.parameters = parameters

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> "Tensor":
        return cls(name, datatype_of(array), array.shape, array=array)

    @property
    def has_array(self) -> bool:
        return self._array is not None

    def as_array(self) -> np.ndarray:
        """The tensor as a numpy array (zero-copy view of the wire bytes for fixed-size types)."""
        if self._array is None:
            from ovms._native import load

            codec = load("tensorcodec")
            self._array = codec.raw_to_array(self.raw, self.datatype, self.shape)
        return self._array

    def as_raw(self) -> bytes | memoryview:
        """The tensor as wire bytes (little-endian, BYTES length-prefixed)."""
        if self.raw is None:
            from ovms._native import load

            self.raw = load("tensorcodec").array_to_raw(self._array, self.datatype)
        return self.raw

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.datatype}, {list(self.shape)})"


@dataclasses.dataclass(slots=True)
class InferRequest:
    """A transport-neutral inference request."""

    model_name: str
    model_version: int | None
    inputs: list[Tensor]
    id: str = ""
    requested_outputs: list[str] | None = None
    parameters: dict[str, Any] | None = None
    # The outputs feed another model in this process (a pipeline node): the backend hands them over as writable
    # numpy arrays, which the next model reads in place, instead of wire bytes.
    outputs_as_arrays: bool = False


@dataclasses.dataclass(slots=True)
class InferResponse:
    """A transport-neutral inference response."""

    model_name: str
    model_version: int
    outputs: list[Tensor]
    id: str = ""
    timings_us: tuple[float, float] | None = None  # (waited for an infer request, inference), from the backend
    parameters: dict[str, Any] | None = None  # response parameters (OVMS_MP_TIMESTAMP of a graph's packet)


@dataclasses.dataclass(slots=True)
class StreamContext:
    """What the requests of one ModelStreamInfer stream share: the next automatic packet timestamp (OVMS numbers a
    stream's requests 0, 1, 2, ... for a graph, unless a request sets OVMS_MP_TIMESTAMP; later ones follow it)."""

    next_timestamp: int = 0


@dataclasses.dataclass(slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
