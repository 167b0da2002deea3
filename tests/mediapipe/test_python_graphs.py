"""MediaPipe graphs with Python nodes served as OVMS serves them, called with tritonclient (gRPC and REST):
OVMS's quickstart upper-casing node, Python nodes around a served OpenVINO model, a generator over
ModelStreamInfer, a failing execute, and graphs refused at load while the rest serves."""
from __future__ import annotations

import json
import queue
import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ThreadedServer
from tests.test_cli import OvmsProcess
from tests.mediapipe.graphs import write_graph_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_graph_repository(tmp_path_factory.mktemp("graphs"))


@pytest.fixture(scope="module")
def served(repo, caplog_module):
    with ThreadedServer(config_path=repo) as running:
        yield running


@pytest.fixture(scope="module")
def caplog_module():
    """Every log record of the module's server (load failures are asserted on)."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.INFO)
    logging.getLogger("ovms").addHandler(handler)
    previous = logging.getLogger("ovms").level
    logging.getLogger("ovms").setLevel(logging.INFO)
    yield records
    logging.getLogger("ovms").removeHandler(handler)
    logging.getLogger("ovms").setLevel(previous)


def text_input(module, name: str, data: bytes):
    """As OVMS's quickstart sends it: BYTES of shape [len(data)] with the UTF-8 bytes as raw content."""
    infer_input = module.InferInput(name, [len(data)], "BYTES")
    infer_input._raw_content = data
    return infer_input


