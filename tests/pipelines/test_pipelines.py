"""DAG pipelines (pipeline_config_list) served from config.json: chains, demultiplexing and gathering, Python
custom nodes, metadata, refusals at load with OVMS's messages, and revalidation when the models change.

Every answer is checked against the same models (or the same numpy code) called one after another by hand.
"""
from __future__ import annotations

import json
import pathlib
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ovmsclient import make_grpc_client
from tritonclient.utils import InferenceServerException

from tests.conftest import ThreadedServer
from tests.test_reload import rest, wait_for

NODES = textwrap.dedent('''
    import threading

    import numpy as np

    both_running = threading.Barrier(2, timeout=10)


    class Tile:
        """Demultiplexer: `count` copies of x, the i-th scaled by i + 1."""

        def __init__(self, params):
            self.count = int(params["count"])

        def inputs_info(self):
            return {"x": ("FP32", [1, 10])}

        def outputs_info(self):
            return {"tiles": ("FP32", [-1, 1, 10])}

        def execute(self, inputs):
            return {"tiles": np.stack([inputs["x"] * (i + 1) for i in range(self.count)])}


    class Sum:
        def __init__(self, params):
            pass

        def inputs_info(self):
            return {"parts": ("FP32", [-1, 1, 10])}

        def outputs_info(self):
            return {"total": ("FP32", [1, 10])}

        def execute(self, inputs):
            return {"total": inputs["parts"].sum(axis=0)}


    class Meet:
        """Passes x on only once another Meet node runs at the same time (a barrier of two)."""

        def __init__(self, params):
            self.scale = float(params["scale"])

        def inputs_info(self):
            return {"x": ("FP32", [1, 10])}

        def outputs_info(self):
            return {"y": ("FP32", [1, 10])}

        def execute(self, inputs):
            both_running.wait()
            return {"y": inputs["x"] * self.scale}


    class Boom:
        def __init__(self, params):
            pass

        def inputs_info(self):
            return {"x": ("FP32", [1, 10])}

        def outputs_info(self):
            return {"y": ("FP32", [1, 10])}

        def execute(self, inputs):
            if float(inputs["x"][0, 0]) < 0:
                raise ValueError("negative input")
            return {"y": inputs["x"]}
''')


def node(name, model=None, *, inputs, outputs, version=None, library=None, **extra):
    entry = {"name": name, "type": "custom" if library else "DL model",
             "inputs": [{k: {"node_name": n, "data_item": d}} for k, (n, d) in inputs.items()],
             "outputs": [{"data_item": d, "alias": a} for d, a in outputs.items()], **extra}
    if library:
        entry["library_name"] = library
    else:
        entry["model_name"] = model
    if version:
        entry["version"] = version
    return entry


def pipeline(name, inputs, nodes, outputs, **extra):
    return {"name": name, "inputs": inputs, "nodes": nodes,
            "outputs": [{k: {"node_name": n, "data_item": d}} for k, (n, d) in outputs.items()], **extra}


