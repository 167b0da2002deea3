"""The REST port's fast path: KServe ``POST /v2/models/<m>[/versions/<v>]/infer`` read straight off the socket.

aiohttp builds a request object, runs the router and the middleware, and a response object for every request:
about 67 us of CPU here before any work (its no-op ceiling is 14,900 requests/s on one core), more than the
whole in-place inference of a small model. This protocol answers plain KServe infer requests itself with the
same data plane calls, messages and status codes as ``rest_server.infer``, and gives the connection to aiohttp,
for good, at the first request it does not take: any other route or method, HTTP/1.0, chunked bodies,
``Expect: 100-continue``, a query string or an escaped path, an ``Origin`` header, oversized heads or bodies.
So aiohttp still answers everything else exactly as before, on the same port.
"""
from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import re
import time
import uuid

from aiohttp import web

from ovms.errors import Kind, ServingError
from ovms.protocol import kserve_rest as codec
from ovms.dataplane import parse_version

log = logging.getLogger("ovms.rest")

_INFER = re.compile(rb"/v2/models/([^/?%#]+)(?:/versions/([^/?%#]+))?/infer")
MAX_HEAD_BYTES = 8190  # aiohttp's default limit of a request line; bigger heads go to aiohttp, which refuses them
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


class _Date:
    """The Date header, made once per second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = email.utils.formatdate(second, usegmt=True).encode()
        return cls.value


OWN_BODY_BYTES = 64 << 10  # a body this big that ends the buffer is served from the buffer itself


def _response(status: int, body: bytes, content_type: bytes, extra: bytes = b"", close: bool = False) -> bytes:
    return b"".join((b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n" % (
        status, _REASONS.get(status, b"Unknown"), content_type, len(body), _Date.now()), extra,
        b"Connection: close\r\n" if close else b"", b"\r\n", body))


def _error(error: ServingError) -> bytes:
    import json

    return json.dumps({"error": error.message}).encode()


class FastRestProtocol(asyncio.Protocol):
    """One REST connection, on the fast path until a request it does not take (then aiohttp's)."""

    def __init__(self, fallback, dataplane, max_body: int, connections: set) -> None:
        self._fallback = fallback  # aiohttp's web.Server: makes the protocol the connection is handed to
        self._dp = dataplane
        self._max_body = max_body
        self._connections = connections
        self._buffer = bytearray()
        self._busy: asyncio.Task | None = None  # a request answered by the workers; the next waits for it
        self._close_after = False
        self._path = b""  # of the request being answered, for the log
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._connections.add(self)

    def connection_lost(self, exc) -> None:
        self._connections.discard(self)
        if self._busy is not None:
            self._busy.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._busy is None:
            self._serve()

    def close_when_idle(self) -> None:
        """For the server's stop: close now if idle, else after the answer in progress."""
        self._close_after = True
        if self._busy is None and self.transport is not None:
            self.transport.close()

    # --- requests
    def _serve(self) -> None:
        buffer = self._buffer
        while buffer and not self._close_after:  # nothing after a "Connection: close" request (RFC 9112 9.6)
            end = buffer.find(b"\r\n\r\n")
            if end < 0 and len(buffer) <= MAX_HEAD_BYTES:
                return
            request = self._parse(bytes(buffer[:end])) if 0 <= end <= MAX_HEAD_BYTES else None
            if request is None:
                self._hand_off()
                return
            model, version, length, header_length, keep_alive, self._path = request
            if len(buffer) - end - 4 < length:
                return  # the body is still arriving
            total = end + 4 + length
            if total == len(buffer) and length >= OWN_BODY_BYTES:
                # The request ends the bytes read (no pipelining behind it): the buffer becomes the body, and a
                # binary tensor in it reaches OpenVINO where it arrived, writable, uncopied.
                body = memoryview(buffer)[end + 4:]
                self._buffer = buffer = bytearray()
            else:
                body = bytes(memoryview(buffer)[end + 4:total])
                del buffer[:total]
            if not keep_alive:
                self._close_after = True
            self._infer(model, version, body, header_length)
            if self._busy is not None or self.transport.is_closing():
                return
        if self._close_after:
            self.transport.close()

    def _parse(self, head: bytes):
        """(model, version, body length, binary header length, keep-alive, path) of a request this path takes,
        else None."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return None
        match = _INFER.fullmatch(parts[1])
        if match is None:
            return None
        length = header_length = None
        keep_alive = True
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return None
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"inference-header-content-length":
                header_length = value
            elif name == b"connection":
                keep_alive = value.lower() != b"close"
            elif name in (b"transfer-encoding", b"expect", b"origin", b"upgrade"):
                return None
        if length is None or length > self._max_body:
            return None
        try:
            model = match.group(1).decode()
            version = match.group(2).decode() if match.group(2) is not None else None
        except UnicodeDecodeError:
            return None
        return model, version, length, header_length, keep_alive, parts[1]

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting with the request at the head of the buffer."""
        protocol = self._fallback()
        transport = self.transport
        self._connections.discard(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buffer:
            protocol.data_received(bytes(self._buffer))
        self._buffer = bytearray()

    def _infer(self, model: str, version_text: str | None, body: bytes, header_length) -> None:
        dp = self._dp
        drain = dp.drain
        try:
            drain.enter()
        except ServingError as exc:
            self._write_error(exc)
            return
        try:
            if header_length is not None:
                header_length = codec.header_length(header_length.decode("latin-1"))
            version = parse_version(version_text)
            dp.servable(model, version)  # an unknown model is 404 whatever the body (as OVMS)
            request, binary = codec.decode_infer_request(body, header_length, model, version)
            response = dp.infer_now(request, interface="REST")
        except ServingError as exc:
            drain.leave()
            self._write_error(exc)
            return
        except Exception:
            drain.leave()
            self._write_unexpected()
            return
        drain.leave()  # answered, or _infer_later counts itself once it runs
        if response is not None:
            self._write_answer(response, binary)
            return
        self._busy = asyncio.ensure_future(self._infer_later(request, binary))

    async def _infer_later(self, request, binary) -> None:
        """Counted in the drain from its first step on: a task cancelled before it (the connection was lost at
        once) must not leave the drain waiting for it."""
        drain = self._dp.drain
        try:
            drain.enter()
        except ServingError as exc:
            self._write_error(exc)
        else:
            try:
                response = await self._dp.infer(request, interface="REST")
            except ServingError as exc:
                self._write_error(exc)
            except asyncio.CancelledError:
                return
            except Exception:
                self._write_unexpected()
            else:
                self._write_answer(response, binary)
            finally:
                drain.leave()
        self._busy = None
        if not self.transport.is_closing():
            self._serve()

    # --- answers
    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def _write_answer(self, response, binary) -> None:
        try:
            payload, json_length = codec.encode_infer_response(response, binary)
        except ServingError as exc:
            self._write_error(exc)
            return
        if json_length is None:
            self._write(_response(200, payload, b"application/json", close=self._close_after))
        else:
            self._write(_response(200, payload, b"application/octet-stream",
                                  b"Inference-Header-Content-Length: %d\r\n" % json_length, self._close_after))

    def _write_error(self, error: ServingError) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s: POST %s refused: %s", uuid.uuid4().hex[:12], self._path.decode(), error.message)
        self._write(_response(error.http_status, _error(error), b"application/json", close=self._close_after))

    def _write_unexpected(self) -> None:
        request_id = uuid.uuid4().hex[:12]
        log.exception("request %s: POST %s failed unexpectedly", request_id, self._path.decode())
        self._write_error(ServingError(Kind.INTERNAL_ERROR, f"request id {request_id}; see the server log"))


class FastRestSite(web.TCPSite):
    """aiohttp's TCP site with the fast path in front of each connection (see the module docstring)."""

    __slots__ = ("_dataplane", "_max_body", "_fast")

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, dataplane, max_body: int,
                 backlog: int = 1024) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self._dataplane = dataplane
        self._max_body = max_body
        self._fast: set[FastRestProtocol] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        fallback = self._runner.server
        self._server = await loop.create_server(
            lambda: FastRestProtocol(fallback, self._dataplane, self._max_body, self._fast),
            self._host, self._port, backlog=self._backlog)
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await super().stop()
        for connection in list(self._fast):
            connection.close_when_idle()
