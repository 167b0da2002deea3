# cython: language_level=3
"""``pyovms.Tensor`` with the buffer protocol on every Python version (the pure twin needs 3.12's __buffer__).

The tensor holds one read-only export of a C-contiguous memoryview for its lifetime and hands its fields to
every consumer (``memoryview(t)``, ``bytes(t)``, ``numpy.array(t)``), as OVMS's pybind11 class does.
"""
from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_ND, PyBUF_RECORDS_RO, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from ovms._native.pyformat import datatype_of_format, source_view, wire_view


cdef class Tensor:
    """A named tensor passed to and returned from ``OvmsPythonModel.execute``.

    ``Tensor(name, data, shape=None, datatype=None)``: ``data`` is anything with the buffer protocol; ``shape``
    and ``datatype`` default to the buffer's and only override the attributes, never the data.
    """

    cdef readonly str name
    cdef readonly str datatype
    cdef readonly tuple shape
    # The one reference to the source memoryview is _src.obj, in memory of our own: the cycle collector cannot see
    # it, so it never clears that memoryview under the export. (As an attribute, or a Py_buffer member that Cython
    # traverses, a Tensor caught in a cycle, say by a traceback, had the view cleared first: "BufferError:
    # memoryview has 1 exported buffer", and a crash when the export was released.)
    cdef Py_buffer *_src

    def __init__(self, name, data, shape=None, datatype=None):
        if not isinstance(name, str):
            raise TypeError(f"pyovms.Tensor name must be a string, got {type(name).__name__}")
        self._set(name, source_view(data), shape, datatype)

    cdef _set(self, str name, object view, object shape, object datatype):
        self._release()
        cdef Py_buffer *src = <Py_buffer *>PyMem_Malloc(sizeof(Py_buffer))
        if src == NULL:
            raise MemoryError()
        try:
            PyObject_GetBuffer(view.toreadonly(), src, PyBUF_RECORDS_RO)
        except BaseException:
            PyMem_Free(src)
            raise
        self._src = src
        self.name = name
        self.shape = tuple(int(d) for d in (view.shape if shape is None else shape))
        self.datatype = datatype_of_format(view.format, view.itemsize) if datatype is None else str(datatype)

    @classmethod
    def _from_wire(cls, str name, raw, shape, str datatype):
        """A tensor of a request input: its wire bytes (not copied), with the request's shape and datatype."""
        cdef Tensor tensor = cls.__new__(cls)
        tensor._set(name, wire_view(raw, shape, datatype), shape, datatype)
        return tensor

    cdef _release(self):
        if self._src != NULL:
            PyBuffer_Release(self._src)
            PyMem_Free(self._src)
            self._src = NULL

    def __dealloc__(self):
        self._release()

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self._src == NULL:
            raise BufferError("pyovms.Tensor has no data")
        if flags & PyBUF_WRITABLE:
            raise BufferError("pyovms.Tensor is read-only")
        buffer.buf = self._src[0].buf
        buffer.len = self._src[0].len
        buffer.itemsize = self._src[0].itemsize
        buffer.readonly = 1
        buffer.format = self._src[0].format if (flags & PyBUF_FORMAT) == PyBUF_FORMAT else NULL
        if (flags & PyBUF_ND) == PyBUF_ND:
            buffer.ndim = self._src[0].ndim
            buffer.shape = self._src[0].shape
        else:
            buffer.ndim = 1
            buffer.shape = NULL
        buffer.strides = self._src[0].strides if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
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
        return self._src[0].len

    def __repr__(self):
        return f"pyovms.Tensor(name={self.name!r}, datatype={self.datatype!r}, shape={self.shape})"
