"""GenAI graph servables: read the graph (or the --task given), then load the matching pipeline (LLM, VLM,
embeddings, rerank, image generation)."""
from __future__ import annotations

from ovms.backends import cache
from ovms.config import ModelConfig
from ovms.errors import ConfigError, ModelLoadError
from ovms.graph import node_options_from, read_graph, read_graph_text
from ovms.servable import Servable

_TASKS = {"text_generation": "text_generation", "embeddings": "embeddings", "embeddings_ov": "embeddings",
          "rerank": "rerank", "rerank_ov": "rerank", "image_generation": "image_generation",
          "speech2text": "speech2text", "text2speech": "text2speech"}


def load_graph_servable(config: ModelConfig) -> Servable:
    """Load the servable of a graph directory (blocking; the registry runs it in a thread)."""
    try:
        if config.graph_path is not None:
            options = read_graph(config.graph_path)
        else:
            task = _TASKS.get(config.task or "")
            if task is None:
                raise ModelLoadError(f"task {config.task!r} is not served by this server; tasks: "
                                     f"{', '.join(sorted(_TASKS))}")
            if config.graph_text is not None:  # --task with its flags, as OVMS builds the graph in memory
                options = read_graph_text(config.graph_text, config.base_path, where=f"--task {config.task}")
            else:
                options = node_options_from(task, {}, config.base_path)
                if task == "embeddings":
                    options.pooling = "CLS"
            options.models_path = config.base_path
    except ConfigError as exc:
        raise ModelLoadError(str(exc)) from None
    # An LLM's models_path may also name a GGUF file (LLMServable checks it, with OVMS's messages)
    if options.task != "text_generation" and not options.models_path.is_dir():
        raise ModelLoadError(f"models_path {options.models_path} of graph {config.name} is not a directory")
    options.plugin_config = {**cache.properties_for(config), **options.plugin_config}
    if options.task == "text_generation":
        from ovms.backends.genai_llm import LLMServable

        return LLMServable(config.name, options)
    if options.task == "image_generation":
        from ovms.backends.genai_images import ImageGenServable

        return ImageGenServable(config.name, options)
    if options.task in ("speech2text", "text2speech"):
        from ovms.backends import genai_audio

        if options.task == "speech2text":
            return genai_audio.WhisperServable(config.name, options)
        return genai_audio.Text2SpeechServable(config.name, options)
    from ovms.backends import genai_embeddings

    if options.task == "embeddings":
        return genai_embeddings.EmbeddingsServable(config.name, options)
    return genai_embeddings.RerankPipelineServable(config.name, options)
