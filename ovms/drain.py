"""Graceful shutdown as orchestrators expect it: on SIGTERM the server stops being ready, refuses new requests,
lets the requests and streams in flight finish, then exits; a second signal or the drain timeout cuts it short.

Transports count every request (an SSE or gRPC stream counts until it ends) with ``enter``/``leave``.
"""
from __future__ import annotations

import asyncio
import logging

from ovms.errors import Kind, ServingError

log = logging.getLogger("ovms.drain")


class Drain:
    """Requests in flight, and whether the server is draining."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self.started = asyncio.Event()  # set when draining begins (streams stop taking new requests)
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        """Count a new request in, or refuse it while draining."""
        if self.draining:
            raise ServingError(Kind.SERVER_SHUTTING_DOWN)
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    def begin(self) -> None:
        self.draining = True
        self.started.set()

    async def wait(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds passed first."""
        try:
            async with asyncio.timeout(timeout):
                while self.active:
                    self._idle = asyncio.Event()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True
