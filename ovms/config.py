"""Model configuration as OVMS reads it: ``config.json`` (``model_config_list``) or single-model CLI flags.

Validation happens here, with messages that name the file, the entry and the field to fix. Nothing in this
module touches OpenVINO; backends interpret shapes, layouts and plugin configs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any

from ovms.errors import ConfigError
from ovms.pipelines.definition import parse_libraries, parse_pipeline
from ovms.repository import is_remote, join, split_url

# Fields of a model_config_list[].config entry that OVMS's schema accepts (src/schema.cpp).
MODEL_CONFIG_FIELDS = {
    "name", "base_path", "batch_size", "model_version_policy", "shape", "layout", "nireq", "target_device",
    "plugin_config", "stateful", "low_latency_transformation", "max_sequence_number", "idle_sequence_cleanup",
    "allow_cache", "custom_loader_options", "graph_path", "subconfig",
    "mean", "scale", "color_format", "precision",  # OVMS 2026.0 preprocessing (src/modelconfig.cpp)
}
TOP_LEVEL_FIELDS = {
    "model_config_list", "pipeline_config_list", "custom_loader_config_list", "custom_node_library_config_list",
    "mediapipe_config_list", "monitoring",
}
# Fields OVMS knows that this server does not implement: refused with the reason, never accepted and ignored.
# A value equal to the default (false, an empty list) is accepted.
NOT_IMPLEMENTED_MODEL_FIELDS = {
    "stateful": "stateful models were removed in OVMS 2026.3 and are not served",
    "low_latency_transformation": "it belongs to stateful models, which were removed in OVMS 2026.3",
    "max_sequence_number": "it belongs to stateful models, which were removed in OVMS 2026.3",
    "idle_sequence_cleanup": "it belongs to stateful models, which were removed in OVMS 2026.3",
    "custom_loader_options": "custom model loaders (C libraries) are not supported",
    "subconfig": "a model_config_list entry has no subconfig; give it in mediapipe_config_list",
}
NOT_IMPLEMENTED_TOP_LEVEL = {
    "custom_loader_config_list": "custom model loaders (C libraries) are not supported",
}
_SHAPE_RE = re.compile(r"^\s*[\(\[]\s*(-?\d+(:\d+)?)(\s*,\s*-?\d+(:\d+)?)*\s*[\)\]]\s*$")


@dataclasses.dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which numeric version directories to serve: all, the latest N, or a specific list."""

    kind: str = "latest"  # "all" | "latest" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.num_versions:]

    @classmethod
    def parse(cls, value: Any, where: str) -> "VersionPolicy":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: model_version_policy is not valid JSON ({exc.msg}); "
                                  'example: {"latest": {"num_versions": 2}}') from None
        if not isinstance(value, dict) or len(value) != 1:
            raise ConfigError(f"{where}: Model version policy is in wrong format; use exactly one of "
                              '{"all": {}}, {"latest": {"num_versions": N}}, {"specific": {"versions": [1, 2]}}')
        (kind, body), = value.items()
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: model_version_policy.{kind} must be a JSON object")
        if kind == "all":
            if body:
                raise ConfigError(f"{where}: model_version_policy.all takes no fields, got {sorted(body)}")
            return cls("all")
        if kind == "latest":
            n = body.get("num_versions", 1)
            if set(body) - {"num_versions"} or not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"{where}: model_version_policy.latest needs a positive integer num_versions")
            return cls("latest", num_versions=n)
        if kind == "specific":
            versions = body.get("versions")
            if (set(body) - {"versions"} or not isinstance(versions, list) or not versions
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions)):
                raise ConfigError(f"{where}: model_version_policy.specific needs a non-empty list of positive "
                                  "integer versions")
            return cls("specific", versions=tuple(versions))
        raise ConfigError(f"{where}: Model version policy contains unsupported key {kind!r}; "
                          "use all, latest or specific")


