"""A MediaPipe graph served over KServe: ``infer`` (ModelInfer, REST) and ``infer_stream`` (ModelStreamInfer)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, AsyncIterator, Awaitable, Callable

from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.mediapipe.definition import INFERENCE, PYTHON, SESSION, GraphDefinition, session_of, tensor_names
from ovms.mediapipe.executor import GraphFailure, GraphRun, runner_for
from ovms.mediapipe.python_node import PythonNode
from ovms.servable import StreamingInferServable
from ovms.types import InferRequest, InferResponse, StreamContext, Tensor, TensorSpec

log = logging.getLogger("ovms.mediapipe")

TIMESTAMP_PARAMETER = "OVMS_MP_TIMESTAMP"  # OVMS's packet timestamp parameter, on requests and responses
# Python nodes run here; their calls hold the GIL, so a few threads keep the loop free without adding contention.
PYTHON_THREADS = 4

ModelCaller = Callable[[InferRequest], Awaitable[InferResponse]]


def registry_caller(registry) -> ModelCaller:
    """How model nodes reach the served models: the registry's available version, counted while in use."""
    async def call(request: InferRequest) -> InferResponse:
        entry = registry.version_entry(request.model_name, request.model_version)
        servable = entry.enter()
        try:
            return await servable.infer(request)
        finally:
            entry.leave()
    return call


