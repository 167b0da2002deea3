"""What only ``--grpc_server native`` does itself (ovms/transport/grpc_native.py), with real clients: deadlines,
compressed requests, message size limits, cancellation, stopping with calls open, and ModelInfer answered in place
or through the workers. Run once as is and once with ``OVMS_NO_EXTENSIONS=1`` (the h2 twin)."""
from __future__ import annotations

import json
import pathlib
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import grpc
import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ovms._proto.messages import kserve as pb
from ovms.backends import openvino_model
from ovms.transport import grpc_native, grpc_server
from tests.conftest import ThreadedServer
from tests.grpc_stubs import stub as make_stub
from tests.twins import expected_module

KSERVE = "inference.GRPCInferenceService"
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def native(model_repo):
    with ThreadedServer(config_path=model_repo / "config.json", grpc_server="native") as running:
        yield running


@pytest.fixture(scope="module")
def small_repo(model_repo, tmp_path_factory):
    """identity16 and dynamic only: servers started for one test load in a fraction of the demo's time."""
    config = tmp_path_factory.mktemp("small") / "config.json"
    config.write_text(json.dumps({"model_config_list": [
        {"config": {"name": name, "base_path": str(model_repo / name)}} for name in ("identity16", "dynamic")]}))
    return config


@pytest.fixture(scope="module")
def limited(small_repo):
    """Requests up to 2,000 bytes, answers up to 1,000 bytes."""
    with ThreadedServer(config_path=small_repo, grpc_server="native", grpc_channel_arguments=(
            ("grpc.max_receive_message_length", 2000), ("grpc.max_send_message_length", 1000))) as running:
        yield running


def kserve(url: str, **channel_options):
    return make_stub(grpc.insecure_channel(url, **channel_options),
                     pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])


def identity16_request(value: float, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity16", **fields)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append((np.arange(16, dtype=np.float32) + value).tobytes())
    return request


def output(response: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.float32)


def inference_count(url: str, model: str) -> int:
    return kserve(url).ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0].inference_count


def wait_idle(running: ThreadedServer, timeout: float = 3.0) -> None:
    """Every call of the native server finished and forgotten: no task left, no stream left in a connection."""
    native_server = running.server._grpc
    deadline = time.monotonic() + timeout
    while native_server.tasks or any(c.calls for c in list(native_server.connections)):
        assert time.monotonic() < deadline, (native_server.tasks, [c.calls for c in native_server.connections])
        time.sleep(0.02)


def count_in_place(monkeypatch) -> list:
    """The ids of the requests a model answered in place (``infer_now`` gave a response), from now on."""
    answered = []
    infer_now = openvino_model.OpenVINOServable.infer_now

    def counted(self, request):
        response = infer_now(self, request)
        if response is not None:
            answered.append(request.id)
        return response

    monkeypatch.setattr(openvino_model.OpenVINOServable, "infer_now", counted)
    return answered


def grpc_frame(message: bytes, *, compressed: bool = False) -> bytes:
    return bytes([compressed]) + len(message).to_bytes(4, "big") + message


