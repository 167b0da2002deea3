"""The request and answer shapes of the download API, declared once: the handlers validate with them and
``openapi`` renders them, so the document cannot drift from what the service accepts.

Validation errors follow FastAPI's 422 body (the Model Download microservice is a FastAPI app and its clients
read ``detail``): ``{"detail": [{"type", "loc": ["body", "models", 0, "hub"], "msg", "input"}]}``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

HUBS = ("huggingface", "ollama", "ultralytics", "geti", "openvino", "remote-url")
MODEL_TYPES = ("llm", "vlm", "embeddings", "rerank", "vision", "image_generation", "speech2text", "text2speech")
PRECISIONS = ("int4", "int8", "fp16", "fp32")
DEVICES = ("CPU", "GPU", "NPU")
STATUSES = ("queued", "downloading", "converting", "completed", "failed", "canceled")

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One JSON property: its type and constraints (a subset of JSON Schema, enough for this API)."""

    name: str
    kind: str  # string | boolean | integer | number | object | array | map (object of strings)
    description: str = ""
    required: bool = False
    enum: tuple[str, ...] | None = None
    case_insensitive: bool = False  # enum matched ignoring case, answered in its canonical spelling
    min_length: int | None = None
    pattern: str | None = None  # a string must match it whole (re.fullmatch)
    exclusive_minimum: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None
    nullable: bool = True  # null means "not given" (FastAPI's Optional fields)
    schema: "Schema | None" = None  # kind object: its properties; kind array: the items' schema


@dataclasses.dataclass(frozen=True)
class Schema:
    name: str
    fields: tuple[Field, ...]
    additional: bool = False  # extra properties kept (the microservice's `config` allows them)
    description: str = ""


ModelConfig = Schema("ModelConfig", (
    Field("precision", "string", "Weight precision of the OpenVINO model.", enum=PRECISIONS, case_insensitive=True),
    Field("device", "string", "Target device written into graph.pbtxt.", enum=DEVICES, case_insensitive=True),
    Field("cache_size", "integer", "KV cache size in GB written into graph.pbtxt (llm, vlm).", exclusive_minimum=0),
    Field("sha256", "string", "remote-url: the file's sha256 (hex); the download is verified against it before "
          "the file takes its name.", pattern="[0-9a-fA-F]{64}"),
), additional=True, description="Conversion and graph options; other keys are refused unless a hub uses them.")

ModelRequest = Schema("ModelRequest", (
    Field("name", "string", "Repository id (huggingface: ORG/NAME; ollama: MODEL[:TAG] or NAMESPACE/MODEL[:TAG]).",
          required=True, min_length=1, nullable=False),
    Field("hub", "string", "Where the model comes from.", required=True, enum=HUBS, case_insensitive=True,
          nullable=False),
    Field("type", "string", "Model type; decides the graph.pbtxt written with is_ovms.", enum=MODEL_TYPES,
          case_insensitive=True),
    Field("is_ovms", "boolean", "Lay the model out for OpenVINO Model Server (graph.pbtxt, config.json).",
          default=False),
    Field("revision", "string", "Branch, tag or commit (huggingface), or tag (ollama).", min_length=1),
    Field("config", "object", "Conversion and graph options.", schema=ModelConfig),
    Field("override_credentials", "map", "Credentials for this request only, base64-encoded values (huggingface: "
          "HF_TOKEN). Never stored."),
), description="One model to download.")

DownloadRequest = Schema("DownloadRequest", (
    Field("models", "array", "Models to download.", required=True, nullable=False, schema=ModelRequest),
    Field("parallel_downloads", "boolean", "Download the models of this request at the same time (bounded by "
          "--max_parallel_downloads) instead of one after another.", default=False),
))

ListFilters = Schema("ListFilters", (), additional=True, description="Hub-specific filters; GET /plugins lists each "
                     "hub's listing_filter_fields (huggingface, openvino: search, author, pipeline_tag, library, tags, "
                     "sort).")

