"""Content checks before a file takes its final name: size, then sha256 (LFS) or the git blob sha1 (regular).

Durability is separate (``flush_to_disk`` before the completion record): until that record exists, the
``.lfswip`` marker makes the next run re-check every final file, so a power cut cannot leave a corrupt file
behind a name that is trusted.

The hub's tree listing gives both digests (``lfs.oid`` and ``oid``); checking them is what makes a resumed or
parallel-range download as trustworthy as a single clean one.

A file being downloaded is hashed while it arrives (``PrefixDigest``): the engine extends the digest over the
contiguous prefix of the part file whose ``pwrite`` returned, reading those bytes back from the page cache
right after they were written, on the verifier threads, while the rest downloads; at the end only the tail is
left to hash. What is hashed is what the part file held when it was read, once: a byte changed in the part
file behind the digest (by another process, or lost in a power cut) is not seen by this check. The power cut
is covered by the ``.lfswip`` re-check above; a resumed run starts its digest at byte 0 and reads back every
byte a previous process wrote, and a range fetched again from an offset inside the hashed prefix starts a new
digest.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import pathlib
import threading

READ_BYTES = 8 << 20  # hashlib releases the GIL for buffers > 2 KiB; big reads keep the per-call overhead low


PREFIX_READ_BYTES = 1 << 20  # PrefixDigest reads into one reused buffer of this size (stays in the L2 cache)


def new_hash(algorithm: str, size: int):
    """A hashlib object for ``algorithm`` in ("sha256", "git-blob-sha1") over content of ``size`` bytes."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "git-blob-sha1":
        return hashlib.sha1(b"blob %d\0" % size)
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


class PrefixDigest:
    """The digest of bytes [0, ``hashed``) of the file at ``path``, extended as more of its prefix is on disk.

    ``advance(end)`` reads [hashed, end) from the file and hashes it (hashlib releases the GIL for large
    buffers); calls never overlap (a lock), and an ``end`` at or below ``hashed`` does nothing, so an advance
    that comes after the final one is harmless. The caller promises that the bytes below ``end`` are written
    and will not be written again; when they may be (a range restarted from an earlier offset), it starts a
    new PrefixDigest. ``before_final`` is how many bytes were hashed when ``check_file`` took over: the part of
    the file hashed while the download was still running.
    """

    def __init__(self, path: pathlib.Path, algorithm: str, size: int) -> None:
        self.path = path
        self.algorithm = algorithm
        self.size = size
        self.hashed = 0
        self.before_final = 0
        self._hash = new_hash(algorithm, size)
        self._lock = threading.Lock()

    def advance(self, end: int) -> int:
        """Hash the file's bytes up to ``end`` (at most ``size``); returns ``hashed``. Raises OSError when the
        file cannot be read, ValueError when it ends before ``end``."""
        end = min(end, self.size)
        with self._lock:
            if end <= self.hashed:
                return self.hashed
            buffer = bytearray(min(PREFIX_READ_BYTES, end - self.hashed))
            view = memoryview(buffer)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                while self.hashed < end:
                    want = min(len(buffer), end - self.hashed)
                    n = os.preadv(fd, [view[:want]], self.hashed)
                    if n <= 0:
                        raise ValueError(f"{self.path} ends at {self.hashed} bytes, expected {end}")
                    self._hash.update(view[:n])
                    self.hashed += n
            finally:
                os.close(fd)
            return self.hashed

    def finish(self) -> str:
        """Hash the rest of the file and return the hex digest."""
        with self._lock:
            self.before_final = self.hashed
        self.advance(self.size)
        return self._hash.hexdigest()


def digest_file(path: pathlib.Path, algorithm: str, size: int) -> str:
    """Hex digest of ``path`` for ``algorithm`` in ("sha256", "git-blob-sha1")."""
    h = new_hash(algorithm, size)
    if size == 0:
        return h.hexdigest()
    # mmap: hash straight from the page cache, without copying the file into a buffer first
    with open(path, "rb", buffering=0) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        m.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(m)
        try:
            for start in range(0, len(m), READ_BYTES):
                h.update(view[start:start + READ_BYTES])
        finally:
            view.release()
    return h.hexdigest()


def check_file(path: pathlib.Path, size: int, algorithm: str, expected: str, *,
               prefix: PrefixDigest | None = None) -> str | None:
    """None when ``path`` has ``size`` bytes and digest ``expected``; else what is wrong, in words.

    ``algorithm`` is "sha256", "git-blob-sha1", or "size" (the length alone). With ``prefix`` (a PrefixDigest
    of ``path`` for ``algorithm``), only the bytes it has not hashed yet are read."""
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return "file is missing"
    if actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if algorithm == "size":  # a plain HTTP file whose server publishes no digest (the download service's
        return None  # remote-url hub without config.sha256): its length is all there is to check
    if prefix is None:
        actual = digest_file(path, algorithm, size)
    else:
        try:
            actual = prefix.finish()
        except ValueError as exc:  # the file shrank under us
            return str(exc)
    if actual != expected:
        return f"{algorithm} {actual}, expected {expected}"
    return None


def flush_to_disk(paths: list[pathlib.Path]) -> None:
    """fdatasync every file, so a completion record written afterwards never outlives the data after a power
    cut. Most bytes are already on disk by then: the range sink starts writeback block by block."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
