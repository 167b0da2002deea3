"""Graceful drain as orchestrators drive it: SIGTERM makes the server unready at once and refuses new requests,
while an SSE generation and a ModelStreamInfer request in flight finish; then the process exits 0. A second
signal or --drain_timeout_seconds cuts the drain short (exit 1).

To hold requests in flight for as long as the test needs, the LLM's generation worker process is SIGSTOPped
(the stream cannot end until it is continued) and a classic model takes about a second per inference."""
from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import signal
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import openai
import openvino as ov
import openvino.opset13 as ops
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.genai.conftest import LLM_DIR, LLM_GRAPH
from tests.test_cli import OvmsProcess
from tests.test_reload import wait_for

SHUTTING_DOWN = "Server is shutting down"


def slow_model() -> ov.Model:
    """y = mean(tanh chain of 256 [512,1024] x [1024,1024] MatMuls on x * C): about a second in f32 here."""
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 1], ov.Type.f32, name="x")
    h = ops.multiply(x, ops.constant(rng.random((512, 1024)).astype(np.float32)))
    w = ops.constant((np.eye(1024) + rng.normal(0, 1e-4, (1024, 1024))).astype(np.float32))
    for _ in range(256):
        h = ops.tanh(ops.matmul(h, w, False, False))
    y = ops.reduce_mean(h, ops.constant(np.array([0, 1], np.int64)), True)
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([ops.result(y)], [x], "slow")


@pytest.fixture(scope="module")
def repository(tmp_path_factory, model_repo) -> pathlib.Path:
    root = tmp_path_factory.mktemp("drain")
    ov.save_model(slow_model(), str(root / "slow" / "1" / "model.xml"), compress_to_fp16=False)
    (root / "llm").mkdir()
    (root / "llm" / "graph.pbtxt").write_text(LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=4))
    (root / "config.json").write_text(json.dumps({
        "model_config_list": [
            {"config": {"name": "simple", "base_path": str(model_repo / "simple")}},
            {"config": {"name": "slow", "base_path": str(root / "slow"),
                        "plugin_config": {"INFERENCE_PRECISION_HINT": "f32"}}}],
        "mediapipe_config_list": [{"name": "llm", "base_path": str(root / "llm")}]}))
    return root


def current_requests(rest_port: int, model: str) -> float:
    """The ovms_current_requests gauge of ``model`` from /metrics (the server must list that family)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(rf'^ovms_current_requests{{[^}}]*name="{model}"[^}}]*}} (\S+)$', text, re.M)
    assert found, f"no ovms_current_requests sample for {model}"
    return float(found[0])


class Running(OvmsProcess):
    """A server on the drain repository, reporting ovms_current_requests; ready when constructed."""

    def __init__(self, repository: pathlib.Path, tmp_path: pathlib.Path, *extra: str) -> None:
        super().__init__(tmp_path, None, "--config_path", str(repository / "config.json"), "--metrics_enable",
                         "--metrics_list", "ovms_current_requests", *extra)
        self.wait_ready()

    def worker_pid(self) -> int:
        """The LLM's generation worker process, as the server logged it."""
        (pid,) = re.findall(r"llm: generation worker started \(pid (\d+)\)", self.log.read_text())
        assert pathlib.Path(f"/proc/{pid}/status").read_text().count(f"PPid:\t{self.process.pid}\n") == 1
        return int(pid)

    def rest(self, method: str, path: str, body: dict | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def current_requests(self, model: str) -> float:
        return current_requests(self.rest_port, model)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_sse(server: Running, max_tokens: int):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.rest_port}/v3", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True},
                                            stream_options={"include_usage": True})
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta is not None
    return chunks


def test_sigterm_drains_streams_in_flight_then_exits_0(repository, tmp_path):
    server = Running(repository, tmp_path)
    worker = None
    try:
        chunks = start_sse(server, max_tokens=200)
        worker = server.worker_pid()
        os.kill(worker, signal.SIGSTOP)  # the generation cannot end until the worker continues

        answers: queue.Queue = queue.Queue()
        stream_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        stream_client.start_stream(callback=lambda result, error: answers.put((result, error)))
        x = grpcclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.full((1, 1), 3.0, np.float32))
        stream_client.async_stream_infer("slow", [x], request_id="in-flight")
        wait_for(lambda: server.current_requests("slow") == 1, what="the slow request in flight")

        server.process.send_signal(signal.SIGTERM)
        log = server.wait_log("SIGTERM received: draining")
        assert "for 2 request(s) in flight" in log  # the SSE stream and the ModelStreamInfer stream
        # Not ready at once, on both transports; live still (no restart during a drain).
        assert server.rest("GET", "/v2/health/ready") == 503
        assert server.rest("GET", "/v2/health/live") == 200
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # New requests are refused with UNAVAILABLE / 503 and a message that says what to do.
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            a = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
            b = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
            for tensor in (a, b):
                tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
            with pytest.raises(InferenceServerException) as refused:
                client.infer("simple", [a, b])
            assert refused.value.status() == "StatusCode.UNAVAILABLE" and SHUTTING_DOWN in refused.value.message()
        assert server.rest("POST", "/v2/models/simple/infer", {"inputs": [
            {"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16} for n in ("INPUT0", "INPUT1")]}) \
            == 503
        assert server.rest("POST", "/v3/chat/completions", {
            "model": "llm", "messages": [{"role": "user", "content": "Hello"}]}) == 503

        # The request in flight on the stream is answered; then the stream ends, telling the client why.
        result, error = answers.get(timeout=60)
        assert error is None and result.get_response().id == "in-flight"
        assert result.as_numpy("y").shape == (1, 1)
        result, error = answers.get(timeout=60)
        assert result is None and SHUTTING_DOWN in str(error)
        stream_client.stop_stream()

        os.kill(worker, signal.SIGCONT)
        rest = list(chunks)
        assert rest[-1].usage.completion_tokens == 200  # the whole generation reached the client
        assert server.process.wait(60) == 0
    finally:
        if worker is not None:
            try:
                os.kill(worker, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.kill()
    log = server.log.read_text()
    assert "Drained: every request in flight finished" in log and "Traceback" not in log


@pytest.mark.parametrize("how", ["second signal", "timeout"])
def test_second_signal_or_drain_timeout_cuts_the_drain_short(repository, tmp_path, how):
    server = Running(repository, tmp_path, "--drain_timeout_seconds", "60" if how != "timeout" else "1")
    worker = None
    try:
        start_sse(server, max_tokens=200)
        worker = server.worker_pid()
        os.kill(worker, signal.SIGSTOP)
        server.process.send_signal(signal.SIGTERM)
        server.wait_log("SIGTERM received: draining")
        started = time.monotonic()
        if how == "second signal":
            server.process.send_signal(signal.SIGINT)
            log = server.wait_log("Drain cut short (a second signal): 1 request(s) still in flight", timeout=10)
        else:
            log = server.wait_log("Drain cut short (1 s passed): 1 request(s) still in flight", timeout=10)
        assert time.monotonic() - started < 5
        os.kill(worker, signal.SIGCONT)  # a stopped process cannot even be told to exit
        assert server.process.wait(60) == 1
    finally:
        if worker is not None:
            try:
                os.kill(worker, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.kill()
    assert "Traceback" not in log
