"""Servable interfaces (capabilities) and the request validation every tensor servable shares.

A servable is one loaded model version. Backends implement the capabilities they have; the data plane asks
``isinstance(servable, InferServable)`` and answers "not supported" otherwise.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence

import numpy as np

from ovms._native.codec_errors import CodecError
from ovms.errors import Kind, ServingError
from ovms.image_input import ImageBatch, is_image_input
from ovms.types import InferRequest, InferResponse, StreamContext, TensorSpec

if TYPE_CHECKING:
    from ovms.genai.types import (ChatMessage, EmbeddingResult, GenerationRequest, GenerativeInfo, ImageRequest,
                                  ImageResult, RerankResult, SpeechRequest, SpeechResult, TextChunk,
                                  TranscriptionRequest, TranscriptionResult)


class Servable(abc.ABC):
    """A loaded model version."""

    name: str
    version: int
    platform: str = "OpenVINO"

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    def close(self) -> None:
        """Release device resources; called after the last in-flight request ended."""

    def revalidate(self) -> None:
        """Check again against the served models it uses, after they changed (config ``uses_models``).

        Raise ``ModelLoadError`` saying what no longer fits; the registry then stops serving this servable until a
        later check passes.
        """


class InferServable(Servable):
    """A servable that maps named input tensors to named output tensors."""

    @abc.abstractmethod
    async def infer(self, request: InferRequest) -> InferResponse: ...


class StreamingInferServable(InferServable):
    """An InferServable that may answer one request with several responses (a MediaPipe graph whose Python node
    yields): ``infer_stream`` serves gRPC ModelStreamInfer, ``infer`` the unary calls."""

    @abc.abstractmethod
    def infer_stream(self, request: InferRequest, *,
                     stream: StreamContext | None = None) -> AsyncIterator[InferResponse]:
        """The responses to one request of a stream; ``stream`` is shared by the stream's requests."""


class TextServable(Servable):
    """A servable of the OpenAI / Cohere endpoints: it has no KServe tensor inputs or outputs."""

    @property
    def inputs(self) -> list[TensorSpec]:
        return []

    @property
    def outputs(self) -> list[TensorSpec]:
        return []


class GenerativeServable(TextServable):
    """A text generation servable (LLM): chat template, tokenizer and a streaming ``generate``."""

    @property
    @abc.abstractmethod
    def info(self) -> "GenerativeInfo": ...

    @abc.abstractmethod
    def apply_chat_template(self, messages: "list[ChatMessage]", *, tools: list | None = None,
                            template_kwargs: dict | None = None) -> str:
        """The prompt text for a conversation (raises ServingError for what the template rejects)."""

    @abc.abstractmethod
    async def tokenize(self, texts: list[str], *, max_length: int | None = None, truncation: bool = False,
                       pad_to_max_length: bool = False, add_special_tokens: bool = True,
                       padding_side: str | None = None) -> list[list[int]]:
        """Token ids of each text as /v3/tokenize returns them (padding kept only with pad_to_max_length)."""

    @abc.abstractmethod
    async def generate(self, request: "GenerationRequest") -> "GenerationStream":
        """Start a generation (queued in the backend); iterate the stream for its text."""


class GenerationStream(abc.ABC):
    """A started generation: its prompt length, its final text pieces, and ``abort`` to cancel it."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_us: float | None = None  # time to first token, once known
    tpot_us: float | None = None  # mean time per output token after the first, once finished

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator["TextChunk"]: ...

    @abc.abstractmethod
    def abort(self) -> None:
        """Cancel the generation and free its sequence (client gone, deadline); safe to call twice."""

    def raw_text(self, index: int) -> str | None:
        """A choice's generated text with its special tokens, when the request kept it (``params.keep_raw``)."""
        return None


class EmbeddingServable(TextServable):
    """Text embeddings (pooling and normalization as configured in the graph)."""

    @abc.abstractmethod
    async def embed(self, texts: list[str] | list[list[int]]) -> "EmbeddingResult": ...


