# cython: language_level=3
"""Write a buffer at an absolute file offset with ``pwrite(2)`` outside the GIL (twin: ``rangewrite_py``).

The pycurl write callback calls this for every chunk of every range in flight; releasing the GIL lets the
hash-verification thread run while the kernel copies the chunk into the page cache.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.errno cimport errno, EINTR
from posix.types cimport off_t

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)


def write_at(int fd, long long offset, data):
    """Write all of ``data`` (any buffer) to ``fd`` at ``offset``; returns the byte count.

    Loops over short writes and EINTR; raises ``OSError`` with the errno (``ENOSPC`` for a full disk) and
    ``ValueError`` for a negative offset or fd.
    """
    cdef Py_buffer view
    cdef const char *p
    cdef Py_ssize_t total, written = 0
    cdef ssize_t n
    cdef int err = 0
    if fd < 0:
        raise ValueError(f"write_at: invalid file descriptor {fd}")
    if offset < 0:
        raise ValueError(f"write_at: negative offset {offset}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const char *>view.buf
        total = view.len
        with nogil:
            while written < total:
                n = pwrite(fd, p + written, <size_t>(total - written), <off_t>(offset + written))
                if n < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                if n == 0:
                    err = -1
                    break
                written += n
    finally:
        PyBuffer_Release(&view)
    if err == -1:
        raise OSError(f"write_at: pwrite wrote nothing at offset {offset + written}")
    if err != 0:
        import os
        raise OSError(err, os.strerror(err))
    return written
