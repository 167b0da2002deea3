"""The REST fast path (``--rest_server native``, ovms/transport/rest_native.py) against a real server: raw sockets
for what only a byte-level client can do (pipelining, split heads and bodies, hand-off to aiohttp mid-connection),
real clients for the rest, and the same error requests against ``--rest_server aiohttp`` for byte-equal answers.

A response without a ``Server`` header came from the fast path; aiohttp always sends one."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from ovms.backends import openvino_model
from ovms.errors import Kind
from ovms.transport import rest_native
from tests.conftest import ThreadedServer


@pytest.fixture(scope="module")
def server(model_repo):
    with ThreadedServer(config_path=model_repo / "config.json") as running:
        yield running


@pytest.fixture(scope="module")
def aio(model_repo):
    with ThreadedServer(config_path=model_repo / "config.json", rest_server="aiohttp") as running:
        yield running


@pytest.fixture
def fast_answers(monkeypatch):
    """How many successful answers the fast path wrote (monkeypatched on the class: seen from the server's thread)."""
    count = []
    original = rest_native.FastRestProtocol._write_answer

    def counted(self, response, binary):
        count.append(1)
        original(self, response, binary)

    monkeypatch.setattr(rest_native.FastRestProtocol, "_write_answer", counted)
    return count


# ---- raw HTTP/1.1

def dummy_body(start: float) -> bytes:
    return json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10],
                                   "data": [start + i for i in range(10)]}]}).encode()


def post(body: bytes, path: str = "/v2/models/dummy/infer", headers: tuple = ()) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", f"Content-Length: {len(body)}",
            *headers]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


class Connection:
    """A raw socket and the responses parsed off it: (status, headers with lower-case names, body)."""

    def __init__(self, server: ThreadedServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed with {self.pending!r} unread")
        self.pending += data

    def response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.pending:
            self._more()
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]  # aiohttp's 400 for an unparsed head says 1.0
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep, line
            headers[name.strip().lower()] = value.strip()
        if 100 <= int(status) < 200:
            return int(status), headers, b""
        length = int(headers["content-length"])
        while len(self.pending) < length:
            self._more()
        body, self.pending = self.pending[:length], self.pending[length:]
        return int(status), headers, body

    def closed(self) -> bool:
        """True when the server closed the connection and sent nothing more."""
        if self.pending:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(server):
    c = Connection(server)
    yield c
    c.close()


def assert_dummy(answer, start: float, *, increment: float = 2.0, fast: bool = True) -> None:
    status, headers, body = answer
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    assert ("server" not in headers) == fast, headers
    outputs = json.loads(body)["outputs"]
    assert len(outputs) == 1 and outputs[0]["shape"] == [1, 10] and outputs[0]["datatype"] == "FP32"
    assert outputs[0]["data"] == [start + i + increment for i in range(10)]


# ---- 1, 2, 3: pipelining, hand-off, split reads

def test_two_requests_pipelined_in_one_send(conn, fast_answers):
    conn.send(post(dummy_body(0)) + post(dummy_body(100), "/v2/models/dummy/versions/1/infer"))
    assert_dummy(conn.response(), 0)  # the default version: 2, which adds 2
    assert_dummy(conn.response(), 100, increment=1)
    assert len(fast_answers) == 2
    assert conn.pending == b""


@pytest.mark.parametrize("pipelined", [False, True])
def test_hand_off_to_aiohttp_mid_connection(conn, pipelined):
    sent = [post(dummy_body(1)), get("/v2/models/dummy"), post(dummy_body(7))]
    answers = []
    if pipelined:
        conn.send(b"".join(sent))
        answers = [conn.response() for _ in sent]
    else:
        for request in sent:
            conn.send(request)
            answers.append(conn.response())
    assert_dummy(answers[0], 1)
    status, headers, body = answers[1]
    assert status == 200 and "server" in headers  # aiohttp's from here on
    meta = json.loads(body)
    assert meta["name"] == "dummy" and meta["inputs"][0]["name"] == "b"
    assert_dummy(answers[2], 7, fast=False)


def test_body_and_head_in_small_pieces(conn, fast_answers):
    request = post(dummy_body(3), "/v2/models/dummy/versions/1/infer")
    head_end = request.index(b"\r\n\r\n")
    # The head in three sends, one cut inside its final CRLF CRLF, then the body a byte or three at a time.
    pieces = [request[:9], request[9:head_end + 2], request[head_end + 2:head_end + 4]]
    body = request[head_end + 4:]
    position = 0
    while position < len(body):
        size = 1 + position % 3
        pieces.append(body[position:position + size])
        position += size
    assert b"".join(pieces) == request
    for piece in pieces:
        conn.send(piece)
        time.sleep(0.002)
    assert_dummy(conn.response(), 3, increment=1)
    # The connection keeps working, and a head split across sends is found again.
    conn.send(request[:40])
    time.sleep(0.01)
    conn.send(request[40:])
    assert_dummy(conn.response(), 3, increment=1)
    assert len(fast_answers) == 2


