"""The server side of one HTTP/2 connection, without I/O: the readable twin of ``h2conn_c`` (libnghttp2).

Bytes read from the socket go in (``receive``), request events come out, and ``data_to_send`` gives the bytes to
write. Built on the ``h2`` state machine (python-hyper); what this module adds is the contract the gRPC layer
relies on, which ``h2`` leaves to its user:

- DATA beyond the peer's flow-control windows is buffered per stream and sent as WINDOW_UPDATEs arrive, so
  ``send_data`` never raises for flow control; trailers wait behind their stream's buffered data.
- Received DATA is acknowledged at once, so the peer never stalls (message sizes are bounded above this layer).
- Calls on a stream the peer reset, or that is closed or unknown, are ignored: a late answer to a client that
  left is not an error.
- ``close()`` writes its GOAWAY without closing ``h2``'s state machine, so streams already open can finish, as
  with ``nghttp2_submit_goaway``; streams the peer opens after it are ignored (RFC 9113, 6.8).

One difference from the native twin: once the *peer* sends GOAWAY, ``h2`` refuses to send anything more, so later
responses on open streams are dropped (ignored, not raised).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes, Settings
from h2.stream import StreamState
from hyperframe.frame import GoAwayFrame

EV_HEADERS = 1
EV_DATA = 2
EV_END = 3
EV_RESET = 4
EV_GOAWAY = 5

_SENDING_STATES = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_DEFAULT_WINDOW = 65535  # RFC 9113, 6.9.2: every window starts here until SETTINGS / WINDOW_UPDATE change it


class ProtocolError(Exception):
    """A connection-fatal HTTP/2 error from the peer (bad preface, bad frame, HPACK error, flow-control
    violation). ``data_to_send()`` then holds a GOAWAY to write before closing the socket."""


@dataclass(slots=True)
class _Outbound:
    """What one stream still has to send once the flow-control windows allow it."""

    pending: bytearray = field(default_factory=bytearray)
    end_stream: bool = False  # END_STREAM on the last DATA frame
    trailers: list | None = None  # HEADERS with END_STREAM after the last DATA frame
    ended: bool = False  # end_stream or trailers requested: nothing more is accepted


class ServerConnection:
    """The server side of one HTTP/2 connection: bytes in, events out, bytes to write."""

    def __init__(self, max_concurrent_streams: int = 256, initial_window: int = 1 << 24,
                 max_header_list: int = 65536) -> None:
        config = H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True,
                                 validate_outbound_headers=False, normalize_outbound_headers=False)
        self._conn = H2Connection(config=config)
        # Our settings go into the server preface as one SETTINGS frame and apply at once (more generous than
        # the peer assumes until it has read them, which is safe); h2 only reads the header limit at creation.
        self._conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
        })
        self._conn.decoder.max_header_list_size = max_header_list
        self._conn.initiate_connection()
        if initial_window > _DEFAULT_WINDOW:
            self._conn.increment_flow_control_window(initial_window - _DEFAULT_WINDOW)
        self._out = bytearray()
        self._streams: dict[int, _Outbound] = {}
        self._goaway_last_id: int | None = None  # set by close(): newer streams are refused

    # -- receiving --------------------------------------------------------------------------------------------

    def receive(self, data) -> list[tuple]:
        """Feed bytes read from the socket; return the events they complete, in order."""
        try:
            h2_events = self._conn.receive_data(bytes(data))
        except H2ProtocolError as exc:
            # h2 queues its GOAWAY for errors in frames, but not for a bad client preface (FrameBuffer.add_data).
            if self._conn.state_machine.state is not ConnectionState.CLOSED:
                self._conn.close_connection(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
            raise ProtocolError(f"HTTP/2 protocol error from the peer: {exc}") from exc
        events: list[tuple] = []
        for event in h2_events:
            stream_id = getattr(event, "stream_id", 0)
            if isinstance(event, DataReceived):
                self._conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            if self._goaway_last_id is not None and stream_id > self._goaway_last_id:
                continue  # sent after our GOAWAY: ignored, as nghttp2 does (the client knows it was not processed)
            if isinstance(event, RequestReceived):
                events.append((EV_HEADERS, stream_id, [(bytes(n), bytes(v)) for n, v in event.headers]))
            elif isinstance(event, DataReceived):
                if event.data:
                    events.append((EV_DATA, stream_id, bytes(event.data)))
            elif isinstance(event, StreamEnded):
                events.append((EV_END, stream_id))
            elif isinstance(event, StreamReset):
                self._streams.pop(stream_id, None)
                events.append((EV_RESET, stream_id, int(event.error_code)))
            elif isinstance(event, ConnectionTerminated):
                events.append((EV_GOAWAY, 0, int(event.error_code)))
            # PING and SETTINGS are acked by h2; WINDOW_UPDATE and settings changes release buffered data below;
            # trailers from the client, PRIORITY and unknown frames need nothing.
        self._flush_all()
        return events

    def data_to_send(self) -> bytes:
        """Everything queued for the socket so far (``b""`` when nothing); the queue is then empty."""
        self._out += self._conn.data_to_send()
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- sending ----------------------------------------------------------------------------------------------

    def send_headers(self, stream_id: int, headers, end_stream: bool = False) -> None:
        """Response HEADERS, as ``(name, value)`` byte pairs; ignored on a closed or reset stream."""
        if not self._can_send(stream_id) or self._outbound(stream_id).ended:
            return
        self._h2_call(self._conn.send_headers, stream_id, list(headers), end_stream=end_stream)
        if end_stream:
            self._streams.pop(stream_id, None)

    def send_data(self, stream_id: int, data, end_stream: bool = False) -> None:
        """DATA, split into frames of the peer's max frame size; what the windows do not allow yet is buffered
        and sent as WINDOW_UPDATEs arrive."""
        if not self._can_send(stream_id):
            return
        outbound = self._outbound(stream_id)
        if outbound.ended:
            return
        outbound.pending += memoryview(data).cast("B")
        outbound.end_stream = end_stream
        outbound.ended = end_stream
        self._flush(stream_id, outbound)

    def send_trailers(self, stream_id: int, headers) -> None:
        """HEADERS with END_STREAM, sent after all the data buffered for the stream has gone."""
        if not self._can_send(stream_id):
            return
        outbound = self._outbound(stream_id)
        if outbound.ended:
            return
        outbound.trailers = list(headers)
        outbound.ended = True
        self._flush(stream_id, outbound)

    def reset_stream(self, stream_id: int, error_code: int = 8) -> None:
        """RST_STREAM (8 = CANCEL), dropping the stream's buffered data; ignored on a closed or unknown stream."""
        self._streams.pop(stream_id, None)
        if self._is_open(stream_id):
            self._h2_call(self._conn.reset_stream, stream_id, error_code)

    def close(self, error_code: int = 0) -> None:
        """Queue a GOAWAY whose last stream id is the highest one received."""
        last_id = self._conn.highest_inbound_stream_id
        self._out += self._conn.data_to_send()  # keep what h2 queued before it, in order
        self._out += GoAwayFrame(stream_id=0, last_stream_id=last_id, error_code=error_code).serialize()
        self._goaway_last_id = last_id

    # -- internals --------------------------------------------------------------------------------------------

    def _is_open(self, stream_id: int) -> bool:
        stream = self._conn.streams.get(stream_id)
        return stream is not None and not stream.closed

    def _can_send(self, stream_id: int) -> bool:
        """Open on our side: not closed, not reset, and we have not ended it (our END_STREAM has been written)."""
        stream = self._conn.streams.get(stream_id)
        return stream is not None and stream.state_machine.state in _SENDING_STATES

    def _outbound(self, stream_id: int) -> _Outbound:
        outbound = self._streams.get(stream_id)
        if outbound is None:
            outbound = self._streams[stream_id] = _Outbound()
        return outbound

    def _h2_call(self, method, *args, **kwargs) -> None:
        """Call h2, ignoring refusals for a stream that closed meanwhile or a connection the peer ended."""
        try:
            method(*args, **kwargs)
        except StreamClosedError:
            self._streams.pop(args[0], None)
        except H2ProtocolError:
            if self._conn.state_machine.state is not ConnectionState.CLOSED:
                raise
            self._streams.clear()

    def _flush_all(self) -> None:
        for stream_id, outbound in list(self._streams.items()):
            if not self._is_open(stream_id):
                del self._streams[stream_id]
            else:
                self._flush(stream_id, outbound)

    def _flush(self, stream_id: int, outbound: _Outbound) -> None:
        """Send as much of the stream's buffered data as both windows allow, then its end if all has gone."""
        pending = outbound.pending
        sent = 0
        while sent < len(pending):
            if self._conn.state_machine.state is ConnectionState.CLOSED or not self._is_open(stream_id):
                self._streams.pop(stream_id, None)
                return
            size = min(len(pending) - sent, self._conn.max_outbound_frame_size,
                       self._conn.local_flow_control_window(stream_id))
            if size <= 0:
                break
            last = sent + size == len(pending) and outbound.end_stream
            self._h2_call(self._conn.send_data, stream_id, bytes(pending[sent:sent + size]), end_stream=last)
            sent += size
        del pending[:sent]
        if pending or not outbound.ended:
            return
        self._streams.pop(stream_id, None)
        if outbound.trailers is not None:
            self._h2_call(self._conn.send_headers, stream_id, outbound.trailers, end_stream=True)
        elif outbound.end_stream and sent == 0:
            self._h2_call(self._conn.send_data, stream_id, b"", end_stream=True)