class RawClient:
    """HTTP/2 from the ``h2`` library on a plain socket: sends exactly the headers given, and (unlike grpcio)
    enforces no deadline of its own, so what the server does is what is seen."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())

    def call(self, path: str, body: bytes, *, headers=(), method: str = "POST",
             content_type: str = "application/grpc") -> dict:
        """One call to its end: response headers, the data, trailers, the RST_STREAM code and seconds taken."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, [(":method", method), (":scheme", "http"), (":path", path),
                                      (":authority", "localhost"), ("content-type", content_type), ("te", "trailers"),
                                      *headers])
        self.h2.send_data(stream, body, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        started = time.monotonic()
        answer = {"headers": {}, "data": b"", "trailers": {}, "reset": None}
        while True:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            ended = False
            for event in self.h2.receive_data(data):
                if getattr(event, "stream_id", stream) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    answer["headers"] = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    answer["data"] += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    answer["trailers"] = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    answer["reset"] = event.error_code
                    ended = True
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            self.sock.sendall(self.h2.data_to_send())
            if ended:
                answer["seconds"] = time.monotonic() - started
                return answer

    def close(self) -> None:
        self.sock.close()


def test_the_h2_twin_this_run_expects():
    assert grpc_native.h2.__name__ == expected_module("h2conn")


# --- 1. deadlines

def test_grpc_timeout_ends_a_watch_with_deadline_exceeded_from_the_server(native):
    """grpc-timeout 200m on a Watch that would stream forever: the first message, then DEADLINE_EXCEEDED in the
    trailers, sent by the server itself (this client keeps no deadline), and the call's task is gone."""
    client = RawClient(native.grpc_url)
    try:
        answer = client.call("/grpc.health.v1.Health/Watch", grpc_frame(health_pb2.HealthCheckRequest().
                                                                         SerializeToString()),
                             headers=[("grpc-timeout", "200m")])
        assert answer["headers"][":status"] == "200", answer
        assert answer["trailers"]["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), answer
        assert health_pb2.HealthCheckResponse.FromString(answer["data"][5:]).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert 0.15 < answer["seconds"] < 2.0
        wait_idle(native)
        # the same connection serves the next call
        live = client.call(f"/{KSERVE}/ServerLive", grpc_frame(b""))
        assert live["trailers"]["grpc-status"] == "0" and pb.ServerLiveResponse.FromString(live["data"][5:]).live
    finally:
        client.close()


def test_deadline_with_grpcio_on_watch_and_on_an_open_stream(native):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(native.grpc_url))
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=0.3)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        next(watch)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    release = threading.Event()

    def requests():
        yield identity16_request(1, id="first")
        release.wait(5)  # the stream stays open, waiting for requests that do not come

    stub = kserve(native.grpc_url)
    stream = stub.ModelStreamInfer(requests(), timeout=0.5)
    try:
        assert next(stream).infer_response.id == "first"
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    wait_idle(native)
    assert np.array_equal(output(stub.ModelInfer(identity16_request(2))), np.arange(16) + 2)


# --- 2. compressed requests

@pytest.mark.parametrize("compression, encoding", [(grpc.Compression.Gzip, "gzip"),
                                                   (grpc.Compression.Deflate, "deflate")])
def test_compressed_requests(native, monkeypatch, compression, encoding):
    seen = []
    decompress = grpc_native._Connection._decompress

    def recording(self, call, message):
        seen.append(call.encoding)
        return decompress(self, call, message)

    monkeypatch.setattr(grpc_native._Connection, "_decompress", recording)
    stub = kserve(native.grpc_url, compression=compression)
    pad = "." * 200  # grpcio sends a message uncompressed when compressing does not make it smaller
    assert np.array_equal(output(stub.ModelInfer(identity16_request(5, id=pad))), np.arange(16) + 5)
    request = pb.ModelInferRequest(model_name="dummy", model_version="1", id=pad)
    request.inputs.add(name="b", datatype="FP32", shape=[1, 10])
    request.raw_input_contents.append(np.full(10, 0.5, np.float32).tobytes())
    assert np.array_equal(output(stub.ModelInfer(request)), np.full(10, 1.5, np.float32))
    answers = list(stub.ModelStreamInfer(iter([identity16_request(i, id=f"{i}{pad}") for i in range(3)])))
    assert [(a.error_message, a.infer_response.id, output(a.infer_response)[0]) for a in answers] == \
        [("", f"{i}{pad}", i) for i in range(3)]
    assert seen == [encoding] * 5