# ---- 4: what the fast path leaves to aiohttp

def test_expect_100_continue(conn):
    body = dummy_body(5)
    request = post(body, headers=("Expect: 100-continue",))
    conn.send(request[:-len(body)])
    status, _, _ = conn.response()
    assert status == 100
    conn.send(body)
    assert_dummy(conn.response(), 5, fast=False)


def test_chunked_body(conn):
    body = dummy_body(9)
    head = (b"POST /v2/models/dummy/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:17], body[17:])) + b"0\r\n\r\n"
    conn.send(head + chunks)
    assert_dummy(conn.response(), 9, fast=False)


# ---- 5: Connection: close

def test_connection_close(conn, fast_answers):
    # A request pipelined after the one that says close is not answered (RFC 9112 section 9.6).
    conn.send(post(dummy_body(2), headers=("Connection: close",)) + post(dummy_body(4)))
    answer = conn.response()
    assert_dummy(answer, 2)
    assert answer[1]["connection"].lower() == "close"
    assert conn.closed()
    assert len(fast_answers) == 1


# ---- 6: errors as aiohttp gives them

SHAPE_9 = b'{"inputs":[{"name":"b","datatype":"FP32","shape":[1,9],"data":[1,2,3,4,5,6,7,8,9]}]}'


@pytest.mark.parametrize("request_, status, message", [
    (post(b"{}", "/v2/models/nope/infer"), 404, "Model with requested name is not found"),
    (post(SHAPE_9), 400, "Invalid input shape - Expected: (1,10); Actual: (1,9); input name: b"),
    (post(dummy_body(0), headers=("Inference-Header-Content-Length: ten",)), 400,
     "Invalid input format - Inference-Header-Content-Length must be an integer, got 'ten'"),
    (post(dummy_body(0), "/v2/models/dummy/versions/abc/infer"), 400,
     "Model version is invalid - version must be a positive integer, got 'abc'"),
    (post(dummy_body(0), "/v2/models/dummy/versions/9/infer"), 404, "Model with requested version is not found"),
    (post(b"[1, 2]"), 400, "Request body should be JSON object"),
], ids=["unknown-model", "wrong-shape", "header-length", "version-abc", "missing-version", "not-object"])
def test_errors_as_aiohttp(server, aio, request_, status, message):
    answers = {}
    for name, running in (("native", server), ("aiohttp", aio)):
        c = Connection(running)
        try:
            c.send(request_)
            answers[name] = c.response()
            # The connection stays usable after an error.
            c.send(post(dummy_body(0)))
            assert_dummy(c.response(), 0, fast=name == "native")
        finally:
            c.close()
    (n_status, n_headers, n_body), (a_status, a_headers, a_body) = answers["native"], answers["aiohttp"]
    assert "server" not in n_headers and "server" in a_headers  # really the two paths
    assert n_status == a_status == status
    assert n_body == a_body
    assert json.loads(n_body) == {"error": message}


def test_client_errors_as_aiohttp(server, aio):
    """tritonclient's exception for an unknown model: the same on both paths."""
    messages = []
    for running in (server, aio):
        client = httpclient.InferenceServerClient(running.rest_url)
        inp = httpclient.InferInput("b", [1, 10], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 10), np.float32), binary_data=True)
        with pytest.raises(Exception) as info:
            client.infer("nope", [inp])
        messages.append((info.value.status(), info.value.message()))
        client.close()
    assert messages[0] == messages[1] == ("404", "Model with requested name is not found")


# ---- 7: real clients

async def _output_name(server: ThreadedServer, model: str) -> str:
    return server.server.dataplane.model_metadata(model, None).outputs[0].name


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_tritonclient_binary_extension(server, fast_answers, binary_in, binary_out):
    client = httpclient.InferenceServerClient(server.rest_url)
    try:
        x = np.random.default_rng(1).random((1, 16), dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        result = client.infer("identity16", [inp],
                              outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)])
        assert np.array_equal(result.as_numpy("OUTPUT0"), x)
        assert ("parameters" in result.get_response()["outputs"][0]) == binary_out
        b = np.arange(10, dtype=np.float32).reshape(1, 10)
        inp = httpclient.InferInput("b", [1, 10], "FP32")
        inp.set_data_from_numpy(b, binary_data=binary_in)
        output = server.call(_output_name(server, "dummy"))
        result = client.infer("dummy", [inp], model_version="2", request_id="rid",
                              outputs=[httpclient.InferRequestedOutput(output, binary_data=binary_out)])
        assert np.array_equal(result.as_numpy(output), b + 2)
        assert ("parameters" in result.get_response()["outputs"][0]) == binary_out
        assert result.get_response()["id"] == "rid" and result.get_response()["model_version"] == "2"
    finally:
        client.close()
    assert len(fast_answers) == 2


