"""OVMS ``graph.pbtxt`` files: a small protobuf text-format reader and the GenAI node options in them.

Only what OVMS's GenAI calculators read is interpreted (src/llm/llm_calculator.proto,
src/embeddings/embeddings_calculator_ov.proto, src/rerank/rerank_calculator_ov.proto,
src/image_gen/image_gen_calculator.proto); other nodes are kept as parsed dictionaries.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from ovms.errors import ConfigError
from ovms.genai.parsers import check_parser_names

_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<ext>\[[^\]]*\])"""
                    r"""|(?P<punct>[{}:,;<>])|(?P<word>[-+\w./]+)""")

# calculator -> task
_CALCULATORS = {"HttpLLMCalculator": "text_generation", "LLMCalculator": "text_generation",
                "EmbeddingsCalculatorOV": "embeddings", "EmbeddingsCalculator": "embeddings",
                "RerankCalculatorOV": "rerank", "RerankCalculator": "rerank",
                "ImageGenCalculator": "image_generation", "S2tCalculator": "speech2text",
                "T2sCalculator": "text2speech"}


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
    # KV cache: eviction (CacheEvictionConfig), sparse attention, and the cache interval (SchedulerConfig)
    cache_eviction: dict | None = None
    sparse_attention: dict | None = None
    cache_interval_multiplier: int | None = None
    image: "ImageGenLimits | None" = None  # image_generation: the request limits and defaults of the graph
    # Speech (src/audio/speech_to_text/s2t_calculator.proto, text_to_speech/t2s_calculator.proto)
    enable_word_timestamps: bool = False
    voices: dict = dataclasses.field(default_factory=dict)  # voice name -> speaker embedding file
    speed_min: float = 0.25
    speed_max: float = 4.0
    loopback: bool = False  # the node has OVMS's LOOPBACK input stream (streamed answers)
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
        result = node_options_from(_CALCULATORS[calculator], options, base)
        # OVMS streams transcriptions only from a node with the LOOPBACK back edge (as --pull writes it)
        result.loopback = any(str(s).startswith("LOOPBACK:") for s in node.get("input_stream", []))
        return result
    raise ConfigError(f"{where}: no text generation, embeddings, rerank or image generation node "
                      f"(calculators: {', '.join(sorted(_CALCULATORS))})")


# The node options OVMS's calculators define (src/llm/llm_calculator.proto, src/embeddings/
# embeddings_calculator_ov.proto, src/rerank/rerank_calculator_ov.proto); each is read below or refused with the
# reason, never accepted and ignored.
KNOWN_OPTIONS = {
    "text_generation": {"models_path", "max_num_batched_tokens", "cache_size", "max_num_seqs", "dynamic_split_fuse",
                        "device", "plugin_config", "best_of_limit", "max_tokens_limit", "enable_prefix_caching",
                        "draft_models_path", "draft_device", "draft_max_num_batched_tokens", "draft_cache_size",
                        "draft_block_size", "draft_max_num_seqs", "draft_dynamic_split_fuse", "draft_eagle3_mode",
                        "pipeline_type", "cache_eviction_config", "tool_parser", "reasoning_parser",
                        "enable_tool_guided_generation", "sparse_attention_config", "cache_interval_multiplier",
                        "chat_template_mode"},
    "embeddings": {"models_path", "normalize_embeddings", "target_device", "device", "plugin_config", "pooling",
                   "truncate"},
    "rerank": {"models_path", "max_allowed_chunks", "max_position_embeddings", "target_device", "device",
               "plugin_config"},
    "image_generation": {"models_path", "device", "plugin_config", "max_resolution", "default_resolution",
                         "max_num_images_per_prompt", "default_num_inference_steps", "max_num_inference_steps",
                         "resolution", "num_images_per_prompt", "guidance_scale", "lora_adapters",
                         "composite_lora_adapters"},
    "speech2text": {"models_path", "target_device", "plugin_config", "enable_word_timestamps"},
    "text2speech": {"models_path", "target_device", "plugin_config", "voices", "speed_min", "speed_max"},
}


def _check_known(task: str, options: dict) -> None:
    known = KNOWN_OPTIONS.get(task)
    if known is None:
        return
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"graph node option(s) {', '.join(unknown)} unknown to OVMS's {task} calculator; "
                          f"the options it has: {', '.join(sorted(known))}")
    if task == "rerank" and _first(options, "max_position_embeddings") is not None:
        raise ConfigError("graph option max_position_embeddings is not supported by this server's rerank node (it "
                          "takes the limit from the model's config.json); remove it")
    mode = _first(options, "chat_template_mode")
    if mode is not None and str(mode).upper() != "JINJA":
        raise ConfigError(f"graph option chat_template_mode {mode} is not supported: this server renders chat "
                          "templates with Python Jinja2 (JINJA); remove the option or set JINJA")


