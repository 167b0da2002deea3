# cython: language_level=3
"""Writes at absolute file offsets with ``pwrite(2)`` outside the GIL (twin: ``rangewrite_py``, the reference).

libcurl hands the body over in pieces of at most 16 KiB (CURL_MAX_WRITE_SIZE, lib/cw-out.c). ``RangeSink``
is given to pycurl as the WRITEFUNCTION itself: each piece is one C-level method call and a memcpy into a
block buffer, and a GiB costs a few hundred ``pwrite`` calls (GIL released) instead of 65536 Python callbacks
and syscalls.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.errno cimport errno, EINTR
from libc.string cimport memcpy
from posix.types cimport off_t

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)

cdef extern from *:
    """
    #define _GNU_SOURCE 1
    #include <fcntl.h>
    #ifdef SYNC_FILE_RANGE_WRITE
    static int ovms_start_writeback(int fd, long long offset, long long n) {
        return sync_file_range(fd, (off_t)offset, (off_t)n, SYNC_FILE_RANGE_WRITE);
    }
    #else
    static int ovms_start_writeback(int fd, long long offset, long long n) { return 0; }
    #endif
    """
    int ovms_start_writeback(int fd, long long offset, long long n) nogil

MODE_BODY = 0
MODE_DISCARD = 1
MODE_CAPTURE = 2
MODE_ABORT = 3
CAPTURE_BYTES = 4096


cdef int _pwrite_all(int fd, const char *p, Py_ssize_t total, long long offset, Py_ssize_t *written) nogil:
    """0 on success, else the errno (-1: pwrite wrote nothing). ``written`` gets the bytes written."""
    cdef ssize_t n
    written[0] = 0
    while written[0] < total:
        n = pwrite(fd, p + written[0], <size_t>(total - written[0]), <off_t>(offset + written[0]))
        if n < 0:
            if errno == EINTR:
                continue
            return errno
        if n == 0:
            return -1
        written[0] += n
    return 0


cdef _raise_write_error(int err, long long offset):
    if err == -1:
        raise OSError(f"write_at: pwrite wrote nothing at offset {offset}")
    import os
    raise OSError(err, os.strerror(err))


def write_at(int fd, long long offset, data):
    """Write all of ``data`` (any buffer) to ``fd`` at ``offset``; returns the byte count.

    Loops over short writes and EINTR; raises ``OSError`` with the errno (``ENOSPC`` for a full disk) and
    ``ValueError`` for a negative offset or fd.
    """
    cdef Py_buffer view
    cdef Py_ssize_t written = 0
    cdef int err = 0
    if fd < 0:
        raise ValueError(f"write_at: invalid file descriptor {fd}")
    if offset < 0:
        raise ValueError(f"write_at: negative offset {offset}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            err = _pwrite_all(fd, <const char *>view.buf, view.len, offset, &written)
    finally:
        PyBuffer_Release(&view)
    if err != 0:
        _raise_write_error(err, offset + written)
    return written


cdef class RangeSink:
    """Receives one range's body and writes it at ``offset`` onwards, in blocks of ``capacity`` bytes.

    ``write(data)`` is a pycurl WRITEFUNCTION: None when it took the bytes, 0 to abort (more than ``limit``
    bytes, a write error, or ``mode == MODE_ABORT``). ``flushed`` counts bytes whose ``pwrite`` returned: only
    those may be recorded as on disk. ``error`` holds the errno of a failed write. With ``writeback``, each
    block written is also handed to the disk right away (Linux ``sync_file_range``; a hint, not a guarantee).
    """
    cdef char *_buf
    cdef Py_ssize_t _used
    cdef readonly Py_ssize_t capacity
    cdef readonly int fd
    cdef readonly long long offset, limit, received, flushed
    cdef readonly bint overflow
    cdef readonly bint writeback
    cdef readonly int error
    cdef public int mode
    cdef public bytes captured

    def __cinit__(self, int fd, long long offset, long long limit, Py_ssize_t capacity=1 << 20, *,
                  bint writeback=False):
        self._buf = NULL

    def __init__(self, int fd, long long offset, long long limit, Py_ssize_t capacity=1 << 20, *,
                 bint writeback=False):
        if fd < 0 or offset < 0 or limit < 0 or capacity <= 0:
            raise ValueError(f"RangeSink: invalid fd={fd} offset={offset} limit={limit} capacity={capacity}")
        self._buf = <char *>PyMem_Malloc(capacity)
        if self._buf == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.writeback = writeback
        self.fd = fd
        self.mode = MODE_BODY
        self.captured = b""
        self._used = 0
        self.reset(offset, limit)

    def __dealloc__(self):
        if self._buf != NULL:
            PyMem_Free(self._buf)
            self._buf = NULL

    def reset(self, long long offset, long long limit):
        """Start over at ``offset`` with room for ``limit`` bytes (nothing buffered may be pending)."""
        if self._used:
            raise ValueError("RangeSink.reset with unflushed bytes")
        self.offset = offset
        self.limit = limit
        self.received = 0
        self.flushed = 0
        self.overflow = False
        self.error = 0

    cdef int _flush(self) nogil:
        cdef Py_ssize_t written = 0
        cdef int err = 0
        if self._used == 0:
            return 0
        err = _pwrite_all(self.fd, self._buf, self._used, self.offset + self.flushed, &written)
        if err != 0:
            self.error = err
            return err
        if self.writeback:
            # Start writing this block to disk now (Linux sync_file_range, asynchronous): the fdatasync
            # before the final rename then has little left to wait for.
            ovms_start_writeback(self.fd, self.offset + self.flushed, written)
        self.flushed += written
        self._used = 0
        return 0

    def write(self, data):
        cdef Py_buffer view
        cdef const char *p
        cdef Py_ssize_t n, take
        cdef int err = 0
        if self.mode == MODE_BODY:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                p = <const char *>view.buf
                n = view.len
                if self.received + n > self.limit:
                    self.overflow = True
                    return 0
                self.received += n
                while n > 0:
                    take = self.capacity - self._used
                    if take > n:
                        take = n
                    memcpy(self._buf + self._used, p, take)
                    self._used += take
                    p += take
                    n -= take
                    if self._used == self.capacity:
                        with nogil:
                            err = self._flush()
                        if err != 0:
                            return 0
            finally:
                PyBuffer_Release(&view)
            return None
        if self.mode == MODE_DISCARD:
            return None
        if self.mode == MODE_CAPTURE:
            if len(self.captured) < CAPTURE_BYTES:
                self.captured += bytes(data[:CAPTURE_BYTES - len(self.captured)])
            return None
        return 0

    def flush(self):
        """Write the buffered bytes; returns how many. Raises OSError (also kept in ``error``)."""
        cdef Py_ssize_t pending = self._used
        cdef int err = 0
        with nogil:
            err = self._flush()
        if err != 0:
            _raise_write_error(err, self.offset + self.flushed)
        return pending
