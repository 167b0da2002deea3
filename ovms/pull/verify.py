"""Content checks before a file takes its final name: size, then sha256 (LFS) or the git blob sha1 (regular).

Durability is separate (``flush_to_disk`` before the completion record): until that record exists, the
``.lfswip`` marker makes the next run re-check every final file, so a power cut cannot leave a corrupt file
behind a name that is trusted.

The hub's tree listing gives both digests (``lfs.oid`` and ``oid``); checking them is what makes a resumed or
parallel-range download as trustworthy as a single clean one.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import pathlib

READ_BYTES = 8 << 20  # hashlib releases the GIL for buffers > 2 KiB; big reads keep the per-call overhead low


def digest_file(path: pathlib.Path, algorithm: str, size: int) -> str:
    """Hex digest of ``path`` for ``algorithm`` in ("sha256", "git-blob-sha1")."""
    if algorithm == "sha256":
        h = hashlib.sha256()
    elif algorithm == "git-blob-sha1":
        h = hashlib.sha1(b"blob %d\0" % size)
    else:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
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


def check_file(path: pathlib.Path, size: int, algorithm: str, expected: str) -> str | None:
    """None when ``path`` has ``size`` bytes and digest ``expected``; else what is wrong, in words.

    ``algorithm`` is "sha256", "git-blob-sha1", or "size" (the length alone)."""
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return "file is missing"
    if actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if algorithm == "size":  # a plain HTTP file whose server publishes no digest (the download service's
        return None  # remote-url hub without config.sha256): its length is all there is to check
    actual = digest_file(path, algorithm, size)
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