def _message(options: dict, name: str, fields: dict, required: tuple = ()) -> dict | None:
    """A nested option message as {field: value}, checked: known fields, required ones present, enum names."""
    value = _first(options, name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"graph option {name} must be a message {{ ... }}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(f"graph option {name}: unknown field(s) {', '.join(unknown)}; fields: "
                          f"{', '.join(sorted(fields))}")
    result = {}
    for field, kind in fields.items():
        item = _first(value, field)
        if item is None:
            if field in required:
                raise ConfigError(f"graph option {name}: required field {field} is missing")
            continue
        if isinstance(kind, tuple):  # an enum
            if str(item).upper() not in kind:
                raise ConfigError(f"graph option {name}.{field}: {item!r} is not one of {', '.join(kind)}")
            item = str(item).upper()
        elif kind is dict:
            item = _message(value, field, KV_CRUSH_FIELDS)
        elif kind is float:
            if not isinstance(item, (int, float)) or isinstance(item, bool):
                raise ConfigError(f"graph option {name}.{field} must be a number, got {item!r}")
            item = float(item)
        elif not isinstance(item, kind) or isinstance(item, bool) != (kind is bool):
            raise ConfigError(f"graph option {name}.{field} must be a {kind.__name__}, got {item!r}")
        result[field] = item
    return result


KV_CRUSH_FIELDS = {"budget": int, "anchor_point_mode": ("RANDOM", "ZEROS", "ONES", "MEAN", "ALTERNATING"),
                   "rng_seed": int}
CACHE_EVICTION_FIELDS = {"aggregation_mode": ("SUM", "NORM_SUM"), "start_size": int, "recent_size": int,
                         "max_cache_size": int, "apply_rotation": bool, "snapkv_window_size": int,
                         "kv_crush_config": dict}
SPARSE_ATTENTION_FIELDS = {"mode": ("TRISHAPE", "XATTENTION"), "num_last_dense_tokens_in_prefill": int,
                           "num_retained_start_tokens_in_cache": int, "num_retained_recent_tokens_in_cache": int,
                           "xattention_threshold": float, "xattention_block_size": int, "xattention_stride": int}


def node_options_from(task: str, options: dict, base: pathlib.Path) -> GenAINodeOptions:
    _check_known(task, options)
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
    result.cache_eviction = _message(options, "cache_eviction_config", CACHE_EVICTION_FIELDS,
                                     required=("start_size", "recent_size", "max_cache_size"))
    sparse = _message(options, "sparse_attention_config", SPARSE_ATTENTION_FIELDS)
    result.sparse_attention = sparse
    interval = _first(options, "cache_interval_multiplier")
    if interval is not None:
        result.cache_interval_multiplier = int(interval)
    if result.pipeline_type in ("LM", "VLM") and (result.cache_eviction or sparse or interval is not None):
        raise ConfigError(f"graph options cache_eviction_config, sparse_attention_config and "
                          f"cache_interval_multiplier need continuous batching; pipeline_type {result.pipeline_type} "
                          "runs one request at a time (use LM_CB, VLM_CB or AUTO)")
    if task == "text_generation":
        _check_llm_options(result)
    if task == "image_generation":
        result.image = image_limits(options, base)
    if task in ("speech2text", "text2speech"):
        _speech_options(result, options, base)
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



