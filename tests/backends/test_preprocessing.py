"""--mean, --scale, --color_format and --precision (OVMS 2026.0) and their config.json fields, built into the
compiled model with PrePostProcessor; answers checked against numpy, flag mistakes against OVMS's messages."""
from __future__ import annotations

import asyncio
import json
import pathlib

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import tritonclient.grpc as grpcclient

from ovms.backends.openvino_model import load_servable
from ovms.config import load_config_file, model_config_from_dict
from ovms.errors import ConfigError, ModelLoadError
from ovms.types import InferRequest, Tensor
from tests.conftest import ThreadedServer
from tests.test_cli import OvmsProcess, run_ovms

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
SCALE = np.array([58.395, 57.12, 57.375], np.float32)
RNG = np.random.default_rng(7)


def copy_model(shape: list[int], inputs: int = 1) -> ov.Model:
    """OUTPUT0 = INPUT0 * 1 (FP32, no clipping: negative values after --mean must show)."""
    params = [ops.parameter(shape, ov.Type.f32, name=f"INPUT{i}") for i in range(inputs)]
    y = ops.multiply(params[0], ops.constant(np.float32(1)))
    for extra in params[1:]:
        y = ops.add(y, extra)
    y.output(0).get_tensor().set_names({"OUTPUT0"})
    return ov.Model([ops.result(y)], params, "copy")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("ppp")
    ov.save_model(copy_model([1, 3, 6, 6]), str(root / "nchw" / "1" / "model.xml"), compress_to_fp16=False)
    ov.save_model(copy_model([1, 3, 6, 6], inputs=2), str(root / "two" / "1" / "model.xml"), compress_to_fp16=False)
    return root


def expected(x_nhwc: np.ndarray) -> np.ndarray:
    """--color_format BGR:RGB --precision uint8:fp32 --mean --scale --layout NHWC:NCHW, in numpy."""
    swapped = x_nhwc[..., ::-1].astype(np.float32)
    return ((swapped - MEAN) / SCALE).transpose(0, 3, 1, 2)


FLAGS = ("--layout", "NHWC:NCHW", "--mean", "[123.675,116.28,103.53]", "--scale", "[58.395,57.12,57.375]",
         "--color_format", "BGR:RGB", "--precision", "uint8:fp32")


def test_flags_as_ovms_demo_uses_them(repo, tmp_path):
    """OVMS's ONNX demo command line (demos/using_onnx_model): raw uint8 NHWC and a JPEG both get the steps."""
    # --shape in the layout clients send, after the layout change (OVMS applies preprocessing, then reshapes)
    server = OvmsProcess(tmp_path, None, "--model_name", "m", "--model_path", str(repo / "nchw"), *FLAGS,
                         "--shape", "(1,6,6,3)")
    try:
        server.wait_ready()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            meta = client.get_model_metadata("m", as_json=True)
            assert meta["inputs"] == [{"name": "INPUT0", "datatype": "UINT8", "shape": ["1", "6", "6", "3"]}]
            x = RNG.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
            request = grpcclient.InferInput("INPUT0", [1, 6, 6, 3], "UINT8")
            request.set_data_from_numpy(x)
            out = client.infer("m", [request]).as_numpy("OUTPUT0")
            assert out.shape == (1, 3, 6, 6) and (out < 0).any()
            np.testing.assert_allclose(out, expected(x), rtol=1e-5, atol=1e-5)
            ok, jpeg = cv2.imencode(".jpg", RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8))
            image = grpcclient.InferInput("INPUT0", [1], "BYTES")
            image.set_data_from_numpy(np.array([jpeg.tobytes()], dtype=object))
            decoded = cv2.resize(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED), (6, 6), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(client.infer("m", [image]).as_numpy("OUTPUT0"), expected(decoded[None]),
                                       rtol=1e-5, atol=1e-5)
    finally:
        server.process.terminate()
        server.process.communicate(timeout=30)