@dataclasses.dataclass(frozen=True, slots=True)
class ModelConfig:
    """One served model: where its versions live and how to compile them."""

    name: str
    base_path: pathlib.Path
    version_policy: VersionPolicy = VersionPolicy()
    target_device: str = "CPU"
    nireq: int = 0  # 0: the device's optimal number of infer requests
    plugin_config: tuple[tuple[str, Any], ...] = ()
    batch_size: str | None = None  # "auto" or an integer as text
    shape: str | tuple[tuple[str, str], ...] | None = None  # one shape for all inputs, or per input name
    layout: str | tuple[tuple[str, str], ...] | None = None
    # "model": numeric version directories of IR/ONNX; "graph": an OVMS servable directory (graph.pbtxt, or a
    # GenAI model directory given with a task) served as version 1 from base_path itself.
    kind: str = "model"
    graph_path: pathlib.Path | None = None  # graph.pbtxt (kind "graph"); None with a task and no graph
    task: str | None = None  # text_generation, embeddings, rerank, ... (CLI --task, no graph file)
    # With a task and no graph file: the graph the task flags (--max_num_seqs, --pipeline_type, ...) make, as
    # OVMS builds it in memory (and --pull writes it).
    graph_text: str | None = None
    allow_cache: bool | None = None  # None: cache when --cache_dir is set, unless a shape or batch is "auto"
    # A remote base_path (s3://, gs://, az://): the management layer mirrors it and points base_path at the copy
    # (``localize``). source_graph: the entry's graph_path, relative to the remote directory.
    source_url: str | None = None
    source_graph: str | None = None
    # A servable that calls other served models (a DAG pipeline, a graph with model nodes): the registry loads
    # it after the models it may use and checks it again (``Servable.revalidate``) whenever they change.
    uses_models: bool = False
    # kind "graph": a digest of graph.pbtxt, so an edited graph makes a changed entry and is reloaded (OVMS compares
    # the graph file's MD5 on every config reload).
    graph_digest: str | None = None
    pipeline: Any = None  # kind "pipeline": its ovms.pipelines.definition.PipelineDefinition
    # base_path naming one model file (resnet50.xml, model.onnx, ...): base_path is its directory, and the file is
    # served as version 1 (OVMS: "synthetic version 1"). Local paths only.
    model_file: str | None = None
    # Preprocessing built into the compiled model (OVMS 2026.0): per-channel lists or one value for all channels;
    # color_format and precision as (target, source), e.g. ("BGR", "RGB") for "BGR:RGB".
    mean: float | tuple[float, ...] | None = None
    scale: float | tuple[float, ...] | None = None
    color_format: tuple[str, str] | None = None
    precision: tuple[str, str] | None = None

    def describe(self) -> dict:
        """The entry as /v1/config and logs show it."""
        return {"name": self.name, "base_path": str(self.base_path), "target_device": self.target_device,
                "nireq": self.nireq}


def _check_shape(value: Any, where: str) -> str | tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto" and not _SHAPE_RE.match(value):
            raise ConfigError(f"{where}: The provided shape is in wrong format: {value!r}; "
                              'expected "auto" or "(1,3,224,224)" (-1 for any size, "1:8" for a range)')
        return value
    if isinstance(value, dict):
        return tuple((str(k), _check_shape(v, f"{where} (input {k})")) for k, v in value.items())
    raise ConfigError(f"{where}: shape must be a string or an object of input name -> shape")


COLOR_FORMATS = ("RGB", "BGR", "GRAY", "NV12", "NV12_2", "I420", "I420_3")
PRECISIONS = ("BF16", "FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "INT4", "UINT64", "UINT32",
              "UINT16", "UINT8", "UINT4", "UINT1")
SINGLE_FILE_SUFFIXES = (".xml", ".onnx", ".pdmodel", ".pdiparams", ".pb", ".tflite")


