"""OVMS's documented Python-node behaviours one by one (docs/python_support/reference.md, and the handler
scripts of src/test/mediapipe/python/scripts): inputs sorted by tag, kwargs, incomplete outputs, what a wrong
handler gets at load and at request time."""
from __future__ import annotations

import queue
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ThreadedServer
from tests.mediapipe.graphs import PYTHON_NODE

SORTED_INPUTS = '''
import numpy as np
from pyovms import Tensor

class OvmsPythonModel:
    def initialize(self, kwargs):
        self.kwargs = kwargs

    def execute(self, inputs):
        names = ",".join(t.name for t in inputs).encode()  # "Access inputs via index": sorted by tag A, B, C
        total = np.array(inputs[0]) * 100 + np.array(inputs[1]) * 10 + np.array(inputs[2])
        return [Tensor("order", names), Tensor("total", total.astype(np.int32)),
                Tensor("kwargs", repr(sorted(self.kwargs["input_names"])).encode())]
'''
SORTED_GRAPH = """
input_stream: "OVMS_PY_TENSOR_B:b"
input_stream: "OVMS_PY_TENSOR_A:a"
input_stream: "OVMS_PY_TENSOR_C:c"
output_stream: "OVMS_PY_TENSOR_ORDER:order"
output_stream: "OVMS_PY_TENSOR_TOTAL:total"
output_stream: "OVMS_PY_TENSOR_KWARGS:kwargs"
""" + PYTHON_NODE.format(name="sorter", handler="model.py", streams=(
    '  input_stream: "B:b"\n  input_stream: "A:a"\n  input_stream: "C:c"\n  output_stream: "ORDER:order"\n'
    '  output_stream: "TOTAL:total"\n  output_stream: "KWARGS:kwargs"'))

# reference.md "Incomplete outputs": a node may return a subset of its outputs
INCOMPLETE = '''
from pyovms import Tensor

class OvmsPythonModel:
    def execute(self, inputs):
        text = bytes(inputs[0]).decode()
        if text.startswith("bad"):
            return [Tensor("error_message", b"Error occurred during execution")]
        return [Tensor("result", text.encode())]
'''
INCOMPLETE_GRAPH = """
input_stream: "OVMS_PY_TENSOR:input"
output_stream: "OVMS_PY_TENSOR_RESULT:result"
output_stream: "OVMS_PY_TENSOR_ERROR:error_message"
""" + PYTHON_NODE.format(name="maybe", handler="model.py", streams=(
    '  input_stream: "INPUT:input"\n  output_stream: "OUTPUT:result"\n  output_stream: "ERROR:error_message"'))

SIMPLE_GRAPH = """
input_stream: "OVMS_PY_TENSOR:in"
output_stream: "OVMS_PY_TENSOR:out"
""" + PYTHON_NODE.format(name="node", handler="model.py", streams='  input_stream: "INPUT:in"\n'
                                                                    '  output_stream: "OUTPUT:out"')

# Handlers wrong at request time (OVMS's bad_execute_* and return_* scripts): (handler, message in the error)
AT_REQUEST = {
    "returns_none": ("return None", "execute returned NoneType; expected a list of pyovms.Tensor"),
    "returns_bytes": ("return [b'abc']", "Wrong object on execute output: bytes; expected pyovms.Tensor"),
    "wrong_name": ("return [Tensor('other', b'x')]", "execute returned a tensor named 'other', which is not an "
                                                     "output stream of the node (outputs: out)"),
    "yields_without_loopback": ("yield [Tensor('out', b'x')]", "Execute yielded, but LOOPBACK is not defined in the "
                                                                "node"),
    "wrong_signature": (None, "TypeError: OvmsPythonModel.execute() takes 1 positional argument but 2 were given"),
}
# Handlers wrong at load (bad_missing_class, bad_initialize_*, bad_execute_no_method, bad_execute_import_error)
AT_LOAD = {
    "no_class": ("class SomethingElse:\n    pass\n", "No OvmsPythonModel class found in"),
    "no_execute": ("class OvmsPythonModel:\n    def initialize(self, kwargs):\n        pass\n",
                   "does not implement execute method"),
    "initialize_raises": ("class OvmsPythonModel:\n    def initialize(self, kwargs):\n        raise ValueError('no "
                          "weights here')\n    def execute(self, inputs):\n        return inputs\n",
                          "initialize raised ValueError: no weights here (model.py, line 3)"),
    "import_fails": ("import module_that_is_not_installed\nclass OvmsPythonModel:\n    def execute(self, inputs):\n"
                     "        return inputs\n", "importing the handler raised ModuleNotFoundError: No module named "
                                                "'module_that_is_not_installed' (model.py, line 1)"),
}


SLEEPER = """
import time
from pyovms import Tensor

class OvmsPythonModel:
    def execute(self, inputs):
        time.sleep(1.0)  # a slow node: a model call, a download, heavy pre-processing
        return [Tensor("out", bytes(inputs[0]))]
"""


