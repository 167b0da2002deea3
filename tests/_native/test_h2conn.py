"""The HTTP/2 server connection twins, driven by an ``h2`` client state machine as the peer: the preface and its
settings, request events, responses with trailers, flow control both ways, resets, GOAWAY, PING and a bad
preface; and the native build guard."""
from __future__ import annotations

import struct

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, PingAckReceived, ResponseReceived, StreamEnded,
                       StreamReset, TrailersReceived)
from h2.settings import SettingCodes

from ovms._native import is_native, load
from tests.twins import PURE_RUN, twin_params

TWINS = twin_params("h2conn")
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
           (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
FRAME_DATA, FRAME_HEADERS, FRAME_GOAWAY = 0x0, 0x1, 0x7


def test_native_build_loaded():
    if PURE_RUN:
        assert not is_native("h2conn")
    else:
        assert is_native("h2conn"), "ovms._native.h2conn_c did not import: run `make build`"


class Peers:
    """A twin's ServerConnection and an h2 client, with the bytes between them moved by ``exchange``."""

    def __init__(self, pure: bool, client_settings: dict | None = None, **server_options):
        self.mod = load("h2conn", pure=pure)
        self.server = self.mod.ServerConnection(**server_options)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.exchange()

    def exchange(self) -> tuple[list, list]:
        """Move bytes both ways until neither side has any; return (server events, client events)."""
        server_events, client_events = [], []
        while True:
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return server_events, client_events
            if to_server:
                server_events += self.server.receive(to_server)
            if to_client:
                client_events += self.client.receive_data(to_client)

    def request(self, body: bytes = b"") -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, REQUEST, end_stream=not body)
        if body:
            self.client.send_data(stream_id, body, end_stream=True)
        return stream_id


