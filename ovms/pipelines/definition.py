"""DAG pipeline definitions as OVMS reads them from config.json (``pipeline_config_list``).

This module checks the JSON's form (OVMS's schema, src/schema.cpp: required fields, types, no unknown fields) and
turns it into frozen values that compare equal when nothing changed, so a reload can tell which pipelines to
rebuild. Whether a pipeline fits the models it uses (names, inputs, outputs, shapes) is checked when it loads
(``ovms.pipelines.plan``): an unfit pipeline is not served, while the rest of the configuration is.

Custom nodes: OVMS loads C libraries (``custom_node_library_config_list``). Here a custom node library is a
Python file holding a class (see ``ovms.pipelines.custom_node``); a ``.so`` library is refused with that advice.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from ovms.errors import ConfigError

DL_MODEL = "DL model"
CUSTOM = "custom"
REQUEST = "request"  # the node name pipeline inputs come from
MAX_DEMULTIPLY_COUNT = 10000  # src/schema.cpp

PIPELINE_FIELDS = {"name", "inputs", "nodes", "outputs", "demultiply_count"}
NODE_FIELDS = {"name", "model_name", "library_name", "type", "version", "inputs", "outputs", "params",
               "demultiply_count", "gather_from_node"}
LIBRARY_FIELDS = {"name", "base_path", "class_name"}
DEFAULT_CLASS_NAME = "CustomNode"


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """Where a node input or a pipeline output comes from: a node's output alias, or a pipeline input."""

    node: str
    data_item: str


@dataclasses.dataclass(frozen=True, slots=True)
class CustomNodeLibrary:
    """A Python custom node: the file and the class in it."""

    name: str
    path: pathlib.Path
    class_name: str = DEFAULT_CLASS_NAME


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDefinition:
    name: str
    type: str  # DL_MODEL or CUSTOM
    inputs: tuple[tuple[str, Source], ...]  # (model or node input name, its source), in the file's order
    outputs: tuple[tuple[str, str], ...]  # (data_item, alias)
    model_name: str | None = None
    version: int | None = None
    library: CustomNodeLibrary | None = None
    params: tuple[tuple[str, str], ...] = ()
    demultiply_count: int | None = None  # -1: as many as the node returns
    gather_from_node: str | None = None

    def alias_of(self, data_item: str) -> str | None:
        return next((alias for item, alias in self.outputs if item == data_item), None)

    def data_item_of(self, alias: str) -> str | None:
        return next((item for item, a in self.outputs if a == alias), None)


@dataclasses.dataclass(frozen=True, slots=True)
class PipelineDefinition:
    name: str
    inputs: tuple[str, ...]
    nodes: tuple[NodeDefinition, ...]
    outputs: tuple[tuple[str, Source], ...]  # (pipeline output name, source)
    demultiply_count: int | None = None  # the request itself is split along its first dimension