def _handler(body: str | None) -> str:
    if body is None:
        return "from pyovms import Tensor\nclass OvmsPythonModel:\n    def execute(self):\n        return []\n"
    return f"from pyovms import Tensor\nclass OvmsPythonModel:\n    def execute(self, inputs):\n        {body}\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("handlers")
    graphs = {"sorted": (SORTED_GRAPH, SORTED_INPUTS), "incomplete": (INCOMPLETE_GRAPH, INCOMPLETE),
              "sleeper": (SIMPLE_GRAPH, SLEEPER)}
    graphs.update({name: (SIMPLE_GRAPH, _handler(body)) for name, (body, _) in AT_REQUEST.items()})
    graphs.update({name: (SIMPLE_GRAPH, code) for name, (code, _) in AT_LOAD.items()})
    for name, (graph, handler) in graphs.items():
        (root / name).mkdir()
        (root / name / "graph.pbtxt").write_text(textwrap.dedent(graph))
        (root / name / "model.py").write_text(handler)
    config = root / "config.json"
    import json

    config.write_text(json.dumps({"model_config_list": [],
                                  "mediapipe_config_list": [{"name": name, "base_path": name} for name in graphs]}))
    with ThreadedServer(config_path=config) as running:
        yield running


def _bytes(name: str, data: bytes):
    infer_input = grpcclient.InferInput(name, [len(data)], "BYTES")
    infer_input._raw_content = data
    return infer_input


def test_inputs_arrive_sorted_by_tag(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    inputs = []
    for name, value in (("b", 2), ("a", 1), ("c", 3)):
        infer_input = grpcclient.InferInput(name, [2], "INT32")
        infer_input.set_data_from_numpy(np.array([value, value], dtype=np.int32))
        inputs.append(infer_input)
    results = client.infer("sorted", inputs)
    assert results.as_numpy("order").tobytes() == b"a,b,c"
    np.testing.assert_array_equal(results.as_numpy("total"), np.array([123, 123], dtype=np.int32))
    assert results.get_output("total").datatype == "INT32"
    assert results.as_numpy("kwargs").tobytes() == b"['a', 'b', 'c']"


def test_incomplete_outputs_stream_what_was_returned_and_unary_says_what_is_missing(served):
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(served.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer("incomplete", [_bytes("input", b"fine")])
        client.async_stream_infer("incomplete", [_bytes("input", b"bad input")])
        first, second = received.get(timeout=30), received.get(timeout=30)
    finally:
        client.stop_stream()
    assert first[0].as_numpy("result").tobytes() == b"fine"
    assert second[0].as_numpy("error_message").tobytes() == b"Error occurred during execution"
    with pytest.raises(InferenceServerException) as info:
        client.infer("incomplete", [_bytes("input", b"fine")])
    assert "graph output(s) error_message received no packet" in info.value.message()


@pytest.mark.parametrize("name", list(AT_REQUEST))
def test_wrong_handler_output_fails_the_request_and_names_the_node(served, name):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer(name, [_bytes("in", b"x")])
    message = info.value.message()
    assert message.startswith("Mediapipe execution failed. MP status - INTERNAL: CalculatorGraph::Run() failed: "
                              'Calculator::Process() for node "node" failed: '), message
    assert AT_REQUEST[name][1] in message, message
    assert client.is_model_ready(name)  # the node stays loaded


@pytest.mark.parametrize("name", list(AT_LOAD))
def test_wrong_handler_is_refused_at_load_with_the_reason(served, name):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    assert not client.is_model_ready(name)
    status = served.server.registry.models[name].versions[1]
    assert status.error is not None and AT_LOAD[name][1] in status.error, status.error
    assert f'Python node "node" ({served.server.registry.models[name].config.base_path / "model.py"})' in status.error
    assert "The Python Node state initialization failed" in status.error


def test_python_nodes_run_off_the_event_loop(served):
    """While two requests sit in a node's one-second execute, the server answers other calls at once, and the two
    run side by side (worker threads), not one after the other."""
    import concurrent.futures
    import time

    client = grpcclient.InferenceServerClient(served.grpc_url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        slow = [pool.submit(grpcclient.InferenceServerClient(served.grpc_url).infer, "sleeper",
                            [_bytes("in", f"r{i}".encode())]) for i in range(2)]
        time.sleep(0.2)
        probes = []
        for _ in range(5):
            probe = time.monotonic()
            assert client.is_server_live()
            assert client.infer("sorted", [_int("a", 1), _int("b", 2), _int("c", 3)]).as_numpy("total")[0] == 123
            probes.append(time.monotonic() - probe)
        assert not any(f.done() for f in slow), "the slow requests ended before the probes: the test proves nothing"
        assert max(probes) < 0.5, probes
        assert [f.result().as_numpy("out").tobytes() for f in slow] == [b"r0", b"r1"]
        assert time.monotonic() - started < 1.9  # side by side: about 1 s, not 2


def _int(name: str, value: int):
    infer_input = grpcclient.InferInput(name, [2], "INT32")
    infer_input.set_data_from_numpy(np.array([value, value], dtype=np.int32))
    return infer_input
