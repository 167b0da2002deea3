"""Binary image input (OVMS docs/binary_input*.md): JPEG/PNG sent as BYTES to a 4-D input, over every API.

Each answer is compared with the answer to the same pixels sent as a raw tensor: the images decoded and resized
here with OpenCV, the library OVMS (and ovms) decode with. The models are identities (Relu of non-negative
pixels), so the answer also shows the tensor the model was given.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import struct
import urllib.error
import urllib.request

import cv2
import grpc
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ovmsclient import make_grpc_client, make_http_client
from tritonclient.utils import InferenceServerException

from ovms._proto.messages import kserve as pb
from ovms.config import model_config_from_dict
from tests.conftest import ThreadedServer
from tests.grpc_stubs import stub as make_stub
from tests.test_cli import OvmsProcess

RNG = np.random.default_rng(20261202)


def identity(shape: list[int], element=ov.Type.f32) -> ov.Model:
    x = ops.parameter(shape, element, name="INPUT0")
    y = ops.relu(x) if element == ov.Type.f32 else ops.convert(x, element)
    y.output(0).get_tensor().set_names({"OUTPUT0"})
    return ov.Model([ops.result(y)], [x], "identity")


# name -> (model input shape, config fields)
MODELS = {
    "resnetlike": ([1, 3, 8, 8], {"layout": "NHWC:NCHW"}),  # served as [1,8,8,3] NHWC, resized to 8x8
    "batch2": ([2, 6, 5, 3], {}),  # NHWC by default: two images per request, each resized to 6x5
    "anysize": ([-1, -1, -1, 3], {}),  # no resize: the first image's size, the others must match
    "ranged": ([-1, -1, -1, 3], {"shape": "(1,4:8,4:8,3)"}),  # sizes out of range go to the nearer border
    "nchw": ([1, 3, 4, 4], {"layout": "NCHW"}),  # the images are transposed
    "gray": ([1, 4, 4, 1], {}),
    "planar": ([1, 3, 4, 4], {"layout": "NDHW"}),  # not image-like: refused with OVMS's message
    "u8": ([1, 4, 4, 3], {"precision_u8": True}),
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("images")
    for name, (shape, fields) in MODELS.items():
        element = ov.Type.u8 if fields.get("precision_u8") else ov.Type.f32
        ov.save_model(identity(shape, element), str(root / name / "1" / "model.xml"), compress_to_fp16=False)
    return root


@pytest.fixture(scope="module")
def server(repository):
    configs = []
    for name, (_, fields) in MODELS.items():
        fields = {k: v for k, v in fields.items() if k != "precision_u8"}
        configs.append(model_config_from_dict({"name": name, "base_path": str(repository / name), **fields},
                                              where=name))
    with ThreadedServer(configs) as running:
        yield running


def image(height: int, width: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)


def encode(pixels: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def pixels_of(encoded: bytes, height: int | None = None, width: int | None = None) -> np.ndarray:
    """What OVMS makes of an image: decoded as it is (BGR), bilinear-resized to a fixed size, FP32 HWC."""
    decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    if height is not None and decoded.shape[:2] != (height, width):
        decoded = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_LINEAR)
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    return decoded.astype(np.float32)


def raw_answer(server, model: str, array: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        request = grpcclient.InferInput("INPUT0", list(array.shape), "FP32" if array.dtype == np.float32 else "UINT8")
        request.set_data_from_numpy(array)
        return client.infer(model, [request]).as_numpy("OUTPUT0")


def triton_grpc(server, model: str, images: list[bytes]) -> np.ndarray:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        request = grpcclient.InferInput("INPUT0", [len(images)], "BYTES")
        request.set_data_from_numpy(np.array(images, dtype=object))  # raw_input_contents, length-prefixed
        return client.infer(model, [request]).as_numpy("OUTPUT0")


def test_jpeg_over_kserve_grpc_equals_raw_pixels(server):
    jpeg = encode(image(20, 30), ".jpg")
    expected = raw_answer(server, "resnetlike", pixels_of(jpeg, 8, 8)[None])
    assert expected.shape == (1, 3, 8, 8)
    assert np.array_equal(triton_grpc(server, "resnetlike", [jpeg]), expected)


def test_kserve_grpc_bytes_contents(server):
    png = encode(image(8, 8))
    request = pb.ModelInferRequest(model_name="resnetlike")
    item = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1])
    item.contents.bytes_contents.append(png)
    service = make_stub(grpc.insecure_channel(server.grpc_url),
                        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])
    response = service.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(response.outputs[0].shape)
    assert np.array_equal(out, pixels_of(png)[None].transpose(0, 3, 1, 2))


def test_batch_of_two_images_of_different_sizes_resized_to_the_model(server):
    images = [encode(image(12, 7)), encode(image(3, 9), ".jpg")]
    expected = raw_answer(server, "batch2", np.stack([pixels_of(i, 6, 5) for i in images]))
    assert np.array_equal(triton_grpc(server, "batch2", images), expected)
    http = httpclient.InferenceServerClient(server.rest_url)
    request = httpclient.InferInput("INPUT0", [2], "BYTES")
    request.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    assert np.array_equal(http.infer("batch2", [request]).as_numpy("OUTPUT0"), expected)


def test_dynamic_input_takes_the_image_size(server):
    images = [encode(image(5, 7)), encode(image(5, 7))]
    expected = np.stack([pixels_of(i) for i in images])
    out = triton_grpc(server, "anysize", images)
    assert out.shape == (2, 5, 7, 3) and np.array_equal(out, expected)


@pytest.mark.parametrize("size, resized", [((10, 10), (8, 8)), ((2, 6), (4, 6)), ((5, 7), (5, 7))])
def test_ranged_input_brings_the_size_into_the_range(server, size, resized):
    """OVMS docs/binary_input_layout_and_shape.md: with [1,100:200,200,3], 90 rows become 100, 220 become 200."""
    png = encode(image(*size))
    out = triton_grpc(server, "ranged", [png])
    assert out.shape == (1, *resized, 3)
    assert np.array_equal(out, raw_answer(server, "ranged", pixels_of(png, *resized)[None]))


def test_nchw_input_gets_the_image_transposed(server):
    png = encode(image(4, 4))
    assert np.array_equal(triton_grpc(server, "nchw", [png]), pixels_of(png)[None].transpose(0, 3, 1, 2))


def test_grayscale_png_to_one_channel_input_and_uint8_input(server):
    gray = encode(image(4, 4, channels=1))
    assert np.array_equal(triton_grpc(server, "gray", [gray]), pixels_of(gray)[None])
    color = encode(image(4, 4))
    out = triton_grpc(server, "u8", [color])
    assert out.dtype == np.uint8 and np.array_equal(out, cv2.imdecode(np.frombuffer(color, np.uint8), -1)[None])


def test_kserve_rest_binary_json_b64_and_curl_style(server):
    jpeg = encode(image(16, 16), ".jpg")
    expected = pixels_of(jpeg, 8, 8)[None].transpose(0, 3, 1, 2)
    http = httpclient.InferenceServerClient(server.rest_url)
    request = httpclient.InferInput("INPUT0", [1], "BYTES")
    request.set_data_from_numpy(np.array([jpeg], dtype=object), binary_data=True)
    assert np.array_equal(http.infer("resnetlike", [request]).as_numpy("OUTPUT0"), expected)
    # JSON: a JPEG is no UTF-8 string, so it travels as {"b64": ...} (as TFS REST has it).
    document = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                            "data": [{"b64": base64.b64encode(jpeg).decode()}]}]}
    answer = post(server, "/v2/models/resnetlike/infer", json.dumps(document).encode())
    assert np.array_equal(np.array(answer["outputs"][0]["data"], np.float32).reshape(1, 3, 8, 8), expected)
    # OVMS's curl example (docs/clients_kfs.md): the JSON header, then the length-prefixed image, no
    # binary_data_size.
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "BYTES"}]}).encode()
    answer = post(server, "/v2/models/resnetlike/infer", header + struct.pack("<I", len(jpeg)) + jpeg,
                  {"Inference-Header-Content-Length": str(len(header))})
    assert np.array_equal(np.array(answer["outputs"][0]["data"], np.float32).reshape(1, 3, 8, 8), expected)


def post(server, path: str, body: bytes, headers: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://{server.rest_url}{path}", data=body, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def post_error(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as raised:
        post(server, path, body, headers)
    return raised.value.code, json.loads(raised.value.read())


def test_tfs_rest_b64_and_tfs_grpc(server):
    jpeg = encode(image(10, 10), ".jpg")
    expected = pixels_of(jpeg, 8, 8)[None].transpose(0, 3, 1, 2)
    b64 = base64.b64encode(jpeg).decode()
    row = post(server, "/v1/models/resnetlike:predict", json.dumps({"instances": [{"b64": b64}]}).encode())
    assert np.array_equal(np.array(row["predictions"], np.float32), expected)
    named = post(server, "/v1/models/resnetlike:predict",
                 json.dumps({"inputs": {"INPUT0": [{"b64": b64}]}}).encode())
    assert np.array_equal(np.array(named["outputs"], np.float32), expected)
    for client in (make_grpc_client(server.grpc_url), make_http_client(server.rest_url)):
        assert np.array_equal(client.predict({"INPUT0": jpeg}, "resnetlike"), expected)


def test_not_an_image_is_invalid_argument_with_ovms_message(server):
    with pytest.raises(InferenceServerException) as raised:
        triton_grpc(server, "resnetlike", [b"this is not an image"])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message().startswith("Image parsing failed - input name: INPUT0; image 0 (20 bytes) is not "
                                             "a JPEG or PNG image")
    code, body = post_error(server, "/v1/models/resnetlike:predict",
                            json.dumps({"instances": [{"b64": base64.b64encode(b"GIF89a...").decode()}]}).encode())
    assert code == 400 and body["error"].startswith("Image parsing failed"), body
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "BYTES"}]}).encode()
    code, body = post_error(server, "/v2/models/resnetlike/infer", header + b"\xff\xd8\xff\xe0 truncated",
                            {"Inference-Header-Content-Length": str(len(header))})
    assert code == 400 and body["error"].startswith("Image parsing failed - "), body
    assert "preceded by its length as 4 bytes" in body["error"]


def test_image_claiming_too_many_pixels_is_refused_before_decoding(repository, tmp_path):
    """A 94 KB PNG of 9000x9000 (81 Mpx, 243 MB as BGR) against the 2^26-pixel limit, in a server process of its
    own: OpenCV reads its limit once per process, and this test process imported cv2 before ovms."""
    bomb = encode(np.zeros((9000, 9000), np.uint8))
    assert len(bomb) < 200_000
    saved = os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)  # the server sets it itself
    try:
        server = OvmsProcess(tmp_path, None, "--model_name", "gray", "--model_path", str(repository / "gray"))
    finally:
        if saved is not None:
            os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = saved
    try:
        server.wait_ready()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            request = grpcclient.InferInput("INPUT0", [1], "BYTES")
            request.set_data_from_numpy(np.array([bomb], dtype=object))
            with pytest.raises(InferenceServerException) as raised:
                client.infer("gray", [request])
            small = grpcclient.InferInput("INPUT0", [1], "BYTES")
            small.set_data_from_numpy(np.array([encode(image(4, 4, channels=1))], dtype=object))
            assert client.infer("gray", [small]).as_numpy("OUTPUT0").shape == (1, 4, 4, 1)
    finally:
        server.process.terminate()
        server.process.communicate(timeout=30)
    assert raised.value.message() == ("Image parsing failed - input name: INPUT0; image 0 is larger than 67108864 "
                                      "pixels (OPENCV_IO_MAX_IMAGE_PIXELS)")


@pytest.mark.parametrize("model, images, message", [
    ("resnetlike", [encode(image(8, 8, channels=1))],
     "Invalid number of channels in binary input - Expected: 3; Actual: 1; input name: INPUT0"),
    ("anysize", [encode(image(5, 7)), encode(image(6, 7))],
     "Binary input images for this endpoint are required to have the same resolution - image 1 is 7x6, image 0 is "
     "7x5; input name: INPUT0"),
    ("resnetlike", [encode(image(8, 8)), encode(image(8, 8))],
     "Invalid input batch size - Expected: 1; Actual: 2; input name: INPUT0"),
    ("planar", [encode(image(4, 4))],
     "Received binary image input but resource not configured to accept NHWC layout - input INPUT0 has layout NDHW"),
])
def test_refusals_name_the_problem(server, model, images, message):
    with pytest.raises(InferenceServerException) as raised:
        triton_grpc(server, model, images)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message().startswith(message), raised.value.message()


def test_image_request_shape_must_be_the_number_of_images(server):
    png = encode(image(8, 8))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        request = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
        request.set_data_from_numpy(np.array([[png]], dtype=object))
        with pytest.raises(InferenceServerException, match=r"Invalid number of shape dimensions - Expected number "
                                                           r"of input shape dimensions: 1; Actual: 2"):
            client.infer("resnetlike", [request])


def test_raw_tensors_still_served_beside_images(server):
    """The servable keeps its raw-tensor contract: shape and precision checked as before."""
    x = RNG.random((1, 8, 8, 3), dtype=np.float32)
    assert np.array_equal(raw_answer(server, "resnetlike", x), x.transpose(0, 3, 1, 2))
    with pytest.raises(InferenceServerException, match="Invalid input shape"):
        raw_answer(server, "resnetlike", RNG.random((1, 9, 8, 3), dtype=np.float32))


def test_metadata_reports_the_served_layout_shape(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        meta = client.get_model_metadata("resnetlike", as_json=True)
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["1", "8", "8", "3"]}]



def test_image_to_a_pipeline_input(repository, tmp_path):
    """A DAG pipeline whose input feeds a model's NHWC input takes images too (OVMS: "Single Models and DAG
    Pipelines"), decoded before the pipeline runs."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model_config_list": [{"config": {"name": "resnetlike", "base_path": str(repository / "resnetlike"),
                                          "layout": "NHWC:NCHW"}}],
        "pipeline_config_list": [{
            "name": "classify", "inputs": ["image"],
            "nodes": [{"name": "model", "model_name": "resnetlike", "type": "DL model",
                       "inputs": [{"INPUT0": {"node_name": "request", "data_item": "image"}}],
                       "outputs": [{"data_item": "OUTPUT0", "alias": "scores"}]}],
            "outputs": [{"scores": {"node_name": "model", "data_item": "scores"}}]}]}))
    jpeg = encode(image(12, 12), ".jpg")
    with ThreadedServer(config_path=config) as running:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            request = grpcclient.InferInput("image", [1], "BYTES")
            request.set_data_from_numpy(np.array([jpeg], dtype=object))
            out = client.infer("classify", [request]).as_numpy("scores")
    assert np.array_equal(out, pixels_of(jpeg, 8, 8)[None].transpose(0, 3, 1, 2))