def _floats(value: Any, field: str, where: str) -> float | tuple[float, ...] | None:
    """OVMS's mean / scale: "[123.675,116.28,103.53]", "(1,2,3)" or one number (a string, or JSON numbers here)."""
    if value is None or value == "":
        return None
    example = f'e.g. "{field}": "[123.675,116.28,103.53]" or "{field}": "255"'
    if isinstance(value, str):
        text = value.replace(" ", "")
        if text[:1] + text[-1:] in ("[]", "()"):
            value = text[1:-1].split(",")
        else:
            value = text
    try:
        if isinstance(value, list):
            numbers = tuple(float(v) for v in value)
            if not numbers:
                raise ValueError
            return numbers
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: The provided float is in wrong format: {field} {value!r}; {example}") from None


def _pair(value: Any, field: str, allowed: tuple[str, ...], where: str, example: str) -> tuple[str, str] | None:
    """OVMS's TARGET:SOURCE pairs (color_format, precision), case-insensitive."""
    if value is None or value == "":
        return None
    what = "color format" if field == "color_format" else "precision"
    if isinstance(value, str):
        target, sep, source = value.upper().partition(":")
        if sep and target in allowed and source in allowed:
            return target, source
    raise ConfigError(f"{where}: The provided {what} is in wrong format: {field} {value!r}; expected "
                      f"TARGET:SOURCE, e.g. {example}, with values from {', '.join(allowed)}")


def _plugin_config(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: Plugin config is in wrong format ({exc.msg}); "
                              'example: {"NUM_STREAMS": "2"}') from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: Plugin config is in wrong format; expected a JSON object")
    return tuple(sorted((str(k), v) for k, v in value.items()))


Location = "pathlib.Path | str"  # a local directory, or a remote URL (str) such as s3://bucket/models


def _remote(value: str, relative_to, where: str) -> str | None:
    """The URL ``value`` names when it is remote, or relative to a remote config file; else None."""
    if is_remote(value):
        url = value
    elif isinstance(relative_to, str) and not os.path.isabs(value):
        url = join(relative_to, value)
    else:
        return None
    try:
        split_url(url)  # the schemes ovms.repository reads
    except ValueError as exc:
        raise ConfigError(f"{where}: base_path {exc}") from None
    return url


def model_config_from_dict(entry: dict, *, where: str, relative_to=None) -> ModelConfig:
    """Validate one ``config`` object of ``model_config_list``."""
    unknown = set(entry) - MODEL_CONFIG_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
                          f"allowed fields: {', '.join(sorted(MODEL_CONFIG_FIELDS))}")
    for required in ("name", "base_path"):
        if not isinstance(entry.get(required), str) or not entry[required]:
            raise ConfigError(f"{where}: required field {required!r} is missing or not a string")
    for field, reason in NOT_IMPLEMENTED_MODEL_FIELDS.items():
        if entry.get(field) not in (None, False):
            raise ConfigError(f"{where}: field {field!r} is not supported by this server ({reason}); remove it")
    source_url = _remote(entry["base_path"], relative_to, where)
    base_path = pathlib.Path(entry["base_path"]).expanduser()
    model_file = None
    if source_url is not None:
        base_path = pathlib.Path()  # set by localize() once the copy exists
    elif not base_path.is_absolute() and relative_to is not None:
        base_path = relative_to / base_path
    if source_url is None and base_path.is_file():
        if base_path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ConfigError(f"{where}: base_path {base_path} is a file but not a model file; name a directory "
                              f"of numeric versions or a model file ending in {', '.join(SINGLE_FILE_SUFFIXES)}")
        base_path, model_file = base_path.parent, base_path.name
    preprocessing = {
        "mean": _floats(entry.get("mean"), "mean", where), "scale": _floats(entry.get("scale"), "scale", where),
        "color_format": _pair(entry.get("color_format"), "color_format", COLOR_FORMATS, where, "BGR:RGB"),
        "precision": _pair(entry.get("precision"), "precision", PRECISIONS, where, "UINT8:FP32")}
    allow_cache = entry.get("allow_cache")
    if allow_cache is not None and not isinstance(allow_cache, bool):
        raise ConfigError(f"{where}: allow_cache must be true or false")
    graph_path = entry.get("graph_path")
    if graph_path is not None and (not isinstance(graph_path, str) or not graph_path):
        raise ConfigError(f"{where}: graph_path must be a file path (relative to base_path)")
    nireq = entry.get("nireq", 0)
    if not isinstance(nireq, int) or isinstance(nireq, bool) or nireq < 0 or nireq > 100_000:
        raise ConfigError(f"{where}: nireq must be an integer from 0 to 100000, got {nireq!r}")
    batch = entry.get("batch_size")
    if batch is not None:
        batch = str(batch)
        if batch != "auto" and not re.fullmatch(r"\d+(:\d+)?|-1", batch):
            raise ConfigError(f"{where}: batch_size must be a positive integer, a range like 1:8, or \"auto\"")
    device = entry.get("target_device", "CPU")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"{where}: target_device must be a device name such as CPU, GPU, AUTO:GPU,CPU")
    layout = entry.get("layout")
    if isinstance(layout, dict):
        layout = tuple((str(k), str(v)) for k, v in layout.items())
    elif layout is not None and not isinstance(layout, str):
        raise ConfigError(f"{where}: layout must be a string like NCHW or an object of input name -> layout")
    if source_url is None and model_file is None and (graph_path is not None
                                                       or (base_path / "graph.pbtxt").is_file()):
        # OVMS: a model_config_list entry may point at a graph directory; graph_path is relative to base_path.
        graph = base_path / pathlib.Path(graph_path or "graph.pbtxt").expanduser()
        if not graph.is_file():
            raise ConfigError(f"{where}: graph file {graph} not found")
        return graph_config(entry["name"], base_path, graph_path=graph, where=where)
    return ModelConfig(
        name=entry["name"], base_path=base_path,
        version_policy=VersionPolicy.parse(entry.get("model_version_policy", {"latest": {"num_versions": 1}}),
                                           where),
        target_device=device, nireq=nireq, plugin_config=_plugin_config(entry.get("plugin_config"), where),
        batch_size=batch, shape=_check_shape(entry.get("shape"), where), layout=layout, allow_cache=allow_cache,
        source_url=source_url, source_graph=graph_path, model_file=model_file, **preprocessing)


