"""KServe v2 REST against a real server: tritonclient.http (JSON and binary) and raw HTTP for error cases."""
from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.rest_url, concurrency=4)
    yield c
    c.close()


def http(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(f"http://{server.rest_url}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def simple_inputs(a, b, binary: bool):
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def test_health_metadata_ready(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("dummy", "2")
    meta = client.get_model_metadata("simple")
    assert meta["name"] == "simple" and meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16]}
    assert client.get_server_metadata()["name"] == "OpenVINO Model Server"
    assert client.get_model_metadata("dynamic")["inputs"][0]["shape"] == [-1, -1]


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_simple_infer(client, binary_in, binary_out):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), -2, np.int32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary_out)]
    result = client.infer("simple", simple_inputs(a, b, binary_in), outputs=outputs, request_id="r1")
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "r1" and response["model_version"] == "1"
    assert ("parameters" in response["outputs"][0]) == binary_out


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_and_image(client, binary):
    text = np.array([b"hello", "zażółć".encode(), b"x"], dtype=object)
    inp = httpclient.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    out = client.infer("passthrough", [inp], outputs=[httpclient.InferRequestedOutput("text_out", binary_data=binary)])
    expected = text.tolist() if binary else [t.decode() for t in text.tolist()]  # JSON carries BYTES as strings
    assert out.as_numpy("text_out").tolist() == expected
    image = np.random.default_rng(2).random((1, 3, 224, 224), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(image, binary_data=binary)
    result = client.infer("image", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
    assert np.array_equal(result.as_numpy("OUTPUT0"), image)


def test_nested_json_and_binary_data_output(server):
    body = {"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [[float(i) for i in range(10)]]}],
            "parameters": {"binary_data_output": True}}
    status, headers, payload = http(server, "POST", "/v2/models/dummy/versions/1/infer", json.dumps(body).encode())
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(payload[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert np.array_equal(np.frombuffer(payload[length:], "<f4"), np.arange(10, dtype=np.float32) + 1)


def test_binary_request_by_hand(server):
    header = json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10],
                                     "parameters": {"binary_data_size": 40}}]}).encode()
    body = header + struct.pack("<10f", *range(10))
    status, _, payload = http(server, "POST", "/v2/models/dummy/infer", body,
                              {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200
    assert json.loads(payload)["outputs"][0]["data"] == [float(i) + 2 for i in range(10)]


@pytest.mark.parametrize("method, path, body, status, message", [
    ("GET", "/v2/models/nope", None, 404, "Model with requested name is not found"),
    ("GET", "/v2/models/dummy/versions/9", None, 404, "Model with requested version is not found"),
    ("POST", "/v2/models/nope/infer", b"{}", 404, "Model with requested name is not found"),
    ("GET", "/v2/nothing/here", None, 400, "Invalid request URL"),
    ("DELETE", "/v2/models/simple", None, 406, "Unsupported method"),
    ("PUT", "/v2/models/simple/infer", b"{}", 406, "Unsupported method"),
    ("POST", "/v2/models/dummy/infer", b"{not json", 400, None),
    ("POST", "/v2/models/dummy/infer", b"[1, 2]", 400, "Request body should be JSON object"),
    ("POST", "/v2/models/dummy/infer",
     b'{"inputs":[{"name":"b","datatype":"INT32","shape":[1,10],"data":[1,2,3,4,5,6,7,8,9,10]}]}', 400,
     "Invalid input precision - Expected: FP32; Actual: INT32; input name: b"),
    ("POST", "/v2/models/dummy/infer",
     b'{"inputs":[{"name":"b","datatype":"FP32","shape":[1,9],"data":[1,2,3,4,5,6,7,8,9]}]}', 400,
     "Invalid input shape - Expected: (1,10); Actual: (1,9); input name: b"),
    ("POST", "/v2/models/dummy/infer",
     b'{"inputs":[{"name":"b","datatype":"FP32","shape":[1,10],"data":[1,2,3]}]}', 400,
     "Invalid number of values in tensor proto container - Expected: 10 values; Actual: 3; input name: b"),
    ("POST", "/v2/models/dummy/infer", b'{"inputs":[{"name":"b","datatype":"FP32","shape":[1,10],'
     b'"parameters":{"binary_data_size":40}}]}', 400, None),
    ("POST", "/v2/models/simple/infer",
     b'{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,16],"data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}',
     400, "Invalid number of inputs - Expected: 2; Actual: 1"),
])
def test_rest_errors(server, method, path, body, status, message):
    got_status, headers, payload = http(server, method, path, body)
    assert got_status == status, payload
    error = json.loads(payload)["error"]
    if message is not None:
        assert error == message
    else:
        assert error  # a readable message, not a traceback
        assert "Traceback" not in error
    assert http(server, "GET", "/v2/health/live")[0] == 200


def test_triton_model_config_over_http(client):
    config = client.get_model_config("image")
    assert config["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [1, 3, 224, 224]}]


def test_http_client_error_messages(client):
    a = np.ones((1, 16), np.int32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", simple_inputs(a, a, True))
    assert info.value.message() == "Model with requested name is not found"
    assert info.value.status() == "404"