def frames(wire: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of each frame in ``wire`` (RFC 9113, 4.1)."""
    out, at = [], 0
    while at < len(wire):
        length_hi, length_lo, kind, _flags, stream_id = struct.unpack_from(">BHBBI", wire, at)
        length = (length_hi << 16) | length_lo
        out.append((kind, stream_id & 0x7FFFFFFF, wire[at + 9:at + 9 + length]))
        at += 9 + length
    return out


def received(events, stream_id: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id)


@pytest.mark.parametrize("pure", TWINS)
def test_preface_carries_the_settings_and_raises_the_connection_window(pure):
    peers = Peers(pure, max_concurrent_streams=7, initial_window=1 << 20, max_header_list=12345)
    settings = peers.client.remote_settings
    assert (settings.max_concurrent_streams, settings.initial_window_size, settings.max_header_list_size) == \
        (7, 1 << 20, 12345)
    assert peers.client.outbound_flow_control_window == 1 << 20
    assert peers.server.data_to_send() == b""


@pytest.mark.parametrize("pure", TWINS)
def test_request_events_in_order(pure):
    peers = Peers(pure)
    peers.client.send_headers(1, REQUEST)
    peers.client.send_data(1, b"first chunk ")
    peers.client.send_data(1, b"second")
    peers.client.end_stream(1)  # an empty DATA frame with END_STREAM: no empty EV_DATA for it
    events, _ = peers.exchange()
    mod = peers.mod
    assert events[0] == (mod.EV_HEADERS, 1, REQUEST)
    assert [e[0] for e in events[1:-1]] == [mod.EV_DATA] * (len(events) - 2)
    assert b"".join(e[2] for e in events[1:-1]) == b"first chunk second"
    assert all(e[2] for e in events[1:-1])
    assert events[-1] == (mod.EV_END, 1)


@pytest.mark.parametrize("pure", TWINS)
def test_headers_only_request_ends_after_its_headers(pure):
    peers = Peers(pure)
    stream_id = peers.request()
    events, _ = peers.exchange()
    assert events == [(peers.mod.EV_HEADERS, stream_id, REQUEST), (peers.mod.EV_END, stream_id)]


@pytest.mark.parametrize("pure", TWINS)
def test_response_headers_data_trailers(pure):
    peers = Peers(pure)
    stream_id = peers.request(b"ask")
    peers.exchange()
    peers.server.send_headers(stream_id, RESPONSE)
    peers.server.send_data(stream_id, memoryview(b"\x00\x00\x00\x00\x05hello"))
    peers.server.send_trailers(stream_id, TRAILERS)
    _, events = peers.exchange()
    assert [type(e) for e in events] == [ResponseReceived, DataReceived, TrailersReceived, StreamEnded]
    assert list(events[0].headers) == RESPONSE
    assert events[1].data == b"\x00\x00\x00\x00\x05hello"
    assert list(events[2].headers) == TRAILERS and events[2].stream_ended is not None


@pytest.mark.parametrize("pure", TWINS)
def test_send_data_waits_for_the_peer_window_and_trailers_wait_for_the_data(pure):
    peers = Peers(pure)  # the client keeps h2's default windows: 65535 bytes
    stream_id = peers.request(b"ask")
    peers.exchange()
    body = bytes(range(256)) * 4096  # 1 MiB
    peers.server.send_headers(stream_id, RESPONSE)
    peers.server.send_data(stream_id, bytearray(body))
    peers.server.send_trailers(stream_id, TRAILERS)
    got, trailers_after, rounds = b"", None, 0
    _, events = peers.exchange()
    while trailers_after is None:
        chunk = received(events, stream_id)
        assert len(chunk) <= 65535, "more data than the client's window allowed"
        got += chunk
        for event in events:
            if isinstance(event, TrailersReceived):
                trailers_after = len(got)
            if isinstance(event, DataReceived):
                peers.client.acknowledge_received_data(event.flow_controlled_length, stream_id)
        rounds += 1
        assert rounds < 1000, f"stalled after {len(got)} bytes"
        _, events = peers.exchange()
    assert got == body
    assert trailers_after == len(body)


@pytest.mark.parametrize("pure", TWINS)
def test_concurrent_streams_get_their_own_responses(pure):
    peers = Peers(pure)
    streams = [peers.request(b"request %d" % i) for i in range(50)]
    events, _ = peers.exchange()
    bodies = {}
    for event in events:
        if event[0] == peers.mod.EV_DATA:
            bodies[event[1]] = bodies.get(event[1], b"") + event[2]
    assert bodies == {s: b"request %d" % i for i, s in enumerate(streams)}
    for stream_id in reversed(streams):
        peers.server.send_headers(stream_id, RESPONSE)
    for stream_id in streams:
        peers.server.send_data(stream_id, b"answer to " + bodies[stream_id])
    for stream_id in reversed(streams):
        peers.server.send_trailers(stream_id, TRAILERS)
    _, events = peers.exchange()
    for stream_id in streams:
        assert received(events, stream_id) == b"answer to " + bodies[stream_id]
    assert sorted(e.stream_id for e in events if isinstance(e, StreamEnded)) == streams


@pytest.mark.parametrize("pure", TWINS)
def test_client_reset_is_an_event_and_later_calls_on_the_stream_do_nothing(pure):
    peers = Peers(pure)
    gone, alive = peers.request(b"one"), peers.request(b"two")
    peers.exchange()
    peers.client.reset_stream(gone, ErrorCodes.CANCEL)
    events, _ = peers.exchange()
    assert events == [(peers.mod.EV_RESET, gone, 8)]
    peers.server.send_headers(gone, RESPONSE)
    peers.server.send_data(gone, b"late")
    peers.server.send_trailers(gone, TRAILERS)
    peers.server.reset_stream(gone)
    peers.server.reset_stream(999)  # never opened
    assert peers.server.data_to_send() == b""
    peers.server.send_headers(alive, RESPONSE)
    peers.server.send_data(alive, b"fine", end_stream=True)
    _, events = peers.exchange()
    assert received(events, alive) == b"fine"
    assert [e.stream_id for e in events if isinstance(e, StreamEnded)] == [alive]


@pytest.mark.parametrize("pure", TWINS)
def test_calls_after_the_server_ended_a_stream_do_nothing(pure):
    peers = Peers(pure)
    stream_id = peers.client.get_next_available_stream_id()
    peers.client.send_headers(stream_id, REQUEST)  # the client keeps its side open (a streaming call)
    peers.exchange()
    peers.server.send_headers(stream_id, RESPONSE)
    peers.server.send_data(stream_id, b"all", end_stream=True)
    _, events = peers.exchange()
    assert received(events, stream_id) == b"all" and any(isinstance(e, StreamEnded) for e in events)
    peers.server.send_headers(stream_id, RESPONSE)
    peers.server.send_data(stream_id, b"more")
    peers.server.send_trailers(stream_id, TRAILERS)
    assert peers.server.data_to_send() == b""


@pytest.mark.parametrize("pure", TWINS)
def test_server_reset_drops_buffered_data(pure):
    # a large stream window, so the connection window (65535) is what holds the data back
    peers = Peers(pure, client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 22})
    stream_id = peers.request(b"ask")
    peers.exchange()
    peers.server.send_headers(stream_id, RESPONSE)
    peers.server.send_data(stream_id, b"x" * (1 << 20))
    peers.server.reset_stream(stream_id, 2)
    _, events = peers.exchange()
    assert [(e.stream_id, e.error_code) for e in events if isinstance(e, StreamReset)] == [(stream_id, 2)]
    assert len(received(events, stream_id)) <= 65535
    peers.client.increment_flow_control_window(1 << 22)
    peers.server.receive(peers.client.data_to_send())
    assert [f for f in frames(peers.server.data_to_send()) if f[0] == FRAME_DATA] == []


@pytest.mark.parametrize("pure", TWINS)
def test_garbage_preface_is_a_protocol_error_with_goaway(pure):
    mod = load("h2conn", pure=pure)
    server = mod.ServerConnection()
    server.data_to_send()
    with pytest.raises(mod.ProtocolError):
        server.receive(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    assert FRAME_GOAWAY in [kind for kind, _, _ in frames(server.data_to_send())]


@pytest.mark.parametrize("pure", TWINS)
def test_ping_is_acked_without_an_event(pure):
    peers = Peers(pure)
    peers.client.ping(b"8 bytes!")
    events, client_events = peers.exchange()
    assert events == []
    assert [e.ping_data for e in client_events if isinstance(e, PingAckReceived)] == [b"8 bytes!"]


@pytest.mark.parametrize("pure", TWINS)
def test_client_goaway_is_an_event(pure):
    peers = Peers(pure)
    peers.client.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
    events, _ = peers.exchange()
    assert events == [(peers.mod.EV_GOAWAY, 0, 11)]


@pytest.mark.parametrize("pure", TWINS)
def test_close_sends_goaway_with_the_last_stream_id(pure):
    peers = Peers(pure)
    streams = [peers.request(b"x") for _ in range(3)]
    peers.exchange()
    peers.server.close(0)
    _, events = peers.exchange()
    assert [(e.last_stream_id, e.error_code) for e in events if isinstance(e, ConnectionTerminated)] == \
        [(streams[-1], 0)]


@pytest.mark.parametrize("pure", TWINS)
def test_after_close_open_streams_finish_and_newer_ones_are_ignored(pure):
    peers = Peers(pure)
    open_stream = peers.request(b"before")
    peers.exchange()
    peers.server.close(0)
    late = peers.request(b"after the GOAWAY")  # in flight when the GOAWAY was written
    events, _ = peers.exchange()
    assert [e for e in events if e[1] == late] == []
    peers.server.send_headers(open_stream, RESPONSE)
    peers.server.send_data(open_stream, b"done", end_stream=True)
    # raw frames: h2's client refuses HEADERS once it has a GOAWAY, nghttp2 and grpc-core do not
    sent = [(kind, payload) for kind, stream_id, payload in frames(peers.server.data_to_send())
            if stream_id == open_stream]
    assert [kind for kind, _ in sent] == [FRAME_HEADERS, FRAME_DATA] and sent[1][1] == b"done"


@pytest.mark.parametrize("pure", TWINS)
@pytest.mark.parametrize("initial_window", [1 << 24, 1 << 22])  # the default, and one the body must refill 4 times
def test_16_mib_request_body_never_blocks_the_client(pure, initial_window):
    peers = Peers(pure, initial_window=initial_window)
    stream_id = peers.client.get_next_available_stream_id()
    peers.client.send_headers(stream_id, REQUEST)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    got = []
    for i in range(16):
        assert peers.client.local_flow_control_window(stream_id) >= len(chunk), f"client blocked at chunk {i}"
        step = peers.client.max_outbound_frame_size  # h2 sends one frame per call
        for at in range(0, len(chunk), step):
            peers.client.send_data(stream_id, chunk[at:at + step], end_stream=i == 15 and at + step >= len(chunk))
        events, _ = peers.exchange()
        got += events
    mod = peers.mod
    assert got[0][0] == mod.EV_HEADERS and got[-1] == (mod.EV_END, stream_id)
    body = b"".join(e[2] for e in got if e[0] == mod.EV_DATA)
    assert len(body) == 16 << 20 and body == chunk * 16