ListRequest = Schema("ListRequest", (
    Field("hub", "string", "The hub to list.", required=True, enum=HUBS, case_insensitive=True, nullable=False),
    Field("filters", "object", "Hub-specific filters.", schema=ListFilters),
    Field("limit", "integer", "Items in this window.", minimum=1, maximum=200, default=50),
    Field("offset", "integer", "Items skipped before this window.", minimum=0, default=0),
    Field("override_credentials", "map", "Credentials for this request only, base64-encoded values (huggingface: "
          "HF_TOKEN). Never stored."),
), description="One window of a hub's models.")

ListItem = Schema("ListItem", (
    Field("name", "string", "What to give as ModelRequest.name."), Field("owner", "string"),
    Field("precisions", "array", "Precisions its name states."), Field("tags", "array"),
    Field("model_type", "string", "ModelRequest.type, from the hub's pipeline tag.", enum=MODEL_TYPES),
    Field("last_modified", "string"), Field("metadata", "object"),
))

ListAnswer = Schema("ListAnswer", (
    Field("hub", "string"), Field("items", "array", schema=ListItem), Field("count", "integer"),
    Field("total", "integer", "All items, when the listing ended inside this window (the Hugging Face search "
          "states no total); else null."),
    Field("limit", "integer"), Field("offset", "integer"), Field("has_more", "boolean"),
    Field("next_offset", "integer", "offset of the next window; null at the end."),
))

Progress = Schema("Progress", (
    Field("current", "integer", "Bytes on disk."), Field("total", "integer", "Bytes of the model."),
    Field("percentage", "number", "current / total * 100."),
))

Job = Schema("Job", (
    Field("id", "string"), Field("operation_type", "string", enum=("download", "convert", "upload")),
    Field("model_name", "string"), Field("hub", "string"), Field("output_dir", "string"),
    Field("status", "string", enum=STATUSES), Field("start_time", "string", "ISO 8601, UTC."),
    Field("plugin_name", "string"), Field("model_type", "string"),
    Field("progress", "object", schema=Progress), Field("plugin", "string"),
    Field("completion_time", "string", "ISO 8601, UTC."), Field("result", "object", "model_path, is_ovms, "
                                                                "commit, files, bytes_fetched."),
    Field("error", "string"),
), additional=True)

DownloadAnswer = Schema("DownloadAnswer", (
    Field("message", "string"), Field("job_ids", "array", schema=Schema("JobId", ())),
    Field("status", "string", enum=("processing",)),
))


@dataclasses.dataclass
class Problem:
    loc: tuple
    msg: str
    type: str
    input: Any = None

    def as_json(self) -> dict:
        return {"type": self.type, "loc": list(self.loc), "msg": self.msg, "input": self.input}


