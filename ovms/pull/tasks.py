"""``--task`` inference from a repository's ``config.json`` / ``model_index.json`` when the flag is absent."""
from __future__ import annotations

import json
import re
from typing import Iterable

from ovms.pull.errors import UsageError

CANNOT_INFER = "Could not infer model task - specify --task value explicitly"  # OVMS's message


def infer_task(config_json: bytes | None, model_index_json: bytes | None) -> str:
    """The OVMS task for a repository, from its config files (diffusers' model_index.json = image generation)."""
    if model_index_json is not None:
        return "image_generation"
    if config_json is None:
        raise UsageError(CANNOT_INFER, remedy="The repository has neither config.json nor model_index.json; "
                                              "pass --task text_generation|embeddings|rerank|image_generation|text2speech|speech2text.")
    try:
        config = json.loads(config_json)
    except ValueError:
        raise UsageError(CANNOT_INFER, remedy="Its config.json is not valid JSON; pass --task.") from None
    architectures = [str(a) for a in (config.get("architectures") or [])] if isinstance(config, dict) else []
    # Speech before text generation: they share the ForConditionalGeneration suffix (OVMS's
    # default_task_detector.cpp: Speech2TextDetector, Text2SpeechDetector, then TextGen).
    for arch in architectures:
        if arch in ("WhisperForConditionalGeneration", "Qwen3ASRForConditionalGeneration") \
                or arch.startswith("SeamlessM4T"):
            return "speech2text"
        if arch == "ParlerTTSForConditionalGeneration" or arch.endswith("ForTextToSpeech"):
            return "text2speech"
    if isinstance(config, dict) and config.get("architectures", "") is None and "n_mels" in config:
        return "text2speech"  # Kokoro: architectures null, n_mels set
    for arch in architectures:
        if arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForVision2Seq",
                          "ForImageTextToText")):
            return "text_generation"
        if arch.endswith("ForSequenceClassification"):
            return "rerank"
        if arch.endswith("Model") and "For" not in arch:
            return "embeddings"
    found = ", ".join(architectures) or "none"
    raise UsageError(CANNOT_INFER, remedy=f"config.json lists architectures: {found}. Pass --task "
                                          "text_generation|embeddings|rerank|image_generation|text2speech|speech2text.")


_CLASSIC_MODEL = re.compile(r"^[1-9][0-9]*/[^/]+\.(xml|onnx|pdmodel|tflite)$|^[1-9][0-9]*/saved_model\.pb$")


def is_classic_layout(paths: Iterable[str]) -> bool:
    """A classic OVMS model: numeric version directories at the top holding model files (1/model.xml, ...).

    Such a repository is served as it is; it gets no graph.pbtxt.
    """
    return any(_CLASSIC_MODEL.match(p) for p in paths)