def _speech_options(result: GenAINodeOptions, options: dict, base: pathlib.Path) -> None:
    """S2tCalculatorOptions' enable_word_timestamps; T2sCalculatorOptions' voices and speed bounds, checked as
    OVMS's T2sCalculator::Open and TtsServable do."""
    result.enable_word_timestamps = _first(options, "enable_word_timestamps", False) is True
    for name in ("speed_min", "speed_max"):
        value = _first(options, name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"graph option {name} must be a number, got {value!r}")
            setattr(result, name, float(value))
    if not result.speed_min <= result.speed_max:
        raise ConfigError(f"Invalid T2sCalculatorOptions: speed_min ({result.speed_min:g}) must be <= speed_max "
                          f"({result.speed_max:g})")
    for voice in options.get("voices", []):
        if not isinstance(voice, dict) or set(voice) - {"name", "path"}:
            raise ConfigError("graph option voices: each is { name: \"...\" path: \"...\" }")
        name, path = _first(voice, "name"), _first(voice, "path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise ConfigError("graph option voices: name and path are required strings")
        file = pathlib.Path(path)
        result.voices[name] = file if file.is_absolute() else base / file


def _check_llm_options(options: GenAINodeOptions) -> None:
    """Refuse, at load, the parser names OVMS refuses (enable_tool_guided_generation is checked against the
    parser by the servable, which knows the detected one)."""
    try:
        check_parser_names(options.tool_parser, options.reasoning_parser)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclasses.dataclass(slots=True)
class LoraAdapter:
    """A LoRA adapter of an image generation graph (LoraAdapterEntry): requests name it by ``alias`` in ``model``."""

    alias: str
    path: pathlib.Path
    alpha: float = 1.0


@dataclasses.dataclass(slots=True)
class ImageGenLimits:
    """ImageGenCalculatorOptions' request limits and defaults, with OVMS's defaults (image_gen_calculator.proto)."""

    max_resolution: tuple[int, int] = (4096, 4096)
    default_resolution: tuple[int, int] | None = None  # None: the model's own (sample size x VAE scale)
    max_num_images_per_prompt: int = 10
    default_num_inference_steps: int = 50
    max_num_inference_steps: int = 100
    lora_adapters: list[LoraAdapter] = dataclasses.field(default_factory=list)
    composite_lora_adapters: dict[str, list[tuple[str, float | None]]] = dataclasses.field(default_factory=dict)


def parse_resolution(text: str, *, field: str) -> tuple[int, int]:
    """"WxH" as (width, height), with OVMS's messages (imagegenutils.cpp getDimensions)."""
    left, x, right = str(text).partition("x")
    if not x or not left.isdigit() or not right.isdigit():
        raise ValueError(f"{field} field is not in correct format - WxH")
    width, height = int(left), int(right)
    if width <= 0 or height <= 0:
        raise ValueError(f"{field} field values must be greater than 0")
    return width, height


def _count(options: dict, name: str, default: int) -> int:
    value = _first(options, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"graph option {name} must be a positive integer, got {value!r}")
    return value


def image_limits(options: dict, base: pathlib.Path) -> ImageGenLimits:
    """The image generation node's options, checked as OVMS checks them at load (imagegen_init.cpp)."""
    # Static reshape (resolution, num_images_per_prompt, guidance_scale) is what NPU needs; this server serves
    # the dynamic shapes of CPU and GPU only, so the options are refused rather than silently ignored.
    for name in ("resolution", "num_images_per_prompt", "guidance_scale"):
        if _first(options, name) is not None:
            raise ConfigError(f"graph option {name} (static reshape of the image generation models) is not "
                              "supported by this server: it serves dynamic shapes only (CPU, GPU); remove it")
    limits = ImageGenLimits(max_num_images_per_prompt=_count(options, "max_num_images_per_prompt", 10),
                            default_num_inference_steps=_count(options, "default_num_inference_steps", 50),
                            max_num_inference_steps=_count(options, "max_num_inference_steps", 100))
    try:
        limits.max_resolution = parse_resolution(_first(options, "max_resolution", "4096x4096"),
                                                 field="max_resolution")
        default = _first(options, "default_resolution")
        if default is not None:
            limits.default_resolution = parse_resolution(default, field="default_resolution")
    except ValueError as exc:
        raise ConfigError(f"graph option {exc}") from None
    if limits.default_resolution is not None and (limits.default_resolution[0] > limits.max_resolution[0]
                                                  or limits.default_resolution[1] > limits.max_resolution[1]):
        (w, h), (mw, mh) = limits.default_resolution, limits.max_resolution
        raise ConfigError(f"Default resolution exceeds maximum allowed resolution: ({w}x{h}) > ({mw}x{mh})")
    for entry in options.get("lora_adapters", []):
        limits.lora_adapters.append(_lora_entry(entry, base))
    aliases = [a.alias for a in limits.lora_adapters]
    if len(set(aliases)) != len(aliases):
        raise ConfigError(f"graph option lora_adapters: aliases must be unique, got {', '.join(aliases)}")
    for entry in options.get("composite_lora_adapters", []):
        alias = _first(entry, "alias")
        if not alias:
            raise ConfigError("graph option composite_lora_adapters: required field alias is missing")
        components = []
        for component in entry.get("components", []):
            name = _first(component, "adapter_alias")
            if name not in aliases:
                raise ConfigError(f"graph option composite_lora_adapters {alias}: adapter_alias {name!r} is not "
                                  f"one of the lora_adapters ({', '.join(aliases) or 'none'})")
            alpha = _first(component, "alpha")
            components.append((str(name), None if alpha is None else float(alpha)))
        limits.composite_lora_adapters[str(alias)] = components
    return limits


def _lora_entry(entry: dict, base: pathlib.Path) -> LoraAdapter:
    unknown = sorted(set(entry) - {"alias", "path", "alpha", "mode"})
    if unknown:
        raise ConfigError(f"graph option lora_adapters: unknown field(s) {', '.join(unknown)}; fields: alias, "
                          "path, alpha, mode")
    alias, path = _first(entry, "alias"), _first(entry, "path")
    if not alias or not path:
        raise ConfigError("graph option lora_adapters: required fields alias and path")
    mode = str(_first(entry, "mode", "DYNAMIC")).upper()
    if mode != "DYNAMIC":
        raise ConfigError(f"graph option lora_adapters {alias}: mode {mode} is not supported by this server (STATIC "
                          "is NPU's, FUSE merges into the weights); DYNAMIC adapters are applied per request")
    resolved = pathlib.Path(str(path))
    return LoraAdapter(str(alias), resolved if resolved.is_absolute() else base / resolved,
                       float(_first(entry, "alpha", 1.0)))