class ValidationFailed(Exception):
    """Input that does not match a schema; ``problems`` name each field (HTTP 422)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))
        self.problems = problems

    def body(self) -> dict:
        return {"detail": [p.as_json() for p in self.problems], "message": str(self)}


_PY_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "map": dict}


def _check_field(f: Field, value: Any, loc: tuple, problems: list[Problem]) -> Any:
    if value is None:
        if not f.nullable:
            problems.append(Problem(loc, "Field required" if f.required else "Input should not be null", "missing",
                                    value))
        return f.default
    if f.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(loc, "Input should be a valid integer", "int_type", value))
            return None
    elif f.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(Problem(loc, "Input should be a valid number", "float_type", value))
            return None
    elif not isinstance(value, _PY_TYPES[f.kind]) or (f.kind != "boolean" and isinstance(value, bool)):
        problems.append(Problem(loc, f"Input should be a valid {'dictionary' if f.kind == 'map' else f.kind}",
                                f"{f.kind}_type", value))
        return None
    if f.min_length is not None and len(value) < f.min_length:
        problems.append(Problem(loc, f"String should have at least {f.min_length} character"
                                     f"{'s' if f.min_length > 1 else ''}", "string_too_short", value))
    if f.pattern is not None and f.kind == "string" and not re.fullmatch(f.pattern, value):
        problems.append(Problem(loc, f"String should match pattern '{f.pattern}'", "string_pattern_mismatch", value))
    if f.exclusive_minimum is not None and value <= f.exclusive_minimum:
        problems.append(Problem(loc, f"Input should be greater than {f.exclusive_minimum:g}", "greater_than", value))
    if f.minimum is not None and value < f.minimum:
        problems.append(Problem(loc, f"Input should be greater than or equal to {f.minimum:g}",
                                "greater_than_equal", value))
    if f.maximum is not None and value > f.maximum:
        problems.append(Problem(loc, f"Input should be less than or equal to {f.maximum:g}", "less_than_equal",
                                value))
    if f.enum is not None:
        match = next((e for e in f.enum if e == value or (f.case_insensitive and e.lower() == value.lower())), None)
        if match is None:
            problems.append(Problem(loc, "Input should be " + ", ".join(f"'{e}'" for e in f.enum), "enum", value))
        return match
    if f.kind == "map":
        for key, item in value.items():
            if not isinstance(item, str):
                problems.append(Problem(loc + (key,), "Input should be a valid string", "string_type", item))
    if f.kind == "object" and f.schema is not None:
        return _check_object(f.schema, value, loc, problems)
    if f.kind == "array" and f.schema is not None:
        return [_check_object(f.schema, item, loc + (i,), problems) for i, item in enumerate(value)]
    return value


def _check_object(schema: Schema, value: Any, loc: tuple, problems: list[Problem]) -> dict | None:
    if not isinstance(value, dict):
        problems.append(Problem(loc, "Input should be a valid dictionary or object", "dict_type", value))
        return None
    out: dict = {}
    names = {f.name for f in schema.fields}
    for f in schema.fields:
        raw = value.get(f.name, _MISSING)
        if raw is _MISSING:
            if f.required:
                problems.append(Problem(loc + (f.name,), "Field required", "missing", None))
            out[f.name] = f.default
            continue
        out[f.name] = _check_field(f, raw, loc + (f.name,), problems)
    extra = {k: v for k, v in value.items() if k not in names}
    if extra and schema.additional:
        out.update(extra)
    elif extra:
        for key, item in extra.items():
            problems.append(Problem(loc + (key,), "Extra inputs are not permitted", "extra_forbidden", item))
    return out


def validate(schema: Schema, value: Any, *, where: str = "body") -> dict:
    """The validated value (enums in canonical spelling, defaults filled) or ValidationFailed."""
    problems: list[Problem] = []
    out = _check_object(schema, value, (where,), problems)
    if problems:
        raise ValidationFailed(problems)
    return out


# ---- OpenAPI ----------------------------------------------------------------------------------------------
def json_schema(schema: Schema) -> dict:
    """The JSON Schema (OpenAPI 3.0 dialect) of ``schema``, references to other schemas as ``$ref``."""
    props = {}
    for f in schema.fields:
        kind = {"map": "object"}.get(f.kind, f.kind)
        p: dict = {"type": kind}
        if f.description:
            p["description"] = f.description
        if f.enum is not None:
            p["enum"] = list(f.enum)
        if f.min_length is not None:
            p["minLength"] = f.min_length
        if f.pattern is not None:
            p["pattern"] = f.pattern
        if f.exclusive_minimum is not None:
            p["minimum"] = f.exclusive_minimum
            p["exclusiveMinimum"] = True
        if f.minimum is not None:
            p["minimum"] = f.minimum
        if f.maximum is not None:
            p["maximum"] = f.maximum
        if f.default is not None:
            p["default"] = f.default
        if f.nullable and not f.required:
            p["nullable"] = True
        if f.kind == "map":
            p["additionalProperties"] = {"type": "string"}
        if f.kind == "object" and f.schema is not None and f.schema.fields:
            p = {"allOf": [{"$ref": f"#/components/schemas/{f.schema.name}"}], **{
                k: v for k, v in p.items() if k in ("description", "nullable")}}
        if f.kind == "array":
            p["items"] = ({"$ref": f"#/components/schemas/{f.schema.name}"} if f.schema is not None and
                          f.schema.fields else {"type": "string"})
        props[f.name] = p
    out = {"type": "object", "title": schema.name, "properties": props,
           "additionalProperties": schema.additional}
    if schema.description:
        out["description"] = schema.description
    required = [f.name for f in schema.fields if f.required]
    if required:
        out["required"] = required
    return out


def all_schemas() -> dict[str, dict]:
    return {s.name: json_schema(s) for s in (DownloadRequest, ModelRequest, ModelConfig, Job, Progress,
                                             DownloadAnswer, ListRequest, ListAnswer, ListItem)}
