"""A MediaPipe ``graph.pbtxt`` as OVMS serves it: streams, nodes, and the checks OVMS (and MediaPipe) make at load.

Streams are written ``TAG:INDEX:name``, ``TAG:name`` or ``name``. The tag of a graph ``input_stream`` /
``output_stream`` says how a request tensor becomes a packet (src/mediapipe_internal/mediapipe_utils.cpp):
``OVMS_PY_TENSOR...`` a ``pyovms.Tensor``, ``OVTENSOR...`` (or no known tag) an OpenVINO tensor (a numpy array
here). The names after the colon are the servable's inputs and outputs.

Calculators served: PythonExecutorCalculator, PyTensorOvTensorConverterCalculator,
OpenVINOModelServerSessionCalculator and OpenVINOInferenceCalculator. Anything else is refused at load with the
node named; a graph is never served with a node that would be skipped.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from ovms.errors import ModelLoadError
from ovms.graph import parse_text_proto

PYTHON = "PythonExecutorCalculator"
CONVERTER = "PyTensorOvTensorConverterCalculator"
SESSION = "OpenVINOModelServerSessionCalculator"
INFERENCE = "OpenVINOInferenceCalculator"
CALCULATORS = (PYTHON, CONVERTER, SESSION, INFERENCE)
LOOPBACK = "LOOPBACK"

PY_TENSOR = "OVMS_PY_TENSOR"
OV_TENSOR = "OVTENSOR"
# Packet types of graph streams OVMS knows and this server does not serve: refused at load, with the type named.
_UNSERVED_TAGS = (("TFLITE_TENSOR", "TensorFlow Lite tensors"), ("TFTENSOR", "TensorFlow tensors"),
                  ("TENSOR", "MediaPipe tensors"), ("IMAGE", "MediaPipe ImageFrame images"),
                  ("REQUEST", "KServe request pass-through"), ("RESPONSE", "KServe response pass-through"))


def _graph_error(where: str, detail: str) -> ModelLoadError:
    return ModelLoadError(f"{where}: Failed to initialize mediapipe graph - {detail}")


@dataclasses.dataclass(frozen=True, slots=True)
class Stream:
    """One ``TAG:INDEX:name`` entry of a node or graph."""

    tag: str
    index: int
    name: str

    @classmethod
    def parse(cls, text: Any, where: str) -> "Stream":
        parts = str(text).split(":")
        if len(parts) == 1:
            return cls("", 0, parts[0])
        if len(parts) == 2:
            return cls(parts[0], 0, parts[1])
        if len(parts) == 3 and parts[1].isdigit():
            return cls(parts[0], int(parts[1]), parts[2])
        raise _graph_error(where, f"stream {text!r} is not TAG:name, TAG:INDEX:name or name")

    @property
    def tag_index(self) -> str:
        return f"{self.tag}:{self.index}"

    def __str__(self) -> str:
        return f"{self.tag}:{self.name}" if self.tag else self.name


def packet_kind(tag: str) -> str:
    """``py`` (pyovms.Tensor) or ``ov`` (an OpenVINO tensor) for a graph stream tag, as OVMS deserializes it."""
    if tag.startswith(PY_TENSOR):
        return "py"
    if tag.startswith(OV_TENSOR):
        return "ov"
    for prefix, what in _UNSERVED_TAGS:
        if tag.startswith(prefix):
            raise ValueError(f"{what} ({prefix}...)")
    return "ov"  # OVMS reads an unknown tag as an OpenVINO tensor


@dataclasses.dataclass(slots=True)
class Node:
    """One ``node { ... }`` of the graph."""

    index: int
    calculator: str
    name: str  # as written; empty when the graph does not name the node
    inputs: list[Stream]
    outputs: list[Stream]
    input_side_packets: list[Stream]
    output_side_packets: list[Stream]
    options: dict  # the single [type.googleapis.com/...] options message, as parsed
    back_edges: frozenset[str]  # tag:index of input streams marked back_edge
    immediate: bool  # ImmediateInputStreamHandler: Process on every packet, no synchronization

    @property
    def label(self) -> str:
        """How messages name the node: its name, else its calculator and position."""
        return f'"{self.name}"' if self.name else f"#{self.index} ({self.calculator})"

    def data_inputs(self) -> list[Stream]:
        """Input streams fed by packets (LOOPBACK and back edges drive the node itself)."""
        return [s for s in self.inputs if s.tag != LOOPBACK and s.tag_index not in self.back_edges]

    def data_outputs(self) -> list[Stream]:
        return [s for s in self.outputs if s.tag != LOOPBACK]


@dataclasses.dataclass(slots=True)
class GraphDefinition:
    """A validated graph: what the servable's inputs and outputs are and which node reads which stream."""

    path: pathlib.Path
    inputs: list[Stream]
    outputs: list[Stream]
    nodes: list[Node]
    input_kinds: dict[str, str]  # graph input name -> "py" | "ov"
    output_kinds: dict[str, str]

    @property
    def base_path(self) -> pathlib.Path:
        return self.path.parent

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _first(fields: dict, name: str, default: Any = None) -> Any:
    values = fields.get(name)
    return values[-1] if values else default


