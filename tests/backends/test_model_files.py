"""Model formats OpenVINO reads, served as OVMS lays them out: numeric version directories of IR, ONNX, PaddlePaddle,
TensorFlow (SavedModel, frozen .pb) and TensorFlow Lite; a base_path / --model_path naming one model file; and
mapping_config.json renaming inputs and outputs in metadata and requests.

The TensorFlow, TFLite and PaddlePaddle files are committed (tests/fixtures/formats/make_formats.py made them);
each computes y = 2x + 1 on FP32 [1, 4].
"""
from __future__ import annotations

import json
import pathlib
import shutil
import urllib.error
import urllib.request

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ovmsclient import make_grpc_client, make_http_client

from ovms.backends.model_files import find_model_file, read_mapping
from ovms.config import load_config_file, model_config_from_dict
from ovms.errors import ConfigError, ModelLoadError
from tests.conftest import ThreadedServer
from tests.test_cli import OvmsProcess

FORMATS = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "formats"
X = np.array([[0.5, -1.0, 2.0, 3.25]], dtype=np.float32)


def affine_onnx(path: pathlib.Path) -> None:
    """y = 2x + 1 as ONNX (Mul, Add), the same function as the committed framework models."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["twice"]), helper.make_node("Add", ["twice", "one"], ["y"])],
        "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0]), helper.make_tensor("one", TensorProto.FLOAT, [1],
                                                                                       [1.0])])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def affine_ir(path: pathlib.Path) -> None:
    x = ops.parameter([1, 4], ov.Type.f32, name="x")
    y = ops.add(ops.multiply(x, ops.constant(np.float32(2))), ops.constant(np.float32(1)))
    y.output(0).get_tensor().set_names({"y"})
    ov.save_model(ov.Model([ops.result(y)], [x], "affine"), str(path), compress_to_fp16=False)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> pathlib.Path:
    """One model per format, each in a numeric version directory, and a config.json serving them all."""
    root = tmp_path_factory.mktemp("formats")
    for name in ("tf_saved_model", "tf_frozen", "tflite", "paddle"):
        source = FORMATS / name
        assert (source / "1").is_dir(), f"{source}/1 is missing: run tests/fixtures/formats/make_formats.py"
        shutil.copytree(source, root / name)
    affine_onnx(root / "onnx" / "1" / "model.onnx")
    affine_ir(root / "ir" / "1" / "model.xml")
    names = ("ir", "onnx", "paddle", "tf_saved_model", "tf_frozen", "tflite")
    config = {"model_config_list": [{"config": {"name": n, "base_path": n}} for n in names]}
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def server(repository):
    with ThreadedServer(config_path=repository / "config.json") as running:
        yield running


# What OpenVINO's frontends name the tensors of each format (the clients see these names).
TENSOR_NAMES = {"ir": ("x", "y"), "onnx": ("x", "y"), "paddle": ("x", "tmp_1"), "tf_saved_model": ("x", "y"),
                "tf_frozen": ("x:0", None), "tflite": ("serving_default_x:0", "PartitionedCall:0")}


@pytest.mark.parametrize("name", list(TENSOR_NAMES))
def test_every_format_answers_kserve_grpc(server, name):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        meta = client.get_model_metadata(name, as_json=True)
        input_name, output_name = TENSOR_NAMES[name]
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [(input_name, "FP32", ["1", "4"])]
        if output_name is not None:
            assert [t["name"] for t in meta["outputs"]] == [output_name]
        request = grpcclient.InferInput(input_name, [1, 4], "FP32")
        request.set_data_from_numpy(X)
        result = client.infer(name, [request])
        assert np.array_equal(result.as_numpy(meta["outputs"][0]["name"]), 2 * X + 1)


@pytest.mark.parametrize("name", ["paddle", "tflite", "tf_saved_model"])
def test_formats_answer_tfs_rest(server, name):
    client = make_http_client(server.rest_url)
    input_name = TENSOR_NAMES[name][0]
    out = client.predict({input_name: X}, name)
    assert np.array_equal(out, 2 * X + 1)


def test_model_path_naming_one_file_serves_version_1(repository, tmp_path):
    """--model_path /models/model.tflite (OVMS: "synthetic version 1"), through the real command line."""
    server = OvmsProcess(tmp_path, None, "--model_name", "lite", "--model_path",
                         str(repository / "tflite" / "1" / "model.tflite"))
    try:
        server.wait_ready()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            assert client.get_model_metadata("lite", as_json=True)["versions"] == ["1"]
            request = grpcclient.InferInput("serving_default_x:0", [1, 4], "FP32")
            request.set_data_from_numpy(X)
            assert np.array_equal(client.infer("lite", [request]).as_numpy("PartitionedCall:0"), 2 * X + 1)
    finally:
        server.process.terminate()
        server.process.communicate(timeout=30)


@pytest.mark.parametrize("file", ["ir/1/model.xml", "onnx/1/model.onnx", "paddle/1/model.pdiparams",
                                  "tf_frozen/1/model.pb", "tf_saved_model/1/saved_model.pb"])
def test_config_base_path_naming_one_file(repository, file):
    config = model_config_from_dict({"name": "one", "base_path": str(repository / file)}, where="test")
    assert config.model_file == pathlib.Path(file).name and config.base_path == (repository / file).parent
    with ThreadedServer([config]) as server:
        client = make_grpc_client(server.grpc_url)
        assert client.get_model_status("one") == {1: {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}}
        meta = client.get_model_metadata("one")
        (input_name,) = meta["inputs"]
        assert np.array_equal(client.predict({input_name: X}, "one"), 2 * X + 1)


def test_model_file_errors_say_what_to_fix(repository, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"is a file but not a model file; name a directory of numeric versions"):
        model_config_from_dict({"name": "x", "base_path": str(tmp_path / "notes.txt")}, where="test")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.pdmodel").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"Missing .pdmodel or .pdiparams file; a PaddlePaddle model needs both "
                                             r"model.pdmodel and model.pdiparams"):
        find_model_file(tmp_path / "1")
    (tmp_path / "2").mkdir()
    for name in ("a.tflite", "b.tflite"):
        (tmp_path / "2" / name).write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"several TensorFlow Lite model files found \(a.tflite, b.tflite\)"):
        find_model_file(tmp_path / "2")
    (tmp_path / "3").mkdir()
    with pytest.raises(ModelLoadError, match=r"no model file found; put an OpenVINO IR .*model.tflite in each "
                                             r"numeric version directory"):
        find_model_file(tmp_path / "3")
    # OVMS's order of formats: IR before TFLite when a directory holds both.
    shutil.copy(repository / "tflite" / "1" / "model.tflite", tmp_path / "3")
    affine_ir(tmp_path / "3" / "model.xml")
    assert find_model_file(tmp_path / "3").name == "model.xml"


def test_mapping_config_renames_inputs_and_outputs(repository, tmp_path):
    """mapping_config.json (OVMS's format) in the version directory: metadata and every API use the new names;
    config.json names the input by its mapped name (layout, shape), as OVMS requires."""
    base = tmp_path / "lite"
    shutil.copytree(repository / "tflite", base)
    (base / "1" / "mapping_config.json").write_text(json.dumps(
        {"inputs": {"serving_default_x:0": "features"}, "outputs": {"PartitionedCall:0": "scores"}}))
    config = model_config_from_dict({"name": "lite", "base_path": str(base), "shape": {"features": "(1,4)"}},
                                    where="test")
    with ThreadedServer([config]) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            meta = client.get_model_metadata("lite", as_json=True)
            assert [t["name"] for t in meta["inputs"]] == ["features"]
            assert [t["name"] for t in meta["outputs"]] == ["scores"]
            request = grpcclient.InferInput("features", [1, 4], "FP32")
            request.set_data_from_numpy(X)
            result = client.infer("lite", [request], outputs=[grpcclient.InferRequestedOutput("scores")])
            assert np.array_equal(result.as_numpy("scores"), 2 * X + 1)
            old = grpcclient.InferInput("serving_default_x:0", [1, 4], "FP32")
            old.set_data_from_numpy(X)
            with pytest.raises(Exception, match="Missing input with specific name - Required input: features"):
                client.infer("lite", [old])
        http = httpclient.InferenceServerClient(server.rest_url)
        request = httpclient.InferInput("features", [1, 4], "FP32")
        request.set_data_from_numpy(X, binary_data=False)
        assert np.array_equal(http.infer("lite", [request]).as_numpy("scores"), 2 * X + 1)
        tfs = make_http_client(server.rest_url)
        assert tfs.get_model_metadata("lite")["outputs"] == {"scores": {"shape": [1, 4], "dtype": "DT_FLOAT"}}
        assert np.array_equal(tfs.predict({"features": X}, "lite"), 2 * X + 1)


def test_broken_mapping_config_fails_the_version_with_the_file_named(tmp_path, repository, caplog):
    base = tmp_path / "m"
    shutil.copytree(repository / "onnx", base)
    (base / "1" / "mapping_config.json").write_text('{"inputs": {"x": "a"}, "outputs": ')
    with pytest.raises(ModelLoadError, match=r"mapping_config.json: mapping configuration file is not a valid JSON"):
        read_mapping(base / "1")
    (base / "1" / "mapping_config.json").write_text('{"inputs": {"x": 3}}')
    with pytest.raises(ModelLoadError, match=r'"inputs" must map tensor names to new names \(strings\)'):
        read_mapping(base / "1")
    (base / "1" / "mapping_config.json").write_text('{"input": {"x": "a"}}')
    with pytest.raises(ModelLoadError, match=r'must be an object with only "inputs" and "outputs"'):
        read_mapping(base / "1")
    config = model_config_from_dict({"name": "m", "base_path": str(base)}, where="test")
    with ThreadedServer([config]) as server:
        with urllib.request.urlopen(f"http://{server.rest_url}/v1/models/m", timeout=10) as response:
            (status,) = json.loads(response.read())["model_version_status"]
        assert status["state"] != "AVAILABLE", status
        assert "1/mapping_config.json: mapping configuration must be an object" in caplog.text
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(
                f"http://{server.rest_url}/v2/models/m/infer", data=json.dumps({"inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X.ravel().tolist()}]}).encode()),
                timeout=10)
        assert refused.value.code in (404, 503)


def test_config_file_accepts_single_file_and_formats(repository, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [
        {"config": {"name": "a", "base_path": str(repository / "paddle" / "1" / "model.pdmodel")}}]}))
    (model,) = load_config_file(config)
    assert (model.base_path, model.model_file) == (repository / "paddle" / "1", "model.pdmodel")