def test_unknown_compression_is_unimplemented(native):
    client = RawClient(native.grpc_url)
    try:
        answer = client.call(f"/{KSERVE}/ModelInfer", grpc_frame(b"x", compressed=True),
                             headers=[("grpc-encoding", "snappy")])
        assert answer["trailers"].get("grpc-status", answer["headers"].get("grpc-status")) == \
            str(grpc.StatusCode.UNIMPLEMENTED.value[0])
        assert "snappy" in answer["headers"].get("grpc-message", "")
        garbled = client.call(f"/{KSERVE}/ModelInfer", grpc_frame(b"not gzip", compressed=True),
                              headers=[("grpc-encoding", "gzip")])
        assert garbled["headers"]["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    finally:
        client.close()


# --- 3. what is not gRPC or not served

def test_unknown_method_is_unimplemented(native):
    channel = grpc.insecure_channel(native.grpc_url)
    for path in ("/no.such.Service/Method", f"/{KSERVE}/NoSuchMethod"):
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(path)(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, path
    with pytest.raises(grpc.RpcError) as info:
        list(channel.stream_stream("/no.such.Service/Stream")(iter([b"a", b"b"])))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert kserve(native.grpc_url).ServerReady(pb.ServerReadyRequest()).ready


def test_not_post_or_not_grpc_is_refused_with_http_status(native):
    client = RawClient(native.grpc_url)
    try:
        assert client.call(f"/{KSERVE}/ServerLive", b"", method="GET")["headers"][":status"] == "405"
        assert client.call(f"/{KSERVE}/ServerLive", b"", content_type="application/json")["headers"][":status"] \
            == "415"
        wait_idle(native)
    finally:
        client.close()


# --- 4. health and reflection

def test_health_check_watch_and_reflection(native):
    channel = grpc.insecure_channel(native.grpc_url)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", KSERVE):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no.such.Service" in info.value.details()
    # Watch streams every change as it happens: each message is written while the call stays open.
    watch = health.Watch(health_pb2.HealthCheckRequest(service=KSERVE), timeout=10)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        native.loop.call_soon_threadsafe(grpc_server.set_health, native.server._grpc, False)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        native.loop.call_soon_threadsafe(grpc_server.set_health, native.server._grpc, True)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        native.loop.call_soon_threadsafe(grpc_server.set_health, native.server._grpc, True)
        watch.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=KSERVE)])))
    assert len(replies) == 2
    assert KSERVE in {s.name for s in replies[0].list_services_response.service}
    assert replies[1].file_descriptor_response.file_descriptor_proto
    wait_idle(native)


# --- 5. message size limits

def test_receive_limit(limited):
    stub = kserve(limited.grpc_url)
    assert np.array_equal(output(stub.ModelInfer(identity16_request(3))), np.arange(16) + 3)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(identity16_request(3, id="x" * 3000))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "vs. 2000" in info.value.details()
    answers = stub.ModelStreamInfer(iter([identity16_request(1, id="small"), identity16_request(1, id="x" * 3000)]))
    with pytest.raises(grpc.RpcError) as info:
        list(answers)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    wait_idle(limited)
    assert np.array_equal(output(stub.ModelInfer(identity16_request(4))), np.arange(16) + 4)


def test_an_oversized_upload_is_refused_before_it_ends(limited):
    """A unary request whose body passes the 2,000-byte limit gets RESOURCE_EXHAUSTED while the client is still
    sending (END_STREAM never sent): the server does not hold an upload to its end before refusing it."""
    client = RawClient(limited.grpc_url)
    try:
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                        (":path", "/inference.GRPCInferenceService/ModelInfer"),
                                        (":authority", "localhost"), ("content-type", "application/grpc"),
                                        ("te", "trailers")])
        client.h2.send_data(stream, b"\x00" + (100_000).to_bytes(4, "big") + b"\x01" * 5000)  # no END_STREAM
        client.sock.sendall(client.h2.data_to_send())
        trailers = None
        deadline = time.monotonic() + 5
        while trailers is None and time.monotonic() < deadline:
            for event in client.h2.receive_data(client.sock.recv(65536)):
                if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)) and \
                        any(k == "grpc-status" for k, _ in event.headers):
                    trailers = dict(event.headers)
            client.sock.sendall(client.h2.data_to_send())
        assert trailers is not None, "no answer while the upload was still open"
        assert trailers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert "vs. 2000" in urllib.parse.unquote(trailers["grpc-message"])
    finally:
        client.close()
    wait_idle(limited)


