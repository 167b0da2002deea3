"""Writes at absolute file offsets: the readable twin of ``rangewrite_c``.

The download engine receives several HTTP ranges of one file at once, interleaved, so every chunk lands at its
own offset (``pwrite``), never through a shared file position. libcurl hands the body over in pieces of at
most 16 KiB (CURL_MAX_WRITE_SIZE, lib/cw-out.c); ``RangeSink`` gathers them into large blocks so a GiB costs
a few hundred ``pwrite`` calls instead of 65536, and pycurl calls its ``write`` directly.

With ``direct_fd`` (the same file opened ``O_DIRECT``), a block's 4 KiB-aligned middle goes to the disk straight
from the page-aligned block buffer, bypassing the page cache; a range's unaligned head and tail go through
``fd``. Copying into fresh page cache is what made pulls slow on a VM that hands freed memory back to its host
(bench/PULL.md: ~420 MB/s against 2 GB/s for O_DIRECT).
"""
from __future__ import annotations

import errno
import mmap
import os

MODE_BODY = 0  # write the bytes to the file
MODE_DISCARD = 1  # a redirect's body: accept and drop
MODE_CAPTURE = 2  # an error's body: keep the first CAPTURE_BYTES for the message
MODE_ABORT = 3  # stop the transfer (libcurl reports CURLE_WRITE_ERROR)
CAPTURE_BYTES = 4096
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses are multiples of this


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


_kept: list[mmap.mmap] = []  # block buffers of ended sinks, for the next ones (fresh memory costs page faults)
KEPT_BLOCKS = 64


def _block(size: int) -> memoryview:
    for i, m in enumerate(_kept):
        if len(m) == size:
            return memoryview(_kept.pop(i))
    return memoryview(mmap.mmap(-1, size))  # anonymous mappings are page-aligned


RESERVE_BLOCKS = 8  # a pooled sink taking a block leaves at least this many ready, touched in the pool
_reserving = False


