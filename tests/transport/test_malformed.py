"""Malformed requests get clear errors and never crash or wedge the server (property-based)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovms._proto.messages import kserve as pb

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=20)
tensors = st.fixed_dictionaries({
    "name": st.sampled_from(["b", "INPUT0", "x", "text", ""]) | json_values,
    "datatype": st.sampled_from(["FP32", "INT32", "BYTES", "FP16", "BOOL", "nope"]) | json_values,
    "shape": st.lists(st.integers(-3, 2**40), max_size=4) | json_values,
}, optional={"data": json_values, "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-5, 99)})})
bodies = st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3) | json_values},
                               optional={"outputs": json_values, "parameters": json_values, "id": json_values})


def post(server, path: str, data: bytes, headers=None) -> int:
    request = urllib.request.Request(f"http://{server.rest_url}{path}", data=data, method="POST",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
        assert isinstance(body["error"], str) and "Traceback" not in body["error"]
        return error.code


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, model=st.sampled_from(["dummy", "simple", "passthrough", "dynamic"]),
       header=st.none() | st.integers(-10, 400))
def test_rest_infer_fuzz(server, body, model, header):
    data = json.dumps(body).encode()
    headers = {} if header is None else {"Inference-Header-Content-Length": str(header)}
    status = post(server, f"/v2/models/{model}/infer", data + b"\0" * 8, headers)
    assert status in (200, 400, 404)  # never 500


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=200))
def test_grpc_garbage_fuzz(server, data):
    channel = grpc.insecure_channel(server.grpc_url)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        call(data, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error
    channel.close()


def test_server_still_serves_after_fuzz(server):
    stub = grpc.insecure_channel(server.grpc_url).unary_unary(
        "/inference.GRPCInferenceService/ServerLive", request_serializer=pb.ServerLiveRequest.SerializeToString,
        response_deserializer=pb.ServerLiveResponse.FromString)
    assert stub(pb.ServerLiveRequest(), timeout=10).live


def test_deeply_nested_json_is_a_clear_400(server):
    """Nesting costs stack, not bytes: a 5,000-deep body (about 10 KB) and a 100-deep "data" are refused with a
    message, where they used to reach Python's recursion limit (an internal error)."""
    deep = b"[" * 5000 + b"1" + b"]" * 5000
    request = urllib.request.Request(f"http://{server.rest_url}/v2/models/dummy/infer", data=deep, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 400 and "nested too deeply" in json.loads(error.read())["error"]
    data = "[" * 100 + "1" + "]" * 100
    body = f'{{"inputs":[{{"name":"b","datatype":"FP32","shape":[1],"data":{data}}}]}}'.encode()
    request = urllib.request.Request(f"http://{server.rest_url}/v2/models/dummy/infer", data=body, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 400 and "nested deeper than 64 levels" in json.loads(error.read())["error"]
