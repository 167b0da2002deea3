# cython: language_level=3
"""``pyovms.Tensor`` with the buffer protocol on every Python version (the pure twin needs 3.12's __buffer__).

The tensor holds one read-only export of a C-contiguous memoryview for its lifetime and hands its fields to
every consumer (``memoryview(t)``, ``bytes(t)``, ``numpy.array(t)``), as OVMS's pybind11 class does.
"""
from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_ND, PyBUF_RECORDS_RO, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)

from ovms._native.pyformat import datatype_of_format, source_view, wire_view


cdef class Tensor:
    """A named tensor passed to and returned from ``OvmsPythonModel.execute``.

    ``Tensor(name, data, shape=None, datatype=None)``: ``data`` is anything with the buffer protocol; ``shape``
    and ``datatype`` default to the buffer's and only override the attributes, never the data.
    """

    cdef readonly str name
    cdef readonly str datatype
    cdef readonly tuple shape
    cdef object _view
    cdef Py_buffer _src
    cdef bint _held

    def __init__(self, name, data, shape=None, datatype=None):
        if not isinstance(name, str):
            raise TypeError(f"pyovms.Tensor name must be a string, got {type(name).__name__}")
        self._set(name, source_view(data), shape, datatype)

    cdef _set(self, str name, object view, object shape, object datatype):
        if self._held:
            PyBuffer_Release(&self._src)
            self._held = False
        self.name = name
        self._view = view.toreadonly()
        PyObject_GetBuffer(self._view, &self._src, PyBUF_RECORDS_RO)
        self._held = True
        self.shape = tuple(int(d) for d in (view.shape if shape is None else shape))
        self.datatype = datatype_of_format(view.format, view.itemsize) if datatype is None else str(datatype)

    @classmethod
    def _from_wire(cls, str name, raw, shape, str datatype):
        """A tensor of a request input: its wire bytes (not copied), with the request's shape and datatype."""
        cdef Tensor tensor = cls.__new__(cls)
        tensor._set(name, wire_view(raw, shape, datatype), shape, datatype)
        return tensor

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._src)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if not self._held:
            raise BufferError("pyovms.Tensor has no data")
        if flags & PyBUF_WRITABLE:
            raise BufferError("pyovms.Tensor is read-only")
        buffer.buf = self._src.buf
        buffer.len = self._src.len
        buffer.itemsize = self._src.itemsize
        buffer.readonly = 1
        buffer.format = self._src.format if (flags & PyBUF_FORMAT) == PyBUF_FORMAT else NULL
        if (flags & PyBUF_ND) == PyBUF_ND:
            buffer.ndim = self._src.ndim
            buffer.shape = self._src.shape
        else:
            buffer.ndim = 1
            buffer.shape = NULL
        buffer.strides = self._src.strides if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL
        buffer.obj = self

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    @property
    def data(self):
        """A memoryview of the data buffer."""
        return memoryview(self)

    @property
    def size(self):
        """Size of the data buffer in bytes."""
        return self._src.len

    def __repr__(self):
        return f"pyovms.Tensor(name={self.name!r}, datatype={self.datatype!r}, shape={self.shape})"
