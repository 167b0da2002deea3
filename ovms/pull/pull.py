"""One pull, start to finish: decide what to fetch, fetch it verified, record it, tidy the in-flight state."""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import urllib.parse
from typing import Callable

from ovms.pull import state
from ovms.pull.errors import DiskFullError, PullError
from ovms.pull.hub import HubClient, RemoteFile, raise_for_hub_error
from ovms.pull.paths import ModelPaths, safe_join
from ovms.pull.progress import Progress
from ovms.pull.settings import PullSettings, log_settings
from ovms.pull.transfer import Downloader, FileJob
from ovms.pull.verify import flush_to_disk

log = logging.getLogger("ovms.pull")

DISK_MARGIN_BYTES = 16 << 20


@dataclasses.dataclass(slots=True)
class PullResult:
    model_dir: pathlib.Path
    downloaded: bool  # False when the model was already there (a no-op re-run)
    commit: str | None
    files: list[RemoteFile]


def _allocated(path: pathlib.Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def check_free_space(model_dir: pathlib.Path, files: list[RemoteFile]) -> None:
    """Refuse to start when the files still missing cannot fit (DiskFullError with the numbers)."""
    needed = 0
    for f in files:
        final = model_dir.joinpath(*f.path.split("/"))
        if final.exists():
            continue
        needed += max(0, f.size - min(f.size, _allocated(state.part_path(final))))
    probe = model_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + DISK_MARGIN_BYTES > free:
        raise DiskFullError(
            f"Not enough free disk space in {probe}: the pull needs {needed / 2**30:.2f} GiB more, "
            f"{free / 2**30:.2f} GiB is free.",
            remedy="Free some space or choose another --model_repository_path, then re-run the same command "
                   "(bytes already downloaded are kept).")


def pull_repository(paths: ModelPaths, settings: PullSettings, *, revision: str = "main",
                    select: Callable[[list[RemoteFile]], list[RemoteFile]] | None = None,
                    wanted_in_record: Callable[[dict], bool] | None = None,
                    overwrite: bool = False, stop_requested=lambda: None, hub: HubClient | None = None,
                    progress_stream=None, on_progress: Callable[[int, int], None] | None = None,
                    engine=None) -> PullResult:
    """Bring ``paths.source_model`` at ``revision`` to ``paths.model_dir``, every file verified.

    ``select`` narrows the file list (GGUF); ``wanted_in_record`` says whether a completion record already
    covers this request (default: any record of this repository does). ``on_progress(bytes_on_disk, total)`` is
    called on the download thread as bytes arrive (the download service's job progress). ``engine`` (a
    ``SharedEngine``) runs the transfers on a multi handle shared with other pulls, within its bound.
    """
    model_dir = paths.model_dir
    marker_fd = None
    own_hub = hub is None
    try:
        if overwrite:
            # Lock first: never delete a directory another pull is writing into.
            marker_fd = state.hold_marker(paths.marker, paths.source_model, revision)
            if model_dir.exists():
                log.info("Removing %s (--overwrite_models)", model_dir)
                shutil.rmtree(model_dir)
        record = state.read_record(paths.record)
        if marker_fd is None and not paths.marker.exists():
            if record is not None and record.get("source_model") == paths.source_model and (
                    wanted_in_record is None or wanted_in_record(record)):
                log.info("Model %s is already pulled to %s (commit %s); nothing to download. Use "
                         "--overwrite_models to download it again.", paths.source_model, model_dir,
                         record.get("commit"))
                return PullResult(model_dir, False, record.get("commit"), [])
            if record is None and model_dir.is_dir() and wanted_in_record is None:
                # OVMS's rule (libgit2.cpp): an existing directory is the user's; never touch it without
                # --overwrite_models.
                log.info("Path already exists on local filesystem. Skipping download to path: %s", model_dir)
                return PullResult(model_dir, False, None, [])
        log_settings(settings)
        hub = hub or HubClient(settings)
        commit = hub.commit_sha(paths.source_model, revision)
        files = hub.list_files(paths.source_model, commit)
        if select is not None:
            files = select(files)
        finals = [safe_join(model_dir, f.path) for f in files]  # refuse names escaping model_dir, before any write
        check_free_space(model_dir, files)
        if marker_fd is None:
            marker_fd = state.hold_marker(paths.marker, paths.source_model, revision)
        return _download(paths, settings, hub, revision, commit, files, finals, record, stop_requested,
                         progress_stream, on_progress, engine)
    finally:
        if marker_fd is not None:
            os.close(marker_fd)
        if own_hub and hub is not None:
            hub.close()


def _download(paths: ModelPaths, settings: PullSettings, hub: HubClient, revision: str, commit: str,
              files: list[RemoteFile], finals: list[pathlib.Path], record: dict | None, stop_requested,
              progress_stream, on_progress=None, engine=None) -> PullResult:
    model_dir = paths.model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    state.remove_stale_temporaries([paths.record])  # a run killed while writing the record
    total = sum(f.size for f in files)
    log.info("Pulling %s@%s (commit %s): %d files, %.1f MiB to %s", paths.source_model, revision, commit[:12],
             len(files), total / 2**20, model_dir)
    progress = Progress(total, paths.source_model, stream=progress_stream,
                        log_every=settings.progress_seconds, listener=on_progress)
    if on_progress is not None:
        on_progress(0, total)
    jobs = [FileJob(f, final, hub.resolve_url(paths.source_model, commit, f.path))
            for f, final in zip(files, finals)]
    try:
        downloader = Downloader(settings, hub, paths.source_model, revision, commit, progress, stop_requested,
                                engine=engine)
        progress.start_counting_rate()
        downloader.run(jobs)
    finally:
        progress.close()
    log.info("%s", progress.line())
    if settings.sync:
        flush_to_disk(finals)
    state.write_record(paths.record, paths.source_model, revision, commit, files, previous=record)
    _fsync_dir(model_dir)
    paths.marker.unlink(missing_ok=True)
    log.info("All %d files of %s verified (%s)", len(files), paths.source_model,
             "sha256 for LFS files, git blob sha1 for the others")
    return PullResult(model_dir, True, commit, files)


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch_small(hub: HubClient, settings: PullSettings, repo_id: str, revision: str, names: list[str]
                ) -> tuple[set[str], dict[str, bytes | None]]:
    """The repository's file names, and small files (config.json, ...) for task inference (None: absent)."""
    commit = hub.commit_sha(repo_id, revision)
    present = {f.path for f in hub.list_files(repo_id, commit)}
    out: dict[str, bytes | None] = {}
    for name in names:
        if name not in present:
            out[name] = None
            continue
        url = hub.resolve_url(repo_id, commit, name)
        for _ in range(5):
            resp = hub.get(url)
            if 300 <= resp.status < 400 and resp.headers.get("location"):
                url = urllib.parse.urljoin(url, resp.headers["location"])
                continue
            break
        if resp.status != 200:
            raise_for_hub_error(resp, repo_id, revision, settings)
            raise PullError(f"Could not read {name} of {repo_id} (HTTP {resp.status}).",
                            remedy="Pass --task explicitly, or re-run later.")
        out[name] = resp.body
    return present, out
