"""``pyovms.Tensor``, the readable twin (see ``pytensor_c.pyx``).

A pure-Python class exports the buffer protocol only from Python 3.12 (PEP 688 ``__buffer__``). On 3.11 this twin
still serves ``bytes(t)``, ``numpy.array(t)`` and ``t.data``, but not ``memoryview(t)``; the compiled twin does all.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ovms._native.pyformat import datatype_of_format, source_view, wire_view


class Tensor:
    """A named tensor passed to and returned from ``OvmsPythonModel.execute``.

    ``Tensor(name, data, shape=None, datatype=None)``: ``data`` is anything with the buffer protocol; ``shape``
    and ``datatype`` default to the buffer's and only override the attributes, never the data.
    """

    __slots__ = ("name", "datatype", "shape", "_view")

    def __init__(self, name: str, data: Any, shape: Sequence[int] | None = None,
                 datatype: str | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"pyovms.Tensor name must be a string, got {type(name).__name__}")
        view = source_view(data)
        self._set(name, view, shape, datatype)

    def _set(self, name: str, view: memoryview, shape, datatype) -> None:
        self.name = name
        self._view = view.toreadonly()
        self.shape = tuple(int(d) for d in (view.shape if shape is None else shape))
        self.datatype = datatype_of_format(view.format, view.itemsize) if datatype is None else str(datatype)

    @classmethod
    def _from_wire(cls, name: str, raw: Any, shape: Sequence[int], datatype: str) -> "Tensor":
        """A tensor of a request input: its wire bytes (not copied), with the request's shape and datatype."""
        tensor = cls.__new__(cls)
        tensor._set(name, wire_view(raw, shape, datatype), shape, datatype)
        return tensor

    @property
    def data(self) -> memoryview:
        return self._view

    @property
    def size(self) -> int:
        """Size of the data buffer in bytes."""
        return self._view.nbytes

    def __buffer__(self, flags: int) -> memoryview:  # Python 3.12+
        return self._view

    def __bytes__(self) -> bytes:
        return self._view.tobytes()

    def __array__(self, dtype=None, copy=None):
        array = np.asarray(self._view)
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"pyovms.Tensor(name={self.name!r}, datatype={self.datatype!r}, shape={self.shape})"