def test_send_limit_in_place_and_through_workers(limited, monkeypatch):
    """An answer over 1,000 bytes is refused with RESOURCE_EXHAUSTED whichever path made it: the first calls go to
    the workers (until their timing of the model falls under INLINE_SECONDS), the later ones are answered in place
    on the event loop."""
    in_place = count_in_place(monkeypatch)
    stub = kserve(limited.grpc_url)
    request = pb.ModelInferRequest(model_name="dynamic")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 300])
    request.raw_input_contents.append(np.ones(300, np.float32).tobytes())
    for _ in range(60):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.fullmatch(r"Sent message larger than max \(12\d\d vs\. 1000\)", info.value.details())
        if len(in_place) >= 2:
            break
    assert len(in_place) >= 2, "the in-place path was never taken"
    small = pb.ModelInferRequest(model_name="dynamic")
    small.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    small.raw_input_contents.append(np.ones(3, np.float32).tobytes())
    assert np.array_equal(output(stub.ModelInfer(small)), [2, 2, 2])
    wait_idle(limited)


# --- 6. options the native server does not implement

def test_cli_refuses_an_unsupported_channel_argument():
    result = subprocess.run([sys.executable, "-m", "ovms", "--grpc_server", "native", "--grpc_channel_arguments",
                             "grpc.max_connection_age_ms=1000", "--port", "1", "--model_path", "x", "--model_name",
                             "y"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 64, result
    assert "grpc.max_connection_age_ms is not implemented by --grpc_server native" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ValueError, match="grpc.max_connection_age_ms"):
        grpc_native.NativeServer((), options={"grpc.max_connection_age_ms": 1000})


# --- 7. many calls at once, and a long stream

def test_200_concurrent_calls_from_8_threads(native):
    with grpcclient.InferenceServerClient(native.grpc_url) as client:
        def one(i: int) -> bool:
            x = np.full((1, 16), i, np.float32)
            inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer("identity16", [inp], request_id=str(i))
            return result.get_response().id == str(i) and np.array_equal(result.as_numpy("OUTPUT0"), x)

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(one, range(200)))
    wait_idle(native)


def test_stream_of_50_in_order(native):
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(native.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for i in range(50):
                inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
                inp.set_data_from_numpy(np.full((1, 16), i, np.float32))
                client.async_stream_infer("identity16", [inp], request_id=str(i))
            got = []
            for _ in range(50):
                result, error = answers.get(timeout=10)
                assert error is None, error
                got.append((result.get_response().id, float(result.as_numpy("OUTPUT0")[0, 0])))
        finally:
            client.stop_stream()
    assert got == [(str(i), float(i)) for i in range(50)]
    wait_idle(native)


# --- 8. clients that leave mid-call

def test_cancelled_calls_leave_the_server_serving(native):
    stub = kserve(native.grpc_url)
    release = threading.Event()

    def requests():
        yield identity16_request(7, id="one")
        release.wait(5)

    stream = stub.ModelStreamInfer(requests())
    try:
        assert next(stream).infer_response.id == "one"
        stream.cancel()
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
    watch = health_pb2_grpc.HealthStub(grpc.insecure_channel(native.grpc_url)).Watch(health_pb2.HealthCheckRequest())
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    wait_idle(native)  # RST_STREAM reached the server: the calls' tasks are cancelled and their streams forgotten
    assert np.array_equal(output(stub.ModelInfer(identity16_request(8))), np.arange(16) + 8)


# --- 9. stopping with a call open

def test_stop_with_a_watch_open_ends_it_within_the_grace(small_repo):
    running = ThreadedServer(config_path=small_repo, grpc_server="native").__enter__()
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(running.grpc_url))
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        running.call(running.server.stop(grace=1), timeout=10)
        assert time.monotonic() - started < 3
        ended = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            next(watch)
        assert time.monotonic() - ended < 2, "the client did not see the stream end"
        # GOAWAY, then the connection closed: UNAVAILABLE, which a client retries on another replica
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", running.server.grpc_port), timeout=1).close()
    finally:
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(10)


# --- 10. in place and through the workers, counted the same

