"""gRPC over our own HTTP/2 connections (``--grpc_server native``): the same services as the grpc.aio server.

Why: grpc.aio spends most of a small call in its own machinery (threads handing the call to the event loop and
back; bench/README.md), so a no-op method tops out near 0.7x of Triton's whole ModelInfer here. This server
parses HTTP/2 with libnghttp2 (``ovms._native.h2conn``, a pure-Python twin on ``h2``) inside an asyncio.Protocol
on the event loop: no threads, one wake-up per batch of frames. A ModelInfer for a model fast enough to run on the
event loop (``InferenceServicer.infer_now``) is answered before the frames that carried it are done being read.

It hosts the grpc.aio server's own handlers (``grpc.GenericRpcHandler``: KServe, TFS, health, reflection), so
both servers answer the same calls with the same messages. What it implements of gRPC over HTTP/2: unary and
streaming calls, ``grpc-timeout`` deadlines, gzip/deflate request messages, message size limits, RST_STREAM as
cancellation, GOAWAY on stop. No TLS (the grpc.aio server has none here either).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.parse
import zlib

import grpc

from ovms._native import load
from ovms.errors import ServingError

log = logging.getLogger("ovms.grpc")

h2 = load("h2conn")

# Server options (--grpc_channel_arguments) this server implements; any other is refused at start with its name.
SUPPORTED_OPTIONS = {"grpc.max_concurrent_streams", "grpc.max_receive_message_length",
                     "grpc.max_send_message_length", "grpc.so_reuseport"}
_STATUS_CODES = {code: code.value[0] for code in grpc.StatusCode}
_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                     (b"grpc-accept-encoding", b"identity,deflate,gzip")]
_OK_TRAILERS = [(b"grpc-status", b"0")]
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_END = object()  # the end of a streaming call's requests


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Details:
    """What ``GenericRpcHandler.service`` looks at (grpc.HandlerCallDetails)."""

    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str, metadata: tuple) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Context:
    """The part of grpc.aio.ServicerContext the services use: abort, metadata, deadline, peer, trailing codes."""

    __slots__ = ("_call",)

    def __init__(self, call: "_Call") -> None:
        self._call = call

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise _Abort(code, details)

    def invocation_metadata(self) -> tuple:
        return self._call.metadata

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def peer(self) -> str:
        return self._call.connection.peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._call.code = code

    def set_details(self, details: str) -> None:
        self._call.details = details

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished


class _Call:
    """One stream: its request headers, body, the task serving it and where its answer stands."""

    __slots__ = ("stream_id", "connection", "path", "handler", "metadata", "deadline", "encoding", "body",
                 "messages", "task", "timer", "headers_sent", "finished", "cancelled", "code", "details")

    def __init__(self, stream_id: int, connection: "_Connection") -> None:
        self.stream_id = stream_id
        self.connection = connection
        self.path = ""
        self.handler = None
        self.metadata: tuple = ()
        self.deadline: float | None = None
        self.encoding = "identity"
        self.body = bytearray()
        self.messages: asyncio.Queue | None = None  # requests of a streaming call, as they arrive
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.headers_sent = False
        self.finished = False
        self.cancelled = False
        self.code: grpc.StatusCode | None = None
        self.details = ""


def _status_trailers(code: grpc.StatusCode, details: str) -> list:
    trailers = [(b"grpc-status", str(_STATUS_CODES[code]).encode())]
    if details:
        trailers.append((b"grpc-message", urllib.parse.quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
                         .encode()))
    return trailers


def _timeout(text: str) -> float | None:
    try:
        return int(text[:-1]) * _TIMEOUT_UNITS[text[-1]]
    except (KeyError, ValueError, IndexError):
        return None


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/2 events in, gRPC calls dispatched, answers written back."""

    def __init__(self, server: "NativeServer") -> None:
        self.server = server
        self.h2 = h2.ServerConnection(server.max_concurrent_streams)
        self.calls: dict[int, _Call] = {}
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._flush_pending = False

    # --- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        address = transport.get_extra_info("peername")
        self.peer = f"ipv4:{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.server.connections.add(self)
        transport.write(self.h2.data_to_send())

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            self._cancel(call)
        self.calls.clear()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive(data)
        except h2.ProtocolError as exc:
            log.debug("gRPC connection from %s closed: %s", self.peer, exc)
            self._write()
            self.transport.close()
            return
        for event in events:
            kind = event[0]
            if kind == h2.EV_DATA:
                self._on_data(event[1], event[2])
            elif kind == h2.EV_HEADERS:
                self._on_headers(event[1], event[2])
            elif kind == h2.EV_END:
                self._on_end(event[1])
            elif kind == h2.EV_RESET:
                call = self.calls.pop(event[1], None)
                if call is not None:
                    self._cancel(call)
        self._write()

    # --- writing
    def _write(self) -> None:
        self._flush_pending = False
        out = self.h2.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def flush_soon(self) -> None:
        """Write what the calls queued, once per loop turn (answers finishing together share one write)."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._write)

    # --- HTTP/2 events
    def _on_headers(self, stream_id: int, headers: list) -> None:
        call = _Call(stream_id, self)
        method = content_type = b""
        metadata = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":path":
                    call.path = value.decode("latin-1")
                elif name == b":method":
                    method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                seconds = _timeout(value.decode("latin-1"))
                if seconds is not None:
                    call.deadline = time.monotonic() + seconds
            elif name == b"grpc-encoding":
                call.encoding = value.decode("latin-1")
            elif name != b"te":
                key = name.decode("latin-1")
                metadata.append((key, value if key.endswith("-bin") else value.decode("latin-1")))
        call.metadata = tuple(metadata)
        if method != b"POST":
            self.h2.send_headers(stream_id, [(b":status", b"405")], end_stream=True)
            return
        if not content_type.startswith(b"application/grpc"):
            self.h2.send_headers(stream_id, [(b":status", b"415")], end_stream=True)
            return
        self.calls[stream_id] = call
        call.handler = self.server.handler(call.path, call.metadata)
        if call.handler is None:
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if call.deadline is not None:
            call.timer = asyncio.get_running_loop().call_at(
                asyncio.get_running_loop().time() + max(0.0, call.deadline - time.monotonic()), self._expire, call)
        if call.handler.request_streaming:
            call.messages = asyncio.Queue()
            self._start(call, self._streaming, call)

    def _on_data(self, stream_id: int, data: bytes) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.finished:
            return
        call.body += data
        if call.messages is not None:
            self._take_messages(call)
        elif len(call.body) > self.server.max_receive + 5:
            # Refused as soon as the body outgrows the limit, not at its end: what a client sends is never held
            # beyond the limit (the rest of its upload is dropped as it arrives).
            self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max ({len(call.body) - 5} vs. {self.server.max_receive})")
            call.body = bytearray()

    def _on_end(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.finished:
            return
        if call.messages is not None:
            call.messages.put_nowait(_END)
            return
        try:
            messages = self._split(call)
        except _Abort as exc:
            self._finish(call, exc.code, exc.details)
            return
        if len(messages) != 1:
            self._finish(call, grpc.StatusCode.INTERNAL,
                         f"a unary call takes exactly one request message; this one had {len(messages)}")
            return
        request = messages[0]
        fast = self.server.fast.get(call.path)
        if fast is not None and not call.handler.response_streaming:
            try:
                answer = fast(request)
                if isinstance(answer, list):
                    self._send_message(call, answer)
            except ServingError as exc:
                self._finish(call, grpc.StatusCode[exc.grpc_code], exc.message)
                return
            except _Abort as exc:  # over grpc.max_send_message_length; uncaught, it closed the whole connection
                self._finish(call, exc.code, exc.details)
                return
            if isinstance(answer, list):
                self._finish(call, grpc.StatusCode.OK, "")
                return
            self._start(call, self._answer_later, call, answer)
            return
        self._start(call, self._unary, call, request)

    # --- messages
    def _split(self, call: _Call) -> list:
        """The complete length-prefixed messages in the body (decompressed), leaving a partial one there."""
        body = call.body
        messages = []
        offset = 0
        limit = self.server.max_receive
        while len(body) - offset >= 5:
            size = int.from_bytes(body[offset + 1:offset + 5], "big")
            if size > limit:
                raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"Received message larger than max ({size} vs. {limit})")
            if len(body) - offset - 5 < size:
                break
            if offset == 0 and len(body) == 5 + size and size >= 65536 and not body[0]:
                # One big message and nothing after it (a unary call): a view, not a copy; the call reads on
                # into a new buffer, since a bytearray with a view on it cannot shrink.
                call.body = bytearray()
                return [memoryview(body)[5:]]
            message = bytes(body[offset + 5:offset + 5 + size])
            if body[offset]:
                message = self._decompress(call, message)
            messages.append(message)
            offset += 5 + size
        if offset:
            del body[:offset]
        return messages

    def _decompress(self, call: _Call, message: bytes) -> bytes:
        try:
            if call.encoding == "gzip":
                return zlib.decompress(message, 16 + zlib.MAX_WBITS)
            if call.encoding == "deflate":
                return zlib.decompress(message)
        except zlib.error as exc:
            raise _Abort(grpc.StatusCode.INTERNAL, f"the request message does not decompress: {exc}") from None
        raise _Abort(grpc.StatusCode.UNIMPLEMENTED,
                     f"Compression algorithm '{call.encoding}' is not supported; use identity, gzip or deflate")

    def _take_messages(self, call: _Call) -> None:
        try:
            for message in self._split(call):
                call.messages.put_nowait(message)
        except _Abort as exc:
            self._cancel(call)
            self._finish(call, exc.code, exc.details)
            self.flush_soon()

    def _send_message(self, call: _Call, payload) -> None:
        """One response message: bytes, or a list of byte strings that make one message together."""
        parts = payload if isinstance(payload, list) else (payload,)
        size = sum(len(part) for part in parts)
        if size > self.server.max_send:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Sent message larger than max ({size} vs. {self.server.max_send})")
        if not call.headers_sent:
            call.headers_sent = True
            self.h2.send_headers(call.stream_id, _RESPONSE_HEADERS)
        send = self.h2.send_data
        stream_id = call.stream_id
        send(stream_id, b"\x00" + size.to_bytes(4, "big"))
        for part in parts:
            send(stream_id, part)

    def _finish(self, call: _Call, code: grpc.StatusCode, details: str) -> None:
        """End the call with its status: trailers after the answer, or a trailers-only response."""
        if call.finished:
            return
        call.finished = True
        if call.timer is not None:
            call.timer.cancel()
        self.calls.pop(call.stream_id, None)
        if call.code is not None and code is grpc.StatusCode.OK:  # the handler set a code and returned
            code, details = call.code, call.details
        trailers = _OK_TRAILERS if code is grpc.StatusCode.OK and not details else _status_trailers(code, details)
        if call.headers_sent:
            self.h2.send_trailers(call.stream_id, trailers)
        else:
            self.h2.send_headers(call.stream_id, _RESPONSE_HEADERS + trailers, end_stream=True)

    # --- serving
    def _start(self, call: _Call, work, *args) -> None:
        """Serve the call in a task; ``work(*args)`` makes its coroutine once the task runs, so a task cancelled
        before its first step (the client reset the stream at once) leaves no coroutine unawaited."""
        call.task = asyncio.ensure_future(self._guard(call, work, args))
        self.server.tasks.add(call.task)
        call.task.add_done_callback(self.server.tasks.discard)

    def _cancel(self, call: _Call) -> None:
        call.cancelled = True
        if call.timer is not None:
            call.timer.cancel()
        if call.task is not None and not call.task.done():
            call.task.cancel()

    def _expire(self, call: _Call) -> None:
        if call.finished:
            return
        self._cancel(call)
        # The trailers end the stream; no RST_STREAM after them: libnghttp2 writes trailers when it next pulls
        # the stream's data, and a reset submitted before that drops them, so the client saw CANCEL instead of
        # DEADLINE_EXCEEDED. A client still sending stops on the trailers (what comes after is ignored).
        self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.flush_soon()

    async def _guard(self, call: _Call, work, args) -> None:
        """Run the call's work; map its errors to a status, as grpc.aio does."""
        try:
            await work(*args)
        except asyncio.CancelledError:
            return
        except _Abort as exc:
            self._finish(call, exc.code, exc.details)
        except ServingError as exc:
            self._finish(call, grpc.StatusCode[exc.grpc_code], exc.message)
        except Exception:
            log.exception("gRPC call %s failed unexpectedly", call.path)
            self._finish(call, grpc.StatusCode.UNKNOWN, "Unexpected error in the server; see its log")
        else:
            self._finish(call, grpc.StatusCode.OK, "")
        self.flush_soon()

    async def _answer_later(self, call: _Call, later) -> None:
        """A fast path's answer that needs awaiting: ``later()`` is its coroutine."""
        self._send_message(call, await later())

    def _request(self, call: _Call, data: bytes):
        deserialize = call.handler.request_deserializer
        return data if deserialize is None else deserialize(data)

    def _respond(self, call: _Call, response) -> None:
        serialize = call.handler.response_serializer
        self._send_message(call, response if serialize is None else serialize(response))

    async def _unary(self, call: _Call, data: bytes) -> None:
        handler = call.handler
        context = _Context(call)
        if handler.response_streaming:
            async for response in handler.unary_stream(self._request(call, data), context):
                self._respond(call, response)
                self.flush_soon()
        else:
            response = await handler.unary_unary(self._request(call, data), context)
            if response is not None:
                self._respond(call, response)

    async def _requests(self, call: _Call):
        while (message := await call.messages.get()) is not _END:
            yield self._request(call, message)

    async def _streaming(self, call: _Call) -> None:
        handler = call.handler
        context = _Context(call)
        if handler.response_streaming:
            async for response in handler.stream_stream(self._requests(call), context):
                self._respond(call, response)
                self.flush_soon()
        else:
            self._respond(call, await handler.stream_unary(self._requests(call), context))