def test_requests_session_and_urllib(server, fast_answers):
    with requests.Session() as session:  # one keep-alive connection: fast, then aiohttp, then aiohttp again
        url = f"http://{server.rest_url}/v2/models/dummy"
        first = session.post(url + "/infer", data=dummy_body(0))
        assert first.status_code == 200 and "Server" not in first.headers
        assert session.get(url).json()["name"] == "dummy"
        again = session.post(url + "/infer", data=dummy_body(10))
        assert again.json()["outputs"][0]["data"] == [12.0 + i for i in range(10)]
    request = urllib.request.Request(f"http://{server.rest_url}/v2/models/dummy/infer", data=dummy_body(20),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # HTTP/1.1, Connection: close
        assert response.status == 200 and response.headers["Server"] is None
        assert json.loads(response.read())["outputs"][0]["data"] == [22.0 + i for i in range(10)]
    assert len(fast_answers) == 2


# ---- 8: the worker path

def test_worker_path_pipelined(conn, monkeypatch):
    import ovms.backends.openvino_model as openvino_model

    monkeypatch.setattr(openvino_model, "INLINE_SECONDS", 0)
    later = []
    original = rest_native.FastRestProtocol._infer_later

    async def counted(self, request, binary):
        later.append(1)
        await original(self, request, binary)

    monkeypatch.setattr(rest_native.FastRestProtocol, "_infer_later", counted)
    conn.send(post(dummy_body(0)) + post(SHAPE_9) + post(dummy_body(30)) + post(dummy_body(60)))
    assert_dummy(conn.response(), 0)
    status, _, body = conn.response()  # refused by the workers, in its turn
    assert status == 400 and json.loads(body)["error"].startswith("Invalid input shape")
    assert_dummy(conn.response(), 30)
    assert_dummy(conn.response(), 60)
    assert len(later) == 4


# ---- 9: drain

def test_drain_refuses_as_aiohttp(model_repo):
    with ThreadedServer(config_path=model_repo / "config.json") as running:
        c = Connection(running)
        try:
            c.send(post(dummy_body(0)))
            assert_dummy(c.response(), 0)
            running.call(running.server.begin_drain())
            c.send(post(dummy_body(0)))
            fast = c.response()
            # A query string sends the same infer to aiohttp.
            c.send(post(dummy_body(0), "/v2/models/dummy/infer?via=aiohttp"))
            slow = c.response()
        finally:
            c.close()
    assert "server" not in fast[1] and "server" in slow[1]
    assert fast[0] == slow[0] == 503
    assert fast[2] == slow[2]
    assert json.loads(fast[2]) == {"error": Kind.SERVER_SHUTTING_DOWN.value[0]}


# ---- 10: oversized heads

@pytest.mark.parametrize("split", [False, True])
def test_huge_head_goes_to_aiohttp(server, split):
    request = post(dummy_body(0), headers=("X-Big: " + "a" * 10000,))
    c = Connection(server)
    try:
        if split:  # the head is over the limit before its end arrives
            c.send(request[:9000])
            time.sleep(0.05)
            c.send(request[9000:])
        else:
            c.send(request)
        status, headers, body = c.response()
        assert "server" in headers, (status, headers, body)  # aiohttp's answer, complete (Content-Length read)
        assert status == 400 and b"Got more than 8190 bytes" in body, (status, body)
    finally:
        c.close()
    c = Connection(server)
    try:
        c.send(post(dummy_body(8)))
        assert_dummy(c.response(), 8)
    finally:
        c.close()


# ---- 11: the flag

def test_help_lists_rest_server():
    out = subprocess.run([sys.executable, "-m", "ovms", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--rest_server {native,aiohttp}" in out.stdout


def image_binary_request(x: np.ndarray) -> bytes:
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    return post(header + x.tobytes(), "/v2/models/image/infer",
                ("Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {len(header)}"))


def binary_output(answer) -> np.ndarray:
    status, headers, body = answer
    assert status == 200, body[:300]
    header_length = int(headers["inference-header-content-length"])
    return np.frombuffer(body[header_length:], np.float32)


@pytest.mark.parametrize("mode", ["in place", "workers"])
def test_big_binary_bodies_alone_pipelined_and_in_pieces(conn, fast_answers, monkeypatch, mode):
    # A body that ends the bytes read is served from the read buffer itself (OpenVINO reads the tensor where it
    # arrived); one with a request behind it is copied out first. Both answer the same, in order.
    if mode == "workers":
        monkeypatch.setattr(openvino_model, "INLINE_SECONDS", 0)
    rng = np.random.default_rng(9)
    images = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
    conn.send(image_binary_request(images[0]))
    assert np.array_equal(binary_output(conn.response()), images[0].ravel())
    conn.send(image_binary_request(images[1]) + image_binary_request(images[2]))
    assert np.array_equal(binary_output(conn.response()), images[1].ravel())
    assert np.array_equal(binary_output(conn.response()), images[2].ravel())
    data = image_binary_request(images[3])
    for start in range(0, len(data), 100_000):
        conn.send(data[start:start + 100_000])
        time.sleep(0.01)
    assert np.array_equal(binary_output(conn.response()), images[3].ravel())
    assert len(fast_answers) == 4 and conn.pending == b""
