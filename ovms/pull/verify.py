"""Content checks before a file takes its final name: size, then sha256 (LFS) or the git blob sha1 (regular).

Durability is separate (``flush_to_disk`` before the completion record): until that record exists, the
``.lfswip`` marker makes the next run re-check every final file, so a power cut cannot leave a corrupt file
behind a name that is trusted.

The hub's tree listing gives both digests (``lfs.oid`` and ``oid``); checking them is what makes a resumed or
parallel-range download as trustworthy as a single clean one.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import pathlib
import threading

READ_BYTES = 8 << 20  # hashlib releases the GIL for buffers > 2 KiB; big reads keep the per-call overhead low
log = logging.getLogger("ovms.pull")
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere every file is read through the page cache
_buffers = threading.local()  # one page-aligned read buffer per verifier thread, reused file after file


def _new_hash(algorithm: str, size: int):
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "git-blob-sha1":
        return hashlib.sha1(b"blob %d\0" % size)
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


class HoldBudget:
    """Room for blocks that arrived ahead of their file's digest (all files of one pull together): buffers of
    ``block`` bytes, at most ``limit`` bytes of them, reused block after block (fresh memory costs a page fault
    per page; on a VM that hands free memory back to its host, a slow one). Past the limit a block is not kept
    and its digest reads it back from the disk at the end."""

    def __init__(self, limit: int, block: int) -> None:
        self.limit = limit
        self.block = block
        self.held = 0
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Room for a block kept by reference: it pins its owner's whole block, however few bytes it holds."""
        with self._lock:
            if self.held + self.block > self.limit:
                return False
            self.held += self.block
            return True

    def keep(self, data) -> memoryview | None:
        """A copy of ``data`` in a buffer of the pool, or None when the pool is full (or ``data`` too large)."""
        n = len(data)
        if n > self.block or not self.take():
            return None
        with self._lock:
            buffer = self._free.pop() if self._free else bytearray(self.block)
        view = memoryview(buffer)[:n]
        view[:] = data
        return view

    def give(self, view: memoryview, copied: bool = True) -> None:
        """Return a kept block: a copy's buffer to the pool, a reference to its owner (``view`` is released)."""
        buffer = view.obj
        view.release()
        with self._lock:
            self.held -= self.block
            if copied:
                self._free.append(buffer)


