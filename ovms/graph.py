"""OVMS ``graph.pbtxt`` files: a small protobuf text-format reader and the GenAI node options in them.

Only what OVMS's GenAI calculators read is interpreted (src/llm/llm_calculator.proto,
src/embeddings/embeddings_calculator_ov.proto, src/rerank/rerank_calculator_ov.proto); other nodes are kept
as parsed dictionaries.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from ovms.errors import ConfigError

_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<ext>\[[^\]]*\])"""
                    r"""|(?P<punct>[{}:,;<>])|(?P<word>[-+\w./]+)""")

# calculator -> task
_CALCULATORS = {"HttpLLMCalculator": "text_generation", "LLMCalculator": "text_generation",
                "EmbeddingsCalculatorOV": "embeddings", "EmbeddingsCalculator": "embeddings",
                "RerankCalculatorOV": "rerank", "RerankCalculator": "rerank"}


def _tokens(text: str):
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(f"graph.pbtxt: cannot read text at offset {pos}: {text[pos:pos + 30]!r}")
        pos = match.end()
        kind = match.lastgroup
        if kind is not None:
            yield kind, match.group(kind)


def _scalar(kind: str, value: str) -> Any:
    if kind == "str":
        return bytes(value[1:-1], "utf-8").decode("unicode_escape")
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value  # an enum name (pooling: MEAN)


def parse_text_proto(text: str) -> dict[str, list[Any]]:
    """Protobuf text format as {field: [values]} (every field repeated; messages are nested dicts)."""
    tokens = list(_tokens(text))
    pos = 0

    def message(closing: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        fields: dict[str, list[Any]] = {}
        while pos < len(tokens):
            kind, value = tokens[pos]
            if kind == "punct" and value in ",;":
                pos += 1
                continue
            if kind == "punct" and value == closing:
                pos += 1
                return fields
            if kind not in ("word", "ext"):
                raise ConfigError(f"graph.pbtxt: expected a field name, found {value!r}")
            name = value.strip("[]").replace(" ", "") if kind == "ext" else value
            pos += 1
            if pos < len(tokens) and tokens[pos] == ("punct", ":"):
                pos += 1
            kind, value = tokens[pos]
            if kind == "punct" and value in "{<":
                pos += 1
                item: Any = message("}" if value == "{" else ">")
            else:
                pos += 1
                item = _scalar(kind, value)
                while kind == "str" and pos < len(tokens) and tokens[pos][0] == "str":  # "a" "b" concatenation
                    item += _scalar("str", tokens[pos][1])
                    pos += 1
            fields.setdefault(name, []).append(item)
        if closing is not None:
            raise ConfigError("graph.pbtxt: unbalanced braces")
        return fields

    return message(None)


@dataclasses.dataclass(slots=True)
class GenAINodeOptions:
    """The GenAI node of a graph: its task and the options OVMS reads, with OVMS's defaults."""

    task: str
    models_path: pathlib.Path
    device: str = "CPU"
    plugin_config: dict = dataclasses.field(default_factory=dict)
    max_num_seqs: int = 256
    cache_size: int = 0  # GB of KV cache; 0: let GenAI size it
    enable_prefix_caching: bool = True
    max_num_batched_tokens: int | None = None
    dynamic_split_fuse: bool = True
    pipeline_type: str = "AUTO"  # LM, LM_CB, VLM, VLM_CB, AUTO
    max_tokens_limit: int | None = None
    best_of_limit: int = 20
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    enable_tool_guided_generation: bool = False
    normalize_embeddings: bool = True
    pooling: str = "CLS"
    truncate: bool = False
    max_allowed_chunks: int = 10000
    # Speculative decoding (llm_calculator.proto): a draft model and its scheduler; unset fields follow the main
    # model's. Prompt lookup decoding is plugin_config {"prompt_lookup": true}, as in OVMS.
    draft_models_path: pathlib.Path | None = None
    draft_device: str = ""  # "": the main model's device
    draft_scheduler: dict = dataclasses.field(default_factory=dict)  # max_num_batched_tokens, cache_size, ...
    raw: dict = dataclasses.field(default_factory=dict)

    @property
    def prompt_lookup(self) -> bool:
        return self.plugin_config.get("prompt_lookup") is True

    @property
    def decoding(self) -> str:
        """OVMS's decoding method: prompt_lookup, speculative or standard."""
        if self.prompt_lookup:
            return "prompt_lookup"
        return "speculative" if self.draft_models_path is not None else "standard"


def _first(options: dict, name: str, default: Any = None) -> Any:
    values = options.get(name)
    return values[-1] if values else default


def read_graph(graph_path: pathlib.Path) -> GenAINodeOptions:
    """The GenAI node of a graph file; models_path is resolved against the graph's directory."""
    try:
        text = graph_path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read graph {graph_path}: {exc.strerror}") from None
    return read_graph_text(text, graph_path.parent, where=str(graph_path))


def read_graph_text(text: str, base: pathlib.Path, *, where: str = "graph") -> GenAINodeOptions:
    """The GenAI node of a graph's text; models_path is resolved against ``base``."""
    document = parse_text_proto(text)
    for node in document.get("node", []):
        calculator = _first(node, "calculator", "")
        if calculator not in _CALCULATORS:
            continue
        options: dict = {}
        for node_options in node.get("node_options", []):
            for value in node_options.values():
                options = value[-1]
        return node_options_from(_CALCULATORS[calculator], options, base)
    raise ConfigError(f"{where}: no text generation, embeddings or rerank node "
                      f"(calculators: {', '.join(sorted(_CALCULATORS))})")


def node_options_from(task: str, options: dict, base: pathlib.Path) -> GenAINodeOptions:
    models_path = pathlib.Path(_first(options, "models_path", "./"))
    plugin_config = _first(options, "plugin_config", "{}") or "{}"
    try:
        plugin = json.loads(plugin_config) if isinstance(plugin_config, str) else dict(plugin_config)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"graph option plugin_config is not valid JSON: {exc}") from None
    result = GenAINodeOptions(task=task, models_path=models_path if models_path.is_absolute() else base / models_path,
                              plugin_config=plugin, raw=options)
    device = _first(options, "device") or _first(options, "target_device")
    if device:
        result.device = str(device)
    for name in ("max_num_seqs", "cache_size", "enable_prefix_caching", "max_num_batched_tokens",
                 "dynamic_split_fuse", "max_tokens_limit", "best_of_limit", "tool_parser", "reasoning_parser",
                 "enable_tool_guided_generation", "normalize_embeddings", "truncate", "max_allowed_chunks"):
        value = _first(options, name)
        if value is not None:
            setattr(result, name, value)
    for name in ("pipeline_type", "pooling"):
        value = _first(options, name)
        if value is not None:
            setattr(result, name, str(value).upper())
    _draft_options(result, options, base)
    return result