def test_quickstart_uppercase_over_grpc(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    data = "Make this text uppercase.".encode()
    results = client.infer("python_model", [text_input(grpcclient, "text", data)])
    assert results.as_numpy("uppercase").tobytes().decode() == "MAKE THIS TEXT UPPERCASE."
    output = results.get_output("uppercase")
    assert (output.datatype, list(output.shape)) == ("UINT8", [25])


def test_uppercase_with_bytes_contents_gets_the_length_prefixed_buffer(served):
    """bytes_contents arrive in execute as OVMS documents: every element preceded by its 4-byte length."""
    client = grpcclient.InferenceServerClient(served.grpc_url)
    infer_input = grpcclient.InferInput("text", [1], "BYTES")
    infer_input.set_data_from_numpy(np.array([b"abc"], dtype=object))
    results = client.infer("python_model", [infer_input])
    assert results.as_numpy("uppercase").tobytes() == b"\x03\x00\x00\x00ABC"


def test_uppercase_over_rest(served):
    client = httpclient.InferenceServerClient(served.rest_url)
    infer_input = httpclient.InferInput("text", [1], "BYTES")
    infer_input.set_data_from_numpy(np.array([b"rest call"], dtype=object), binary_data=True)
    results = client.infer("python_model", [infer_input])
    assert results.as_numpy("uppercase").tobytes() == b"\x09\x00\x00\x00REST CALL"


def test_graph_metadata_names_its_streams(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    metadata = client.get_model_metadata("mixed", as_json=True)
    assert [i["name"] for i in metadata["inputs"]] == ["numbers"]
    assert [o["name"] for o in metadata["outputs"]] == ["summary", "scaled"]
    assert client.is_model_ready("python_model")


def test_python_nodes_around_an_openvino_model(served):
    """numbers -> Python (x2) -> converter -> dummy (b + 1) -> converter -> Python (text, x10)."""
    numbers = np.arange(10, dtype=np.float32)
    expected = numbers * 2 + 1
    for module, url in ((grpcclient, served.grpc_url), (httpclient, served.rest_url)):
        client = module.InferenceServerClient(url)
        infer_input = module.InferInput("numbers", [10], "FP32")
        infer_input.set_data_from_numpy(numbers)
        results = client.infer("mixed", [infer_input])
        assert results.as_numpy("summary").tobytes().decode() == " ".join(f"{v:g}" for v in expected)
        np.testing.assert_array_equal(results.as_numpy("scaled"), (expected * 10).reshape(1, 10))
        assert results.as_numpy("scaled").dtype == np.float32


def test_openvino_tensors_straight_through_a_model_node(served):
    """OVTENSOR graph streams: the request tensor reaches the model as it is, its output comes back typed."""
    b = np.arange(10, dtype=np.float32).reshape(1, 10)
    for module, url in ((grpcclient, served.grpc_url), (httpclient, served.rest_url)):
        client = module.InferenceServerClient(url)
        infer_input = module.InferInput("in", [1, 10], "FP32")
        infer_input.set_data_from_numpy(b)
        results = client.infer("model_only", [infer_input])
        np.testing.assert_array_equal(results.as_numpy("out"), b + 1)
        assert results.as_numpy("out").dtype == np.float32


def stream_results(url: str, requests: list) -> list:
    """Send ``requests`` (model, inputs) on one ModelStreamInfer stream; every result until the stream is idle."""
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        for model, inputs in requests:
            client.async_stream_infer(model, inputs)
        items = [received.get(timeout=30)]
        while True:
            try:
                items.append(received.get(timeout=1.5))
            except queue.Empty:
                return items
    finally:
        client.stop_stream()


def test_generator_node_streams_one_response_per_yield(served):
    items = stream_results(served.grpc_url, [("stream", [text_input(grpcclient, "text", b"one two three")])])
    assert [error for _, error in items] == [None, None, None]
    tokens = [result.as_numpy("token").tobytes() for result, _ in items]
    assert tokens == [b"0:one", b"1:two", b"2:three"]
    timestamps = [result.get_response().parameters["OVMS_MP_TIMESTAMP"].int64_param for result, _ in items]
    assert timestamps == [0, 1, 2]


def test_generator_failing_midway_sends_what_it_made_then_the_error(served):
    items = stream_results(served.grpc_url, [("stream", [text_input(grpcclient, "text", b"a b boom c")]),
                                             ("stream", [text_input(grpcclient, "text", b"after")])])
    assert [r.as_numpy("token").tobytes() for r, _ in items[:2]] == [b"0:a", b"1:b"]
    assert items[2][0] is None
    assert ('Calculator::Process() for node "generator" failed: Error occurred during graph execution: '
            "RuntimeError: word 2 exploded (generator.py, line 16)") in str(items[2][1])
    assert items[3][1] is None and items[3][0].as_numpy("token").tobytes() == b"0:after"


def test_client_gone_closes_the_generator(served, repo):
    mark = repo.parent / "stream" / "generator_closed"
    mark.unlink(missing_ok=True)
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(served.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    client.async_stream_infer("stream", [text_input(grpcclient, "text", b" ".join([b"slow"] * 50))])
    assert received.get(timeout=30)[0].as_numpy("token").tobytes() == b"0:slow"
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), "the generator was not closed after the client cancelled the stream"
    assert int(mark.read_text()) < 10  # closed early, not run to its 50th word
    results = client.infer("python_model", [text_input(grpcclient, "text", b"next")])
    assert results.as_numpy("uppercase").tobytes() == b"NEXT"


def test_stream_mixes_unary_graphs_and_generators_in_request_order(served):
    items = stream_results(served.grpc_url, [
        ("stream", [text_input(grpcclient, "text", b"a b")]),
        ("python_model", [text_input(grpcclient, "text", b"quiet")]),
        ("stream", [text_input(grpcclient, "text", b"c")]),
    ])
    outputs = [result.get_response().outputs[0].name for result, _ in items]
    assert outputs == ["token", "token", "uppercase", "token"]
    assert items[2][0].as_numpy("uppercase").tobytes() == b"QUIET"
    assert items[3][0].as_numpy("token").tobytes() == b"0:c"


def test_generator_over_unary_infer_says_to_stream(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("stream", [text_input(grpcclient, "text", b"x y")])
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert 'Calculator::Process() for node "generator" failed' in info.value.message()
    assert "ModelStreamInfer" in info.value.message()


def test_exception_in_execute_names_the_node_and_the_next_request_succeeds(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("faulty", [text_input(grpcclient, "text", b"boom")])
    message = info.value.message()
    assert message.startswith("Mediapipe execution failed. MP status - INTERNAL: CalculatorGraph::Run() failed: "
                              'Calculator::Process() for node "reverser" failed: Error occurred during graph '
                              "execution: ValueError: cannot handle boom (faulty.py, line 8)"), message
    assert "INVALID_ARGUMENT" in str(info.value.status())
    results = client.infer("faulty", [text_input(grpcclient, "text", b"fine")])
    assert results.as_numpy("out").tobytes() == b"enif"
    rest = httpclient.InferenceServerClient(served.rest_url)
    with pytest.raises(InferenceServerException) as info:
        infer_input = httpclient.InferInput("text", [1], "BYTES")
        infer_input.set_data_from_numpy(np.array([b"boom"], dtype=object), binary_data=False)
        rest.infer("faulty", [infer_input])
    assert 'node "reverser" failed' in info.value.message() and "400" in str(info.value.status())


def test_exception_in_a_streamed_request_answers_that_request_only(served):
    items = stream_results(served.grpc_url, [("faulty", [text_input(grpcclient, "text", b"boom")]),
                                             ("faulty", [text_input(grpcclient, "text", b"ok")])])
    assert len(items) == 2
    assert items[0][0] is None and 'node "reverser" failed' in str(items[0][1])
    assert items[1][1] is None and items[1][0].as_numpy("out").tobytes() == b"ko"


def test_unexpected_and_missing_inputs_use_ovms_messages(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(InferenceServerException, match="Unexpected input - txt is unexpected"):
        client.infer("python_model", [text_input(grpcclient, "txt", b"a")])
    infer_input = grpcclient.InferInput("numbers", [3], "FP32")
    infer_input.set_data_from_numpy(np.ones(3, dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("mixed", [infer_input])
    assert ('for node "dummyInference" failed: model dummy: Invalid input shape - Expected: (1,10); Actual: (1,3)'
            in info.value.message())


@pytest.mark.parametrize("name, message", [
    ("bad_calculator", 'node "pythonNode": No registered object with name: PythonExecutorCalculatr; Unable to find '
                       'Calculator "PythonExecutorCalculatr"'),
    ("bad_handler", 'node "pythonNode": The Python Node file path does not exist: '),
    ("bad_llm", "PythonExecutorCalculator nodes together with HttpLLMCalculator in one graph are not supported by "
                "this server"),
    ("bad_stream", 'node "pythonNode": Input Stream "txt" does not have a corresponding output stream'),
    ("bad_model", "node dummyInference uses model no_such_model version 1: Model with requested name is not found; "
                  "it is loaded once that model is served"),
    ("bad_wiring", 'node "direct" reads input stream "OVTENSOR:text" as OpenVINO tensors, but the graph input gives '
                   "it Python tensors (pyovms.Tensor); put a PyTensorOvTensorConverterCalculator node between them"),
])
def test_invalid_graphs_are_refused_at_load_and_the_rest_serves(served, caplog_module, name, message):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    assert not client.is_model_ready(name)
    with pytest.raises(InferenceServerException, match="Model with requested version is not found"):
        client.infer(name, [text_input(grpcclient, "text", b"a")])
    logged = [r.getMessage() for r in caplog_module if r.levelname == "ERROR" and f"model {name} " in r.getMessage()]
    assert any(message in line for line in logged), logged
    results = client.infer("python_model", [text_input(grpcclient, "text", b"still here")])
    assert results.as_numpy("uppercase").tobytes() == b"STILL HERE"


def test_finalize_runs_on_unload_with_ovms_kwargs(repo):
    mark = repo.parent / "upper" / "finalized.json"
    mark.unlink(missing_ok=True)
    with ThreadedServer(config_path=repo) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        client.infer("python_model", [text_input(grpcclient, "text", b"x")])
        assert not mark.exists()
    kwargs = json.loads(mark.read_text())
    assert kwargs == {"node_name": "pythonNode", "input_names": ["text"], "output_names": ["uppercase"],
                      "base_path": str(repo.parent / "upper")}


def test_model_path_directory_with_a_graph(repo, tmp_path):
    """`--model_name --model_path <dir with graph.pbtxt>`, as OVMS allows, in a real server process."""
    server = OvmsProcess(tmp_path, None, "--model_name", "upper", "--model_path", str(repo.parent / "upper"))
    try:
        server.wait_ready()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        results = client.infer("upper", [text_input(grpcclient, "text", "ünïcode stays".encode())])
        assert results.as_numpy("uppercase").tobytes() == "ÜNÏCODE STAYS".encode()
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()


def test_subconfig_models_are_served_with_the_graph(repo, tmp_path):
    """mediapipe_config_list subconfig (relative to base_path) lists the models a graph's nodes call."""
    graph_dir = tmp_path / "mixed"
    shutil.copytree(repo.parent / "mixed", graph_dir)
    shutil.copytree(repo.parent / "dummy", tmp_path / "models" / "dummy")
    (graph_dir / "models.json").write_text(json.dumps(
        {"model_config_list": [{"config": {"name": "dummy", "base_path": str(tmp_path / "models" / "dummy")}}]}))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [], "mediapipe_config_list": [
        {"name": "graph", "base_path": "mixed", "subconfig": "models.json"}]}))
    with ThreadedServer(config_path=config) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        infer_input = grpcclient.InferInput("numbers", [10], "FP32")
        infer_input.set_data_from_numpy(np.ones(10, dtype=np.float32))
        assert client.infer("graph", [infer_input]).as_numpy("summary").tobytes() == b" ".join([b"3"] * 10)
        assert client.is_model_ready("dummy")


def test_graph_waits_for_its_model_and_reloads_when_its_file_changes(repo, tmp_path):
    """A graph whose model is not served loads once a reload serves it; an edited graph.pbtxt is reloaded (OVMS
    compares the graph file on every config reload) and the old Python nodes are finalized."""
    graph_dir = tmp_path / "upper_graph"
    shutil.copytree(repo.parent / "mixed", tmp_path / "mixed")
    shutil.copytree(repo.parent / "upper", graph_dir)
    (graph_dir / "finalized.json").unlink(missing_ok=True)
    graph = tmp_path / "mixed" / "graph.pbtxt"
    graph.write_text(graph.read_text().replace('servable_name: "dummy"', 'servable_name: "late"'))
    config = tmp_path / "config.json"
    entries = [{"name": "mixed", "base_path": "mixed"}, {"name": "upper", "base_path": "upper_graph"}]
    config.write_text(json.dumps({"model_config_list": [], "mediapipe_config_list": entries}))
    infer_input = grpcclient.InferInput("numbers", [10], "FP32")
    infer_input.set_data_from_numpy(np.ones(10, dtype=np.float32))
    with ThreadedServer(config_path=config) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        assert not client.is_model_ready("mixed")
        shutil.copytree(repo.parent / "dummy", tmp_path / "late")
        config.write_text(json.dumps({"model_config_list": [{"config": {"name": "late", "base_path": "late"}}],
                                      "mediapipe_config_list": entries}))
        running.call(running.server.manager.reload())
        assert client.is_model_ready("mixed")
        assert client.infer("mixed", [infer_input]).as_numpy("summary").tobytes() == b" ".join([b"3"] * 10)

        handler = graph_dir / "model.py"
        handler.write_text(handler.read_text().replace("text.upper().encode()", "(text.upper() + '!').encode()"))
        (graph_dir / "graph.pbtxt").write_text((graph_dir / "graph.pbtxt").read_text() + "\n# edited\n")
        running.call(running.server.manager.reload())
        assert json.loads((graph_dir / "finalized.json").read_text())["node_name"] == "pythonNode"
        results = client.infer("upper", [text_input(grpcclient, "text", b"again")])
        assert results.as_numpy("uppercase").tobytes() == b"AGAIN!"


def test_stream_timestamps_number_the_requests_or_follow_the_client(served):
    """OVMS's automatic timestamps on a stream: its requests are 0, 1, 2, ...; OVMS_MP_TIMESTAMP on a request sets
    it, and later requests follow it."""
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(served.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer("python_model", [text_input(grpcclient, "text", b"a")])
        client.async_stream_infer("python_model", [text_input(grpcclient, "text", b"b")])
        client.async_stream_infer("python_model", [text_input(grpcclient, "text", b"c")],
                                  parameters={"OVMS_MP_TIMESTAMP": 100})
        client.async_stream_infer("python_model", [text_input(grpcclient, "text", b"d")])
        items = [received.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    assert [r.as_numpy("uppercase").tobytes() for r, _ in items] == [b"A", b"B", b"C", b"D"]
    assert [r.get_response().parameters["OVMS_MP_TIMESTAMP"].int64_param for r, _ in items] == [0, 1, 100, 101]
