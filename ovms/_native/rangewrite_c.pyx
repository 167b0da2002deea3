# cython: language_level=3
"""Writes at absolute file offsets with ``pwrite(2)`` outside the GIL (twin: ``rangewrite_py``, the reference).

libcurl hands the body over in pieces of at most 16 KiB (CURL_MAX_WRITE_SIZE, lib/cw-out.c). ``RangeSink``
is given to pycurl as the WRITEFUNCTION itself: each piece is one C-level method call and a memcpy into a
block buffer, and a GiB costs a few hundred ``pwrite`` calls (GIL released) instead of 65536 Python callbacks
and syscalls.

With ``direct_fd`` (the same file opened ``O_DIRECT``) the block's 4 KiB-aligned middle is written straight from
the (page-aligned) block buffer to the disk, bypassing the page cache; the unaligned head and tail of a range go
through ``fd``. On this VM a page-cache write of fresh memory ran at ~420 MB/s and an O_DIRECT write at 2 GB/s
(bench/PULL.md). A filesystem that refuses the alignment (EINVAL) gets ``fd`` for the rest (``direct_refused``).
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo, PyBUF_SIMPLE
from libc.errno cimport errno, EINTR, EINVAL
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from posix.types cimport off_t

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

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
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses are multiples of this (any logical block
# size up to 4 KiB)
cdef long long ALIGN = DIRECT_ALIGN


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


cdef int _write_block(int fd, int *direct_fd, const char *p, Py_ssize_t total, long long pos,
                      long long *direct_bytes, bint *refused) noexcept nogil:
    """Write ``total`` bytes at ``pos``, through ``fd``; or, when ``direct_fd[0]`` >= 0, the 4 KiB-aligned middle
    through ``direct_fd`` and the unaligned head and tail through ``fd``. ``p + head`` is aligned because the sink
    keeps the byte of file position ``x`` at buffer index ``x % ALIGN``. An EINVAL from the direct write (the
    filesystem wants a stricter alignment, or no direct I/O) sends the rest through ``fd`` and sets
    ``direct_fd[0] = -1``, ``refused[0]``. 0, or the errno."""
    cdef Py_ssize_t w = 0, more = 0, head, middle
    cdef int err = 0
    if direct_fd[0] < 0:
        return _pwrite_all(fd, p, total, pos, &w)
    head = (ALIGN - pos % ALIGN) % ALIGN
    if head > total:
        head = total
    middle = (total - head) // ALIGN * ALIGN
    if head:
        err = _pwrite_all(fd, p, head, pos, &w)
        if err != 0:
            return err
    if middle:
        w = 0
        err = _pwrite_all(direct_fd[0], p + head, middle, pos + head, &w)
        direct_bytes[0] += w
        if err == EINVAL:
            direct_fd[0] = -1
            refused[0] = True
            err = _pwrite_all(fd, p + head + w, middle - w, pos + head + w, &more)
        if err != 0:
            return err
    if total - head - middle:
        err = _pwrite_all(fd, p + head + middle, total - head - middle, pos + head + middle, &w)
    return err


# Block buffers of ended sinks, kept for the next ones (a pull starts a sink per range: 8 MiB of fresh memory
# each time costs a page fault per 4 KiB page, slow on a VM that hands free memory back to its host).
DEF KEPT_BLOCKS = 64
cdef char *_kept[KEPT_BLOCKS]
cdef Py_ssize_t _kept_size[KEPT_BLOCKS]
cdef int _kept_count = 0


cdef char *_aligned(Py_ssize_t size) except NULL:
    """A page-aligned block of ``size`` bytes: a kept one of that size, else a new one (the GIL is held)."""
    global _kept_count
    cdef void *mem = NULL
    cdef int i
    for i in range(_kept_count):
        if _kept_size[i] == size:
            mem = _kept[i]
            _kept_count -= 1
            _kept[i] = _kept[_kept_count]
            _kept_size[i] = _kept_size[_kept_count]
            return <char *>mem
    return _new_block(size)


cdef int _kept_of(Py_ssize_t size) noexcept:
    cdef int i, n = 0
    for i in range(_kept_count):
        if _kept_size[i] == size:
            n += 1
    return n


cdef bint _reserving = False
RESERVE_BLOCKS = 8  # a pooled sink taking a block leaves at least this many ready, touched in the pool


def reserve(Py_ssize_t count, Py_ssize_t capacity):
    """Make ``count`` blocks for sinks of ``capacity`` ready: allocated and touched here (every page faulted in),
    so that the thread feeding libcurl, which takes them, does not fault them in itself. Meant to run in the
    write pool; a block past the kept bound is not made."""
    global _reserving
    cdef Py_ssize_t room = (capacity + ALIGN - 1) // ALIGN * ALIGN
    cdef char *block
    try:
        while _kept_of(room) < count and _kept_count < KEPT_BLOCKS:
            block = _new_block(room)
            with nogil:
                memset(block, 0, <size_t>room)
            _recycle(block, room)
    finally:
        _reserving = False


def trim(int keep=0):
    """Free the kept blocks beyond ``keep`` (a pull that ended gives its memory back; a server lives on)."""
    global _kept_count
    while _kept_count > keep:
        _kept_count -= 1
        free(_kept[_kept_count])


cdef char *_new_block(Py_ssize_t size) except NULL:
    cdef void *mem = NULL
    if posix_memalign(&mem, <size_t>ALIGN, <size_t>size) != 0:
        raise MemoryError()
    return <char *>mem


cdef void _recycle(char *block, Py_ssize_t size) noexcept:
    global _kept_count
    if block == NULL:
        return
    if _kept_count < KEPT_BLOCKS:
        _kept[_kept_count] = block
        _kept_size[_kept_count] = size
        _kept_count += 1
    else:
        free(block)


cdef class Block:
    """A sink's block after its write: read-only buffer over its memory, which goes back to the kept blocks when
    the last view of it is released (the digest may keep one until the block is hashed)."""
    cdef char *data
    cdef Py_ssize_t size

    @staticmethod
    cdef Block adopt(char *data, Py_ssize_t size):
        cdef Block b = Block.__new__(Block)
        b.data = data
        b.size = size
        return b

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.data, self.size, 1, flags)

    def __dealloc__(self):
        _recycle(self.data, self.size)
        self.data = NULL


cdef class RangeSink:
    """Receives one range's body and writes it at ``offset`` onwards, in blocks of ``capacity`` bytes.

    ``write(data)`` is a pycurl WRITEFUNCTION: None when it took the bytes, 0 to abort (more than ``limit``
    bytes, a write error, or ``mode == MODE_ABORT``). ``flushed`` counts bytes whose ``pwrite`` returned: only
    those may be recorded as on disk. ``error`` holds the errno of a failed write. With ``writeback``, each
    block written is also handed to the disk right away (Linux ``sync_file_range``; a hint, not a guarantee).

    With ``direct_fd`` >= 0 the byte of file position ``p`` sits at ``p % DIRECT_ALIGN`` in the buffer, so every
    aligned file position is an aligned address: a block ends on an aligned file position, its aligned middle
    goes to ``direct_fd`` (``direct_bytes`` counts them) and only a range's unaligned head and tail to ``fd``.

    With ``pool`` (a ``concurrent.futures`` executor) a full block is written there while the next one fills
    (two buffers): an O_DIRECT write waits for the disk, and the thread feeding libcurl should not. A block
    waits for the previous one's write before it is handed over; ``flush()`` waits for it too.

    With ``digest`` (``verify.StreamDigest``), each block whose write returned is offered to it: a block the pool
    wrote is given away (``offer(position, view, keep=True)``: the digest may keep the view, and the block returns
    to the kept ones when it is released), any other is lent for the call (``offer(position, view)``).
    """
    cdef char *_buf  # the block being filled
    cdef char *_spare  # the block being written by the pool (NULL once written: it went back to the kept ones)
    cdef Py_ssize_t _start, _used, _room, _qstart, _qused
    cdef object _pool, _pending
    cdef readonly Py_ssize_t capacity
    cdef readonly int fd, direct_fd
    cdef readonly long long offset, limit, received, flushed, direct_bytes
    cdef readonly bint overflow, direct_refused
    cdef readonly bint writeback
    cdef readonly int error
    cdef public int mode
    cdef public bytes captured
    cdef public object digest

    def __cinit__(self, *args, **kwargs):
        self._buf = NULL
        self._spare = NULL

    def __init__(self, int fd, long long offset, long long limit, Py_ssize_t capacity=1 << 20, *,
                 bint writeback=False, int direct_fd=-1, pool=None, digest=None):
        if fd < 0 or offset < 0 or limit < 0 or capacity <= 0:
            raise ValueError(f"RangeSink: invalid fd={fd} offset={offset} limit={limit} capacity={capacity}")
        # direct: room rounded up to the alignment, so that a full block ends on an aligned file position
        self._room = (capacity + ALIGN - 1) // ALIGN * ALIGN if direct_fd >= 0 else capacity
        self._buf = _aligned(self._room)
        self._pool = pool
        if pool is not None:
            self._top_up()
        self.digest = digest
        self._pending = None
        self._qused = 0
        self.capacity = capacity
        self.writeback = writeback
        self.fd = fd
        self.direct_fd = direct_fd if direct_fd >= 0 else -1
        self.direct_bytes = 0
        self.direct_refused = False
        self.mode = MODE_BODY
        self.captured = b""
        self._used = 0
        self.reset(offset, limit)

    def __dealloc__(self):
        # A write in the pool holds a reference to this sink (its bound method): none is pending here.
        _recycle(self._buf, self._room)
        self._buf = NULL
        _recycle(self._spare, self._room)
        self._spare = NULL

    def reset(self, long long offset, long long limit):
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

    cdef void _place(self) noexcept:
        """Where the next byte goes in the buffer: its file position modulo the alignment (direct), else 0."""
        self._start = (self.offset + self.flushed + self._qused) % ALIGN if self.direct_fd >= 0 else 0

    cdef int _write(self, const char *p, Py_ssize_t n, long long pos, object owner=None) except -2:
        """One block, in the calling thread, the GIL released for the writes; then offered to the digest: as a
        view of ``owner`` (a ``Block``), which the digest may keep, or else as a view valid during the call."""
        cdef int err = 0, dfd = self.direct_fd
        cdef long long dbytes = 0
        cdef bint refused = False
        with nogil:
            err = _write_block(self.fd, &dfd, p, n, pos, &dbytes, &refused)
            if err == 0 and self.writeback:
                # Start writing this block to disk now (Linux sync_file_range, asynchronous): the fdatasync
                # before the final rename then has little left to wait for.
                ovms_start_writeback(self.fd, pos, n)
        self.direct_bytes += dbytes
        if refused:
            self.direct_fd = -1
            self.direct_refused = True
        if err != 0:
            self.error = err
            return err
        if self.digest is not None:
            if owner is not None:
                start = p - (<Block>owner).data
                self.digest.offer(pos, memoryview(owner)[start:start + n], keep=True)
            else:
                view = PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ)
                try:
                    self.digest.offer(pos, view)
                finally:
                    view.release()
        return 0

    def _write_queued(self):
        """Run by the pool: the block handed over, at the position after everything flushed."""
        # The block now belongs to a Block object: the digest may keep a view of it (no copy); it goes back to
        # the kept ones, for whichever sink needs one next, when the last view of it is gone.
        owner = Block.adopt(self._spare, self._room)
        self._spare = NULL
        cdef int err = self._write(owner.data + self._qstart, self._qused, self.offset + self.flushed, owner)
        del owner
        if err == 0:
            self.flushed += self._qused
            self._qused = 0

    cdef int _drain(self) except -2:
        """Wait for the block in the pool, if any; -1 with ``error`` set when its write failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        return -1 if self.error else 0

    cdef int _top_up(self) except -1:
        """After taking a block: more made ready in the pool when few are left."""
        global _reserving
        if not _reserving and _kept_of(self._room) < RESERVE_BLOCKS:
            _reserving = True
            self._pool.submit(reserve, RESERVE_BLOCKS * 2, self._room)
        return 0

    cdef int _hand_over(self) except -2:
        """The full block goes to the pool; filling continues in the other buffer. -1 on a write error."""
        cdef char *full
        if self._drain() != 0:
            return -1
        full = self._buf
        self._buf = _aligned(self._room)
        self._spare = full
        self._qstart, self._qused = self._start, self._used
        self._used = 0
        self._place()
        self._pending = self._pool.submit(self._write_queued)
        self._top_up()
        return 0

    cdef int _flush_here(self) except -2:
        """Everything buffered written in this thread (after the pool's block); -1 on a write error."""
        if self._drain() != 0:
            return -1
        if self._used == 0:
            return 0
        if self._write(self._buf + self._start, self._used, self.offset + self.flushed) != 0:
            return -1
        self.flushed += self._used
        self._used = 0
        self._place()
        return 0

    def write(self, data):
        cdef Py_buffer view
        cdef const char *p
        cdef Py_ssize_t n, take
        cdef int err = 0
        if self.mode == MODE_BODY:
            if self.error:
                return 0
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                p = <const char *>view.buf
                n = view.len
                if self.received + n > self.limit:
                    self.overflow = True
                    return 0
                self.received += n
                while n > 0:
                    take = self._room - self._start - self._used
                    if take > n:
                        take = n
                    memcpy(self._buf + self._start + self._used, p, take)
                    self._used += take
                    p += take
                    n -= take
                    if self._start + self._used == self._room:
                        err = self._hand_over() if self._pool is not None else self._flush_here()
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

    def flush_soon(self):
        """Hand what is buffered to the pool now, unless the pool is still writing this sink's previous block
        (never waits). Returns the future of the sink's write in progress (None: none is). Without a pool,
        ``flush()`` here and None."""
        if self._pool is None:
            self.flush()
            return None
        if self._used and (self._pending is None or self._pending.done()):
            if self._hand_over() != 0:
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

    def _write_last(self, previous):
        if previous is not None:
            previous.result()
        if self.error or self._used == 0:
            return
        if self._write(self._buf + self._start, self._used, self.offset + self.flushed) == 0:
            self.flushed += self._used
            self._used = 0

    def flush(self):
        """Write the buffered bytes (waiting for the pool's block first); returns how many were pending. Raises
        OSError (also kept in ``error``)."""
        cdef Py_ssize_t pending = self._used + self._qused
        if self._flush_here() != 0:
            _raise_write_error(self.error, self.offset + self.flushed)
        return pending