_DRAFT_SCHEDULER = {"draft_max_num_batched_tokens": "max_num_batched_tokens", "draft_cache_size": "cache_size",
                    "draft_max_num_seqs": "max_num_seqs", "draft_dynamic_split_fuse": "dynamic_split_fuse"}


def _draft_options(result: GenAINodeOptions, options: dict, base: pathlib.Path) -> None:
    """The speculative decoding fields, checked as OVMS checks them (src/llm/language_model/.../
    servable_initializer.cpp)."""
    draft_path = _first(options, "draft_models_path")
    for name, field in _DRAFT_SCHEDULER.items():
        value = _first(options, name)
        if value is not None:
            result.draft_scheduler[field] = value
    if _first(options, "draft_block_size") is not None:
        raise ConfigError("graph option draft_block_size is not supported: openvino_genai sizes KV-cache blocks "
                          "itself (SchedulerConfig has no block size); remove it")
    if _first(options, "draft_eagle3_mode") is True:
        raise ConfigError("graph option draft_eagle3_mode is not supported by this server (EAGLE-3 draft models "
                          "need OVMS's eagle3 pipeline); remove it to use the draft model for plain speculative "
                          "decoding, or serve the model with OVMS")
    device = _first(options, "draft_device")
    if not draft_path:
        if result.draft_scheduler or device:
            raise ConfigError("Draft model path is not provided, but draft scheduler options are set: add "
                              "draft_models_path to the graph, or remove the draft_* options")
        return
    if result.prompt_lookup:
        raise ConfigError("graph sets both draft_models_path and plugin_config prompt_lookup: choose one decoding "
                          "method (speculative decoding with the draft model, or prompt lookup)")
    path = pathlib.Path(str(draft_path))
    result.draft_models_path = path if path.is_absolute() else base / path
    result.draft_device = str(device or "")
