"""``--grpc_workers N``: N server processes sharing the gRPC port (SO_REUSEPORT), for throughput.

One Python process serves gRPC at about one core (grpc.aio's own per-call work dominates; see bench/README.md);
OVMS's ``grpc_workers`` adds gRPC server instances, and so do we, as processes. The kernel spreads incoming
connections over them. Worker 0 (the process the user started) also serves REST; workers 1..N-1 serve gRPC
only. Each process loads the models and polls the configuration itself, and counts its own metrics and
statistics (a scrape of /metrics shows worker 0's).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal as _signal
import time

log = logging.getLogger("ovms.workers")

_PR_SET_PDEATHSIG = 1


def fork(count: int) -> tuple[int, list[int]]:
    """Fork ``count - 1`` workers; return (this process's worker index, child pids in worker 0).

    Call before any event loop, OpenVINO core or gRPC object exists in the process.
    """
    children = []
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:
            try:  # a worker must not outlive worker 0, even when it is killed with SIGKILL
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _signal.SIGTERM)
            except (OSError, AttributeError):
                pass
            return index, []
        children.append(pid)
    return 0, children


def signal(children: list[int]) -> None:
    """SIGTERM the workers: each drains as worker 0 does (orchestrators signal only the process they started)."""
    for pid in children:
        try:
            os.kill(pid, _signal.SIGTERM)
        except ProcessLookupError:
            pass


def stop(children: list[int], timeout: float = 20.0) -> None:
    """SIGTERM the workers and reap them; SIGKILL what is still alive after ``timeout`` seconds."""
    signal(children)
    deadline = time.monotonic() + timeout
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pending.discard(pid)
                continue
            if done:
                pending.discard(pid)
                if status:
                    log.warning("gRPC worker process %d ended with status %d", pid, status)
        time.sleep(0.05)
    for pid in pending:
        log.error("gRPC worker process %d did not stop within %.0f s: killing it", pid, timeout)
        os.kill(pid, _signal.SIGKILL)
        os.waitpid(pid, 0)
