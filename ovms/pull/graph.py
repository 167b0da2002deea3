"""``graph.pbtxt`` for a pulled model, byte for byte the layout OVMS writes.

Templates and defaults follow OVMS ``src/graph_export/graph_export.cpp`` and
``src/capi_frontend/server_settings.hpp`` (TextGenGraphSettingsImpl, EmbeddingsGraphSettingsImpl, ...), so a
directory pulled by ovms and one pulled by the C++ server are interchangeable.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import ovms
from ovms.pull.paths import draft_directory_name

TASKS = ("text_generation", "embeddings", "rerank", "image_generation", "text2speech", "speech2text")
HEADER = f"# File created with: OpenVINO Model Server (ovms, Python) {ovms.__version__}\n"


@dataclasses.dataclass(slots=True)
class GraphOptions:
    """Task options from the command line; None means "not given" (the template then omits or defaults it)."""

    model_name: str = ""
    target_device: str = "CPU"
    models_path: str = "./"
    # text generation
    max_num_seqs: int = 256
    enable_prefix_caching: str = "true"
    cache_size: int = 10
    pipeline_type: str | None = None
    max_num_batched_tokens: int | None = None
    reasoning_parser: str | None = None
    tool_parser: str | None = None
    enable_tool_guided_generation: str = "false"
    dynamic_split_fuse: str = "true"
    draft_source_model: str | None = None
    kv_cache_precision: str | None = None
    max_prompt_len: int | None = None
    model_distribution_policy: str | None = None
    # embeddings / rerank
    num_streams: int = 1
    normalize: str = "true"
    truncate: str = "false"
    pooling: str = "CLS"
    max_allowed_chunks: int = 10000
    # image generation
    resolution: str = ""
    max_resolution: str = ""
    default_resolution: str = ""
    num_images_per_prompt: int | None = None
    guidance_scale: float | None = None
    max_num_images_per_prompt: int | None = None
    default_num_inference_steps: int | None = None
    max_num_inference_steps: int | None = None
    lora_adapters: list = dataclasses.field(default_factory=list)  # (alias, path, alpha or None)
    composite_lora_adapters: list = dataclasses.field(default_factory=list)  # (alias, [(adapter alias, alpha)])
    plugin_config: str = ""
    # text2speech (export only: optimum-cli's source model kind and vocoder)
    model_type: str = "speecht5"
    vocoder: str | None = None


def plugin_string(o: GraphOptions) -> str:
    """GraphExport::createPluginString: compact JSON of the set keys, or ``{ }``."""
    config = {}
    if o.kv_cache_precision:
        config["KV_CACHE_PRECISION"] = o.kv_cache_precision
    if o.max_prompt_len is not None:
        config["MAX_PROMPT_LEN"] = str(o.max_prompt_len)
    if o.model_distribution_policy:
        config["MODEL_DISTRIBUTION_POLICY"] = o.model_distribution_policy
    return json.dumps(config, separators=(",", ":")) if config else "{ }"


def text_generation(o: GraphOptions) -> str:
    s = HEADER + f"""
    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"
    node: {{
    name: "LLMExecutor"
    calculator: "HttpLLMCalculator"
    input_stream: "LOOPBACK:loopback"
    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    input_side_packet: "LLM_NODE_RESOURCES:llm"
    output_stream: "LOOPBACK:loopback"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"
    input_stream_info: {{
        tag_index: 'LOOPBACK:0',
        back_edge: true
    }}
    node_options: {{
        [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
            max_num_seqs:{o.max_num_seqs},
            device: "{o.target_device}",
            models_path: "{o.models_path}",
            plugin_config: '{plugin_string(o)}',
            enable_prefix_caching: {o.enable_prefix_caching},
            cache_size: {o.cache_size},"""
    if o.pipeline_type is not None:
        s += f"\n            pipeline_type: {o.pipeline_type},"
    if o.max_num_batched_tokens is not None:
        s += f"\n            max_num_batched_tokens: {o.max_num_batched_tokens},"
    if o.reasoning_parser is not None:
        s += f'\n            reasoning_parser: "{o.reasoning_parser}",'
    if o.tool_parser is not None:
        s += f'\n            tool_parser: "{o.tool_parser}",'
    if o.enable_tool_guided_generation == "true":
        s += "\n            enable_tool_guided_generation: true,"
    if o.dynamic_split_fuse != "true":
        s += "\n            dynamic_split_fuse: false,"
    if o.draft_source_model is not None:
        s += "\n            # Speculative decoding configuration"
        s += f'\n            draft_models_path: "{draft_directory_name(o.draft_source_model)}",'
    s += """
        }
    }
    input_stream_handler {
        input_stream_handler: "SyncSetInputStreamHandler",
        options {
        [mediapipe.SyncSetInputStreamHandlerOptions.ext] {
            sync_set {
            tag_index: "LOOPBACK:0"
            }
        }
        }
    }
    }"""
    return s


def embeddings(o: GraphOptions) -> str:
    return HEADER + f"""
input_stream: "REQUEST_PAYLOAD:input"
output_stream: "RESPONSE_PAYLOAD:output"
node {{
    name: "{o.model_name}",
    calculator: "EmbeddingsCalculatorOV"
    input_side_packet: "EMBEDDINGS_NODE_RESOURCES:embeddings_servable"
    input_stream: "REQUEST_PAYLOAD:input"
    output_stream: "RESPONSE_PAYLOAD:output"
    node_options: {{
        [type.googleapis.com / mediapipe.EmbeddingsCalculatorOVOptions]: {{
            models_path: "{o.models_path}",
            normalize_embeddings: {o.normalize},
            truncate: {o.truncate},
            pooling: {o.pooling},
            target_device: "{o.target_device}",
            plugin_config: '{{ "NUM_STREAMS": "{o.num_streams}"}}',
        }}
    }}
}}"""


def rerank(o: GraphOptions) -> str:
    return HEADER + f"""
input_stream: "REQUEST_PAYLOAD:input"
output_stream: "RESPONSE_PAYLOAD:output"
node {{
    name: "{o.model_name}",
    calculator: "RerankCalculatorOV"
    input_side_packet: "RERANK_NODE_RESOURCES:rerank_servable"
    input_stream: "REQUEST_PAYLOAD:input"
    output_stream: "RESPONSE_PAYLOAD:output"
    node_options: {{
        [type.googleapis.com / mediapipe.RerankCalculatorOVOptions]: {{
            models_path: "{o.models_path}",
            max_allowed_chunks: {o.max_allowed_chunks},
            target_device: "{o.target_device}",
            plugin_config: '{{ "NUM_STREAMS": "{o.num_streams}"}}',
        }}
    }}
}}"""


def image_generation(o: GraphOptions) -> str:
    s = HEADER + f"""
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {{
  name: "ImageGenExecutor"
  calculator: "ImageGenCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {{
      [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {{
          models_path: "{o.models_path}"
          device: "{o.target_device}\""""
    if o.plugin_config:
        s += f"\n          plugin_config: '{o.plugin_config}'"
    if o.resolution:
        s += f'\n          resolution: "{o.resolution}"'
    if o.num_images_per_prompt is not None:
        s += f"\n          num_images_per_prompt: {o.num_images_per_prompt}"
    if o.guidance_scale is not None:
        s += f"\n          guidance_scale: {o.guidance_scale:g}"
    if o.max_resolution:
        s += f'\n          max_resolution: "{o.max_resolution}"'
    if o.default_resolution:
        s += f'\n          default_resolution: "{o.default_resolution}"'
    if o.max_num_images_per_prompt is not None:
        s += f"\n          max_num_images_per_prompt: {o.max_num_images_per_prompt}"
    if o.default_num_inference_steps is not None:
        s += f"\n          default_num_inference_steps: {o.default_num_inference_steps}"
    if o.max_num_inference_steps is not None:
        s += f"\n          max_num_inference_steps: {o.max_num_inference_steps}"
    mode = "STATIC" if "NPU" in o.target_device else "DYNAMIC"
    for alias, path, alpha in o.lora_adapters:
        s += f'\n          lora_adapters {{ alias: "{alias}" path: "{path}"'
        if alpha is not None:
            s += f" alpha: {alpha:g}"
        s += f" mode: {mode} }}"
    for alias, components in o.composite_lora_adapters:
        s += f'\n          composite_lora_adapters {{\n            alias: "{alias}"\n'
        for adapter_alias, alpha in components:
            s += f'            components {{ adapter_alias: "{adapter_alias}"'
            if alpha != 1.0:
                s += f" alpha: {alpha:g}"
            s += " }\n"
        s += "          }"
    s += """
      }
  }
}
"""
    return s


def _speech_plugin(o: GraphOptions) -> str:
    """createPluginString for the speech graphs: --plugin_config as given, else NUM_STREAMS from --num_streams."""
    return o.plugin_config or json.dumps({"NUM_STREAMS": str(o.num_streams)}, separators=(",", ":"))


def text2speech(o: GraphOptions) -> str:
    """graph_export.cpp createTextToSpeechGraphTemplate."""
    return HEADER + f"""
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node {{
    name: "T2sExecutor"
    calculator: "T2sCalculator"
    input_side_packet: "TTS_NODE_RESOURCES:t2s_servable"
    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"
    node_options: {{
        [type.googleapis.com / mediapipe.T2sCalculatorOptions]: {{
            models_path: "{o.models_path}"
            target_device: "{o.target_device}"
            plugin_config: '{_speech_plugin(o)}'
            }}
    }}
}}"""


def speech2text(o: GraphOptions) -> str:
    """graph_export.cpp createSpeechToTextGraphTemplate (with OVMS's LOOPBACK edge for streamed transcriptions)."""
    return HEADER + f"""
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node {{
    name: "S2tExecutor"
    calculator: "S2tCalculator"
    input_side_packet: "STT_NODE_RESOURCES:s2t_servable"
    input_stream: "LOOPBACK:loopback"
    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    output_stream: "LOOPBACK:loopback"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"
    input_stream_info: {{
        tag_index: 'LOOPBACK:0',
        back_edge: true
    }}
    node_options: {{
        [type.googleapis.com / mediapipe.S2tCalculatorOptions]: {{
            models_path: "{o.models_path}"
            target_device: "{o.target_device}"
            plugin_config: '{_speech_plugin(o)}'
        }}
    }}
    input_stream_handler {{
        input_stream_handler: "SyncSetInputStreamHandler",
        options {{
            [mediapipe.SyncSetInputStreamHandlerOptions.ext] {{
                sync_set {{
                    tag_index: "LOOPBACK:0"
                }}
            }}
        }}
    }}
}}"""


RENDERERS = {"text_generation": text_generation, "embeddings": embeddings, "rerank": rerank,
             "image_generation": image_generation, "text2speech": text2speech, "speech2text": speech2text}


def render(task: str, options: GraphOptions) -> str:
    return RENDERERS[task](options)


def write_graph(directory: pathlib.Path, task: str, options: GraphOptions) -> pathlib.Path:
    """Write (overwrite, as OVMS does) ``directory/graph.pbtxt``; returns its path."""
    path = directory / "graph.pbtxt"
    tmp = path.with_name("graph.pbtxt.tmp")
    tmp.write_text(render(task, options))
    tmp.replace(path)
    return path