def graph_config(name: str, base_path: pathlib.Path, *, graph_path: pathlib.Path | None = None,
                 task: str | None = None, where: str = "", graph_text: str | None = None) -> ModelConfig:
    """A graph servable (LLM, VLM, embeddings, rerank): base_path holds graph.pbtxt or, with a task, the model."""
    graph = graph_path or base_path / "graph.pbtxt"
    if not graph.is_file():
        graph = None
    if graph is None and task is None:
        raise ConfigError(f"{where}: {base_path} has no graph.pbtxt; give --task (text_generation, embeddings, "
                          "rerank) or pull the model with --pull to write one")
    try:
        content = graph.read_bytes() if graph is not None else b""
    except OSError:
        content = b""  # the loader reports the unreadable file
    # A MediaPipe graph with model nodes calls served models: it loads after them (ovms.mediapipe reads it).
    return ModelConfig(name=name, base_path=base_path, kind="graph", graph_path=graph, task=task,
                       graph_text=graph_text if graph is None else None,
                       uses_models=b"OpenVINOModelServerSessionCalculator" in content,
                       graph_digest=hashlib.sha256(content).hexdigest() if graph is not None else None)


def localize(config: ModelConfig, local_dir: pathlib.Path) -> ModelConfig:
    """A remote model's config pointed at its local copy: a graph directory if the copy holds its graph file."""
    where = f"model {config.name} ({config.source_url})"
    if config.task is not None:  # --model_path URL --task: the graph is built from the flags
        return dataclasses.replace(config, base_path=local_dir)
    if config.kind == "graph" or config.source_graph or (local_dir / "graph.pbtxt").is_file():
        name = config.source_graph or "graph.pbtxt"
        graph = local_dir / name
        if not graph.is_file():
            raise ConfigError(f"{where}: graph file {name} is not in the bucket")
        return dataclasses.replace(graph_config(config.name, local_dir, graph_path=graph, where=where),
                                   source_url=config.source_url, source_graph=config.source_graph)
    return dataclasses.replace(config, base_path=local_dir)


