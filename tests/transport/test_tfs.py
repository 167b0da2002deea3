"""TensorFlow Serving API on the same servables: ovmsclient (gRPC and REST), our generated stubs, raw JSON."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from ovmsclient import make_grpc_client, make_http_client

from ovms._proto.messages import tf_types as types_pb2
from ovms._proto.messages import tfs_get_model_metadata as get_model_metadata_pb2
from ovms._proto.messages import tfs_get_model_status as get_model_status_pb2
from ovms._proto.messages import tfs_model_management as model_management_pb2
from ovms._proto.messages import tfs_model_service, tfs_predict as predict_pb2, tfs_prediction_service
from tests.grpc_stubs import stub


@pytest.fixture(scope="module", params=["grpc", "http"])
def ovms_client(request, server):
    if request.param == "grpc":
        return make_grpc_client(server.grpc_url)
    return make_http_client(server.rest_url)


def test_ovmsclient_status_metadata_predict(ovms_client):
    status = ovms_client.get_model_status("dummy")
    assert status == {2: {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"},
                      1: {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}}
    meta = ovms_client.get_model_metadata("simple")
    assert meta["model_version"] == 1
    assert meta["inputs"]["INPUT0"] == {"shape": [1, 16], "dtype": "DT_INT32"}
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    out = ovms_client.predict({"INPUT0": a, "INPUT1": a * 3}, "simple")
    assert np.array_equal(out["OUTPUT0"], a * 4) and np.array_equal(out["OUTPUT1"], a - a * 3)
    x = np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10)
    assert np.allclose(ovms_client.predict({"b": x}, "dummy", model_version=1), x + 1)
    assert np.allclose(ovms_client.predict({"b": x}, "dummy"), x + 2)


def stubs(server):
    channel = grpc.insecure_channel(server.grpc_url)
    return (stub(channel, tfs_prediction_service.DESCRIPTOR.services_by_name["PredictionService"]),
            stub(channel, tfs_model_service.DESCRIPTOR.services_by_name["ModelService"]))


def test_predict_typed_values_half_and_strings(server):
    predict, _ = stubs(server)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "all_types"
    values = {"FP32": ("float_val", types_pb2.DT_FLOAT), "INT64": ("int64_val", types_pb2.DT_INT64),
              "UINT8": ("int_val", types_pb2.DT_UINT8), "BOOL": ("bool_val", types_pb2.DT_BOOL),
              "FP64": ("double_val", types_pb2.DT_DOUBLE), "UINT64": ("uint64_val", types_pb2.DT_UINT64),
              "UINT32": ("uint32_val", types_pb2.DT_UINT32), "INT8": ("int_val", types_pb2.DT_INT8),
              "INT16": ("int_val", types_pb2.DT_INT16), "UINT16": ("int_val", types_pb2.DT_UINT16),
              "INT32": ("int_val", types_pb2.DT_INT32)}
    for datatype, (field, dt) in values.items():
        tensor = request.inputs[f"in_{datatype}"]
        tensor.dtype = dt
        tensor.tensor_shape.dim.add(size=2)
        tensor.tensor_shape.dim.add(size=3)
        getattr(tensor, field).extend([True, False] * 3 if datatype == "BOOL" else list(range(1, 7)))
    half = request.inputs["in_FP16"]
    half.dtype = types_pb2.DT_HALF
    half.tensor_shape.dim.add(size=2)
    half.tensor_shape.dim.add(size=3)
    half.half_val.extend(np.array([0.5, 1, 1.5, 2, 2.5, -3], np.float16).view(np.uint16).astype(int).tolist())
    response = predict.Predict(request)
    assert response.model_spec.name == "all_types" and response.model_spec.signature_name == "serving_default"
    out = response.outputs["out_FP16"]
    assert out.dtype == types_pb2.DT_HALF
    assert np.frombuffer(out.tensor_content, "<f2").tolist() == [0.5, 1, 1.5, 2, 2.5, -3]
    assert np.frombuffer(response.outputs["out_INT64"].tensor_content, "<i8").tolist() == [1, 2, 3, 4, 5, 6]
    strings = predict_pb2.PredictRequest()
    strings.model_spec.name = "passthrough"
    text = strings.inputs["text"]
    text.dtype = types_pb2.DT_STRING
    text.tensor_shape.dim.add(size=2)
    text.string_val.extend([b"abc", "żółw".encode()])
    reply = predict.Predict(strings)
    assert list(reply.outputs["text_out"].string_val) == [b"abc", "żółw".encode()]


def test_predict_tensor_content_output_filter_and_errors(server):
    predict, _ = stubs(server)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "simple"
    request.model_spec.version.value = 1
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs[name]
        tensor.dtype = types_pb2.DT_INT32
        tensor.tensor_shape.dim.add(size=1)
        tensor.tensor_shape.dim.add(size=16)
        tensor.tensor_content = np.full(16, 5, "<i4").tobytes()
    request.output_filter.append("OUTPUT1")
    response = predict.Predict(request)
    assert list(response.outputs) == ["OUTPUT1"] and response.model_spec.version.value == 1
    request.inputs["INPUT1"].dtype = types_pb2.DT_FLOAT
    request.inputs["INPUT1"].tensor_content = np.zeros(16, "<f4").tobytes()
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Invalid input precision - Expected: INT32; Actual: FP32; input name: INPUT1"
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Model with requested name is not found"


def test_metadata_and_status_messages(server):
    predict, model = stubs(server)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "dynamic"
    response = predict.GetModelMetadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures.ParseFromString(response.metadata["signature_def"].value)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [-1, -1]
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "dummy"
    statuses = model.GetModelStatus(status_request).model_version_status
    assert [(s.version, s.state) for s in statuses] == [(2, 30), (1, 30)]
    status_request.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as info:
        model.GetModelStatus(status_request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Model with requested version is not found"
    reload = model.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest())
    assert reload.status.error_code == 0


def rest(server, method, path, body=None):
    request = urllib.request.Request(f"http://{server.rest_url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_row_and_column_formats(server):
    a = list(range(16))
    status, body = rest(server, "POST", "/v1/models/simple:predict",
                        {"instances": [{"INPUT0": a, "INPUT1": [2] * 16}]})
    assert status == 200
    assert body == {"predictions": [{"OUTPUT0": [x + 2 for x in a], "OUTPUT1": [x - 2 for x in a]}]}
    status, body = rest(server, "POST", "/v1/models/dynamic:predict", {"instances": [[1, 2, 3], [4, 5, 6.5]]})
    assert status == 200 and body == {"predictions": [[2, 4, 6], [8, 10, 13]]}
    status, body = rest(server, "POST", "/v1/models/simple/versions/1:predict",
                        {"inputs": {"INPUT0": [a], "INPUT1": [[3] * 16]}})
    assert status == 200 and body["outputs"]["OUTPUT0"] == [[x + 3 for x in a]]
    status, body = rest(server, "POST", "/v1/models/dummy:predict", {"instances": [[0.5] * 10]})
    assert status == 200 and body == {"predictions": [[2.5] * 10]}
    status, body = rest(server, "POST", "/v1/models/dummy/versions/1:predict", {"inputs": [[0.5] * 10]})
    assert status == 200 and body == {"outputs": [[1.5] * 10]}
    status, body = rest(server, "POST", "/v1/models/passthrough:predict",
                        {"instances": [{"b64": "/wE="}, "text"]})
    assert status == 200 and body == {"predictions": [{"b64": "/wE="}, "text"]}  # not UTF-8: base64


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/models/simple:predict", {"signature_name": "x"}, 400,
     "Invalid JSON structure. Could not detect row or column format"),
    ("/v1/models/simple:predict", {"instances": [{"INPUT0": [1] * 16, "INPUT1": [1] * 16}, {"INPUT0": [1] * 16}]},
     400, "Invalid JSON structure. Request inputs have different batch sizes"),
    ("/v1/models/dummy:predict", {"instances": [[1, 2], [3]]}, 400,
     "Could not parse instance content. Not valid ndarray detected"),
    ("/v1/models/dummy:predict", {"instances": []}, 400, "Invalid JSON structure. Missing instances in row format"),
    ("/v1/models/nope:predict", {"instances": [[1]]}, 404, "Model with requested name is not found"),
    ("/v1/models/dummy/versions/5", None, 404, "Model with requested version is not found"),
])
def test_rest_errors(server, path, body, status, message):
    got, reply = rest(server, "POST" if body is not None else "GET", path, body)
    assert (got, reply) == (status, {"error": message})


def test_rest_status_metadata_and_config(server):
    status, body = rest(server, "GET", "/v1/models/dummy/versions/1")
    assert status == 200 and body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": "OK"}}]}
    status, body = rest(server, "GET", "/v1/models/image/metadata")
    inputs = body["metadata"]["signature_def"]["signatureDef"]["serving_default"]["inputs"]
    assert inputs["INPUT0"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in inputs["INPUT0"]["tensorShape"]["dim"]] == ["1", "3", "224", "224"]
    status, config = rest(server, "GET", "/v1/config")
    assert status == 200 and set(config) >= {"simple", "dummy", "image"}
    assert config["dummy"]["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = rest(server, "POST", "/v1/config/reload", {})
    assert status == 200 and body == config  # nothing changed on disk
