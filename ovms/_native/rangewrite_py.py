"""Writes at absolute file offsets: the readable twin of ``rangewrite_c``.

The download engine receives several HTTP ranges of one file at once, interleaved, so every chunk lands at its
own offset (``pwrite``), never through a shared file position. libcurl hands the body over in pieces of at
most 16 KiB (CURL_MAX_WRITE_SIZE, lib/cw-out.c); ``RangeSink`` gathers them into large blocks so a GiB costs
a few hundred ``pwrite`` calls instead of 65536, and pycurl calls its ``write`` directly.
"""
from __future__ import annotations

import os

MODE_BODY = 0  # write the bytes to the file
MODE_DISCARD = 1  # a redirect's body: accept and drop
MODE_CAPTURE = 2  # an error's body: keep the first CAPTURE_BYTES for the message
MODE_ABORT = 3  # stop the transfer (libcurl reports CURLE_WRITE_ERROR)
CAPTURE_BYTES = 4096


def write_at(fd: int, offset: int, data) -> int:
    """Write all of ``data`` (any object with the buffer protocol) to ``fd`` at ``offset``.

    Loops over short writes and returns the number of bytes written. Raises ``OSError`` (``ENOSPC`` for a
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
        if n == 0:  # never for a non-empty buffer on a regular file; guard against a spin
            raise OSError(f"write_at: pwrite wrote nothing at offset {offset + written}")
        written += n
    return written


class RangeSink:
    """Receives one range's body and writes it at ``offset`` onwards, in blocks of ``capacity`` bytes.

    ``write(data)`` is a pycurl WRITEFUNCTION: it returns None when it took the bytes and 0 to abort (more
    than ``limit`` bytes, a write error, or ``mode == MODE_ABORT``). ``flushed`` counts bytes whose ``pwrite``
    returned: only those may be recorded as on disk. ``error`` holds the errno of a failed write.
    """

    def __init__(self, fd: int, offset: int, limit: int, capacity: int = 1 << 20, *,
                 writeback: bool = False) -> None:
        if fd < 0 or offset < 0 or limit < 0 or capacity <= 0:
            raise ValueError(f"RangeSink: invalid fd={fd} offset={offset} limit={limit} capacity={capacity}")
        self.fd = fd
        self.writeback = writeback  # the native twin starts disk writeback per block; Python has no
        # sync_file_range, and it changes no result, only when the bytes reach the disk
        self.mode = MODE_BODY
        self.capacity = capacity
        self._buffer = bytearray()
        self.captured = b""
        self.reset(offset, limit)

    def reset(self, offset: int, limit: int) -> None:
        """Start over at ``offset`` with room for ``limit`` bytes (nothing buffered may be pending)."""
        if self._buffer:
            raise ValueError("RangeSink.reset with unflushed bytes")
        self.offset = offset
        self.limit = limit
        self.received = 0
        self.flushed = 0
        self.overflow = False
        self.error = 0

    def write(self, data):
        if self.mode == MODE_BODY:
            n = len(data)
            if self.received + n > self.limit:
                self.overflow = True
                return 0
            self._buffer += data
            self.received += n
            if len(self._buffer) >= self.capacity:
                try:
                    self.flush()
                except OSError:
                    return 0
            return None
        if self.mode == MODE_DISCARD:
            return None
        if self.mode == MODE_CAPTURE:
            if len(self.captured) < CAPTURE_BYTES:
                self.captured += bytes(data[:CAPTURE_BYTES - len(self.captured)])
            return None
        return 0

    def flush(self) -> int:
        """Write the buffered bytes; returns how many. Raises OSError (also kept in ``error``)."""
        if not self._buffer:
            return 0
        try:
            n = write_at(self.fd, self.offset + self.flushed, self._buffer)
        except OSError as exc:
            self.error = exc.errno or -1
            raise
        self.flushed += n
        self._buffer = bytearray()
        return n
