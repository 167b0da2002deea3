"""One pycurl multi handle for many Downloaders at once, with one bound on the transfers in flight across them.

The download service runs each job's download on a thread of its own (the job may convert afterwards); without
this, every job would open its own multi handle and up to ``OVMS_PULL_CONNECTIONS`` connections, so N jobs made
N times as many. Here a job's ``Downloader.run`` plans its files on the job's thread, then hands itself to the
engine (``serve``) and waits: the engine's one thread drives every Downloader's turns on the shared handle.
Free connection slots go round-robin to the Downloaders with ranges waiting, so a job that arrives while another
is under way starts at once instead of queueing behind it; one ``ConnectionControl`` measures the total rate and
picks the count for all of them, up to the bound.

A Downloader that fails (or is stopped) ends alone: its exception is raised in its job's thread, its transfers are
removed from the handle, and the others go on.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

import pycurl

from ovms.pull.errors import InterruptedPull, PullError
from ovms.pull.transfer import ConnectionControl

log = logging.getLogger("ovms.pull")


class SharedEngine:
    def __init__(self, initial_connections: int, most_connections: int) -> None:
        self.multi = pycurl.CurlMulti()
        self.control = ConnectionControl(initial_connections, most_connections)
        self.most = max(1, most_connections)
        self.peak_in_flight = 0  # the most transfers seen in flight at once (never above ``most``)
        self._sessions: list[tuple[object, concurrent.futures.Future]] = []
        self._arriving: list[tuple[object, concurrent.futures.Future]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._rotation = 0
        self._retired_received = 0

    # ---- from the jobs' threads ------------------------------------------------------------------------------
    def serve(self, downloader) -> None:
        """Run ``downloader``'s transfers to the end on the shared handle; raises what ended it."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise InterruptedPull("The download engine is shutting down.")
            self._arriving.append((downloader, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ovms-download-engine", daemon=True)
                self._thread.start()
        self._wake.set()
        future.result()

    def close(self) -> None:
        """Stop the engine's thread (Downloaders still there end with InterruptedPull) and free the handle."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(60)
        self.multi.close()

    # ---- the engine's thread ---------------------------------------------------------------------------------
    def in_flight(self) -> int:
        return sum(len(d.transfers) + len(d.closing) for d, _ in self._sessions)  # closing: last block being written

    def _received(self) -> int:
        return self._retired_received + sum(d.received for d, _ in self._sessions)

    def _end(self, downloader, future: concurrent.futures.Future, error: BaseException | None) -> None:
        self._sessions = [(d, f) for d, f in self._sessions if d is not downloader]
        self._retired_received += downloader.received
        try:
            downloader._shutdown()
        except Exception as exc:  # its state on disk is still resumable; the job's own error says more
            log.warning("Could not shut down the transfers of %s cleanly: %s", downloader.repo_id, exc)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)

    def _guard(self, downloader, future, step, *args):
        """Run one step of one Downloader; what it raises ends that Downloader only."""
        try:
            return step(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread, which raises it
            self._end(downloader, future, exc)
            return None

    def _schedule(self, now: float) -> None:
        """Give the free slots one at a time to the Downloaders in turn (round-robin from a rotating start)."""
        free = self.control.limit - self.in_flight()
        while free > 0 and self._sessions:
            started = False
            sessions = list(self._sessions)
            for i in range(len(sessions)):
                if free <= 0:
                    break
                downloader, future = sessions[(self._rotation + i) % len(sessions)]
                if (downloader, future) in self._sessions and self._guard(downloader, future,
                                                                          downloader._start_next, now):
                    started = True
                    free -= 1
            self._rotation += 1
            if not started:
                break

    def _run(self) -> None:
        while True:
            try:
                if self._turn():
                    return
            except Exception as exc:  # a bug or a libcurl failure of the handle itself: never a silent hang
                log.exception("The shared download engine failed; ending the downloads it was running")
                for downloader, future in list(self._sessions):
                    self._end(downloader, future, PullError(
                        f"The download engine failed ({type(exc).__name__}: {exc}); see the service log.",
                        remedy="Request the download again: the bytes already on disk are kept."))

    def _turn(self) -> bool:
        """One turn over every Downloader; True when the engine is closed and done."""
        with self._lock:
            self._sessions += self._arriving
            self._arriving = []
            closed = self._closed
        if closed:
            for downloader, future in list(self._sessions):
                self._end(downloader, future, InterruptedPull("The download engine is shutting down."))
            return True
        if not self._sessions:
            self._wake.wait(0.5)
            self._wake.clear()
            return False
        for downloader, future in list(self._sessions):
            self._guard(downloader, future, downloader._check_stop)
        now = time.monotonic()
        self._schedule(now)
        self.control.observe(now, self._received(), self.in_flight())
        self._schedule(now)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight())
        while True:
            ret, _ = self.multi.perform()
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        while True:
            remaining, ok, failed = self.multi.info_read()
            for handle, code, message in [(h, 0, "") for h in ok] + failed:
                # Released already (its Downloader ended, or restarted the file): no longer anyone's.
                owner = next(((d, f) for d, f in self._sessions if handle in d.transfers), None)
                if owner is not None:
                    self._guard(owner[0], owner[1], owner[0]._finished, owner[0].transfers[handle], code,
                                message)
            if not remaining:
                break
        for downloader, future in list(self._sessions):
            if self._guard(downloader, future, downloader._after_transfers):
                self._end(downloader, future, None)
        if self.in_flight():
            self.multi.select(0.1)
        else:
            time.sleep(0.02)  # checks hashing, or ranges waiting out a retry pause
        return False
