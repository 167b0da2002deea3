"""On-disk state of a pull: partial files with their range sidecars, the ``.lfswip`` marker, the record.

A sidecar (``<file>.lfs_part.ranges``) lists the file's ranges and how many bytes of each are on disk. It is
written before the first byte of a part (so a part without one is never trusted) and then every checkpoint,
atomically (temp file + rename), and it only ever claims bytes whose ``pwrite`` already returned: after a kill
the next run re-fetches at most one checkpoint interval per range. A power cut can lose page-cache bytes the
sidecar claims; the hash check before the final rename catches that and the file is fetched again.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import time

from ovms.pull.errors import PullError
from ovms.pull.hub import RemoteFile
from ovms.pull.paths import PART_SUFFIX, RANGES_SUFFIX

SIDECAR_VERSION = 1
RECORD_VERSION = 1


@dataclasses.dataclass(slots=True)
class Segment:
    """Bytes [start, end) of a file; ``done`` bytes from ``start`` are on disk."""

    start: int
    end: int
    done: int = 0

    @property
    def next_offset(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.start - self.done

    @property
    def complete(self) -> bool:
        return self.start + self.done >= self.end


def plan_segments(size: int, segment_bytes: int, max_segments: int) -> list[Segment]:
    """Split ``size`` bytes into at most ``max_segments`` ranges of at least ``segment_bytes`` (one if small)."""
    count = max(1, min(max_segments, -(-size // segment_bytes) if size else 1))
    step = -(-size // count) if size else 0
    return [Segment(i * step, min(size, (i + 1) * step)) for i in range(count) if i * step < size] or [
        Segment(0, 0)]


def part_path(final: pathlib.Path) -> pathlib.Path:
    return final.with_name(final.name + PART_SUFFIX)


def sidecar_path(final: pathlib.Path) -> pathlib.Path:
    return final.with_name(final.name + RANGES_SUFFIX)


def write_json_atomic(path: pathlib.Path, payload: dict, *, durable: bool = False) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    data = json.dumps(payload, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_sidecar(final: pathlib.Path, remote: RemoteFile, commit: str, segments: list[Segment]) -> None:
    write_json_atomic(sidecar_path(final), {
        "version": SIDECAR_VERSION, "path": remote.path, "size": remote.size, "commit": commit,
        "digest": list(remote.expected_digest), "segments": [[s.start, s.end, s.done] for s in segments],
    })


def load_sidecar(final: pathlib.Path, remote: RemoteFile) -> list[Segment] | None:
    """The ranges on disk for ``final``, or None when there is no usable state (then start from zero).

    Usable means: the sidecar parses, describes this very content (size and digest; the commit may differ when
    the file did not change), its ranges tile [0, size) and the part file exists.
    """
    try:
        data = json.loads(sidecar_path(final).read_text())
        if data.get("version") != SIDECAR_VERSION or data["size"] != remote.size:
            return None
        if tuple(data["digest"]) != remote.expected_digest:
            return None
        segments = [Segment(int(a), int(b), int(d)) for a, b, d in data["segments"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not part_path(final).exists():
        return None
    position = 0
    for s in segments:
        if s.start != position or s.end < s.start or not 0 <= s.done <= s.end - s.start:
            return None
        position = s.end
    if position != remote.size:
        return None
    return segments


def remove_stale_temporaries(targets: list[pathlib.Path]) -> list[pathlib.Path]:
    """Delete the temporary copies (``<target>.tmp<pid>``) that ``write_json_atomic`` left for ``targets`` when
    its process was killed between writing one and renaming it; returns what was deleted.

    Only for files this run owns (under the ``.lfswip`` marker's lock): no other process writes them now. Each
    directory is listed once. ``bench/pull_kill_resume.py`` found them left in the model directory for good
    (2 of 100 SIGKILLs: a kill right after a sidecar's ``write`` and before its ``rename``).
    """
    wanted: dict[pathlib.Path, set[str]] = {}
    for target in targets:
        wanted.setdefault(target.parent, set()).add(target.name + ".tmp")
    removed = []
    for directory, prefixes in wanted.items():
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            stem, dot, pid = name.rpartition(".tmp")
            if dot and pid.isdigit() and stem + dot in prefixes:
                try:
                    os.unlink(directory / name)
                except FileNotFoundError:
                    continue
                removed.append(directory / name)
    return removed


def discard_partial(final: pathlib.Path) -> None:
    for p in (part_path(final), sidecar_path(final)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def hold_marker(marker: pathlib.Path, source_model: str, revision: str) -> int:
    """Create (or take over) the ``.lfswip`` marker and lock it; returns the fd to keep open while pulling.

    The lock (flock, released by the kernel even on SIGKILL) keeps two pulls from writing one model at once.
    """
    marker.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}").get("pid", "?")
        except ValueError:
            owner = "?"
        os.close(fd)
        raise PullError(f"Another pull (pid {owner}) is downloading {source_model} into this directory now.",
                        remedy="Wait for it to finish or stop it, then re-run the same command.") from None
    payload = json.dumps({"source_model": source_model, "revision": revision, "pid": os.getpid(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, payload, 0)
    os.fsync(fd)
    return fd


def read_record(record: pathlib.Path) -> dict | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == RECORD_VERSION else None


def write_record(record: pathlib.Path, source_model: str, revision: str, commit: str,
                 files: list[RemoteFile], previous: dict | None = None) -> None:
    entries = dict((previous or {}).get("files", {}))
    for f in files:
        algorithm, digest = f.expected_digest
        entries[f.path] = {"size": f.size, algorithm: digest}
    write_json_atomic(record, {"version": RECORD_VERSION, "source_model": source_model, "revision": revision,
                               "commit": commit, "files": entries,
                               "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, durable=True)