class StreamDigest:
    """A file's digest computed from the blocks the range sinks write, in file order, so that a file written with
    O_DIRECT is not read back: ``offer(pos, block)`` is called (by any thread) after each block's write returned.
    The block that continues the hashed prefix is hashed at once; one further ahead is copied and kept (within
    ``budget``) until the prefix reaches it. ``finish`` reads back from the file only what the prefix did not
    reach: from the first block that could not be kept, or all of it after a rewrite behind the prefix.

    What it guarantees: each byte is hashed as it was written (the buffer ``pwrite`` took), once per process, as
    huggingface_hub's own in-flight hashing does; a resumed file (bytes written by an earlier process) gets no
    stream digest and is read back whole.
    """

    def __init__(self, algorithm: str, size: int, budget: HoldBudget) -> None:
        self.algorithm = algorithm
        self.size = size
        self.hashed = 0  # bytes [0, hashed) are in the hash
        self.broken = False  # bytes behind the prefix were written again: finish hashes the file from byte 0
        self._gap: int | None = None  # the first block not kept (over the budget): the prefix stops there
        self._hash = _new_hash(algorithm, size)
        self._held: dict[int, tuple[memoryview, bool]] = {}  # position -> (block ahead of the prefix, copied?)
        self._budget = budget
        self._lock = threading.Lock()

    def offer(self, pos: int, block, *, keep: bool = False) -> None:
        """``block`` was written at ``pos``. With ``keep`` it is a memoryview that holds its memory (the sink
        gave the block away) and is kept as it is, else it is copied if it must wait for the prefix."""
        n = len(block)
        with self._lock:
            if n == 0 or self.broken or (self._gap is not None and pos >= self._gap):
                return
            if pos == self.hashed:
                self._hash.update(block)
                self.hashed += n
                while self.hashed in self._held:
                    data, copied = self._held.pop(self.hashed)
                    self._hash.update(data)
                    self.hashed += len(data)
                    self._budget.give(data, copied)
            elif pos < self.hashed or pos in self._held:
                self.broken = True  # only the file can say what those bytes are now
                self._drop(0)
            else:
                if keep:
                    kept = block if self._budget.take() else None
                else:
                    kept = self._budget.keep(block)
                if kept is not None:
                    self._held[pos] = (kept, not keep)
                else:
                    self._gap = pos  # blocks after it can never join the prefix: none is kept
                    self._drop(pos)

    def _drop(self, start: int) -> None:
        for pos in [p for p in self._held if p >= start]:
            self._budget.give(*self._held.pop(pos))

    def discard(self) -> None:
        """The file's bytes are no longer trusted (a restart): nothing kept, nothing hashed counts. Never waits:
        a ``finish`` under way (reading the file back) has dropped what was kept already."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self.broken = True
            self._drop(0)
        finally:
            self._lock.release()

    def finish(self, path: pathlib.Path, *, direct: bool = False) -> tuple[str, int]:
        """(hex digest, bytes read back from ``path``) once every block was offered."""
        with self._lock:
            self._drop(0)
            if self.broken:
                h, start = _new_hash(self.algorithm, self.size), 0
            else:
                h, start = self._hash, self.hashed
            if start >= self.size:
                return h.hexdigest(), 0
            return _continue_digest(h, path, start, self.size, direct), self.size - start


def _read_direct(h, path: pathlib.Path, start: int, size: int) -> str | None:
    """``h`` extended over bytes [start, size) of ``path`` read with O_DIRECT into a reused buffer: a file the pull
    wrote with O_DIRECT is not in the page cache, and reading it through the cache would allocate fresh memory for
    every byte (slow on a VM that returns free memory to its host). None when the filesystem refuses O_DIRECT."""
    try:
        fd = os.open(path, os.O_RDONLY | O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    try:
        buffer = getattr(_buffers, "block", None)
        if buffer is None:
            buffer = _buffers.block = mmap.mmap(-1, READ_BYTES)  # anonymous mappings are page-aligned
        offset = start - start % 4096  # O_DIRECT reads start on an aligned offset
        skip = start - offset
        with memoryview(buffer) as view:
            while offset < size:
                try:
                    n = os.preadv(fd, [buffer], offset)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        return None
                    raise
                if n <= 0:
                    break
                n = min(n, size - offset)
                h.update(view[skip:n])
                offset += n
                skip = 0
        return h.hexdigest()
    finally:
        os.close(fd)


def _continue_digest(h, path: pathlib.Path, start: int, size: int, direct: bool) -> str:
    """``h`` extended over bytes [start, size) of ``path`` (O_DIRECT where asked and allowed)."""
    if direct and O_DIRECT:
        got = _read_direct(h.copy(), path, start, size)
        if got is not None:
            return got
    with open(path, "rb", buffering=0) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        m.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(m)
        try:
            for at in range(start, size, READ_BYTES):
                h.update(view[at:min(size, at + READ_BYTES)])
        finally:
            view.release()
    return h.hexdigest()


def digest_file(path: pathlib.Path, algorithm: str, size: int, *, direct: bool = False) -> str:
    """Hex digest of ``path`` for ``algorithm`` in ("sha256", "git-blob-sha1"); ``direct`` reads it with
    O_DIRECT where the filesystem allows (for files written that way)."""
    h = _new_hash(algorithm, size)
    if size == 0:
        return h.hexdigest()
    return _continue_digest(h, path, 0, size, direct)


def check_file(path: pathlib.Path, size: int, algorithm: str, expected: str, *, direct: bool = False,
               stream: StreamDigest | None = None) -> str | None:
    """None when ``path`` has ``size`` bytes and digest ``expected``; else what is wrong, in words.

    ``algorithm`` is "sha256", "git-blob-sha1", or "size" (the length alone); ``direct``: see ``digest_file``;
    ``stream``: the digest of the blocks as they were written (only what it lacks is read from ``path``)."""
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return "file is missing"
    if actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if algorithm == "size":  # a plain HTTP file whose server publishes no digest (the download service's
        return None  # remote-url hub without config.sha256): its length is all there is to check
    if stream is not None:
        actual, read_back = stream.finish(path, direct=direct)
        log.debug("%s: %d of %d bytes hashed as they were written, %d read back", path.name, size - read_back, size,
                  read_back)
    else:
        actual = digest_file(path, algorithm, size, direct=direct)
    if actual != expected:
        return f"{algorithm} {actual}, expected {expected}"
    return None


def flush_to_disk(paths: list[pathlib.Path]) -> None:
    """fdatasync every file, so a completion record written afterwards never outlives the data after a power
    cut. Most bytes are already on disk by then: the range sink writes large files with O_DIRECT and starts
    writeback of the rest block by block."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