GOOD = [
    # dummy v1 (+1) then dummy v2 (+2)
    pipeline("chain", ["b"], [
        node("first", "dummy", version=1, inputs={"b": ("request", "b")}, outputs={"a": "a1"}),
        node("second", "dummy", version=2, inputs={"b": ("first", "a1")}, outputs={"a": "a2"}),
    ], {"result": ("second", "a2")}),
    # a custom node splits x into 3 branches, dummy runs on each, Sum gathers them
    pipeline("demux_gather", ["x"], [
        node("tile", library="nodes", inputs={"x": ("request", "x")}, outputs={"tiles": "tiles"},
             params={"count": "3"}, demultiply_count=-1),
        node("model", "dummy", version=1, inputs={"b": ("tile", "tiles")}, outputs={"a": "a"}),
        node("sum", library="nodes_sum", inputs={"parts": ("model", "a")}, outputs={"total": "total"},
             gather_from_node="tile"),
    ], {"total": ("sum", "total")}),
    # the same branches gathered by the response: a leading dimension
    pipeline("demux_response", ["x"], [
        node("tile", library="nodes", inputs={"x": ("request", "x")}, outputs={"tiles": "tiles"},
             params={"count": "4"}, demultiply_count=4),
        node("model", "dummy", version=2, inputs={"b": ("tile", "tiles")}, outputs={"a": "a"}),
    ], {"each": ("model", "a")}),
    # the request split along its first dimension (pipeline-level demultiply_count)
    pipeline("split_request", ["b"], [
        node("model", "dummy", version=1, inputs={"b": ("request", "b")}, outputs={"a": "a"}),
    ], {"a": ("model", "a")}, demultiply_count=-1),
    # two independent nodes, each waiting for the other on a barrier: passes only if they run concurrently
    pipeline("diamond", ["x"], [
        node("left", library="nodes_meet", inputs={"x": ("request", "x")}, outputs={"y": "y"},
             params={"scale": "2"}),
        node("right", library="nodes_meet", inputs={"x": ("request", "x")}, outputs={"y": "y"},
             params={"scale": "3"}),
        node("after_left", "dummy", version=1, inputs={"b": ("left", "y")}, outputs={"a": "a"}),
    ], {"left_plus_one": ("after_left", "a"), "right": ("right", "y")}),
    pipeline("fragile", ["x"], [
        node("boom", library="nodes_boom", inputs={"x": ("request", "x")}, outputs={"y": "y"}),
    ], {"y": ("boom", "y")}),
]

# Each refused at load with OVMS's message; the rest of the configuration keeps serving.
BAD = {
    "cycle": (pipeline("cycle", ["b"], [
        node("one", "dummy", inputs={"b": ("two", "a")}, outputs={"a": "a"}),
        node("two", "dummy", inputs={"b": ("one", "a")}, outputs={"a": "a"}),
    ], {"a": ("two", "a")}), "Pipeline definition contains a cycle"),
    "missing_alias": (pipeline("missing_alias", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
        node("two", "dummy", inputs={"b": ("one", "not_there")}, outputs={"a": "a"}),
    ], {"a": ("two", "a")}), "Pipeline definition has reference to missing data source"),
    "shape_mismatch": (pipeline("shape_mismatch", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
        node("two", "identity16", inputs={"INPUT0": ("one", "a")}, outputs={"OUTPUT0": "out"}),
    ], {"out": ("two", "out")}), "Invalid input shape"),
    "precision_mismatch": (pipeline("precision_mismatch", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
        node("two", "simple", inputs={"INPUT0": ("one", "a"), "INPUT1": ("one", "a")},
             outputs={"OUTPUT0": "out"}),
    ], {"out": ("two", "out")}), "Invalid input precision"),
    "missing_model": (pipeline("missing_model", ["b"], [
        node("one", "no_such_model", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
    ], {"a": ("one", "a")}), "Pipeline definition has reference to missing model"),
    "missing_model_output": (pipeline("missing_model_output", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"nope": "a"}),
    ], {"a": ("one", "a")}), "Pipeline definition has reference to missing model output"),
    "unconnected": (pipeline("unconnected", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
        node("spare", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
    ], {"a": ("one", "a")}), "Pipeline definition has unconnected nodes"),
    "not_all_inputs": (pipeline("not_all_inputs", ["b"], [
        node("one", "simple", inputs={"INPUT0": ("request", "b")}, outputs={"OUTPUT0": "out"}),
    ], {"out": ("one", "out")}), "Pipeline definition does not have connections for all inputs"),
    "no_inputs": (pipeline("no_inputs", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
        node("lonely", library="nodes_sum", inputs={}, outputs={"total": "t"}),
    ], {"a": ("one", "a"), "t": ("lonely", "t")}), "node lonely has no inputs"),
    "gather_not_demultiplexer": (pipeline("gather_not_demultiplexer", ["b"], [
        node("one", "dummy", inputs={"b": ("request", "b")}, outputs={"a": "a"}),
        node("two", "dummy", inputs={"b": ("one", "a")}, outputs={"a": "a"}, gather_from_node="one"),
    ], {"a": ("two", "a")}), "Gather node refers to node that isn't demultiplexer"),
}


