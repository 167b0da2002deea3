"""Neutral types of the generative verbs (text generation, embeddings, rerank, speech), free of any wire format."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class SamplingParams:
    """What a request asks of the sampler; None means "the model's default" (generation_config.json)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    n: int = 1
    best_of: int | None = None
    logprobs: int | None = None  # number of top logprobs asked for (only the chosen token's is returned)
    json_schema: str | None = None  # structured output: a JSON schema text
    tool_call_tags: dict | None = None  # tool-guided generation (ovms.genai.parsers.guided); wins over json_schema
    num_assistant_tokens: int | None = None  # speculative / prompt lookup decoding: candidates per step
    assistant_confidence_threshold: float | None = None  # speculative: draft until its confidence drops below
    max_ngram_size: int | None = None  # prompt lookup: the longest n-gram matched in the prompt
    skip_special_tokens: bool = True  # False: special tokens in the text, and no tool / reasoning parsing (OVMS)
    keep_raw: bool = False  # --verbose_response: the stream keeps the ids for its raw text


IGNORE_EOS_MAX_TOKENS = 4000  # OVMS's bound (and, without max_tokens, the length) of a generation ignoring EOS


@dataclasses.dataclass(slots=True)
class GenerationRequest:
    """One generation: a rendered prompt (chat template already applied) and its sampling parameters."""

    model_name: str
    prompt: str
    params: SamplingParams
    request_id: str = ""
    images: list = dataclasses.field(default_factory=list)  # uint8 [1, H, W, 3] arrays, tagged in the prompt


@dataclasses.dataclass(slots=True)
class TextChunk:
    """A piece of one generated sequence: text that is final, and the finish reason on its last chunk."""

    index: int
    text: str
    token_count: int  # tokens this chunk covers
    finish_reason: str | None = None  # "stop", "length", or None while generating
    logprobs: list[float] | None = None
    tokens: list[bytes] | None = None  # with logprobs: each token's raw bytes, for the logprobs' token texts


@dataclasses.dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(slots=True)
class ChatMessage:
    """A message as the chat template sees it (role, content and optional tool fields)."""

    role: str
    content: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # tool_calls, tool_call_id, name
    images: list[str] = dataclasses.field(default_factory=list)  # image_url parts' URLs, for a VLM

    def as_template_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content, **self.extra}


@dataclasses.dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclasses.dataclass(slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first piece of call ``index`` names it (``id``, ``name``, empty
    ``arguments``); the next ones carry only more ``arguments`` text, to be appended."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclasses.dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclasses.dataclass(slots=True)
class RerankResult:
    scores: list[tuple[int, float]]  # (document index, relevance score), best first
    prompt_tokens: int


@dataclasses.dataclass(slots=True)
class GenerativeInfo:
    """What an LLM servable tells the protocol layer: template, tool parser, limits."""

    tool_parser: str | None
    reasoning_parser: str | None
    max_num_seqs: int
    context_length: int | None
    vision: bool = False  # takes images (a VLM)
    tool_guided_generation: bool = False  # the graph's enable_tool_guided_generation


@dataclasses.dataclass(slots=True)
class ImageRequest:
    """One image generation or edit: the prompt, the pipeline options OVMS passes on (width, height,
    num_images_per_prompt, num_inference_steps, rng_seed, guidance_scale, strength, negative_prompt, ...), and for
    edits the image and optional mask (inpainting): the uploaded files' bytes from the protocol layer, decoded by the
    data plane into uint8 [1, H, W, 3] arrays before the servable sees them.

    ``model`` is the name the request used: a LoRA adapter's alias selects that adapter (OVMS routes by it)."""

    model: str
    prompt: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    image: Any = None
    mask: Any = None
    lora_alphas: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class ImageResult:
    images: list[bytes]  # PNG files, one per generated image


# Speech (/v3/audio/*)

SAMPLE_RATE = 16000  # what Whisper's feature extractor expects (openvino_genai WhisperPipeline.generate)


@dataclasses.dataclass(slots=True)
class TranscriptionRequest:
    """Speech to text: 16 kHz mono samples and what the request asks of the decoder."""

    samples: "np.ndarray | None" = None  # float32, mono, 16 kHz, in [-1, 1]; the data plane decodes the upload
    task: str = "transcribe"  # or "translate" (to English)
    language: str | None = None  # ISO-639-1 code of the speech ("en"); None: the model detects it
    temperature: float | None = None  # None: the model's default (greedy); > 0 samples
    segment_timestamps: bool = False  # timestamp_granularities[] segment
    word_timestamps: bool = False  # timestamp_granularities[] word (the graph's enable_word_timestamps)


@dataclasses.dataclass(slots=True)
class TimedText:
    """A piece of the transcription with its start and end in seconds."""

    text: str
    start: float
    end: float


@dataclasses.dataclass(slots=True)
class TranscriptionResult:
    text: str
    segments: list[TimedText] | None = None  # with segment_timestamps
    words: list[TimedText] | None = None  # with word_timestamps


@dataclasses.dataclass(slots=True)
class SpeechRequest:
    """Text to speech: the text, a voice configured on the servable (None: the model's default voice)."""

    text: str
    voice: str | None = None
    language: str = "en-us"
    speed: float = 1.0


@dataclasses.dataclass(slots=True)
class SpeechResult:
    samples: np.ndarray  # float32 mono
    sample_rate: int
