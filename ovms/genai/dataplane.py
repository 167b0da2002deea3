"""Generative verbs of the data plane: generate (chat, completions), embed, rerank, tokenize, images, list models.

Each verb resolves the servable through the registry and holds it (``entry.enter()`` / ``leave()``) for the
whole request, streaming included, so an unload or reload waits for generations in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import AsyncIterator, Callable

from ovms.dataplane import DataPlane
from ovms.errors import Kind, ServingError
from ovms.genai.types import (ChatMessage, EmbeddingResult, GenerationRequest, GenerativeInfo, ImageRequest,
                              ImageResult, RerankResult, SamplingParams, SpeechRequest, TranscriptionRequest,
                              TranscriptionResult)
from ovms.genai.audio_input import decode_audio, wav_bytes
from ovms.genai.media import MediaPolicy, decode_image, load_images
from ovms.registry import VersionState
from ovms.servable import (EmbeddingServable, GenerationStream, GenerativeServable, ImageGenerationServable,
                           RerankServable, SpeechServable, TranscriptionServable)
from ovms.genai.parsers import guided


@dataclasses.dataclass(slots=True)
class Generation:
    """A started generation: the stream of text and what the protocol layer needs around it."""

    stream: GenerationStream
    info: GenerativeInfo
    prompt: str


class GenAIDataPlane:
    """OpenAI / Cohere verbs on top of the shared data plane (same registry, metrics and readiness)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self._loaded_at: dict[str, int] = {}
        self.media = MediaPolicy()  # where images may come from (the server sets it from its flags)

    def _count(self, method: str, name: str, ok: bool) -> None:
        # OVMS counts /v3 requests as api="V3", method="Unary" (or "Stream" for SSE answers)
        self.dataplane._count("V3", "REST", method, name, "", ok)

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, capability: type, method: str, what: str):
        try:
            entry = self.registry.version_entry(name)
        except ServingError:
            raise ServingError(Kind.MODEL_NAME_MISSING, name) \
                from None
        servable = entry.enter()
        ok = False
        try:
            if not isinstance(servable, capability):
                raise ServingError(Kind.NOT_IMPLEMENTED, f"model {name} does not serve {what}")
            yield servable
            ok = True
        finally:
            entry.leave()
            self._count(method, name, ok)

    @contextlib.asynccontextmanager
    async def generation(self, name: str, params: SamplingParams, *, messages: list[ChatMessage] | None = None,
                         prompt: str | None = None, tools: list | None = None,
                         template_kwargs: dict | None = None, stream: bool = False,
                         tools_required: bool = False) -> AsyncIterator[Generation]:
        """Render the prompt (chat template for messages), start generating, and abort on early exit.

        With tools, the graph's enable_tool_guided_generation or ``tools_required`` (tool_choice "required")
        constrain the tool calls to the tools' schemas, as OVMS does for the parsers it builds a constraint for."""
        async with self._hold(name, GenerativeServable, "Stream" if stream else "Unary",
                              "text generation (/v3/chat/completions, /v3/completions)") as servable:
            images: list = []
            if messages is not None:
                urls = [url for m in messages for url in m.images]
                if urls:
                    if not servable.info.vision:
                        raise ServingError(Kind.GENAI_INVALID_REQUEST, "image_url parts are not supported by a text "
                                           "generation model (multimodal input needs a VLM servable)")
                    images = await load_images(urls, self.media)
                    messages = _tag_images(messages)
                prompt = servable.apply_chat_template(messages, tools=tools, template_kwargs=template_kwargs)
            if tools and (servable.info.tool_guided_generation or tools_required):
                tags = guided.tool_call_tags(servable.info.tool_parser, tools, required=tools_required)
                if tags is not None:
                    params = dataclasses.replace(params, tool_call_tags=tags)
            stream = await servable.generate(GenerationRequest(name, prompt or "", params, images=images))
            try:
                yield Generation(stream, servable.info, prompt or "")
            finally:
                stream.abort()  # no-op when it finished; frees the sequence when the client went away
                self._observe(name, stream)

    def _observe(self, name: str, stream: GenerationStream) -> None:
        metrics = self.dataplane.metrics
        if metrics is None:
            return
        if stream.ttft_us is not None:
            metrics.observe("ovms_llm_time_to_first_token_us", (name, "1", "REST"), stream.ttft_us)
        if stream.tpot_us is not None:
            metrics.observe("ovms_llm_time_per_output_token_us", (name, "1", "REST"), stream.tpot_us)

    async def embed(self, name: str, inputs) -> EmbeddingResult:
        async with self._hold(name, EmbeddingServable, "Unary", "embeddings (/v3/embeddings)") as servable:
            return await servable.embed(inputs)

    async def rerank(self, name: str, query: str, documents: list[str]) -> RerankResult:
        async with self._hold(name, RerankServable, "Unary", "rerank (/v3/rerank)") as servable:
            return await servable.rerank(query, documents)

    async def transcribe(self, name: str, audio: bytes, request: TranscriptionRequest, *,
                         client_gone: Callable[[], bool] | None = None) -> TranscriptionResult:
        """Speech to text (/v3/audio/transcriptions and /translations): decode the upload off the event loop, then
        run the servable's Whisper; counted and timed as OVMS's V3 requests."""
        started = time.perf_counter_ns()
        async with self._hold(name, TranscriptionServable, "Unary",
                              "speech to text (/v3/audio/transcriptions, /v3/audio/translations)") as servable:
            samples = await asyncio.to_thread(decode_audio, audio)
            result = await servable.transcribe(dataclasses.replace(request, samples=samples),
                                               client_gone=client_gone)
        self._observe_request(name, started)
        return result

    async def transcribe_stream(self, name: str, audio: bytes,
                                request: TranscriptionRequest) -> AsyncIterator[str | TranscriptionResult]:
        """A streamed transcription: each decoded piece of text as the pipeline produces it, then the result.
        Errors before the first piece (the upload, the request) are raised before anything is yielded; closing the
        iterator early (the client left) cancels the generation."""
        started = time.perf_counter_ns()
        async with self._hold(name, TranscriptionServable, "Stream", "speech to text "
                              "(/v3/audio/transcriptions, /v3/audio/translations)") as servable:
            if not servable.streaming:
                raise ServingError(Kind.GENAI_INVALID_REQUEST, "streaming is not supported for this graph "
                                   "configuration (LOOPBACK not configured)")
            samples = await asyncio.to_thread(decode_audio, audio)
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue = asyncio.Queue()
            task = asyncio.ensure_future(servable.transcribe(
                dataclasses.replace(request, samples=samples),
                on_text=lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)))
            # the pieces were queued (call_soon_threadsafe, in order) before the job's end reaches the loop
            task.add_done_callback(lambda _: pieces.put_nowait(None))
            try:
                while (piece := await pieces.get()) is not None:
                    yield piece
                result = await task
            finally:
                task.cancel()  # no-op when it finished; cancels the pipeline's generation when the client left
            self._observe_request(name, started)
            yield result

    async def speak(self, name: str, request: SpeechRequest, *,
                    client_gone: Callable[[], bool] | None = None) -> bytes:
        """Text to speech (/v3/audio/speech): the WAV file of the spoken input."""
        started = time.perf_counter_ns()
        async with self._hold(name, SpeechServable, "Unary", "text to speech (/v3/audio/speech)") as servable:
            result = await servable.speak(request, client_gone=client_gone)
            wav = await asyncio.to_thread(wav_bytes, result.samples, result.sample_rate)
        self._observe_request(name, started)
        return wav

    def _observe_request(self, name: str, started_ns: int) -> None:
        """ovms_request_time_us of a successful request (labels name, version, interface, as OVMS's)."""
        metrics = self.dataplane.metrics
        if metrics is not None:
            metrics.observe("ovms_request_time_us", (name, "1", "REST"), (time.perf_counter_ns() - started_ns) / 1000)

    async def tokenize(self, name: str, texts: list[str], options: dict | None = None) -> list[list[int]]:
        async with self._hold(name, GenerativeServable, "Unary", "tokenization (/v3/tokenize)") as servable:
            return await servable.tokenize(texts, **(options or {}))

    async def images(self, request: ImageRequest, *, edit: bool,
                     client_gone: Callable[[], bool] | None = None) -> ImageResult:
        """Generate images from the prompt, or (``edit``) from the uploaded image: image to image, or inpainting
        when a mask came. ``request.model`` names the servable or one of its LoRA adapters; ``request.image`` and
        ``mask`` arrive encoded (PNG, JPEG, ...) and are decoded here, off the event loop."""
        name = self._image_model(request.model)
        started = time.perf_counter_ns()
        what = "image edits (/v3/images/edits)" if edit else "image generation (/v3/images/generations)"
        try:
            async with self._hold(name, ImageGenerationServable, "Unary", what) as servable:
                if not edit:
                    return await servable.generate_images(request, client_gone=client_gone)
                image, mask = await asyncio.to_thread(_decode_edit, request.image, request.mask)
                return await servable.edit_images(dataclasses.replace(request, image=image, mask=mask),
                                                  client_gone=client_gone)
        finally:
            if self.dataplane.metrics is not None and name in self.registry.models:
                elapsed_us = (time.perf_counter_ns() - started) / 1000
                self.dataplane.metrics.observe("ovms_request_time_us", (name, "1", "REST"), elapsed_us)

    def _image_model(self, name: str) -> str:
        """The served model a request's ``model`` means: itself, or the image generation graph with a LoRA adapter
        of that alias (OVMS routes adapters by the model name)."""
        if name in self.registry.models:
            return name
        for model in self.registry.models.values():
            for entry in model.versions.values():
                servable = entry.servable
                if (entry.state is VersionState.AVAILABLE and isinstance(servable, ImageGenerationServable)
                        and name in servable.aliases()):
                    return model.name
        return name

    def _created(self, name: str) -> int:
        return self._loaded_at.setdefault(name, int(time.time()))

    def list_models(self) -> list[tuple[str, int]]:
        """(name, created) of every model with an available version, as OpenAI's GET /v3/models lists them."""
        result = []
        for name, model in sorted(self.registry.models.items()):
            if any(e.state is VersionState.AVAILABLE for e in model.versions.values()):
                result.append((name, self._created(name)))
        return result

    def get_model(self, name: str) -> tuple[str, int]:
        if name not in dict(self.list_models()):
            raise ServingError(Kind.MODEL_NAME_MISSING, name)
        return name, self._created(name)


def _tag_images(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Each message's images as openvino_genai's tags (``<ov_genai_image_N>``, numbered across the conversation)
    before its text: the pipeline replaces each tag with the model's own image tokens, whatever the model."""
    tagged, number = [], 0
    for m in messages:
        if m.images:
            tags = "".join(f"<ov_genai_image_{number + k}>" for k in range(len(m.images)))
            number += len(m.images)
            m = dataclasses.replace(m, content=tags + m.content)
        tagged.append(m)
    return tagged


def _decode_edit(image: bytes, mask: bytes | None):
    """The uploaded image and mask as uint8 [1, H, W, 3] RGB (blocking: Pillow)."""
    return decode_image(image), None if mask is None else decode_image(mask)
