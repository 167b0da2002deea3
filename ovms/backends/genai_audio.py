"""Speech servables: speech to text on openvino_genai's WhisperPipeline, text to speech on Text2SpeechPipeline.

A pipeline runs one request at a time (OVMS holds a mutex around ``generate``: src/audio/speech_to_text/
s2t_calculator.cc, text_to_speech/t2s_calculator.cc). Here each servable has one worker thread, so the event loop
never waits on inference and requests queue in order; past ``max_queued`` waiting or running requests a new one is
refused with 503 (SERVER_BUSY), as a text generation servable refuses past twice its max_num_seqs.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import pathlib
import threading
from typing import Callable

import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from ovms.genai.types import SpeechRequest, SpeechResult, TimedText, TranscriptionRequest, TranscriptionResult
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.graph import GenAINodeOptions
from ovms.servable import SpeechServable, TranscriptionServable

log = logging.getLogger("ovms.audio")

MAX_QUEUED = 32  # waiting + running requests per servable before 503


class _Cancel:
    """Whether a request is to stop: its coroutine was cancelled, or its client closed the connection (aiohttp
    does not cancel handlers, so the transport's state is asked, from the pipeline's thread)."""

    __slots__ = ("event", "client_gone")

    def __init__(self, client_gone: Callable[[], bool] | None) -> None:
        self.event = threading.Event()
        self.client_gone = client_gone

    def is_set(self) -> bool:
        return self.event.is_set() or (self.client_gone is not None and self.client_gone())

    def check(self) -> None:
        if self.is_set():
            raise ServingError(Kind.GENAI_INVALID_REQUEST, "the client closed the connection before the answer: "
                                                           "request cancelled")


class _SerialWorker:
    """One thread per pipeline: jobs run in arrival order; ``in_flight`` counts those waiting or running."""

    def __init__(self, name: str, max_queued: int = MAX_QUEUED) -> None:
        self.name = name
        self.max_queued = max_queued
        self.in_flight = 0  # touched on the event loop only
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"ovms-audio-{name}")

    async def run(self, job: Callable[[_Cancel], object], *, client_gone: Callable[[], bool] | None = None):
        if self.in_flight >= self.max_queued:
            raise ServingError(Kind.SERVER_BUSY, f"{self.in_flight} requests in flight on {self.name}, which runs "
                                                 f"one at a time and queues at most {self.max_queued}")
        loop = asyncio.get_running_loop()
        cancel = _Cancel(client_gone)
        self.in_flight += 1
        future = self._executor.submit(job, cancel)
        future.add_done_callback(lambda _: self._call_on(loop, self._done))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.event.set()  # a job not yet started returns at once; a running Whisper stops at its next token
            raise

    def _done(self) -> None:
        self.in_flight -= 1

    @staticmethod
    def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop closed (server stopped) before the job ended: nothing left to count
            pass

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _plugin(options: GenAINodeOptions) -> dict:
    return {k: (str(v) if k == "NUM_STREAMS" else v) for k, v in options.plugin_config.items()}


def _chunks(groups) -> list[TimedText]:
    """ASRDecodedResults' chunks / words as flat timed texts (OVMS writes them the same way, one list)."""
    result = []
    for item in groups or ():
        for piece in (item if isinstance(item, (list, tuple)) else (item,)):
            result.append(TimedText(str(piece.text if hasattr(piece, "text") else piece.word),
                                    float(piece.start_ts), float(piece.end_ts)))
    return result


class WhisperServable(TranscriptionServable):
    """Transcription and translation on ``WhisperPipeline`` (the graph's S2tCalculator)."""

    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name, self.version, self.options = name, 1, options
        path = options.models_path
        for file in ("openvino_encoder_model.xml", "openvino_decoder_model.xml", "openvino_tokenizer.xml"):
            if not (path / file).is_file():
                raise ModelLoadError(f"{path}: {file} missing; a speech2text models_path must hold a Whisper model "
                                     "exported with optimum-cli export openvino (task automatic-speech-recognition) "
                                     "and its converted tokenizer")
        properties = _plugin(options)
        if options.enable_word_timestamps:
            properties["word_timestamps"] = True  # OVMS's S2tCalculator passes the graph option the same way
        try:
            self._pipe = ov_genai.WhisperPipeline(str(path), options.device, **properties)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the Whisper model: {exc}") from None
        self._languages = set(self._pipe.get_generation_config().lang_to_id)
        self._worker = _SerialWorker(name)
        self.streaming = options.loopback

    @property
    def worker(self) -> _SerialWorker:
        return self._worker

    def _config(self, request: TranscriptionRequest):
        config = self._pipe.get_generation_config()
        config.task = request.task
        if request.language:
            token = f"<|{request.language}|>"
            if self._languages and token not in self._languages:
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"language: {request.language!r} is not a language of "
                                   f"model {self.name} (ISO-639-1 codes such as en, de, fr)")
            config.language = token
        if request.temperature is not None:
            config.temperature = request.temperature
            config.do_sample = request.temperature != 0  # as OVMS's SttServable::parseTemperature
        config.return_timestamps = request.segment_timestamps
        if request.word_timestamps and not self.options.enable_word_timestamps:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, "Word timestamps not supported for this model "
                                                           "(set enable_word_timestamps: true in the graph's "
                                                           "S2tCalculatorOptions)")
        config.word_timestamps = request.word_timestamps  # OVMS sets it per request, off unless asked
        return config

    def _run(self, request: TranscriptionRequest, cancel: _Cancel,
             on_text: Callable[[str], None] | None) -> TranscriptionResult:
        cancel.check()
        config = self._config(request)

        def streamer(text: str):  # called per decoded piece; also the way to stop a generation whose client left
            if cancel.is_set():
                return ov_genai.StreamingStatus.CANCEL
            if on_text is not None and text:
                on_text(text)
            return ov_genai.StreamingStatus.RUNNING

        # openvino_genai streams only without timestamps ("Streamer supported ... with return_timestamps=False")
        use_streamer = not (config.return_timestamps or config.word_timestamps)
        if on_text is not None and not use_streamer:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, "timestamp_granularities cannot be combined with stream: "
                                                           "openvino_genai streams transcriptions without timestamps")
        try:
            result = self._pipe.generate(request.samples, config, streamer if use_streamer else None)
        except RuntimeError as exc:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, str(exc).strip().splitlines()[-1]) from None
        cancel.check()
        text = "".join(result.texts)
        segments = _chunks(result.chunks) if config.return_timestamps else None
        words = _chunks(getattr(result, "words", None)) if config.word_timestamps else None
        return TranscriptionResult(text, segments, words)

    async def transcribe(self, request: TranscriptionRequest, *, on_text: Callable[[str], None] | None = None,
                         client_gone: Callable[[], bool] | None = None) -> TranscriptionResult:
        return await self._worker.run(lambda cancel: self._run(request, cancel, on_text), client_gone=client_gone)

    def close(self) -> None:
        self._worker.close()