class NativeServer:
    """The listening side: sockets, connections, the handlers and the calls answered in place (``fast``)."""

    def __init__(self, handlers, *, fast: dict | None = None, options: dict) -> None:
        unknown = sorted(set(options) - SUPPORTED_OPTIONS)
        if unknown:
            raise ValueError(f"--grpc_channel_arguments: {', '.join(unknown)} is not implemented by --grpc_server "
                             f"native (it implements {', '.join(sorted(SUPPORTED_OPTIONS))}); remove it or use "
                             "--grpc_server grpcio")
        self._generic = list(handlers)
        self._methods: dict[str, object] = {}
        self.fast = dict(fast or {})
        self.max_concurrent_streams = int(options.get("grpc.max_concurrent_streams", 256))
        self.max_receive = int(options.get("grpc.max_receive_message_length", 4 << 20))
        if self.max_receive < 0:
            self.max_receive = 1 << 31
        self.max_send = int(options.get("grpc.max_send_message_length", 1 << 31))
        if self.max_send < 0:
            self.max_send = 1 << 31
        self.reuse_port = bool(options.get("grpc.so_reuseport", 0))
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task] = set()
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self.health_service = None

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._generic.extend(handlers)

    def handler(self, path: str, metadata: tuple):
        if path in self._methods:
            return self._methods[path]
        found = None
        for generic in self._generic:
            found = generic.service(_Details(path, metadata))
            if found is not None:
                break
        self._methods[path] = found
        return found

    def add_insecure_port(self, address: str) -> int:
        """Bind (not yet accept) ``host:port``; return the port, 0 when it cannot be bound (as grpc does)."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, int(port)))
            sock.listen(1024)
        except OSError as exc:
            log.error("cannot listen for gRPC on %s: %s", address, exc)
            sock.close()
            return 0
        sock.setblocking(False)
        self._sockets.append(sock)
        return sock.getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(await loop.create_server(lambda: _Connection(self), sock=sock))

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; GOAWAY to every client; let calls in flight finish for ``grace`` s, then cancel them."""
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.h2.close()
            connection._write()
        if self.tasks and grace:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        for connection in list(self.connections):
            connection._write()
            connection.transport.close()
        for server in self._servers:
            await server.wait_closed()