def write_config(directory: pathlib.Path, model_repo: pathlib.Path, *, pipelines, models=None) -> pathlib.Path:
    (directory / "nodes.py").write_text(NODES)
    models = models or ["dummy", "simple", "identity16"]
    config = {
        "model_config_list": [{"config": {"name": name, "base_path": str(model_repo / name),
                                          **({"model_version_policy": {"all": {}}} if name == "dummy" else {})}}
                              for name in models],
        "custom_node_library_config_list": [
            {"name": "nodes", "base_path": "nodes.py", "class_name": "Tile"},
            {"name": "nodes_sum", "base_path": "nodes.py", "class_name": "Sum"},
            {"name": "nodes_meet", "base_path": "nodes.py", "class_name": "Meet"},
            {"name": "nodes_boom", "base_path": "nodes.py", "class_name": "Boom"},
        ],
        "pipeline_config_list": pipelines,
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


@pytest.fixture(scope="module")
def served(model_repo, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pipelines")
    config = write_config(directory, model_repo, pipelines=GOOD + [bad for bad, _ in BAD.values()])
    with ThreadedServer(config_path=config) as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    return grpcclient.InferenceServerClient(served.grpc_url)


def infer(client, name, inputs: dict[str, np.ndarray], outputs: list[str]):
    tensors = []
    for key, array in inputs.items():
        tensor = grpcclient.InferInput(key, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(name, tensors)
    return {out: result.as_numpy(out) for out in outputs}


def by_hand(client, model: str, version: str, b: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("b", list(b.shape), "FP32")
    tensor.set_data_from_numpy(b)
    return client.infer(model, [tensor], model_version=version).as_numpy("a")


def test_chain_equals_the_models_called_one_after_another(client):
    b = np.random.default_rng(1).standard_normal((1, 10)).astype(np.float32)
    expected = by_hand(client, "dummy", "2", by_hand(client, "dummy", "1", b))
    np.testing.assert_array_equal(infer(client, "chain", {"b": b}, ["result"])["result"], expected)


def test_demultiplex_and_gather_equal_the_branches_by_hand(client):
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    branches = [by_hand(client, "dummy", "1", x * (i + 1)) for i in range(3)]
    total = infer(client, "demux_gather", {"x": x}, ["total"])["total"]
    np.testing.assert_allclose(total, np.sum(branches, axis=0), rtol=1e-6)
    each = infer(client, "demux_response", {"x": x}, ["each"])["each"]
    assert each.shape == (4, 1, 10)
    for i in range(4):
        np.testing.assert_array_equal(each[i], by_hand(client, "dummy", "2", x * (i + 1)))


def test_request_split_along_its_first_dimension(client):
    b = np.random.default_rng(2).standard_normal((5, 1, 10)).astype(np.float32)
    a = infer(client, "split_request", {"b": b}, ["a"])["a"]
    assert a.shape == (5, 1, 10)
    for i in range(5):
        np.testing.assert_array_equal(a[i], by_hand(client, "dummy", "1", b[i]))


def test_independent_nodes_run_concurrently(client):
    x = np.ones((1, 10), np.float32)
    result = infer(client, "diamond", {"x": x}, ["left_plus_one", "right"])
    np.testing.assert_array_equal(result["left_plus_one"], x * 2 + 1)
    np.testing.assert_array_equal(result["right"], x * 3)


def test_metadata_is_derived_from_the_models(served):
    http = httpclient.InferenceServerClient(served.rest_url)
    chain = http.get_model_metadata("chain")
    assert chain["inputs"] == [{"name": "b", "datatype": "FP32", "shape": [1, 10]}]
    assert chain["outputs"] == [{"name": "result", "datatype": "FP32", "shape": [1, 10]}]
    assert chain["versions"] == ["1"]
    assert http.get_model_metadata("demux_response")["outputs"][0]["shape"] == [4, 1, 10]
    assert http.get_model_metadata("split_request")["inputs"][0]["shape"] == [-1, 1, 10]
    assert http.get_model_metadata("demux_gather")["outputs"][0]["shape"] == [1, 10]
    assert http.is_model_ready("chain")


def test_tfs_clients_call_a_pipeline(served):
    client = make_grpc_client(served.grpc_url)
    b = np.full((1, 10), 5, np.float32)
    assert client.get_model_status("chain") == {1: {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}}
    np.testing.assert_array_equal(client.predict({"b": b}, "chain"), b + 3)


def test_wrong_requests_get_ovms_messages(client):
    with pytest.raises(InferenceServerException) as info:
        infer(client, "chain", {"b": np.zeros((1, 11), np.float32)}, ["result"])
    assert "Invalid input shape" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        infer(client, "chain", {"x": np.zeros((1, 10), np.float32)}, ["result"])
    assert "Missing input with specific name" in info.value.message()


def test_custom_node_failure_names_the_node_and_the_pipeline_keeps_serving(client):
    with pytest.raises(InferenceServerException) as info:
        infer(client, "fragile", {"x": -np.ones((1, 10), np.float32)}, ["y"])
    assert "Custom node failed during execution - node boom: ValueError: negative input" in info.value.message()
    assert info.value.status() == "StatusCode.INTERNAL"
    x = np.ones((1, 10), np.float32)
    np.testing.assert_array_equal(infer(client, "fragile", {"x": x}, ["y"])["y"], x)


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_pipelines_are_refused_at_load_with_the_reason(served, client, name):
    message = BAD[name][1]
    with pytest.raises(InferenceServerException) as info:
        infer(client, name, {"b": np.zeros((1, 10), np.float32)}, ["a"])
    assert "Pipeline is not loaded yet" in info.value.message()
    assert message in info.value.message()
    status, body = rest(served.rest_url, "GET", f"/v1/config")
    assert body[name]["model_version_status"][0]["state"] == "LOADING"
    assert infer(client, "chain", {"b": np.zeros((1, 10), np.float32)}, ["result"])["result"][0, 0] == 3


def test_pipeline_follows_its_models_and_is_revalidated(model_repo, tmp_path):
    config = write_config(tmp_path, model_repo, pipelines=GOOD[:1])
    with ThreadedServer(config_path=config) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        b = np.zeros((1, 10), np.float32)
        assert infer(client, "chain", {"b": b}, ["result"])["result"][0, 0] == 3
        # dummy leaves the configuration: the pipeline cannot run, and says why
        write_config(tmp_path, model_repo, pipelines=GOOD[:1], models=["simple"])
        assert rest(server.rest_url, "POST", "/v1/config/reload")[0] == 201
        with pytest.raises(InferenceServerException) as info:
            infer(client, "chain", {"b": b}, ["result"])
        assert "Pipeline is not loaded yet" in info.value.message()
        assert "dummy" in info.value.message()
        # dummy comes back: the pipeline serves again without being touched
        write_config(tmp_path, model_repo, pipelines=GOOD[:1])
        rest(server.rest_url, "POST", "/v1/config/reload")
        result = wait_for(lambda: infer(client, "chain", {"b": b}, ["result"]), what="the pipeline to serve again")
        assert result["result"][0, 0] == 3


def test_model_outputs_reach_the_next_node_as_writable_arrays(served):
    """A pipeline asks its models for arrays (one copy out of the infer request), which the next model's
    ov.Tensor then shares instead of copying (OpenVINO shares only writable arrays)."""
    from ovms.types import InferRequest, Tensor

    servable = served.server.registry.resolve("dummy", 1)
    b = np.ones((1, 10), np.float32)

    async def call(as_arrays: bool):
        return await servable.infer(InferRequest("dummy", 1, [Tensor.from_array("b", b)], outputs_as_arrays=as_arrays))

    passed_on = served.call(call(True)).outputs[0]
    assert passed_on.has_array and passed_on.as_array().flags.writeable
    np.testing.assert_array_equal(passed_on.as_array(), b + 1)
    on_the_wire = served.call(call(False)).outputs[0]
    assert not on_the_wire.has_array and isinstance(on_the_wire.raw, bytes)