def _mediapipe_entry(item: Any, where: str, relative_to) -> list[ModelConfig]:
    """A mediapipe_config_list entry: the graph, then the models of its subconfig (OVMS: ``subconfig``, relative to
    base_path, or base_path/subconfig.json when present), which are served like model_config_list entries."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ConfigError(f"{where} must be an object with a name")
    unknown = set(item) - {"name", "base_path", "graph_path", "subconfig"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed fields: "
                          "base_path, graph_path, name, subconfig")
    subconfig = item.get("subconfig")
    if subconfig is not None and (not isinstance(subconfig, str) or not subconfig):
        raise ConfigError(f"{where}: subconfig must be the path of a config.json with a model_config_list")
    # As OVMS: base_path is relative to the config file's directory, graph_path to base_path; each applied once.
    source_url = _remote(item.get("base_path") or item["name"], relative_to, where)
    if source_url is not None:
        if subconfig is not None:
            raise ConfigError(f"{where}: a subconfig is read from local directories only; copy the graph and "
                              "its models locally")
        return [ModelConfig(name=item["name"], base_path=pathlib.Path(), kind="graph", source_url=source_url,
                            source_graph=item.get("graph_path") or "graph.pbtxt")]
    base = relative_to / pathlib.Path(item.get("base_path") or item["name"]).expanduser()
    graph = base / pathlib.Path(item.get("graph_path") or "graph.pbtxt").expanduser()
    if not graph.is_file():
        raise ConfigError(f"{where}: graph file {graph} not found")
    if not item.get("base_path") and not base.is_dir():
        # OVMS's quickstart names an absolute graph_path and no base_path: the default <config dir>/<name>/ need
        # not exist there, and the graph's own directory is what holds its files here.
        base = graph.parent
    models = [graph_config(item["name"], base, graph_path=graph, where=where)]
    sub = base / pathlib.Path(subconfig).expanduser() if subconfig is not None else base / "subconfig.json"
    if subconfig is not None and not sub.is_file():
        raise ConfigError(f"{where}: subconfig file {sub} not found")
    if sub.is_file():
        for model in load_config_file(sub):
            if model.kind == "graph":
                raise ConfigError(f"{sub}: a subconfig lists models (model_config_list) only; "
                                  f"{model.name} is a graph")
            models.append(model)
    return models


def load_config_file(path, *, read_text=None) -> list[ModelConfig]:
    """Read and validate a config.json; raise ConfigError saying what is wrong and where.

    ``path`` is a local path, or a remote URL (str) read with ``read_text(url)``; relative paths in the file are
    relative to its directory, local or remote.
    """
    remote = is_remote(path)
    try:
        text = read_text(path) if remote else pathlib.Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror}); check --config_path") from None
    except Exception as exc:  # the remote reader's error says what went wrong with the bucket
        raise ConfigError(f"{path}: cannot read the config file ({exc}); check --config_path and the "
                          "storage credentials") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: The file is not valid json: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object with model_config_list")
    unknown = set(document) - TOP_LEVEL_FIELDS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level field(s) {', '.join(sorted(map(repr, unknown)))}; "
                          f"allowed fields: {', '.join(sorted(TOP_LEVEL_FIELDS))}")
    for field, reason in NOT_IMPLEMENTED_TOP_LEVEL.items():
        if document.get(field):
            raise ConfigError(f"{path}: {field} is not supported by this server ({reason}); remove it")
    # Relative paths in the file are relative to its directory, made absolute once here: a relative
    # --config_path (js/config.json) must not be applied again to paths already under it.
    directory = path.rsplit("/", 1)[0] if remote else pathlib.Path(path).absolute().parent
    path = path if remote else pathlib.Path(path).absolute()
    models = []
    names: set[str] = set()
    entries = document.get("model_config_list", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: model_config_list must be a JSON array")
    for i, item in enumerate(entries):
        where = f"{path}: model_config_list[{i}]"
        if not isinstance(item, dict) or set(item) != {"config"} or not isinstance(item["config"], dict):
            raise ConfigError(f'{where} must be an object with exactly one field, "config"')
        model = model_config_from_dict(item["config"], where=f"{where}.config", relative_to=directory)
        if model.name in names:
            raise ConfigError(f"{where}.config: model name {model.name!r} is used twice; names must be unique")
        names.add(model.name)
        models.append(model)
    graphs = document.get("mediapipe_config_list", [])
    if not isinstance(graphs, list):
        raise ConfigError(f"{path}: mediapipe_config_list must be a JSON array")
    for i, item in enumerate(graphs):
        for model in _mediapipe_entry(item, f"{path}: mediapipe_config_list[{i}]", directory):
            if model.name in names:
                raise ConfigError(f"{path}: mediapipe_config_list[{i}]: name {model.name!r} is already used")
            names.add(model.name)
            models.append(model)
    if remote and (document.get("custom_node_library_config_list") or document.get("pipeline_config_list")):
        raise ConfigError(f"{path}: pipelines and custom nodes are read from a local config.json only; copy the "
                          "config file next to the server (its models may stay in the bucket)")
    libraries = parse_libraries(document.get("custom_node_library_config_list"),
                                f"{path}: custom_node_library_config_list", directory)
    pipelines = document.get("pipeline_config_list", [])
    if not isinstance(pipelines, list):
        raise ConfigError(f"{path}: pipeline_config_list must be a JSON array")
    for i, item in enumerate(pipelines):
        where = f"{path}: pipeline_config_list[{i}]"
        definition = parse_pipeline(item, where, libraries)
        if definition.name in names:
            raise ConfigError(f"{where}: Pipeline has the same name as model: {definition.name!r}; names must be "
                              "unique across models, graphs and pipelines")
        names.add(definition.name)
        models.append(ModelConfig(name=definition.name, base_path=directory, kind="pipeline", uses_models=True,
                                  pipeline=definition))
    return models


def numeric_versions(base_path: pathlib.Path) -> list[int]:
    """Version numbers of a model directory: its subdirectories with positive integer names (others ignored)."""
    try:
        children = list(base_path.iterdir())
    except OSError:
        return []
    return sorted(int(p.name) for p in children if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def version_files(config: "ModelConfig", version: int) -> tuple[tuple[str, int, int], ...]:
    """What a version directory holds now: (relative path, size, mtime) of every file, sorted.

    Two equal results mean nothing was written in between: a version that failed to load (a directory copied
    in file by file) is tried again when this changes and then holds still.
    """
    if config.kind == "pipeline":
        return ()  # no files: a pipeline lives in config.json
    if config.model_file is not None:  # one model file: it and its companions beside it
        root = config.base_path
        stem = pathlib.Path(config.model_file).stem
        found = []
        for path in sorted(root.glob(f"{stem}.*")) + [root / "mapping_config.json"]:
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((path.name, stat.st_size, stat.st_mtime_ns))
        return tuple(found)
    root = config.base_path if config.kind == "graph" else config.base_path / str(version)
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while listing: the next listing differs anyway
                continue
            found.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def load_monitoring(path, *, read_text=None) -> tuple[bool, list[str] | None]:
    """The ``monitoring.metrics`` section of a config.json: (enable, metrics_list or None)."""
    try:
        remote = is_remote(path)
        document = json.loads(read_text(path) if remote else pathlib.Path(path).read_text())
    except Exception:
        return False, None  # load_config_file reports file problems
    section = document.get("monitoring", {}) if isinstance(document, dict) else {}
    metrics = section.get("metrics", {}) if isinstance(section, dict) else {}
    if not isinstance(metrics, dict) or set(metrics) - {"enable", "metrics_list"}:
        raise ConfigError(f"{path}: monitoring.metrics accepts only enable (true/false) and metrics_list")
    listed = metrics.get("metrics_list")
    if listed is not None and (not isinstance(listed, list) or not all(isinstance(n, str) for n in listed)):
        raise ConfigError(f"{path}: monitoring.metrics.metrics_list must be a list of metric names")
    return metrics.get("enable") is True, listed
