"""Local copies of remote model directories, kept in step with the bucket at every poll.

A version directory is downloaded whole into a hidden sibling, its sizes checked, then renamed into place: the
server never sees a half-downloaded version. A version whose objects change (an upload still running, a file
replaced) is downloaded again and swapped in the same way. A version removed from the bucket is removed here
(the registry then unloads it after its requests end); versions the policy does not select are not downloaded.
If the bucket cannot be read, the copy is left as it is, so models keep serving through an outage.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Callable

from ovms.repository import split_url
from ovms.repository.storage import RemoteError, RemoteFile, Storage, open_storage

log = logging.getLogger("ovms.repository")

DIRECTORY_UNIT = "model"  # where a directory that has no versions (a graph, a GenAI model) is kept


def _safe_parts(key: str) -> list[str]:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RemoteError(f"object key {key!r} is not a plain relative path; refusing to write it")
    return parts


class Mirror:
    """Remote directories mirrored under ``root`` (``--model_repository_cache``, else a temporary directory)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = pathlib.Path(root or tempfile.mkdtemp(prefix="ovms-repository-")).absolute()
        self._storages: dict[str, tuple[Storage, str]] = {}

    def local_dir(self, url: str) -> pathlib.Path:
        scheme, bucket, prefix = split_url(url)
        parts = [scheme, bucket, *(prefix.split("/") if prefix else [])]
        if any(p in ("", ".", "..") for p in parts):
            raise RemoteError(f"{url}: the path has empty, '.' or '..' parts")
        return self.root.joinpath(*parts)

    def _storage(self, url: str) -> tuple[Storage, str]:
        if url not in self._storages:
            self._storages[url] = open_storage(url)
        return self._storages[url]

    def sync(self, url: str, *, select: Callable[[list[int]], list[int]] | None) -> pathlib.Path:
        """Bring the copy of ``url`` up to date; return the local directory to serve.

        ``select`` picks the versions to download (the version policy); None means a directory without versions
        (a graph or GenAI model directory), which is also how a versioned model whose root holds graph.pbtxt is
        treated. Raises RemoteError when the bucket cannot be read or holds nothing usable.
        """
        storage, prefix = self._storage(url)
        files = storage.list(prefix)
        if not files:
            raise RemoteError("no objects under this path; check the bucket name and the path")
        for f in files:
            _safe_parts(f.key)
        local = self.local_dir(url)
        local.mkdir(parents=True, exist_ok=True)
        with open(local / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several server processes may share the cache
            if select is None or any(f.key == "graph.pbtxt" for f in files):
                self._sync_unit(storage, prefix, "", files, local / DIRECTORY_UNIT)
                return local / DIRECTORY_UNIT
            versions: dict[int, list[RemoteFile]] = {}
            for f in files:
                head, _, rest = f.key.partition("/")
                if head.isdigit() and int(head) > 0 and rest:
                    versions.setdefault(int(head), []).append(RemoteFile(rest, f.size, f.tag))
            if not versions:
                raise RemoteError("Not a single model version directory has valid numeric name under this path; "
                                  "put the model files in <path>/1/")
            for version in select(sorted(versions)):
                self._sync_unit(storage, prefix, str(version), versions[version], local / str(version))
            for child in local.iterdir():
                if child.name.isdigit() and int(child.name) not in versions:
                    log.info("%s/%s was removed from the bucket: removing its local copy", url, child.name)
                    shutil.rmtree(child, ignore_errors=True)
                    (local / f".manifest-{child.name}.json").unlink(missing_ok=True)
        return local

    @staticmethod
    def _sync_unit(storage: Storage, prefix: str, unit: str, files: list[RemoteFile], target: pathlib.Path) -> None:
        manifest = target.parent / f".manifest-{target.name}.json"
        wanted = sorted([f.key, f.size, f.tag] for f in files)
        try:
            if target.is_dir() and json.loads(manifest.read_text()) == wanted:
                return
        except (OSError, ValueError):
            pass
        partial = target.parent / f".partial-{target.name}-{uuid.uuid4().hex[:8]}"
        base = "/".join(p for p in (prefix, unit) if p)
        try:
            for f in files:
                destination = partial.joinpath(*_safe_parts(f.key))
                destination.parent.mkdir(parents=True, exist_ok=True)
                storage.download(f"{base}/{f.key}" if base else f.key, str(destination))
                if destination.stat().st_size != f.size:
                    raise RemoteError(f"{f.key}: downloaded {destination.stat().st_size} bytes, the listing said "
                                      f"{f.size}; the object changed while it was read")
            old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
            if target.exists():
                os.rename(target, old)
            os.rename(partial, target)
            manifest.write_text(json.dumps(wanted))
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("downloaded %s file(s) of %s into %s", len(files), "/".join(p for p in (prefix, unit) if p) or "/",
                 target)