class MediapipeServable(StreamingInferServable):
    """A loaded graph: its Python nodes initialized, its model nodes bound to served models by name."""

    def __init__(self, name: str, definition: GraphDefinition, *, registry=None, where: str = "") -> None:
        self.name = name
        self.version = 1
        self.definition = definition
        self._registry = registry
        self._where = where or f"graph {name}"
        self._executor = concurrent.futures.ThreadPoolExecutor(PYTHON_THREADS, thread_name_prefix=f"py-{name}")
        self._closed = threading.Event()
        self.python_nodes: dict[str, PythonNode] = {}
        try:
            for node in definition.nodes:
                if node.calculator == PYTHON:
                    self.python_nodes[node.name] = PythonNode(definition, node, where=self._where)
            self.sessions = {packet.name: node for node in definition.nodes if node.calculator == SESSION
                             for packet in node.output_side_packets}
            if self.sessions:
                if registry is None:
                    raise ModelLoadError(f"{self._where}: model nodes need the served models; none were given")
                self.revalidate()
            call = registry_caller(registry) if registry is not None else None
            self.runners = {node.index: runner_for(node, python_nodes=self.python_nodes, sessions=self.sessions,
                                                   executor=self._executor, call_model=call)
                            for node in definition.nodes}
        except BaseException:
            self.close()
            raise
        self._inputs = [TensorSpec(s.name, "INVALID", (-1,)) for s in definition.inputs]
        self._outputs = [TensorSpec(s.name, "INVALID", (-1,)) for s in definition.outputs]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def revalidate(self) -> None:
        """Every model node's servable is served, with the inputs and outputs its tag maps name."""
        for node in self.definition.nodes:
            if node.calculator != INFERENCE:
                continue
            session = session_of(node, self.sessions)
            model = str(session.options["servable_name"][-1])
            version_text = str((session.options.get("servable_version") or [""])[-1] or "")
            label = node.name or node.label
            try:
                servable = self._registry.version_entry(model, int(version_text) if version_text else None).servable
            except ServingError as exc:
                raise ModelLoadError(f"{self._where}: node {label} uses model {model}"
                                     f"{' version ' + version_text if version_text else ''}: {exc.message}; "
                                     "it is loaded once that model is served") from None
            names = {s.name for s in servable.inputs}
            for tag, tensor in tensor_names(node, "tag_to_input_tensor_names").items():
                if tensor not in names:
                    raise ModelLoadError(f"{self._where}: node {label}: tag_to_input_tensor_names maps {tag} to "
                                         f"{tensor!r}, which is not an input of model {model} (inputs: "
                                         f"{', '.join(sorted(names))})")
            names = {s.name for s in servable.outputs}
            for tag, tensor in tensor_names(node, "tag_to_output_tensor_names").items():
                if tensor not in names:
                    raise ModelLoadError(f"{self._where}: node {label}: tag_to_output_tensor_names maps {tag} to "
                                         f"{tensor!r}, which is not an output of model {model} (outputs: "
                                         f"{', '.join(sorted(names))})")

    # ---- requests ----------------------------------------------------------------------------------------------

    def _packets(self, request: InferRequest, stream: StreamContext | None = None) -> tuple[dict[str, Any], int]:
        """The graph input packets of a request (as OVMS deserializes them by stream tag) and their timestamp."""
        from pyovms import Tensor as PyTensor

        kinds = self.definition.input_kinds
        given = {t.name: t for t in request.inputs}
        for name in given:
            if name not in kinds:
                raise ServingError(Kind.INVALID_UNEXPECTED_INPUT, f"{name} is unexpected; the graph's inputs: "
                                                                  f"{', '.join(kinds)}")
        packets = {}
        for name, kind in kinds.items():
            tensor = given.get(name)
            if tensor is None:
                raise ServingError(Kind.INVALID_MISSING_INPUT, f"Required input: {name}")
            if kind == "py":
                try:
                    packets[name] = PyTensor._from_wire(name, tensor.as_raw(), tensor.shape, tensor.datatype)
                except ValueError as exc:
                    raise ServingError(Kind.INVALID_CONTENT_SIZE, f"{exc}; input name: {name}") from None
            else:
                packets[name] = tensor.as_array()
        automatic = stream.next_timestamp if stream is not None else 0
        timestamp = (request.parameters or {}).get(TIMESTAMP_PARAMETER, automatic)
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise ServingError(Kind.MEDIAPIPE_INVALID_TIMESTAMP, "Invalid timestamp format in request parameter "
                                                                 f"{TIMESTAMP_PARAMETER}. Should be int64")
        if stream is not None:
            stream.next_timestamp = timestamp + 1
        return packets, timestamp

    @staticmethod
    def _wire(name: str, packet: Any) -> Tensor:
        if hasattr(packet, "datatype") and hasattr(packet, "data"):  # a pyovms.Tensor: its bytes as they are
            return Tensor(name, packet.datatype, packet.shape, raw=packet.data.tobytes())
        return Tensor.from_array(name, packet)

    def _failed(self, exc: GraphFailure) -> ServingError:
        kind = Kind.MEDIAPIPE_PRECONDITION_FAILED if exc.precondition else Kind.MEDIAPIPE_EXECUTION_ERROR
        status = "FAILED_PRECONDITION" if exc.precondition else "INTERNAL"
        log.warning("graph %s: node %s failed: %s", self.name, exc.node, exc)
        return ServingError(kind, f"{status}: CalculatorGraph::Run() failed: Calculator::Process() for node "
                                  f"\"{exc.node}\" failed: {exc}")

    async def infer(self, request: InferRequest) -> InferResponse:
        packets, timestamp = self._packets(request)
        received: dict[str, Any] = {}

        def emit(name: str, packet: Any, _: int) -> None:
            received.setdefault(name, packet)

        try:
            await GraphRun(self, emit, streaming=False).run(packets, timestamp)
        except GraphFailure as exc:
            raise self._failed(exc) from None
        missing = [s.name for s in self.definition.outputs if s.name not in received]
        if missing:
            raise ServingError(Kind.MEDIAPIPE_EXECUTION_ERROR,
                               f"graph output(s) {', '.join(missing)} received no packet: the nodes producing them "
                               "returned no tensor of that name for this request")
        outputs = [self._wire(s.name, received[s.name]) for s in self.definition.outputs]
        return InferResponse(self.name, self.version, outputs, request.id)

    async def infer_stream(self, request: InferRequest, *,
                           stream: StreamContext | None = None) -> AsyncIterator[InferResponse]:
        """One response per graph output packet, as it is produced (OVMS's streaming serialization), stamped with its
        packet timestamp: the request's OVMS_MP_TIMESTAMP, or the stream's next one (0, 1, 2, ...)."""
        packets, timestamp = self._packets(request, stream)
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def emit(name: str, packet: Any, ts: int) -> None:
            queue.put_nowait(InferResponse(self.name, self.version, [self._wire(name, packet)], request.id,
                                           parameters={TIMESTAMP_PARAMETER: ts}))

        async def run() -> None:
            try:
                await GraphRun(self, emit, streaming=True).run(packets, timestamp)
            finally:
                queue.put_nowait(done)

        task = asyncio.ensure_future(run())
        try:
            while (item := await queue.get()) is not done:
                yield item
            try:
                task.result()
            except GraphFailure as exc:
                raise self._failed(exc) from None
        finally:
            task.cancel()

    def close(self) -> None:
        """Unload: ``finalize`` every Python node (after the last request ended)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for node in self.python_nodes.values():
            node.finalize()
        self._executor.shutdown(wait=False, cancel_futures=True)
