"""Write a buffer at an absolute file offset: the readable twin of ``rangewrite_c``.

The download engine receives the body of several HTTP ranges of one file at once, interleaved, so every chunk
lands at its own offset (``pwrite``), never through a shared file position.
"""
from __future__ import annotations

import os


def write_at(fd: int, offset: int, data) -> int:
    """Write all of ``data`` (any object with the buffer protocol) to ``fd`` at ``offset``.

    Loops over short writes (``pwrite`` may write less than asked, e.g. near a full disk or on a signal) and
    returns the number of bytes written, always ``len(data)`` in bytes. Raises ``OSError`` (``ENOSPC`` for a
    full disk) and ``ValueError`` for a negative offset or fd.
    """
    if fd < 0:
        raise ValueError(f"write_at: invalid file descriptor {fd}")
    if offset < 0:
        raise ValueError(f"write_at: negative offset {offset}")
    view = memoryview(data).cast("B")
    total = view.nbytes
    written = 0
    while written < total:
        n = os.pwrite(fd, view[written:], offset + written)
        if n == 0:  # pwrite never returns 0 for a non-empty buffer on a regular file; guard against a spin
            raise OSError(f"write_at: pwrite wrote nothing at offset {offset + written}")
        written += n
    return written
