"""One run of a graph for one request: packets flow from the graph inputs through the nodes to the outputs.

Scheduling follows MediaPipe's defaults as OVMS uses them: a node processes one timestamp at a time, in order;
with the default input stream handler it runs once every input has a packet at that timestamp or its stream is
closed (a missing input is left out, as PythonExecutorCalculator does with an empty packet); with
ImmediateInputStreamHandler it runs for every packet. A node's output streams close when it is done with its
inputs. Node work runs off the event loop (Python nodes in worker threads, model nodes through the served model).
A generative Python node (execute yields, with a LOOPBACK stream) emits one set of outputs per yield, at the
input's timestamp and then ascending, as OVMS does.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from concurrent.futures import Executor
from typing import Any, Callable

import numpy as np

from ovms.mediapipe.definition import CONVERTER, INFERENCE, PYTHON, Node, Stream, tensor_names
from ovms.mediapipe.python_node import NodeFailure, PythonNode, describe

log = logging.getLogger("ovms.mediapipe")


class GraphFailure(Exception):
    """A node failed: ``node`` is its label, the message the reason."""

    def __init__(self, node: str, message: str, *, precondition: bool = False) -> None:
        super().__init__(message)
        self.node = node
        self.precondition = precondition


@dataclasses.dataclass(eq=False, slots=True)
class _NodeState:
    node: Node
    inputs: list[Stream]
    open: set[str]  # input stream names whose producer may still send
    pending: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)  # ts -> stream name -> packet
    busy: bool = False
    done: bool = False


class GraphRun:
    """The packets of one request. ``emit(name, packet, timestamp)`` receives graph output packets on the loop."""

    def __init__(self, graph, emit: Callable[[str, Any, int], None], *, streaming: bool) -> None:
        self.graph = graph  # ovms.mediapipe.servable.MediapipeServable (nodes, runners, consumers)
        self.emit = emit
        self.streaming = streaming
        self.states = [_NodeState(n, n.data_inputs(), {s.name for s in n.data_inputs()})
                       for n in graph.definition.nodes if n.data_inputs()]
        self.consumers: dict[str, list[_NodeState]] = {}
        for state in self.states:
            for stream in state.inputs:
                self.consumers.setdefault(stream.name, []).append(state)
        self.outputs = {s.name for s in graph.definition.outputs}
        self.remaining = len(self.states)
        self.finished = asyncio.Event()
        self.error: BaseException | None = None
        self.tasks: set[asyncio.Task] = set()

    async def run(self, inputs: dict[str, Any], timestamp: int) -> None:
        """Feed the graph inputs at ``timestamp`` and wait until every node is done; raise the first failure."""
        for name, packet in inputs.items():
            self.publish(name, packet, timestamp)
        for name in inputs:
            self.close(name)
        if self.remaining:
            try:
                await self.finished.wait()
            finally:
                for task in self.tasks:
                    task.cancel()
        if self.error is not None:
            raise self.error

    def publish(self, stream: str, packet: Any, timestamp: int) -> None:
        if self.error is not None:
            return
        if stream in self.outputs:
            self.emit(stream, packet, timestamp)
        for state in self.consumers.get(stream, ()):
            state.pending.setdefault(timestamp, {})[stream] = packet
            self.schedule(state)

    def close(self, stream: str) -> None:
        for state in self.consumers.get(stream, ()):
            state.open.discard(stream)
            self.schedule(state)

    def schedule(self, state: _NodeState) -> None:
        if state.busy or state.done or self.error is not None:
            return
        if state.pending:
            timestamp = min(state.pending)
            packets = state.pending[timestamp]
            if state.node.immediate or all(s.name in packets or s.name not in state.open for s in state.inputs):
                del state.pending[timestamp]
                state.busy = True
                task = asyncio.ensure_future(self._process(state, packets, timestamp))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            return
        if not state.open:
            state.done = True
            for stream in state.node.data_outputs():
                self.close(stream.name)
            self.remaining -= 1
            if self.remaining == 0:
                self.finished.set()

    async def _process(self, state: _NodeState, packets: dict[str, Any], timestamp: int) -> None:
        try:
            await self.graph.runners[state.node.index](self, state.node, packets, timestamp)
        except asyncio.CancelledError:
            raise
        except GraphFailure as exc:
            self.fail(exc)
            return
        except NodeFailure as exc:
            self.fail(GraphFailure(state.node.name or state.node.label, str(exc)))
            return
        except Exception as exc:  # a bug here, not the user's: still the request's error, with the node named
            self.fail(GraphFailure(state.node.name or state.node.label, f"{type(exc).__name__}: {exc}"))
            return
        state.busy = False
        self.schedule(state)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.finished.set()


# ---- node runners: (run, node, packets by stream name, timestamp) -> publishes outputs ---------------------------


def python_runner(python_node: PythonNode, executor: Executor):
    async def run(graph_run: GraphRun, node: Node, packets: dict[str, Any], timestamp: int) -> None:
        loop = asyncio.get_running_loop()
        inputs = [packets[s.name] for s in python_node.inputs if s.name in packets]
        result = await loop.run_in_executor(executor, python_node.execute, inputs)
        if isinstance(result, list):
            for tensor in result:
                graph_run.publish(tensor.name, tensor, timestamp)
            return
        generator = _Generator(python_node, result)
        if not graph_run.streaming:
            executor.submit(generator.close)
            raise NodeFailure("execute yielded (generative mode): a generator's outputs are sent over gRPC "
                              "streaming (ModelStreamInfer) only; over ModelInfer and REST execute must return a list")
        try:
            while (outputs := await loop.run_in_executor(executor, generator.next)) is not None:
                for tensor in outputs:
                    graph_run.publish(tensor.name, tensor, timestamp)
                timestamp += 1
        except BaseException:  # failed, or cancelled (client gone): the generator's finally blocks run now
            executor.submit(generator.close)
            raise
    return run


class _Generator:
    """A generator ``execute`` returned, advanced one step per worker-thread call. ``close`` (from a worker thread)
    waits for a step in progress, so the generator is never closed while it runs."""

    def __init__(self, python_node: PythonNode, generator) -> None:
        self.python_node = python_node
        self.generator = generator
        self.lock = threading.Lock()
        self.closed = False

    def next(self):
        with self.lock:
            return None if self.closed else self.python_node.next_outputs(self.generator)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.generator.close()
            except Exception as exc:
                log.warning("Python node %s: closing its generator raised %s", self.python_node.name,
                            describe(exc, self.python_node.path))


def _array_of(tensor) -> np.ndarray:
    from ovms._native.dtypes import NUMPY_DTYPE

    dtype = NUMPY_DTYPE.get(tensor.datatype)
    if dtype is None or tensor.datatype == "BYTES":
        raise NodeFailure(f"cannot convert Python tensor {tensor.name!r} of datatype {tensor.datatype!r} to an "
                          "OpenVINO tensor; give it a numeric datatype")
    try:
        return np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.shape)
    except ValueError as exc:
        raise NodeFailure(f"Python tensor {tensor.name!r} ({tensor.datatype}, shape {list(tensor.shape)}) does not "
                          f"match its {tensor.size}-byte buffer: {exc}") from None


def converter_runner(node: Node):
    (source,) = node.data_inputs()
    (target,) = node.data_outputs()
    name = tensor_names(node, "tag_to_output_tensor_names").get(target.tag, target.name)

    async def run(graph_run: GraphRun, node: Node, packets: dict[str, Any], timestamp: int) -> None:
        from pyovms import Tensor

        packet = packets[source.name]
        if source.tag.startswith("OVMS_PY_TENSOR"):
            graph_run.publish(target.name, _array_of(packet), timestamp)
        else:
            graph_run.publish(target.name, Tensor(name, np.ascontiguousarray(packet)), timestamp)
    return run


def inference_runner(node: Node, session: Node, call_model):
    """An OpenVINOInferenceCalculator: the stream packets as the served model's inputs, its outputs as packets."""
    from ovms.types import InferRequest, Tensor as WireTensor

    model_name = str(session.options["servable_name"][-1])
    version_text = str((session.options.get("servable_version") or [""])[-1] or "")
    version = int(version_text) if version_text else None
    input_names = tensor_names(node, "tag_to_input_tensor_names")
    output_names = tensor_names(node, "tag_to_output_tensor_names")
    inputs = [(s.name, input_names.get(s.tag, s.tag)) for s in node.data_inputs()]
    outputs = [(s.name, output_names.get(s.tag, s.tag)) for s in node.data_outputs()]
    label = node.name or node.label

    async def run(graph_run: GraphRun, node: Node, packets: dict[str, Any], timestamp: int) -> None:
        from ovms.errors import ServingError

        request = InferRequest(model_name, version, [WireTensor.from_array(tensor, packets[stream])
                                                     for stream, tensor in inputs if stream in packets])
        try:
            response = await call_model(request)
        except ServingError as exc:
            precondition = exc.kind.name.startswith("MODEL_")  # the model is not there: OVMS's session fails
            raise GraphFailure(label, f"model {model_name}: {exc.message}", precondition=precondition) from None
        produced = {t.name: t for t in response.outputs}
        for stream, tensor in outputs:
            if tensor not in produced:
                raise GraphFailure(label, f"model {model_name} has no output {tensor!r} (outputs: "
                                          f"{', '.join(sorted(produced))}); fix tag_to_output_tensor_names")
            graph_run.publish(stream, produced[tensor].as_array(), timestamp)
    return run


def runner_for(node: Node, *, python_nodes: dict[str, PythonNode], sessions: dict[str, Node], executor: Executor,
               call_model):
    if node.calculator == PYTHON:
        return python_runner(python_nodes[node.name], executor)
    if node.calculator == CONVERTER:
        return converter_runner(node)
    if node.calculator == INFERENCE:
        from ovms.mediapipe.definition import session_of

        return inference_runner(node, session_of(node, sessions), call_model)
    return None