def _read_voice(path: pathlib.Path, shape: list[int]) -> np.ndarray:
    """A speaker embedding file: raw float32 values, as many as the model's embedding shape holds (OVMS's
    readSpeakerEmbedding, with its messages)."""
    try:
        data = path.read_bytes()
    except OSError:
        raise ModelLoadError(f"Requested voice speaker embeddings file does not exist: {path}") from None
    want = int(np.prod(shape))
    if len(data) % 4:
        raise ModelLoadError(f"{path}: File size is not a multiple of float size.")
    if len(data) // 4 != want:
        raise ModelLoadError(f"{path}: File must contain speaker embedding with {want} 32-bit floats. Got: "
                             f"{len(data) // 4}")
    return np.frombuffer(data, np.float32).reshape(shape).copy()


class Text2SpeechServable(SpeechServable):
    """Speech on ``Text2SpeechPipeline`` (the graph's T2sCalculator); voices from ``models_path/voices/*.bin`` and
    the graph's ``voices`` entries, as OVMS's TtsServable loads them."""

    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name, self.version, self.options = name, 1, options
        path = options.models_path
        for file in ("openvino_encoder_model.xml", "openvino_decoder_model.xml", "openvino_vocoder.xml"):
            if not (path / file).is_file():
                raise ModelLoadError(f"{path}: {file} missing; a text2speech models_path must hold a SpeechT5 model "
                                     "exported with optimum-cli export openvino (task text-to-audio, with "
                                     "--model-kwargs vocoder) and its converted tokenizer")
        try:
            self._pipe = ov_genai.Text2SpeechPipeline(str(path), options.device, **_plugin(options))
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the text-to-speech model: {exc}") from None
        try:
            self.model_type = str(json.loads((path / "config.json").read_text()).get("model_type", ""))
        except (OSError, ValueError, AttributeError):
            self.model_type = ""
        shape = [int(d) for d in self._pipe.get_speaker_embedding_shape()]
        self.voices: dict[str, np.ndarray] = {}
        voices_dir = path / "voices"
        if voices_dir.is_dir():
            for file in sorted(voices_dir.glob("*.bin")):
                try:
                    self.voices[file.stem] = _read_voice(file, shape)
                except ModelLoadError as exc:  # OVMS warns and goes on without the directory's voices
                    log.warning("%s: voices directory skipped: %s", name, exc)
        for voice, file in options.voices.items():
            self.voices[voice] = _read_voice(pathlib.Path(file), shape)
        self._worker = _SerialWorker(name)

    @property
    def worker(self) -> _SerialWorker:
        return self._worker

    def _run(self, request: SpeechRequest, cancel: _Cancel) -> SpeechResult:
        cancel.check()
        embedding = None
        if request.voice is not None:
            if request.voice not in self.voices:
                known = ", ".join(sorted(self.voices)) or "none configured"
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"Requested voice '{request.voice}' not found in "
                                                               f"available voices ({known})")
            embedding = ov.Tensor(self.voices[request.voice])
        try:
            result = self._pipe.generate(request.text, embedding, language=request.language, speed=request.speed)
        except RuntimeError as exc:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, str(exc).strip().splitlines()[-1]) from None
        # .data is a view the next generate() overwrites (../shared/FIXTURES.md): copy before the lock is free
        samples = np.array(result.speeches[0].data, dtype=np.float32, copy=True).reshape(-1)
        return SpeechResult(samples, int(result.output_sample_rate))

    async def speak(self, request: SpeechRequest, *, client_gone: Callable[[], bool] | None = None) -> SpeechResult:
        if not self.options.speed_min <= request.speed <= self.options.speed_max:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, f"speed must be between speed_min "
                                                           f"({self.options.speed_min:g}) and speed_max "
                                                           f"({self.options.speed_max:g})")
        if self.model_type == "speecht5":  # request fields openvino_genai passes to Kokoro only
            if request.speed != 1.0:
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"speed: model {self.name} (SpeechT5) speaks at one "
                                                               f"speed; {request.speed:g} is not supported (use 1.0)")
            if request.language.lower() != "en-us":
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"language: model {self.name} (SpeechT5) speaks "
                                                               f"English only; {request.language!r} is not supported "
                                                               "(use en-us)")
        return await self._worker.run(lambda cancel: self._run(request, cancel), client_gone=client_gone)

    def close(self) -> None:
        self._worker.close()