def test_in_place_and_worker_paths_give_the_same_answers_and_counts(native, monkeypatch):
    in_place, workers = count_in_place(monkeypatch), []
    infer = openvino_model.OpenVINOServable.infer

    async def counted_infer(self, request):
        workers.append(request.id)
        return await infer(self, request)

    monkeypatch.setattr(openvino_model.OpenVINOServable, "infer", counted_infer)
    stub = kserve(native.grpc_url)
    for _ in range(3):  # the workers time the model first
        stub.ModelInfer(identity16_request(0))
    calls = 20
    for mode in ("in place", "workers"):
        if mode == "workers":
            monkeypatch.setattr(openvino_model, "INLINE_SECONDS", 0)
        in_place.clear()
        workers.clear()
        before = inference_count(native.grpc_url, "identity16")
        for i in range(calls):
            response = stub.ModelInfer(identity16_request(i, id=f"{mode} {i}"))
            assert response.id == f"{mode} {i}" and np.array_equal(output(response), np.arange(16) + i)
        assert inference_count(native.grpc_url, "identity16") - before == calls, mode
        assert len(in_place) + len(workers) == calls, mode
        if mode == "in place":
            assert len(in_place) >= calls // 2, (in_place, workers)  # an [1,16] Relu takes microseconds
        else:
            assert (len(in_place), len(workers)) == (0, calls)


# --- the drain count of calls the client gives up on at once

def test_a_call_reset_in_the_same_read_leaves_the_drain_count_alone(native, monkeypatch):
    """A ModelInfer for the workers whose RST_STREAM arrives in the same read as its request: the task serving
    it is cancelled before its first step. The soak found such calls counted in the drain for good (so SIGTERM
    waited out the whole drain timeout and exited 1) and 'coroutine was never awaited' warnings."""
    monkeypatch.setattr(openvino_model, "INLINE_SECONDS", 0)  # the worker path: a task per call
    drain = native.server.dataplane.drain
    client = RawClient(native.grpc_url)
    try:
        body = grpc_frame(identity16_request(1.0).SerializeToString())
        for _ in range(20):
            stream = client.h2.get_next_available_stream_id()
            client.h2.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                            (":path", "/inference.GRPCInferenceService/ModelInfer"),
                                            (":authority", "localhost"), ("content-type", "application/grpc"),
                                            ("te", "trailers")])
            client.h2.send_data(stream, body, end_stream=True)
            client.h2.reset_stream(stream)
        client.sock.sendall(client.h2.data_to_send())
        answer = client.call("/inference.GRPCInferenceService/ModelInfer", body)  # the connection still serves
        assert answer["trailers"]["grpc-status"] == "0", answer
        deadline = time.monotonic() + 5
        while drain.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert drain.active == 0
    finally:
        client.close()


# --- big requests: raw inputs read where they arrived

def test_big_raw_inputs_are_split_off_and_answered_right_in_place_and_through_workers(native, monkeypatch):
    from ovms.protocol import kserve_grpc
    splits = []
    split = kserve_grpc.split_raw_inputs

    def counted(data):
        result = split(data)
        splits.append(result is not None and len(result[1]))
        return result

    monkeypatch.setattr(kserve_grpc, "split_raw_inputs", counted)
    client = grpcclient.InferenceServerClient(native.grpc_url)
    rng = np.random.default_rng(5)
    for mode in ("in place", "workers"):
        if mode == "workers":
            monkeypatch.setattr(openvino_model, "INLINE_SECONDS", 0)
        splits.clear()
        for _ in range(4):
            x = rng.random((1, 3, 224, 224), dtype=np.float32)
            tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            assert np.array_equal(client.infer("image", [tensor]).as_numpy("OUTPUT0"), x), mode
        assert splits == [1] * 4, mode
    # The split changes nothing a client sees of a wrong request: OVMS's message, INVALID_ARGUMENT.
    request = pb.ModelInferRequest(model_name="image")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3, 224, 224])
    request.raw_input_contents.extend([bytes(602112), bytes(4)])
    with pytest.raises(grpc.RpcError) as caught:
        kserve(native.grpc_url).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents has 2 buffers for 1 inputs" in caught.value.details()
    wrong_size = pb.ModelInferRequest(model_name="image")
    wrong_size.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3, 224, 224])
    wrong_size.raw_input_contents.append(bytes(602112 - 4))
    with pytest.raises(grpc.RpcError) as caught:
        kserve(native.grpc_url).ModelInfer(wrong_size)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected: 602112 bytes; Actual: 602108 bytes" in caught.value.details()
