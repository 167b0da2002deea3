"""The download engine: many files, and many ranges of one large file, at once on one pycurl ``CurlMulti``.

Every file goes to ``<file>.lfs_part``, each chunk written at its own offset by the native range writer, while
``state`` records which ranges are on disk. A failed transfer (dropped connection, 5xx, stall, short body) is
retried from the last byte on disk after ``GIT_LFS_RESUME_INTERVAL_SECONDS``, at most
``GIT_LFS_RESUME_ATTEMPTS`` times per file. When all ranges of a file are in, a worker thread checks its size
and hash; only then does it take its final name. Redirects are followed by hand so the bearer token goes to the
hub's own origin only (the CDN URL is pre-signed).

How many transfers run at once is not a constant: ``ConnectionControl`` starts with a few, measures the total
rate over short windows while every slot is busy, and doubles the count while that rate grows by more than a
margin (a CDN edge that caps each connection rewards more of them; a saturated link or CPU does not), up to
``OVMS_PULL_CONNECTIONS``. How many ranges a file is fetched in follows the same measure: a range about to start
is cut to what one connection brings in ``RANGE_SECONDS`` at the observed rate (its rest stays queued, first in
line, for the next free connection), so the last ranges in flight end close together and free connections always
find work. Only ranges not yet requested are cut (a request in flight is never stopped: the bytes in the pipe
would come twice); the sidecar records the new tiling before the cut range starts.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import logging
import os
import pathlib
import time
import urllib.parse

import pycurl

from ovms._native import load as load_native
from ovms.pull import responses, state
from ovms.pull.errors import (DiskFullError, InterruptedPull, NetworkError, PullError, RESUME_HINT,
                              VerificationError)
from ovms.pull.hub import HubClient, RemoteFile, Response, curl_error_text, origin, raise_for_hub_error
from ovms.pull.settings import PullSettings
from ovms.pull.verify import HoldBudget, StreamDigest, check_file

log = logging.getLogger("ovms.pull")

BUFFER_BYTES = 1 << 20  # CURLOPT_BUFFERSIZE: larger socket reads (libcurl allows up to 10 MiB)
SINK_BYTES = 4 << 20  # RangeSink block: one pwrite per 4 MiB
MAX_REDIRECTS = 10
ERROR_BODY_BYTES = 4096
PROBE_SECONDS = 0.3  # length of one rate measurement window (all slots busy throughout)
WARMUP_SECONDS = 0.1  # after a change of the count, before the next window starts (new requests under way)
GROWTH_MARGIN = 0.15  # more connections are kept only if the total rate grew by more than this fraction
RANGE_SECONDS = 1.0  # a range about to start is cut to what one connection brings in this long
MIN_RANGE_BYTES = 1 << 20  # never cut a range smaller than this
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux only; elsewhere every write goes through the page cache
WRITE_THREADS = 4  # O_DIRECT block writes run here (they wait for the disk), each sink's next block filling meanwhile
STRIPE_BYTES = 4 << 20  # a new large file's ranges are cut in order to this size (or OVMS_PULL_SEGMENT_BYTES if
# smaller), so its blocks arrive nearly in order
CHECKPOINT_WAIT_SECONDS = 0.05  # a checkpoint waits at most this long for the pool's writes it asked for
UNTRACKED_BYTES = 1 << 20  # files up to this size get no sidecar: a stopped pull fetches them again whole
HOLD_BYTES = 96 << 20  # blocks ahead of their file's digest kept in memory (all files together), beyond: read back


def disk_full(path: pathlib.Path, needed: int | None = None) -> DiskFullError:
    need = f" (the pull needs {needed / 2**30:.2f} GiB more)" if needed else ""
    return DiskFullError(f"The disk holding {path} is full{need}.",
                         remedy="Free some space or choose another --model_repository_path; then re-run the "
                                "same command to resume.")


@dataclasses.dataclass(eq=False)
class FileJob:
    """One file to bring to its final name, verified."""

    remote: RemoteFile
    final: pathlib.Path
    url: str  # the hub's resolve URL
    location: str | None = None  # where the hub redirected us (the CDN), reused for every range
    segments: list[state.Segment] = dataclasses.field(default_factory=list)
    fd: int = -1
    direct_fd: int = -1  # the part file opened O_DIRECT (large files): the sinks' aligned blocks go there
    direct_refused: bool = False  # a write through direct_fd failed with EINVAL: new sinks do without it
    fresh: bool = True  # no part file yet: create it (and its sidecar) when the first range starts
    phase: str = "new"  # new -> checking (final exists) | downloading -> verifying -> done
    failures: int = 0
    verify_failures: int = 0
    not_before: float = 0.0
    redirects: int = 0
    active: set = dataclasses.field(default_factory=set)
    dirty: bool = False
    splittable: bool = True  # False once the server ignored a Range request (one stream from byte 0 then)
    stream: StreamDigest | None = None  # the digest of the blocks as written (a new file's); None: read back at the end

    @property
    def part(self) -> pathlib.Path:
        return state.part_path(self.final)

    @property
    def done_bytes(self) -> int:
        return sum(s.done for s in self.segments)


class ConnectionControl:
    """How many transfers to run at once, chosen from the throughput they show.

    ``observe`` is called every turn of the loop with the bytes received so far and the transfers in flight. A
    window counts only while every slot is busy (else the rate says nothing about the count); after
    ``PROBE_SECONDS`` its rate is compared with the previous level's: more than ``GROWTH_MARGIN`` better, the
    count doubles (up to ``most``); short of that growth, it goes back to the best count measured and stays there
    (connections that bring nothing cost memory, a block each, and the server's work).
    """

    def __init__(self, start: int, most: int) -> None:
        self.most = max(1, most)
        self.limit = max(1, min(start, self.most))
        self.settled = self.limit >= self.most
        self.window_start: float | None = None
        self.window_bytes = 0
        self.not_before = 0.0  # no window starts before this (warm-up after a change)
        self.best: tuple[int, float] | None = None  # (count, rate) of the best level measured
        self.rate = 0.0  # the last measured total rate (bytes/s)
        self.per_connection = 0.0  # bytes/s per connection in the last window

    def observe(self, now: float, received: int, active: int) -> None:
        if active < self.limit:
            self.window_start = None  # not saturated: what we would measure is the work, not the connections
            return
        if self.window_start is None:
            if now >= self.not_before:
                self.window_start, self.window_bytes = now, received
            return
        elapsed = now - self.window_start
        if elapsed < PROBE_SECONDS:
            return
        rate = (received - self.window_bytes) / elapsed
        self.rate, self.per_connection = rate, rate / active
        self.window_start = None
        self.not_before = now + WARMUP_SECONDS
        if self.settled:
            return
        if self.best is None or rate > self.best[1] * (1 + GROWTH_MARGIN):
            self.best = (self.limit, rate)
            grown = min(self.most, self.limit * 2)
            log.debug("%d connections: %.1f MiB/s (%.1f per connection); %s", self.limit, rate / 2**20,
                      self.per_connection / 2**20, f"trying {grown}" if grown > self.limit else "at the bound")
            self.settled = grown == self.limit
            self.limit = grown
            return
        log.debug("%d connections: %.1f MiB/s, not %d%% more than %.1f MiB/s with %d; back to %d", self.limit,
                  rate / 2**20, GROWTH_MARGIN * 100, self.best[1] / 2**20, self.best[0], self.best[0])
        self.limit = self.best[0]
        self.settled = True


@dataclasses.dataclass(eq=False)
class Transfer:
    """One HTTP request for the rest of one segment."""

    job: FileJob
    segment: state.Segment
    url: str
    handle: pycurl.Curl
    to_hub: bool
    ranged: bool
    status: int = 0
    headers: dict = dataclasses.field(default_factory=dict)
    sink: object = None  # rangewrite.RangeSink: pycurl's WRITEFUNCTION, writes at the segment's offsets
    base_done: int = 0  # segment.done when this transfer started
    reported: int = 0  # sink bytes already counted in the progress
    kind: str = ""  # "" until the headers are complete (or the end): body | redirect | error
    abort: str = ""  # why the transfer was stopped on purpose
    fatal: BaseException | None = None
    last_activity: float = dataclasses.field(default_factory=time.monotonic)
    pooled: bool = False  # the sink writes its blocks in the write pool (O_DIRECT)
    detached: bool = False  # off the multi handle (its handle serves another range)
    closing: object = None  # the future of the sink's last write, while the body's end waits for it
    ended: tuple = ()  # (curl code, message) of a transfer that is closing


class Downloader:
    """Runs a set of FileJobs to completion or raises a PullError (state on disk stays resumable)."""

    def __init__(self, settings: PullSettings, hub: HubClient, repo_id: str, revision: str, commit: str,
                 progress, stop_requested=lambda: None, *, engine=None) -> None:
        """With ``engine`` (a ``SharedEngine``), the transfers run on its one multi handle, within its global
        bound, next to other Downloaders' (the download service's jobs); without, on a multi handle of its own."""
        self.settings = settings
        self.hub = hub
        self.repo_id = repo_id
        self.revision = revision
        self.commit = commit
        self.progress = progress
        self.stop_requested = stop_requested  # returns a signal name when the user asked to stop
        self.writer = load_native("rangewrite")
        log.debug("Range writer: %s", self.writer.__name__)
        self.engine = engine
        self.multi = engine.multi if engine is not None else pycurl.CurlMulti()
        self.idle_handles: list[pycurl.Curl] = []
        self.queue: collections.deque[tuple[FileJob, state.Segment]] = collections.deque()
        self.transfers: dict[pycurl.Curl, Transfer] = {}
        self.closing: list[Transfer] = []  # ended on the wire, their last block still being written
        self.verifier = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ovms-verify")
        self.verifying: dict[concurrent.futures.Future, FileJob] = {}
        self.writes = concurrent.futures.ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="ovms-write")
        self.holds = HoldBudget(HOLD_BYTES, SINK_BYTES + 4096)  # a sink's block, aligned, is at most this
        if settings.direct_io and O_DIRECT:
            # The first sinks' blocks, faulted in by the write pool while the hub is asked what to fetch.
            self.writes.submit(self.writer.reserve, 2 * min(settings.initial_connections, settings.connections),
                               SINK_BYTES)
        self.jobs: list[FileJob] = []
        self.control = engine.control if engine is not None else ConnectionControl(settings.initial_connections,
                                                                                    settings.connections)
        self.received = 0  # body bytes received by all transfers (the rate the control measures)
        self.last_checkpoint = time.monotonic()

    # ---- public ----------------------------------------------------------------------------------------
    def run(self, jobs: list[FileJob]) -> None:
        self.jobs = jobs
        handed = False
        try:
            for stale in state.remove_stale_temporaries([state.sidecar_path(job.final) for job in jobs]):
                log.debug("Removed %s, left by a run killed while it recorded progress", stale)
            for job in jobs:
                self._begin(job)
            if self.engine is not None:
                handed = True
                self.engine.serve(self)  # its thread runs the turns and the shutdown; returns or raises at the end
            else:
                self._loop()
        finally:
            if not handed:
                self._shutdown()

    # ---- job life cycle --------------------------------------------------------------------------------
    def _begin(self, job: FileJob) -> None:
        if job.final.exists():
            # Left by an earlier run of this unfinished pull: trust it only after the same check as a new one.
            job.phase = "checking"
            self._submit_check(job, job.final)
            return
        self._open(job)

    def _open(self, job: FileJob, *, fresh: bool = False) -> None:
        """Plan the file's ranges (or take them from its sidecar) and queue what is missing.

        The part file itself is created or opened only when its first range starts (``_ensure_open``): a
        repository of thousands of files never holds thousands of descriptors.
        """
        segments = None if fresh or not self.settings.resume_enabled else state.load_sidecar(job.final, job.remote)
        if segments is None:
            state.discard_partial(job.final)
            self._restream(job)
            if job.stream is not None and job.remote.size > self.settings.segment_bytes:
                # One range, cut into stripes in order as connections take it (``_cut``): the blocks of the file
                # then arrive nearly in order and its digest follows them in memory.
                segments = [state.Segment(0, job.remote.size)]
            else:
                segments = state.plan_segments(job.remote.size, self.settings.segment_bytes,
                                               self.settings.connections)
            job.fresh = True
        else:
            job.fresh = False
            job.stream = None  # bytes written by an earlier process: the digest reads the whole file at the end
            done = sum(s.done for s in segments)
            if done:
                log.info("Resuming %s: %.1f of %.1f MiB already on disk", job.remote.path, done / 2**20,
                         job.remote.size / 2**20)
                self.progress.update(done)
        job.segments = segments
        job.phase = "downloading"
        for seg in segments:
            if not seg.complete:
                self.queue.append((job, seg))
        if all(s.complete for s in segments):
            self._segments_complete(job)

    def _record(self, job: FileJob) -> None:
        """Save the file's sidecar (its ranges and what is on disk), if it has one: a file of at most
        ``UNTRACKED_BYTES`` has none, and a part file without a sidecar is never trusted, so a run that stops
        midway fetches it again whole (a few KB of JSON), and the pull creates two files fewer for each."""
        if job.remote.size > UNTRACKED_BYTES:
            state.save_sidecar(job.final, job.remote, self.commit, job.segments)

    def _restream(self, job: FileJob) -> None:
        """A new digest for a file whose bytes are all (re)written from now on."""
        if job.stream is not None:
            job.stream.discard()
        algorithm, _ = job.remote.expected_digest
        job.stream = StreamDigest(algorithm, job.remote.size, self.holds) if algorithm != "size" else None

    def _compact(self, job: FileJob) -> None:
        """Adjacent complete ranges that no transfer holds become one, so the sidecar stays short."""
        held = {id(t.segment) for t in job.active}
        merged: list[state.Segment] = []
        for seg in job.segments:
            last = merged[-1] if merged else None
            if (last is not None and last.complete and seg.complete and last.end == seg.start
                    and id(last) not in held and id(seg) not in held):
                merged[-1] = state.Segment(last.start, seg.end, seg.end - last.start)
            else:
                merged.append(seg)
        job.segments = merged

    def _direct(self, job: FileJob) -> bool:
        """Large files are written with O_DIRECT: page-cache writes copy every byte into fresh memory, which is
        what bounded a pull on a VM whose host takes freed memory back (~420 MB/s against 2 GB/s direct)."""
        return self.settings.direct_io and bool(O_DIRECT) and job.remote.size > self.settings.segment_bytes

    def _open_direct(self, job: FileJob) -> None:
        if not self._direct(job):
            return
        try:
            job.direct_fd = os.open(job.part, os.O_WRONLY | O_DIRECT)
        except OSError as exc:  # EINVAL: the filesystem takes no direct I/O (tmpfs before Linux 6.6, some FUSE)
            log.debug("%s: no O_DIRECT here (%s); writing through the page cache", job.part, exc)

    def _close(self, job: FileJob) -> None:
        for name in ("fd", "direct_fd"):
            fd = getattr(job, name)
            if fd >= 0:
                setattr(job, name, -1)
                os.close(fd)

    def _ensure_open(self, job: FileJob) -> None:
        if job.fd >= 0:
            return
        if not job.fresh:
            job.fd = os.open(job.part, os.O_WRONLY)
            self._open_direct(job)
            return
        job.final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(job.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if job.remote.size:
                os.posix_fallocate(fd, 0, job.remote.size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                raise disk_full(job.final, job.remote.size) from None
            # EOPNOTSUPP/EINVAL on some filesystems: fine, pwrite extends the file as needed.
        job.fd = fd
        job.fresh = False
        self._open_direct(job)
        # The sidecar exists before the first byte: a part without one is never trusted.
        self._record(job)

    def _segments_complete(self, job: FileJob) -> None:
        self._ensure_open(job)  # an empty file has no range to start it
        self._record(job)
        self._close(job)
        job.phase = "verifying"
        self._submit_check(job, job.part)

    def _submit_check(self, job: FileJob, path: pathlib.Path) -> None:
        algorithm, digest = job.remote.expected_digest
        future = self.verifier.submit(check_file, path, job.remote.size, algorithm, digest,
                                      direct=self._direct(job),
                                      stream=job.stream if job.phase == "verifying" else None)
        self.verifying[future] = job

    def _checked(self, job: FileJob, problem: str | None) -> None:
        if job.phase == "checking":
            if problem is None:
                self.progress.update(job.remote.size)
                job.phase = "done"
                # A run killed between the rename and the sidecar's removal left the sidecar behind.
                state.discard_partial(job.final)
                log.debug("%s already on disk and verified", job.remote.path)
                return
            log.warning("%s on disk does not match the hub (%s); downloading it again", job.remote.path, problem)
            job.final.unlink(missing_ok=True)
            self._open(job, fresh=True)
            return
        if problem is None:
            os.replace(job.part, job.final)
            state.sidecar_path(job.final).unlink(missing_ok=True)
            job.phase = "done"
            log.debug("%s verified (%s)", job.remote.path, job.remote.expected_digest[0])
            return
        job.verify_failures += 1
        limit = max(1, self.settings.resume_attempts)
        if job.verify_failures > limit:
            raise VerificationError(
                f"{job.remote.path} failed verification {job.verify_failures} times ({problem}).",
                remedy=f"The hub or a proxy/mirror between you and it serves corrupt data for {self.repo_id}. "
                       "Check HF_ENDPOINT and https_proxy, then re-run the same command.")
        log.warning("%s failed verification (%s); fetching it again (attempt %d of %d)", job.remote.path,
                    problem, job.verify_failures + 1, limit + 1)
        self.progress.update(-job.remote.size)
        self._open(job, fresh=True)

    # ---- transfers ---------------------------------------------------------------------------------------
    def _start(self, job: FileJob, seg: state.Segment) -> None:
        self._ensure_open(job)
        url = job.location or job.url
        handle = self.idle_handles.pop() if self.idle_handles else pycurl.Curl()
        handle.reset()
        to_hub = origin(url) == origin(self.settings.endpoint)
        ranged = not (seg.next_offset == 0 and seg.end == job.remote.size)
        t = Transfer(job, seg, url, handle, to_hub, ranged, base_done=seg.done)
        direct = job.direct_fd >= 0 and not job.direct_refused
        t.sink = self.writer.RangeSink(job.fd, seg.next_offset, seg.remaining, SINK_BYTES,
                                       writeback=self.settings.sync, direct_fd=job.direct_fd if direct else -1,
                                       pool=self.writes if direct else None, digest=job.stream)
        t.pooled = direct
        t.sink.mode = self.writer.MODE_ABORT  # until the headers say what the body is
        headers = ["Accept-Encoding: identity"]
        if to_hub:
            headers += self.hub.auth_headers(url)
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.HTTPHEADER, headers)
        if ranged:
            handle.setopt(pycurl.RANGE, f"{seg.next_offset}-{seg.end - 1}")
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.USERAGENT, "ovms-pull/0.1 (+pycurl)")
        handle.setopt(pycurl.BUFFERSIZE, BUFFER_BYTES)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, int(self.settings.connect_timeout * 1000))
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.TCP_NODELAY, 1)
        if self.settings.proxy:
            handle.setopt(pycurl.PROXY, self.settings.proxy)
        handle.setopt(pycurl.HEADERFUNCTION, lambda line, t=t: self._on_header(t, line))
        handle.setopt(pycurl.WRITEFUNCTION, t.sink.write)
        self.transfers[handle] = t
        job.active.add(t)
        self.multi.add_handle(handle)

    def _on_header(self, t: Transfer, line: bytes) -> None:
        t.last_activity = time.monotonic()
        text = line.decode("iso-8859-1").strip()
        if not text:
            if t.status >= 200 and not t.kind:  # end of the final response's headers (1xx ones go by)
                self._classify(t)
            return
        if text[:5].upper() == "HTTP/":
            t.headers.clear()
            parts = text.split()
            t.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        elif ":" in text:
            k, v = text.split(":", 1)
            t.headers[k.strip().lower()] = v.strip()

    def _classify(self, t: Transfer) -> None:
        """Decide once what the response is and set the sink's mode (abort reason in ``t.abort``)."""
        job, seg, w = t.job, t.segment, self.writer
        verdict = responses.classify(t.status, t.headers, next_offset=seg.next_offset, segment_end=seg.end,
                                     file_size=job.remote.size, ranged=t.ranged,
                                     single_segment=len(job.segments) == 1)
        t.kind = {responses.DISCARD: "redirect", responses.CAPTURE: "error"}.get(verdict.action, "body")
        if verdict.action == responses.DISCARD:
            t.sink.mode = w.MODE_DISCARD
        elif verdict.action == responses.CAPTURE:
            t.sink.mode = w.MODE_CAPTURE
        elif verdict.action == responses.WRITE:
            t.sink.mode = w.MODE_BODY
        elif verdict.action == responses.RESTART_AT_ZERO:
            log.warning("%s: %s; restarting this file from byte 0", job.remote.path, verdict.reason)
            self.progress.update(-seg.done)
            seg.done = t.base_done = 0
            self._restream(job)
            t.sink.digest = job.stream
            t.sink.reset(0, job.remote.size)
            t.sink.mode = w.MODE_BODY
        else:  # ABORT or COLLAPSE
            t.abort = verdict.reason if verdict.action == responses.ABORT else responses.COLLAPSE
            t.sink.mode = w.MODE_ABORT

    def _absorb(self, t: Transfer) -> None:
        """Bring the segment and the progress up to date with what the sink has (done = bytes on disk)."""
        t.segment.done = t.base_done + t.sink.flushed
        if t.sink.received != t.reported:
            t.job.dirty = True
            self.progress.update(t.sink.received - t.reported)
            self.received += max(0, t.sink.received - t.reported)
            t.reported = t.sink.received

    def _write_failure(self, t: Transfer, err: int) -> PullError:
        if err in (errno.ENOSPC, errno.EDQUOT):
            return disk_full(t.job.final)
        return PullError(f"Could not write {t.job.part}: {os.strerror(err) if err > 0 else 'short write'}.",
                         remedy="Check that --model_repository_path is writable, then re-run the same command "
                                "to resume.")

    def _detach(self, t: Transfer):
        """Take the transfer off the multi handle (its handle is free for the next range at once) and close its
        sink: returns the future of the sink's last write, or None when nothing is left to write."""
        future = None
        if t.sink.mode == self.writer.MODE_BODY or t.sink.received:
            try:
                future = t.sink.close()
            except OSError:
                pass  # kept in sink.error
        self.multi.remove_handle(t.handle)
        self.transfers.pop(t.handle, None)
        t.handle.setopt(pycurl.WRITEFUNCTION, lambda data: None)  # drop references to the Transfer
        t.handle.setopt(pycurl.HEADERFUNCTION, lambda line: None)
        self.idle_handles.append(t.handle)
        t.detached = True
        return future

    def _release(self, t: Transfer) -> None:
        """End the transfer here and now: its bytes written (waiting for the write pool), the segment updated."""
        if not t.detached:
            self._detach(t)
        if t in self.closing:
            self.closing.remove(t)
        if t.sink.mode == self.writer.MODE_BODY or t.sink.received:
            try:
                t.sink.flush()
            except OSError:
                pass
            if t.sink.error and t.fatal is None:
                t.fatal = self._write_failure(t, t.sink.error)
            self._absorb(t)
        if t.sink.direct_refused and not t.job.direct_refused:
            # Other sinks may still hold the descriptor (they fall back on their own): it closes with the file.
            log.info("%s: the filesystem refused an O_DIRECT write (EINVAL); writing this file through the page "
                     "cache", t.job.part)
            t.job.direct_refused = True
        t.job.active.discard(t)

    def _finished(self, t: Transfer, code: int, message: str) -> None:
        """A transfer ended on the wire. Its slot is free at once; what its end means is decided when its last
        block is written (``_conclude``, now or from ``_after_transfers``)."""
        closing = self._detach(t)
        if closing is not None and not closing.done():
            t.closing, t.ended = closing, (code, message)
            self.closing.append(t)
            return
        self._conclude(t, code, message)

    def _conclude(self, t: Transfer, code: int, message: str) -> None:
        self._release(t)
        job, seg = t.job, t.segment
        if t.fatal is not None:
            raise t.fatal
        if job.phase != "downloading":
            return
        if not t.kind and code == 0:
            self._classify(t)  # a response that ended without its header block (should not happen)
        if t.sink.overflow:
            t.abort = (f"the server sent more bytes than the hub lists for {job.remote.path} "
                       f"({job.remote.size})")
        if t.abort == responses.COLLAPSE:
            self._collapse(job)
            return
        if t.abort:
            self._failed(job, seg, t.abort, restart=True)
            return
        if t.kind == "redirect" and code == 0:
            location = t.headers.get("location")
            job.redirects += 1
            if not location or job.redirects > MAX_REDIRECTS * max(1, len(job.segments)):
                self._failed(job, seg, f"bad redirect from {t.url} (Location {location!r})")
                return
            target = urllib.parse.urljoin(t.url, location)
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                self._failed(job, seg, f"redirect to an unsupported URL {target!r}")
                return
            job.location = target
            self.queue.appendleft((job, seg))
            return
        if t.kind == "error":
            if t.to_hub and t.status in (401, 403, 404):
                raise_for_hub_error(Response(t.status, t.headers, bytes(t.sink.captured), t.url), self.repo_id,
                                    self.revision, self.settings)
            if not t.to_hub and t.status in (401, 403, 404, 410):
                job.location = None  # a pre-signed CDN URL expired: ask the hub for a fresh one
            self._failed(job, seg, f"HTTP {t.status} from {urllib.parse.urlsplit(t.url).netloc}",
                         restart=t.status == 416)
            return
        if code != 0:
            self._failed(job, seg, curl_error_text(code, message))
            return
        if not seg.complete:
            self._failed(job, seg, f"the connection closed with {seg.remaining} bytes of the range missing")
            return
        if all(s.complete for s in job.segments) and not job.active:
            self._segments_complete(job)

    def _collapse(self, job: FileJob) -> None:
        """The server ignores Range: fetch the file as one stream from byte 0 (never mix bodies)."""
        log.warning("%s: the server ignored the Range request (HTTP 200 to a ranged GET); fetching the whole "
                    "file as one stream from byte 0", job.remote.path)
        for other in list(job.active):
            self._release(other)
        self.queue = collections.deque(item for item in self.queue if item[0] is not job)
        self.progress.update(-job.done_bytes)
        job.splittable = False
        self._restream(job)
        job.segments = [state.Segment(0, job.remote.size)]
        self._record(job)
        self.queue.append((job, job.segments[0]))

    def _failed(self, job: FileJob, seg: state.Segment, reason: str, *, restart: bool = False) -> None:
        now = time.monotonic()
        if now >= job.not_before:  # parallel ranges failing together count as one attempt
            job.failures += 1
            job.not_before = now + self.settings.resume_interval
        if job.failures > self.settings.resume_attempts:
            tried = job.failures
            raise NetworkError(
                f"Giving up on {job.remote.path} after {tried} failed attempt{'s' if tried > 1 else ''}: {reason}.",
                remedy="Check the network, HF_ENDPOINT and https_proxy (GIT_LFS_RESUME_ATTEMPTS and "
                       "GIT_LFS_RESUME_INTERVAL_SECONDS set how long to keep trying). " + RESUME_HINT)
        if restart:  # the server's idea of this file changed: its bytes on disk cannot be trusted
            for other in list(job.active):
                self._release(other)
            self.queue = collections.deque(item for item in self.queue if item[0] is not job)
            self.progress.update(-job.done_bytes)
            for s in job.segments:
                s.done = 0
            self._restream(job)
            self._record(job)
            self.queue.extend((job, s) for s in job.segments)
        else:
            self.queue.append((job, seg))
        log.warning("%s: %s; resuming from byte %d in %g s (attempt %d of %d)", job.remote.path, reason,
                    0 if restart else seg.next_offset, self.settings.resume_interval, job.failures + 1,
                    self.settings.resume_attempts + 1)

    # ---- the loop ----------------------------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        # A transfer whose last block is still being written counts too: a network faster than the disk must not
        # pile up blocks in memory (the write pool is the disk's pace).
        while len(self.transfers) + len(self.closing) < self.control.limit and self._start_next(now):
            pass

    def _start_next(self, now: float) -> bool:
        """Start the first range in the queue that may start now; False when none may."""
        waiting = []
        started = False
        while self.queue:
            job, seg = self.queue.popleft()
            if job.phase != "downloading" or seg.complete:
                continue
            if job.not_before > now:
                waiting.append((job, seg))
                continue
            self._cut(job, seg)
            self._start(job, seg)
            started = True
            break
        self.queue.extendleft(reversed(waiting))
        return started

    def _cut(self, job: FileJob, seg: state.Segment) -> None:
        """Cut ``seg`` (not in flight) and queue its rest first in line as a new range: a new file's range to
        ``STRIPE_BYTES`` (its stripes start in file order, so its digest follows the blocks in memory); a resumed
        file's to about ``RANGE_SECONDS`` of one connection's observed rate (before the first measurement its
        planned ranges go as they are)."""
        per_connection = self.control.per_connection
        if not job.splittable:
            return
        if job.stream is not None:
            if job.remote.size <= self.settings.segment_bytes:
                return  # one request, in order anyway
            size = min(STRIPE_BYTES, self.settings.segment_bytes)  # in order: the digest follows the blocks
        elif per_connection <= 0:
            return
        else:
            size = per_connection * RANGE_SECONDS
            size = max(MIN_RANGE_BYTES, -(-int(size) // MIN_RANGE_BYTES) * MIN_RANGE_BYTES)
        if seg.remaining < size + max(MIN_RANGE_BYTES, size // 2):  # no sliver left behind
            return
        cut = seg.next_offset + size
        rest = state.Segment(cut, seg.end)
        seg.end = cut
        job.segments.insert(job.segments.index(seg) + 1, rest)
        self._compact(job)
        # Recorded at the next checkpoint (a fresh part gets its first sidecar, with this tiling, when it is
        # created): until then the sidecar's older tiling claims no byte of the cut range it did not claim before.
        job.dirty = True
        self.queue.appendleft((job, rest))
        if job.stream is not None:
            log.debug("%s: stripe at %d of %.1f MiB; %.1f MiB queued", job.remote.path, seg.next_offset,
                      size / 2**20, rest.remaining / 2**20)
        else:
            log.debug("%s: range at %d cut to %.1f MiB (%.1f MiB/s per connection); %.1f MiB queued",
                      job.remote.path, seg.next_offset, size / 2**20, per_connection / 2**20,
                      rest.remaining / 2**20)

    def _watch(self, now: float) -> None:
        """Progress of the transfers in flight, and our own stall timer (libcurl's LOW_SPEED_TIME averages
        the speed over ~5 s and reacts late)."""
        limit = self.settings.stall_seconds
        for t in self.transfers.values():
            if t.sink.received != t.reported:
                t.last_activity = now
                self.progress.update(t.sink.received - t.reported)
                self.received += max(0, t.sink.received - t.reported)
                t.reported = t.sink.received
                t.job.dirty = True
        for t in [t for t in self.transfers.values() if now - t.last_activity > limit]:
            self._release(t)
            if t.job.phase == "downloading":
                self._failed(t.job, t.segment, f"no data for {limit:g} s (the transfer stalled)")

    def _checkpoint(self) -> None:
        writing = []
        for t in self.transfers.values():
            if t.kind != "body":
                continue
            try:
                # so the sidecar can claim what arrived, not only whole 4 MiB blocks; a pooled sink hands its
                # partial block to the write pool, and the checkpoint waits a moment for those writes
                if t.pooled:
                    future = t.sink.flush_soon()
                    if future is not None:
                        writing.append(future)
                else:
                    t.sink.flush()
            except OSError:
                pass  # reported when the transfer ends (sink.error)
        if writing:
            concurrent.futures.wait(writing, timeout=CHECKPOINT_WAIT_SECONDS)
        for t in self.transfers.values():
            t.segment.done = t.base_done + t.sink.flushed
        for job in self.jobs:
            if job.phase == "downloading" and job.dirty:
                self._record(job)
                job.dirty = False

    def _check_stop(self) -> None:
        signal_name = self.stop_requested()
        if signal_name:
            raise InterruptedPull(f"Pull of {self.repo_id} stopped by {signal_name}.", remedy=RESUME_HINT)

    def _after_transfers(self) -> bool:
        """The part of a turn after the multi handle's work: checks that ended, stalls, checkpoint, progress.
        True when every file is done."""
        for t in [t for t in self.closing if t.closing.done()]:
            if t in self.closing:  # concluding one can release others of the same file
                self.closing.remove(t)
                self._conclude(t, *t.ended)
        for future in [f for f in self.verifying if f.done()]:
            job = self.verifying.pop(future)
            self._checked(job, future.result())
        if all(job.phase == "done" for job in self.jobs):
            return True
        now = time.monotonic()
        self._watch(now)
        if now - self.last_checkpoint >= self.settings.checkpoint_seconds:
            self._checkpoint()
            self.last_checkpoint = now
        self.progress.tick()
        return False

    def _loop(self) -> None:
        while True:
            self._check_stop()
            now = time.monotonic()
            self._schedule(now)
            self.control.observe(now, self.received, len(self.transfers))
            self._schedule(now)
            while True:
                ret, _ = self.multi.perform()
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
            while True:
                remaining, ok, failed = self.multi.info_read()
                # Handling one end can release other transfers of the same file (a restart, a collapse to one
                # stream); their ends may already be in this batch: skip them, they are no longer ours.
                for handle, code, message in [(h, 0, "") for h in ok] + failed:
                    t = self.transfers.get(handle)
                    if t is not None:
                        self._finished(t, code, message)
                if not remaining:
                    break
            if self._after_transfers():
                return
            if self.transfers:
                self.multi.select(0.1)
            else:
                waiting = list(self.verifying) + [t.closing for t in self.closing]
                concurrent.futures.wait(waiting, timeout=0.05, return_when=concurrent.futures.FIRST_COMPLETED)
                if not waiting:
                    time.sleep(0.02)

    def _shutdown(self) -> None:
        try:
            self._checkpoint()
        except OSError as exc:
            log.warning("Could not record download progress: %s", exc)
        for t in list(self.transfers.values()) + list(self.closing):
            self._release(t)
        try:  # what the releases wrote (each sink's last block) is recorded too: a resume need not fetch it again
            for job in self.jobs:
                if job.phase == "downloading" and job.fd >= 0:
                    self._record(job)
        except OSError as exc:
            log.warning("Could not record download progress: %s", exc)
        self.writes.shutdown(wait=True)  # every sink was flushed by its release: nothing is left to write
        for job in self.jobs:
            if job.stream is not None:
                job.stream.discard()  # its kept blocks go back now, not whenever the job is collected
        self.writer.trim(0)  # and the blocks kept for the next sinks are freed: a server process lives on
        for handle in self.idle_handles:
            handle.close()
        self.idle_handles.clear()
        if self.engine is None:
            self.multi.close()
        for future in self.verifying:
            future.cancel()
        # On a shared engine a check still hashing must not hold up the other Downloaders' transfers: it ends on
        # its own (its result is no longer wanted).
        self.verifier.shutdown(wait=self.engine is None)
        for job in self.jobs:
            self._close(job)
