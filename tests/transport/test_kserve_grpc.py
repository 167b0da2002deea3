"""KServe v2 gRPC against a real server, driven by tritonclient (grpc and grpc.aio) and raw stubs."""
from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from ovms._proto.messages import kserve as pb
from tests.grpc_stubs import stub as make_stub


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def simple_inputs(a: np.ndarray, b: np.ndarray):
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("dummy", "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "OpenVINO Model Server" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("simple", as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "OpenVINO"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == \
        [("INPUT0", "INT32", ["1", "16"]), ("INPUT1", "INT32", ["1", "16"])]
    assert client.get_model_metadata("dummy", as_json=True)["versions"] == ["1", "2"]
    assert client.get_model_metadata("dynamic", as_json=True)["inputs"][0]["shape"] == ["-1", "-1"]


def test_simple_infer(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b), request_id="req-42")
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "req-42" and response.model_version == "1"


def test_requested_outputs_honoured(client):
    a = np.ones((1, 16), np.int32)
    result = client.infer("simple", simple_inputs(a, a), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None and not result.as_numpy("OUTPUT1").any()


def test_versions_and_default(client):
    x = np.zeros((1, 10), np.float32)
    inp = grpcclient.InferInput("b", [1, 10], "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("dummy", [inp]).as_numpy("a")[0, 0] == 2.0  # default = highest version
    assert client.infer("dummy", [inp], model_version="1").as_numpy("a")[0, 0] == 1.0


def test_bytes_passthrough(client):
    data = np.array([b"hello", b"", "zażółć".encode(), b"\x01\x02"], dtype=object)
    inp = grpcclient.InferInput("text", [4], "BYTES")
    inp.set_data_from_numpy(data)
    out = client.infer("passthrough", [inp]).as_numpy("text_out")
    assert out.tolist() == data.tolist()


def test_image_sized_model(client):
    x = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(x)
    assert np.array_equal(client.infer("image", [inp]).as_numpy("OUTPUT0"), x)


def test_dynamic_shapes(client):
    for shape in [(1, 1), (3, 7)]:
        x = np.full(shape, 1.5, np.float32)
        inp = grpcclient.InferInput("x", list(shape), "FP32")
        inp.set_data_from_numpy(x)
        assert np.array_equal(client.infer("dynamic", [inp]).as_numpy("y"), x * 2)


def test_every_numeric_type_raw_and_typed(server):
    """Raw contents for every type; typed *_contents for every type that has a field."""
    stub = make_stub(grpc.insecure_channel(server.grpc_url), pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])
    types = {"BOOL": "?", "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8", "INT8": "i1",
             "INT16": "i2", "INT32": "i4", "INT64": "i8", "FP16": "f2", "FP32": "f4", "FP64": "f8"}
    field = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}
    arrays = {t: (np.arange(6) % 2 == 0 if t == "BOOL" else np.arange(6) * 3).astype(np.dtype(d).newbyteorder("<"))
              .reshape(2, 3) for t, d in types.items()}
    raw = pb.ModelInferRequest(model_name="all_types")
    for t, a in arrays.items():
        raw.inputs.add(name=f"in_{t}", datatype=t, shape=[2, 3])
        raw.raw_input_contents.append(a.tobytes())
    response = stub.ModelInfer(raw)
    got = {o.name: (o, r) for o, r in zip(response.outputs, response.raw_output_contents)}
    for t, a in arrays.items():
        out, data = got[f"out_{t}"]
        assert out.datatype == t and list(out.shape) == [2, 3]
        assert np.array_equal(np.frombuffer(data, a.dtype).reshape(2, 3), a)
    typed = pb.ModelInferRequest(model_name="all_types")
    for t, a in arrays.items():
        tensor = typed.inputs.add(name=f"in_{t}", datatype=t, shape=[2, 3])
        if t in field:
            getattr(tensor.contents, field[t]).extend(a.reshape(-1).tolist())
    typed.inputs[9].ClearField("contents")  # FP16 has no typed field: must be refused clearly
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents field" in info.value.details()


def expect_error(call, code: str, message: str):
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", info.value
    assert info.value.message() == message