def _string(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {field} must be a non-empty string")
    return value


def _demultiply(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= MAX_DEMULTIPLY_COUNT \
            or value == 0:
        raise ConfigError(f"{where}: demultiply_count must be -1 (dynamic) or an integer from 1 to "
                          f"{MAX_DEMULTIPLY_COUNT}, got {value!r}")
    return value


def _sources(items: Any, where: str, field: str) -> tuple[tuple[str, Source], ...]:
    """A list of ``{"<name>": {"node_name": ..., "data_item": ...}}`` objects."""
    if not isinstance(items, list):
        raise ConfigError(f"{where}: {field} must be a JSON array")
    result = []
    for i, item in enumerate(items):
        here = f"{where}: {field}[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f'{here} must be an object with one field, e.g. '
                              '{"input_name": {"node_name": "request", "data_item": "input"}}')
        (name, source), = item.items()
        if not isinstance(source, dict) or set(source) != {"node_name", "data_item"}:
            raise ConfigError(f"{here}.{name} must be an object with exactly node_name and data_item")
        result.append((name, Source(_string(source["node_name"], f"{here}.{name}", "node_name"),
                                    _string(source["data_item"], f"{here}.{name}", "data_item"))))
    return tuple(result)


def parse_libraries(items: Any, where: str, relative_to: pathlib.Path) -> dict[str, CustomNodeLibrary]:
    """``custom_node_library_config_list``: name -> Python custom node library."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise ConfigError(f"{where} must be a JSON array")
    libraries = {}
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{here} must be an object with name and base_path")
        unknown = set(item) - LIBRARY_FIELDS
        if unknown:
            raise ConfigError(f"{here}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed fields: "
                              f"{', '.join(sorted(LIBRARY_FIELDS))}")
        name = _string(item.get("name"), here, "name")
        base_path = pathlib.Path(_string(item.get("base_path"), here, "base_path")).expanduser()
        if not base_path.is_absolute():
            base_path = relative_to / base_path
        if base_path.suffix != ".py":
            raise ConfigError(f"{here}: base_path {base_path} is not a Python file. This server runs custom nodes "
                              "written in Python, not C libraries (.so): write the node as a class in a .py file "
                              "(methods inputs_info, outputs_info and execute; see the README) and point base_path "
                              "at it")
        if not base_path.is_file():
            raise ConfigError(f"{here}: Custom node library not found: {base_path}")
        class_name = item.get("class_name", DEFAULT_CLASS_NAME)
        if not isinstance(class_name, str) or not class_name.isidentifier():
            raise ConfigError(f"{here}: class_name must be a Python class name, got {class_name!r}")
        if name in libraries:
            raise ConfigError(f"{here}: Custom node library is already loaded: the name {name!r} is used twice")
        libraries[name] = CustomNodeLibrary(name, base_path, class_name)
    return libraries


def _node(item: Any, where: str, libraries: dict[str, CustomNodeLibrary]) -> NodeDefinition:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(item) - NODE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed fields: "
                          f"{', '.join(sorted(NODE_FIELDS))}")
    name = _string(item.get("name"), where, "name")
    where = f"{where} (node {name})"
    kind = item.get("type")
    if kind not in (DL_MODEL, CUSTOM):
        raise ConfigError(f"{where}: Unsupported node type {kind!r}; use \"{DL_MODEL}\" or \"{CUSTOM}\"")
    for field in ("inputs", "outputs"):
        if field not in item:
            raise ConfigError(f"{where}: required field {field!r} is missing")
    outputs = item["outputs"]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and set(o) == {"data_item", "alias"}
                                                and isinstance(o["data_item"], str) and isinstance(o["alias"], str)
                                                for o in outputs):
        raise ConfigError(f'{where}: outputs must be a list of {{"data_item": "<model output>", "alias": "<name>"}}')
    params = item.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ConfigError(f"{where}: params must be an object of string values")
    version = item.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ConfigError(f"{where}: version must be a positive integer")
    gather = item.get("gather_from_node")
    if gather is not None:
        gather = _string(gather, where, "gather_from_node")
    model_name = library = None
    if kind == DL_MODEL:
        if "library_name" in item:
            raise ConfigError(f"{where}: a \"{DL_MODEL}\" node takes model_name, not library_name")
        model_name = _string(item.get("model_name"), where, "model_name")
    else:
        if "model_name" in item or "version" in item:
            raise ConfigError(f"{where}: a \"{CUSTOM}\" node takes library_name, not model_name or version")
        library_name = _string(item.get("library_name"), where, "library_name")
        library = libraries.get(library_name)
        if library is None:
            raise ConfigError(f"{where}: Pipeline refers to incorrect library: {library_name!r} is not in "
                              "custom_node_library_config_list")
    return NodeDefinition(
        name=name, type=kind, inputs=_sources(item["inputs"], where, "inputs"),
        outputs=tuple((o["data_item"], o["alias"]) for o in outputs), model_name=model_name, version=version,
        library=library, params=tuple(sorted(params.items())),
        demultiply_count=_demultiply(item.get("demultiply_count"), where), gather_from_node=gather)


def parse_pipeline(item: Any, where: str, libraries: dict[str, CustomNodeLibrary]) -> PipelineDefinition:
    """One ``pipeline_config_list`` entry; raise ConfigError naming the field that does not fit the schema."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object with name, inputs, nodes and outputs")
    unknown = set(item) - PIPELINE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed fields: "
                          f"{', '.join(sorted(PIPELINE_FIELDS))}")
    name = _string(item.get("name"), where, "name")
    where = f"{where} (pipeline {name})"
    for field in ("inputs", "nodes", "outputs"):
        if field not in item:
            raise ConfigError(f"{where}: required field {field!r} is missing")
    inputs = item["inputs"]
    if not isinstance(inputs, list) or not all(isinstance(i, str) and i for i in inputs):
        raise ConfigError(f"{where}: inputs must be a list of input names")
    if len(set(inputs)) != len(inputs):
        raise ConfigError(f"{where}: inputs names an input twice")
    nodes = item["nodes"]
    if not isinstance(nodes, list):
        raise ConfigError(f"{where}: nodes must be a JSON array")
    return PipelineDefinition(
        name=name, inputs=tuple(inputs),
        nodes=tuple(_node(node, f"{where}: nodes[{i}]", libraries) for i, node in enumerate(nodes)),
        outputs=_sources(item["outputs"], where, "outputs"),
        demultiply_count=_demultiply(item.get("demultiply_count"), where))