class ImageGenerationServable(TextServable):
    """Images from a prompt (text to image) and edits of an uploaded image (image to image, inpainting with a
    mask), as OVMS's ImageGenCalculator serves them."""

    @abc.abstractmethod
    async def generate_images(self, request: "ImageRequest", *,
                              client_gone: "Callable[[], bool] | None" = None) -> "ImageResult":
        """The images of the prompt; dropped when ``client_gone`` turns true (not started, or stopped at the next
        denoising step)."""

    @abc.abstractmethod
    async def edit_images(self, request: "ImageRequest", *,
                          client_gone: "Callable[[], bool] | None" = None) -> "ImageResult":
        """The edited image (image to image, or inpainting with ``request.mask``); dropped like a generation."""

    def aliases(self) -> list[str]:
        """Other names a request may give in ``model`` for this servable (LoRA adapters), none by default."""
        return []


class RerankServable(TextServable):
    """Relevance scores of documents for a query (cross-encoder)."""

    @abc.abstractmethod
    async def rerank(self, query: str, documents: list[str]) -> "RerankResult": ...



class TranscriptionServable(TextServable):
    """Speech to text (Whisper): transcription, and translation to English."""

    streaming: bool = False  # the graph allows streamed transcriptions (OVMS: a LOOPBACK edge)

    @abc.abstractmethod
    async def transcribe(self, request: "TranscriptionRequest", *, on_text: "Callable[[str], None] | None" = None,
                         client_gone: "Callable[[], bool] | None" = None) -> "TranscriptionResult":
        """The transcription; ``on_text`` (called from the pipeline's thread) gets each piece as it is decoded;
        when ``client_gone`` turns true the request is dropped (not started, or stopped at the next piece)."""


class SpeechServable(TextServable):
    """Text to speech: the voices it has, and the samples of the spoken text."""

    @abc.abstractmethod
    async def speak(self, request: "SpeechRequest", *,
                    client_gone: "Callable[[], bool] | None" = None) -> "SpeechResult":
        """The spoken input; not started when ``client_gone`` is already true."""

def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def validate_inputs(servable: Servable, request: InferRequest) -> dict[str, "np.ndarray | ImageBatch"]:
    """Check a request against the servable's inputs as OVMS does; return input arrays by name.

    Order of checks and messages follow OVMS's request validator: number of inputs, missing names,
    precision, number of dimensions, shape, then content size. BYTES sent to a 4-D numeric input are encoded
    images (OVMS's binary input): they come back as an ``ImageBatch`` for the backend to decode off the loop.
    """
    specs = servable.inputs
    if len(request.inputs) != len(specs):
        raise ServingError(Kind.INVALID_NO_OF_INPUTS, f"Expected: {len(specs)}; Actual: {len(request.inputs)}")
    by_name = {tensor.name: tensor for tensor in request.inputs}
    arrays = {}
    for spec in specs:
        tensor = by_name.get(spec.name)
        if tensor is None:
            raise ServingError(Kind.INVALID_MISSING_INPUT, f"Required input: {spec.name}")
        if is_image_input(tensor, spec):
            arrays[spec.name] = ImageBatch.from_tensor(tensor, spec)
            continue
        if tensor.datatype != spec.datatype:
            raise ServingError(Kind.INVALID_PRECISION,
                               f"Expected: {spec.datatype}; Actual: {tensor.datatype}; input name: {spec.name}")
        shape = tensor.shape
        if any(d < 0 for d in shape):
            raise ServingError(Kind.INVALID_SHAPE, f"Negative or zero dimension size is not acceptable: "
                                                   f"{_shape_text(shape)}; input name: {spec.name}")
        if len(shape) != len(spec.shape):
            raise ServingError(Kind.INVALID_NO_OF_SHAPE_DIMENSIONS,
                               f"Expected: {_shape_text(spec.shape)}; Actual: {_shape_text(shape)}; "
                               f"input name: {spec.name}")
        for want, got in zip(spec.shape, shape):
            if want != -1 and want != got:
                raise ServingError(Kind.INVALID_SHAPE, f"Expected: {_shape_text(spec.shape)}; "
                                                       f"Actual: {_shape_text(shape)}; input name: {spec.name}")
        try:
            arrays[spec.name] = tensor.as_array()
        except CodecError as exc:
            raise ServingError(Kind.INVALID_CONTENT_SIZE, f"{exc}; input name: {spec.name}") from None
    return arrays