def test_config_json_fields_and_scalar_values(repo, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {
        "name": "m", "base_path": str(repo / "nchw"), "layout": "NHWC:NCHW", "mean": "127.5", "scale": "2",
        "precision": "UINT8:FP32"}}]}))
    (model,) = load_config_file(config)
    assert (model.mean, model.scale, model.precision, model.color_format) == (127.5, 2.0, ("UINT8", "FP32"), None)
    with ThreadedServer(config_path=config) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            x = RNG.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
            request = grpcclient.InferInput("INPUT0", [1, 6, 6, 3], "UINT8")
            request.set_data_from_numpy(x)
            out = client.infer("m", [request]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(out, ((x.astype(np.float32) - 127.5) / 2).transpose(0, 3, 1, 2), rtol=1e-6)


def test_mean_and_scale_without_precision_on_float_input(repo):
    config = model_config_from_dict({"name": "m", "base_path": str(repo / "nchw"), "layout": "NCHW",
                                     "mean": "[1,2,3]", "scale": "[0.5,4,8]"}, where="test")
    servable = load_servable(config, 1)
    try:
        x = RNG.random((1, 3, 6, 6), dtype=np.float32) * 10
        request = InferRequest("m", None, [Tensor("INPUT0", "FP32", x.shape, array=x)])
        out = asyncio.run(servable.infer(request)).outputs[0].as_array()
        want = (x - np.array([1, 2, 3], np.float32)[:, None, None]) / np.array([0.5, 4, 8], np.float32)[:, None, None]
        np.testing.assert_allclose(out, want, rtol=1e-6)
    finally:
        servable.close()


@pytest.mark.parametrize("fields, message", [
    ({"mean": "[1,x,3]"}, "The provided float is in wrong format: mean"),
    ({"scale": "[]"}, "The provided float is in wrong format: scale"),
    ({"color_format": "RGB"}, "The provided color format is in wrong format: color_format 'RGB'; expected "
                              "TARGET:SOURCE, e.g. BGR:RGB"),
    ({"color_format": "BGR:CMYK"}, "The provided color format is in wrong format"),
    ({"precision": "FP33:FP32"}, "The provided precision is in wrong format: precision 'FP33:FP32'"),
])
def test_config_values_refused_with_the_field_named(repo, fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        model_config_from_dict({"name": "m", "base_path": str(repo / "nchw"), "layout": "NCHW", **fields},
                               where="config.json: model_config_list[0].config")


def test_load_errors_name_the_flags(repo):
    two = model_config_from_dict({"name": "two", "base_path": str(repo / "two"), "mean": "1", "scale": "2",
                                  "layout": {"INPUT0": "NCHW"}}, where="test")
    with pytest.raises(ModelLoadError, match="model two: --mean, --scale apply to the model's only input, and this "
                                             "model has 2 inputs"):
        load_servable(two, 1)
    wrong = model_config_from_dict({"name": "m", "base_path": str(repo / "nchw"), "layout": "NCHW",
                                    "mean": "[1,2]"}, where="test")
    with pytest.raises(ModelLoadError, match="model m: "):
        load_servable(wrong, 1)


@pytest.mark.parametrize("flag, value", [("--mean", "[1,2,3]"), ("--scale", "255"), ("--color_format", "BGR:RGB"),
                                         ("--precision", "uint8:fp32")])
def test_flags_need_layout_as_in_ovms(flag, value):
    result = run_ovms("--model_name", "m", "--model_path", "/x", "--port", "9000", flag, value)
    assert result.returncode == 64, result
    assert f"error parsing options - {flag} parameter requires --layout to be set" in result.stderr


def test_flags_exclusive_with_config_file_and_listed_in_help():
    result = run_ovms("--config_path", "c.json", "--port", "1", "--layout", "NCHW", "--mean", "1")
    assert result.returncode == 64 and "Model parameters in CLI are exclusive with the config file" in result.stderr
    help_text = run_ovms("--help").stdout
    assert all(flag in help_text for flag in ("--mean", "--scale", "--color_format", "--precision"))


def test_bad_flag_value_is_a_configuration_error(repo):
    result = run_ovms("--model_name", "m", "--model_path", str(repo / "nchw"), "--port", "1", "--rest_port", "2",
                      "--layout", "NHWC:NCHW", "--precision", "u8")
    assert result.returncode == 1, result
    assert "Configuration error: command line: The provided precision is in wrong format: precision 'u8'" in \
        result.stderr


def test_layout_per_name_reaches_outputs_and_unknown_names_are_refused(repo):
    """OVMS applies a named layout to an output too: OUTPUT0 answered NHWC from the model's NCHW."""
    config = model_config_from_dict({"name": "m", "base_path": str(repo / "nchw"),
                                     "layout": {"INPUT0": "NHWC:NCHW", "OUTPUT0": "NHWC:NCHW"}}, where="test")
    servable = load_servable(config, 1)
    try:
        assert [s.shape for s in servable.outputs] == [(1, 6, 6, 3)]
        x = RNG.random((1, 6, 6, 3), dtype=np.float32)
        out = asyncio.run(servable.infer(InferRequest("m", None, [Tensor("INPUT0", "FP32", x.shape, array=x)])))
        assert np.array_equal(out.outputs[0].as_array(), x)
    finally:
        servable.close()
    wrong = model_config_from_dict({"name": "m", "base_path": str(repo / "nchw"), "layout": {"IMAGE": "NHWC"}},
                                   where="test")
    with pytest.raises(ModelLoadError, match=r"model m: Layout from config not found in model: 'IMAGE'; inputs are "
                                             r"\['INPUT0'\], outputs \['OUTPUT0'\]"):
        load_servable(wrong, 1)
