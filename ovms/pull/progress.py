"""Progress of a pull: a tqdm bar on a terminal, a plain log line every few seconds otherwise (CI, docker logs)."""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("ovms.pull")

LOG_EVERY_SECONDS = 5.0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


class Progress:
    """Counts bytes on disk (resumed bytes included); ``update`` may go negative when a file restarts."""

    def __init__(self, total: int, label: str, *, stream=None, interactive: bool | None = None,
                 log_every: float = LOG_EVERY_SECONDS, listener=None) -> None:
        self.total = total
        self.listener = listener  # called with (bytes on disk, total) after every update: the download service's job
        # progress; it runs on the download thread and must be cheap
        self.label = label
        self.done = 0
        self.started = time.monotonic()
        self._base = 0  # bytes that were on disk before this run: excluded from the rate
        self._last_log = self.started
        self.log_every = log_every
        stream = stream or sys.stderr
        interactive = stream.isatty() if interactive is None else interactive
        self._bar = None
        if interactive:
            from tqdm import tqdm

            try:
                columns, lines = os.get_terminal_size(stream.fileno())
            except (OSError, ValueError, AttributeError):
                columns = lines = 0
            # A pseudo-terminal without a size (some CI runners, `docker run -t`) reports 0x0, and tqdm then
            # draws nothing at all: give it a plain 100x24 screen.
            sized = columns > 0 and lines > 0
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=stream,
                             mininterval=0.5, dynamic_ncols=sized, ncols=None if sized else 100,
                             nrows=None if sized else 24)

    def start_counting_rate(self) -> None:
        self._base = self.done
        self.started = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self.listener is not None:
            self.listener(self.done, self.total)

    def tick(self) -> None:
        if self._bar is not None:
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-6)
        rate = max(self.done - self._base, 0) / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f", ETA {int((self.total - self.done) / rate)} s" if rate > 0 and self.done < self.total else ""
        return f"{self.label}: {_mib(self.done)} of {_mib(self.total)} ({pct:.0f}%) at {_mib(rate)}/s{eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