def reserve(count: int, capacity: int) -> None:
    """Make ``count`` blocks for sinks of ``capacity`` ready: allocated and touched here (every page faulted in),
    so that the thread feeding libcurl, which takes them, does not fault them in itself. Meant to run in the
    write pool; a block past the kept bound is not made."""
    global _reserving
    room = -(-capacity // DIRECT_ALIGN) * DIRECT_ALIGN
    try:
        while sum(len(m) == room for m in _kept) < count and len(_kept) < KEPT_BLOCKS:
            m = mmap.mmap(-1, room)
            for at in range(0, room, mmap.PAGESIZE):
                m[at] = 0
            _kept.append(m)
    finally:
        _reserving = False


def trim(keep: int = 0) -> None:
    """Free the kept blocks beyond ``keep`` (a pull that ended gives its memory back; a server lives on)."""
    del _kept[keep:]


def _recycle(view: memoryview | None) -> None:
    if view is None:
        return
    m = view.obj
    view.release()
    if len(_kept) < KEPT_BLOCKS:
        _kept.append(m)


def _write_block(fd: int, direct_fd: int, block: memoryview, pos: int) -> tuple[int, int]:
    """Write ``block`` at ``pos`` through ``fd``; or, with ``direct_fd`` >= 0, its aligned middle through
    ``direct_fd`` and the unaligned head and tail through ``fd``. An EINVAL from the direct write (the filesystem
    wants a stricter alignment, or no direct I/O) sends the rest through ``fd``. Returns (bytes written direct,
    the direct fd to use from now on: -1 after such a refusal)."""
    total = block.nbytes
    if direct_fd < 0:
        write_at(fd, pos, block)
        return 0, direct_fd
    head = min(total, -pos % DIRECT_ALIGN)
    middle = (total - head) // DIRECT_ALIGN * DIRECT_ALIGN
    direct = 0
    if head:
        write_at(fd, pos, block[:head])
    if middle:
        try:
            while direct < middle:
                n = os.pwrite(direct_fd, block[head + direct:head + middle], pos + head + direct)
                if n == 0:
                    raise OSError(f"write_at: pwrite wrote nothing at offset {pos + head + direct}")
                direct += n
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            direct_fd = -1
            write_at(fd, pos + head + direct, block[head + direct:head + middle])
    if total - head - middle:
        write_at(fd, pos + head + middle, block[head + middle:])
    return direct, direct_fd


class RangeSink:
    """Receives one range's body and writes it at ``offset`` onwards, in blocks of ``capacity`` bytes.

    ``write(data)`` is a pycurl WRITEFUNCTION: it returns None when it took the bytes and 0 to abort (more
    than ``limit`` bytes, a write error, or ``mode == MODE_ABORT``). ``flushed`` counts bytes whose ``pwrite``
    returned: only those may be recorded as on disk. ``error`` holds the errno of a failed write.

    With ``direct_fd`` >= 0 the byte of file position ``p`` sits at ``p % DIRECT_ALIGN`` in the (page-aligned)
    buffer, so a block ends on an aligned file position and its aligned middle is written through ``direct_fd``
    (``direct_bytes`` counts those bytes). A filesystem that refuses it (EINVAL) gets ``fd`` for the rest of the
    sink's life (``direct_refused``).

    With ``pool`` (a ``concurrent.futures`` executor) a full block is written there while the next one fills
    (two buffers); a block waits for the previous one's write before it is handed over, and so does ``flush()``.

    With ``digest`` (``verify.StreamDigest``), each block whose write returned is offered to it: a block the pool
    wrote is given away (``offer(position, view, keep=True)``: the digest may keep the view, and the block returns
    to the kept ones when it is released), any other is lent for the call (``offer(position, view)``).
    """

    def __init__(self, fd: int, offset: int, limit: int, capacity: int = 1 << 20, *,
                 writeback: bool = False, direct_fd: int = -1, pool=None, digest=None) -> None:
        if fd < 0 or offset < 0 or limit < 0 or capacity <= 0:
            raise ValueError(f"RangeSink: invalid fd={fd} offset={offset} limit={limit} capacity={capacity}")
        self.fd = fd
        self.writeback = writeback  # the native twin starts disk writeback per block; Python has no
        # sync_file_range, and it changes no result, only when the bytes reach the disk
        self.direct_fd = direct_fd if direct_fd >= 0 else -1
        self.direct_bytes = 0
        self.direct_refused = False
        self.mode = MODE_BODY
        self.capacity = capacity
        # direct: room rounded up to the alignment, so that a full block ends on an aligned file position
        self._room = -(-capacity // DIRECT_ALIGN) * DIRECT_ALIGN if self.direct_fd >= 0 else capacity
        self._buf = _block(self._room)
        self._spare = None  # the block being written by the pool (None once written: back to the kept ones)
        self._pool = pool
        if pool is not None:
            self._top_up()
        self.digest = digest
        self._pending = None
        self._used = 0
        self._qstart = self._qused = 0
        self.captured = b""
        self.reset(offset, limit)

    def __del__(self) -> None:
        # A write in the pool holds a reference to this sink (its bound method): none is pending here.
        _recycle(self.__dict__.pop("_buf", None))
        _recycle(self.__dict__.pop("_spare", None))

    def reset(self, offset: int, limit: int) -> None:
        """Start over at ``offset`` with room for ``limit`` bytes (nothing buffered may be pending)."""
        if self._used or self._qused:
            raise ValueError("RangeSink.reset with unflushed bytes")
        self.offset = offset
        self.limit = limit
        self.received = 0
        self.flushed = 0
        self.overflow = False
        self.error = 0
        self._place()

    def _place(self) -> None:
        """Where the next byte goes in the buffer: its file position modulo the alignment (direct), else 0."""
        self._start = (self.offset + self.flushed + self._qused) % DIRECT_ALIGN if self.direct_fd >= 0 else 0

    def _write(self, block: memoryview, pos: int, keep: bool = False) -> bool:
        try:
            direct, direct_fd = _write_block(self.fd, self.direct_fd, block, pos)
        except OSError as exc:
            self.error = exc.errno or -1
            return False
        self.direct_bytes += direct
        if direct_fd != self.direct_fd:
            self.direct_fd = -1
            self.direct_refused = True
        if self.digest is not None:
            self.digest.offer(pos, block, keep=keep)
        return True

    def _write_queued(self) -> None:
        """Run by the pool: the block handed over, at the position after everything flushed."""
        # The digest may keep a view of the block (no copy): it is not reused here, only dropped.
        written = self._write(self._spare[self._qstart:self._qstart + self._qused], self.offset + self.flushed,
                              keep=True)
        self._spare = None
        if written:
            self.flushed += self._qused
            self._qused = 0

    def _drain(self) -> bool:
        """Wait for the block in the pool, if any; False when its write failed (``error`` set)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        return not self.error

    def _top_up(self) -> None:
        """After taking a block: more made ready in the pool when few are left."""
        global _reserving
        if not _reserving and sum(len(m) == self._room for m in _kept) < RESERVE_BLOCKS:
            _reserving = True
            self._pool.submit(reserve, RESERVE_BLOCKS * 2, self._room)

    def _hand_over(self) -> bool:
        if not self._drain():
            return False
        self._buf, self._spare = _block(self._room), self._buf
        self._qstart, self._qused = self._start, self._used
        self._used = 0
        self._place()
        self._pending = self._pool.submit(self._write_queued)
        self._top_up()
        return True

    def _flush_here(self) -> bool:
        if not self._drain():
            return False
        if not self._used:
            return True
        if not self._write(self._buf[self._start:self._start + self._used], self.offset + self.flushed):
            return False
        self.flushed += self._used
        self._used = 0
        self._place()
        return True

    def write(self, data):
        if self.mode == MODE_BODY:
            if self.error:
                return 0
            data = memoryview(data).cast("B")
            n = data.nbytes
            if self.received + n > self.limit:
                self.overflow = True
                return 0
            self.received += n
            taken = 0
            while taken < n:
                at = self._start + self._used
                take = min(n - taken, self._room - at)
                self._buf[at:at + take] = data[taken:taken + take]
                self._used += take
                taken += take
                if at + take == self._room:
                    if not (self._hand_over() if self._pool is not None else self._flush_here()):
                        return 0
            return None
        if self.mode == MODE_DISCARD:
            return None
        if self.mode == MODE_CAPTURE:
            if len(self.captured) < CAPTURE_BYTES:
                self.captured += bytes(data[:CAPTURE_BYTES - len(self.captured)])
            return None
        return 0

    def flush_soon(self):
        """Hand what is buffered to the pool now, unless the pool is still writing this sink's previous block
        (never waits). Returns the future of the sink's write in progress (None: none is). Without a pool,
        ``flush()`` here and None."""
        if self._pool is None:
            self.flush()
            return None
        if self._used and (self._pending is None or self._pending.done()):
            if not self._hand_over():
                return None
        return self._pending

    def close(self):
        """At the end of the body: with a pool, the rest is written there after the block before it, and the
        future of that last write is returned (None: nothing was left); ``flushed`` and ``error`` are final when
        it is done. Without a pool, ``flush()`` here. The sink takes no more bytes either way."""
        if self._pool is None:
            self.flush()
            return None
        if self._used:
            self._pending = self._pool.submit(self._write_last, self._pending)
        return self._pending

    def _write_last(self, previous) -> None:
        if previous is not None:
            previous.result()
        if self.error or not self._used:
            return
        if self._write(self._buf[self._start:self._start + self._used], self.offset + self.flushed):
            self.flushed += self._used
            self._used = 0

    def flush(self) -> int:
        """Write the buffered bytes (waiting for the pool's block first); returns how many were pending. Raises
        OSError (also kept in ``error``)."""
        pending = self._used + self._qused
        if not self._flush_here():
            raise OSError(self.error, os.strerror(self.error)) if self.error > 0 else OSError(
                f"write_at: pwrite wrote nothing at offset {self.offset + self.flushed}")
        return pending