def _node_options(node: dict) -> dict:
    for options in node.get("node_options", []) + node.get("options", []):
        for value in options.values():
            return value[-1] if isinstance(value[-1], dict) else {}
    return {}


def _back_edges(node: dict) -> frozenset[str]:
    marked = set()
    for info in node.get("input_stream_info", []):
        if _first(info, "back_edge", False):
            tag_index = str(_first(info, "tag_index", ""))
            marked.add(tag_index if ":" in tag_index else f"{tag_index}:0")
    return frozenset(marked)


def _immediate(node: dict) -> bool:
    handler = _first(node, "input_stream_handler")
    return isinstance(handler, dict) and _first(handler, "input_stream_handler") == "ImmediateInputStreamHandler"


def read_definition(path: pathlib.Path, *, where: str) -> GraphDefinition:
    """Read and check a graph file; ModelLoadError says what is wrong, naming the node and stream."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelLoadError(f"{where}: Failed to read protobuf graph configuration file {path}: "
                             f"{exc.strerror}") from None
    from ovms.errors import ConfigError

    try:
        document = parse_text_proto(text)
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: Failed to read protobuf graph configuration file {path}: {exc}") from None
    graph_inputs = [Stream.parse(s, where) for s in document.get("input_stream", [])]
    graph_outputs = [Stream.parse(s, where) for s in document.get("output_stream", [])]
    nodes = []
    for index, raw in enumerate(document.get("node", [])):
        if not isinstance(raw, dict):
            raise _graph_error(where, f"node #{index} is not a message")
        nodes.append(Node(
            index=index, calculator=str(_first(raw, "calculator", "")), name=str(_first(raw, "name", "")),
            inputs=[Stream.parse(s, where) for s in raw.get("input_stream", [])],
            outputs=[Stream.parse(s, where) for s in raw.get("output_stream", [])],
            input_side_packets=[Stream.parse(s, where) for s in raw.get("input_side_packet", [])],
            output_side_packets=[Stream.parse(s, where) for s in raw.get("output_side_packet", [])],
            options=_node_options(raw), back_edges=_back_edges(raw), immediate=_immediate(raw)))
    definition = GraphDefinition(path, graph_inputs, graph_outputs, nodes, {}, {})
    _check(definition, where)
    return definition


def _kinds(streams: list[Stream], what: str, where: str) -> dict[str, str]:
    kinds = {}
    for stream in streams:
        if stream.name in kinds:
            raise _graph_error(where, f"graph {what} stream name {stream.name!r} is used twice")
        try:
            kinds[stream.name] = packet_kind(stream.tag)
        except ValueError as exc:
            raise _graph_error(where, f"graph {what}_stream \"{stream}\": {exc} are not served by this server; "
                                      f"use the tag {PY_TENSOR} (for Python nodes) or {OV_TENSOR}") from None
    return kinds


def _check(graph: GraphDefinition, where: str) -> None:
    """OVMS's and MediaPipe's load-time checks, with the node and stream named."""
    if not graph.inputs:
        raise _graph_error(where, "the graph has no input_stream; its input_stream names are the inputs requests send")
    if not graph.outputs:
        raise _graph_error(where, "the graph has no output_stream; its output_stream names are the outputs of "
                                  "responses")
    graph.input_kinds = _kinds(graph.inputs, "input", where)
    graph.output_kinds = _kinds(graph.outputs, "output", where)
    python_names: set[str] = set()
    # stream name -> (kind, producer label); graph inputs first
    produced: dict[str, tuple[str, str]] = {s.name: (graph.input_kinds[s.name], "the graph input") for s in
                                            graph.inputs}
    sessions: dict[str, Node] = {}
    for node in graph.nodes:
        if node.calculator not in CALCULATORS:
            raise _graph_error(where, f"node {node.label}: No registered object with name: {node.calculator}; "
                                      f"Unable to find Calculator \"{node.calculator}\". Calculators served: "
                                      f"{', '.join(CALCULATORS)}")
        if node.calculator == PYTHON:
            _check_python_node(graph, node, python_names, where)
        elif node.calculator == CONVERTER:
            _check_converter(node, where)
        elif node.calculator == SESSION:
            _check_session(node, sessions, where)
        for stream in node.outputs:
            if stream.tag == LOOPBACK:
                continue
            if stream.name in produced:
                raise _graph_error(where, f"node {node.label}: output stream \"{stream.name}\" is already produced "
                                          f"by {produced[stream.name][1]}; every stream has one producer")
            produced[stream.name] = (_output_kind(node, stream), f"node {node.label}")
    for node in graph.nodes:
        if node.calculator == INFERENCE:
            _check_inference(node, sessions, where)
        for stream in node.data_inputs():
            source = produced.get(stream.name)
            if source is None:
                raise _graph_error(where, f"node {node.label}: Input Stream \"{stream.name}\" does not have a "
                                          "corresponding output stream: no graph input_stream and no node "
                                          "output_stream is named so")
            wanted = _input_kind(node, stream)
            if wanted is not None and wanted != source[0]:
                have = "Python tensors (pyovms.Tensor)" if source[0] == "py" else "OpenVINO tensors"
                raise _graph_error(where, f"node {node.label} reads input stream \"{stream}\" as "
                                          f"{'Python tensors' if wanted == 'py' else 'OpenVINO tensors'}, but "
                                          f"{source[1]} gives it {have}; put a {CONVERTER} node between them")
    for stream in graph.outputs:
        source = produced.get(stream.name)
        if source is None or source[1] == "the graph input":
            raise _graph_error(where, f"graph output_stream \"{stream}\" is not produced by any node")
        if graph.output_kinds[stream.name] != source[0]:
            graph.output_kinds[stream.name] = source[0]  # serialized from what arrives, as OVMS does per packet
    consumed = {s.name for n in graph.nodes for s in n.data_inputs()} | {s.name for s in graph.outputs}
    for stream in graph.inputs:
        if stream.name not in consumed:
            raise _graph_error(where, f"graph input_stream \"{stream}\" is not read by any node")


def _output_kind(node: Node, stream: Stream) -> str:
    if node.calculator == PYTHON:
        return "py"
    if node.calculator == CONVERTER:
        return "py" if stream.tag.startswith(PY_TENSOR) else "ov"
    return "ov"


def _input_kind(node: Node, stream: Stream) -> str | None:
    if node.calculator == PYTHON:
        return "py"
    if node.calculator == CONVERTER:
        return "py" if stream.tag.startswith(PY_TENSOR) else "ov"
    if node.calculator == INFERENCE:
        return "ov"
    return None


def _check_python_node(graph: GraphDefinition, node: Node, names: set[str], where: str) -> None:
    if not node.name:
        raise _graph_error(where, f"node {node.label}: The Python Node is missing name definition; add name: "
                                  "\"...\" to the node")
    if node.name in names:
        raise _graph_error(where, f"node {node.label}: The Python Node name is already present in nodes list")
    names.add(node.name)
    handler = _first(node.options, "handler_path")
    if not handler:
        raise _graph_error(where, f"node {node.label}: The Python Node is missing options definition: node_options "
                                  "[type.googleapis.com/mediapipe.PythonExecutorCalculatorOptions] { handler_path: "
                                  "\"model.py\" }")
    path = handler_path(graph, node)
    if not path.is_file():
        raise _graph_error(where, f"node {node.label}: The Python Node file path does not exist: {path}")
    if not node.data_inputs() or not node.data_outputs():
        raise _graph_error(where, f"node {node.label}: a Python node needs at least one input_stream and one "
                                  "output_stream")
    if any(s.tag == LOOPBACK for s in node.inputs) != any(s.tag == LOOPBACK for s in node.outputs):
        raise _graph_error(where, f"node {node.label}: If LOOPBACK is used, it must be defined on both input and "
                                  "output of the node")
    unknown = set(node.options) - {"handler_path"}
    if unknown:
        raise _graph_error(where, f"node {node.label}: PythonExecutorCalculatorOptions has no field(s) "
                                  f"{', '.join(sorted(unknown))}; its one field is handler_path")


def handler_path(graph: GraphDefinition, node: Node) -> pathlib.Path:
    """A Python node's handler file; a relative handler_path is relative to the graph's directory (OVMS)."""
    path = pathlib.Path(str(_first(node.options, "handler_path"))).expanduser()
    return path if path.is_absolute() else graph.base_path / path


def _check_converter(node: Node, where: str) -> None:
    inputs, outputs = node.data_inputs(), node.data_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise _graph_error(where, f"node {node.label}: {CONVERTER} works with exactly one input and one output "
                                  "stream")
    tags = (inputs[0].tag, outputs[0].tag)
    if not ((tags[0].startswith(PY_TENSOR) and tags[1].startswith(OV_TENSOR))
            or (tags[0].startswith(OV_TENSOR) and tags[1].startswith(PY_TENSOR))):
        raise _graph_error(where, f"node {node.label}: {CONVERTER} converts between a stream tagged "
                                  f"{PY_TENSOR} and one tagged {OV_TENSOR}; it has {tags[0]} -> {tags[1]}")


def _check_session(node: Node, sessions: dict[str, Node], where: str) -> None:
    if not _first(node.options, "servable_name"):
        raise _graph_error(where, f"node {node.label}: {SESSION} needs node_options "
                                  "[type.googleapis.com/mediapipe.OpenVINOModelServerSessionCalculatorOptions] "
                                  "{ servable_name: \"...\" } naming a served model")
    version = str(_first(node.options, "servable_version", "") or "")
    if version and not version.isdigit():
        raise _graph_error(where, f"node {node.label}: servable_version must be a positive integer, got {version!r}")
    unknown = set(node.options) - {"servable_name", "servable_version"}
    if unknown:
        raise _graph_error(where, f"node {node.label}: {SESSION} option(s) {', '.join(sorted(unknown))} are not "
                                  "supported by this server; remove them")
    for packet in node.output_side_packets:
        sessions[packet.name] = node


def session_of(node: Node, sessions: dict[str, Node]) -> Node | None:
    for packet in node.input_side_packets:
        if packet.tag == "SESSION" and packet.name in sessions:
            return sessions[packet.name]
    return None


def _check_inference(node: Node, sessions: dict[str, Node], where: str) -> None:
    if session_of(node, sessions) is None:
        raise _graph_error(where, f"node {node.label}: {INFERENCE} needs input_side_packet \"SESSION:<name>\" "
                                  f"given by an {SESSION} node's output_side_packet")
    for stream in node.data_inputs() + node.data_outputs():
        # Any tag names one OpenVINO tensor (OVMS's demos use DUMMY_IN, SUM, ...), except the packet types below.
        if stream.tag.startswith(("OVTENSORS", "TENSOR", "TFTENSOR", "TFLITE_TENSOR", PY_TENSOR)):
            raise _graph_error(where, f"node {node.label}: stream \"{stream}\": this server's {INFERENCE} reads and "
                                      "writes one OpenVINO tensor per stream (tags such as OVTENSOR, OVTENSOR1, or "
                                      "any name mapped by tag_to_input_tensor_names); vectors of tensors (OVTENSORS, "
                                      "TENSORS), MediaPipe, TensorFlow and Python tensors are not served there")
    unknown = set(node.options) - {"tag_to_input_tensor_names", "tag_to_output_tensor_names"}
    if unknown:
        raise _graph_error(where, f"node {node.label}: {INFERENCE} option(s) {', '.join(sorted(unknown))} are not "
                                  "supported by this server; remove them")


def tensor_names(node: Node, field: str) -> dict[str, str]:
    """A ``tag_to_..._tensor_names`` map of an inference or converter node (tag -> tensor name)."""
    return {str(_first(item, "key")): str(_first(item, "value")) for item in node.options.get(field, [])
            if isinstance(item, dict)}