def test_errors_with_ovms_messages(client):
    a = np.ones((1, 16), np.int32)
    expect_error(lambda: client.infer("nope", simple_inputs(a, a)), "NOT_FOUND", "Model with requested name is not found")
    expect_error(lambda: client.infer("simple", simple_inputs(a, a), model_version="7"), "NOT_FOUND",
                 "Model with requested version is not found")
    expect_error(lambda: client.get_model_metadata("nope"), "NOT_FOUND", "Model with requested name is not found")
    expect_error(lambda: client.infer("simple", simple_inputs(a, a)[:1]), "INVALID_ARGUMENT",
                 "Invalid number of inputs - Expected: 2; Actual: 1")
    wrong = simple_inputs(a, a)
    wrong[1] = grpcclient.InferInput("INPUT9", [1, 16], "INT32")
    wrong[1].set_data_from_numpy(a)
    expect_error(lambda: client.infer("simple", wrong), "INVALID_ARGUMENT",
                 "Missing input with specific name - Required input: INPUT1")
    f = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
    f.set_data_from_numpy(a.astype(np.float32))
    expect_error(lambda: client.infer("simple", [simple_inputs(a, a)[0], f]), "INVALID_ARGUMENT",
                 "Invalid input precision - Expected: INT32; Actual: FP32; input name: INPUT1")
    s = grpcclient.InferInput("INPUT1", [1, 15], "INT32")
    s.set_data_from_numpy(a[:, :15].copy())
    expect_error(lambda: client.infer("simple", [simple_inputs(a, a)[0], s]), "INVALID_ARGUMENT",
                 "Invalid input shape - Expected: (1,16); Actual: (1,15); input name: INPUT1")
    d = grpcclient.InferInput("INPUT1", [16], "INT32")
    d.set_data_from_numpy(a[0].copy())
    expect_error(lambda: client.infer("simple", [simple_inputs(a, a)[0], d]), "INVALID_ARGUMENT",
                 "Invalid number of shape dimensions - Expected: (1,16); Actual: (16); input name: INPUT1")
    expect_error(lambda: client.infer("simple", simple_inputs(a, a),
                                      outputs=[grpcclient.InferRequestedOutput("NOPE")]),
                 "INVALID_ARGUMENT", "Missing output with specific name - Unknown output: NOPE")
    assert client.is_server_live()  # still serving


def test_raw_size_mismatch_and_mixed_contents(server):
    stub = make_stub(grpc.insecure_channel(server.grpc_url), pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])
    request = pb.ModelInferRequest(model_name="dummy")
    request.inputs.add(name="b", datatype="FP32", shape=[1, 10])
    request.raw_input_contents.append(b"\0" * 36)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == ("Invalid content size of tensor proto - Expected: 40 bytes; Actual: 36 bytes; "
                                    "input name: b")
    request.raw_input_contents[0] = b"\0" * 40
    request.inputs[0].contents.fp32_contents.extend([0.0] * 10)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("Invalid message structure - Passing buffers both in InferInputTensor "
                                           "contents and in raw_input_contents is not allowed")
    # garbage that is not a protobuf message at all
    garbage = grpc.insecure_channel(server.grpc_url).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        garbage(b"\xff\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == ("Invalid message structure - the request is not a valid ModelInferRequest "
                                    "protobuf message")
    assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_stream_many_requests_one_stream(client):
    """Responses come in request order, and a failing request in the middle is answered with its error while the
    requests after it are still served (Triton's ModelStreamInfer contract)."""
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    count, failing = 200, {50: "nope", 120: "also-missing"}
    try:
        for i in range(count):
            a = np.full((1, 16), i, np.int32)
            client.async_stream_infer(failing.get(i, "simple"), simple_inputs(a, a), request_id=str(i))
        answers = []
        for _ in range(count):
            try:
                result, error = results.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"{len(answers)} of {count} answers; the last: {answers[-1:]}")
            if error is not None:
                answers.append(("error", str(error)))
            else:
                answers.append((result.get_response().id, int(result.as_numpy("OUTPUT0")[0, 0])))
    finally:
        client.stop_stream()
    # tritonclient hands an error over without the response's id: its place in the order identifies it
    expected = [("error", "Model with requested name is not found") if i in failing
                else (str(i), 2 * i) for i in range(count)]
    assert answers == expected


def test_grpc_aio_client_concurrent(server):
    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            async def one(i):
                a = np.full((1, 16), i, np.int32)
                inputs = [aioclient.InferInput("INPUT0", [1, 16], "INT32"),
                          aioclient.InferInput("INPUT1", [1, 16], "INT32")]
                inputs[0].set_data_from_numpy(a)
                inputs[1].set_data_from_numpy(a)
                return (await c.infer("simple", inputs)).as_numpy("OUTPUT0")[0, 0]
            assert await c.is_server_ready()
            return await asyncio.gather(*(one(i) for i in range(64)))
    assert asyncio.run(run()) == [2 * i for i in range(64)]


def test_health_service_and_reflection(server):
    """grpcio-health-checking's and grpcio-reflection's own clients against the services ovms serves itself."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(server.grpc_url)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService", "tensorflow.serving.PredictionService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    watch.cancel()

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    # The client builds the whole service, with its imports, from what reflection serves.
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    infer = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
    assert infer.input_type.fields_by_name["raw_input_contents"].type == infer.input_type.fields_by_name[
        "raw_input_contents"].TYPE_BYTES
    predict = pool.FindServiceByName("tensorflow.serving.PredictionService").methods_by_name["Predict"]
    assert predict.input_type.fields_by_name["inputs"].message_type.fields_by_name["value"].message_type.full_name \
        == "tensorflow.TensorProto"
    replies = list(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")])))
    assert replies[0].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_triton_model_config(client):
    config = client.get_model_config("simple", as_json=True)["config"]
    assert config["name"] == "simple" and config["platform"] == "openvino"
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == \
        [("INPUT0", "TYPE_INT32", ["1", "16"]), ("INPUT1", "TYPE_INT32", ["1", "16"])]
