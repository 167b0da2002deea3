"""OpenAI audio endpoints <-> neutral types: /v3/audio/transcriptions and /translations (multipart forms), and
/v3/audio/speech (JSON in, WAV out).

Fields and messages follow OVMS (src/audio/speech_to_text/s2t_calculator.cc and s2t_servable.cpp,
src/audio/text_to_speech/t2s_calculator.cc; docs/model_server_rest_api_speech_to_text.md). OpenAI fields this
server cannot honour are refused with the field named instead of being ignored; fields unknown to both are logged.
"""
from __future__ import annotations

import dataclasses
import math

from ovms.genai.protocol.common import Form, invalid, log_unknown, model_field
from ovms.genai.types import SpeechRequest, TimedText, TranscriptionRequest, TranscriptionResult

ISO_LANG_CODE_MAX = 3  # OVMS's SttServable


@dataclasses.dataclass(slots=True)
class TranscriptionCall:
    model: str
    audio: bytes  # the uploaded file, decoded by the data plane off the event loop
    request: TranscriptionRequest
    response_format: str  # json or text
    stream: bool = False  # Server-Sent Events: transcript.text.delta events, then transcript.text.done


# Fields of OpenAI's API that this server does not implement (OVMS marks them ❌ in its API reference).
_NOT_SUPPORTED = {
    "prompt": "a prompt to guide the transcription is not supported by this server",
    "chunking_strategy": "chunking_strategy is not supported: audio longer than 30 s is cut the way Whisper "
                         "does it (openvino_genai's long-form decoding)",
    "include[]": "include (logprobs) is not supported by this server",
    "include": "include (logprobs) is not supported by this server",
    "known_speaker_names[]": "known_speaker_names (diarization) is not supported by this server",
    "known_speaker_references[]": "known_speaker_references (diarization) is not supported by this server",
}
_KNOWN = {"model", "file", "language", "temperature", "response_format", "timestamp_granularities[]",
          "timestamp_granularities", "stream"} | set(_NOT_SUPPORTED)
RESPONSE_FORMATS = ("json", "text")


def decode_transcription(form: Form, *, translate: bool) -> TranscriptionCall:
    """A transcription (or, with ``translate``, translation) request; 400 naming the field that is wrong."""
    endpoint = "translations" if translate else "transcriptions"
    log_unknown({**form.fields, **form.files}, _KNOWN, f"audio/{endpoint}")
    for name, why in _NOT_SUPPORTED.items():
        if name in form.fields or name in form.files:
            raise invalid(f"{name.rstrip('[]')}: {why}")
    model = form.get("model")
    if not model:
        raise invalid("model missing in request")
    if "file" not in form.files:
        if "file" in form.fields:
            raise invalid("File parsing fails: the file field must be a file upload (multipart filename), not text")
        raise invalid("File parsing fails: the request has no file field")
    stream = (form.get("stream") or "false").lower()
    if stream not in ("true", "false"):
        raise invalid("stream accepts values true or false")
    if stream == "true" and translate:
        raise invalid("streaming is not supported for translations endpoint")
    response_format = form.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise invalid(f"response_format {response_format!r} is not supported; use json or text")
    request = TranscriptionRequest(task="translate" if translate else "transcribe")
    language = form.get("language")
    if language:
        if len(language) > ISO_LANG_CODE_MAX:
            raise invalid(f"Invalid language code. {language!r}: give the ISO-639-1 code, such as en")
        request.language = language
    temperature = form.get("temperature")
    if temperature:
        try:
            value = float(temperature)
        except ValueError:
            raise invalid(f"Invalid temperature type. {temperature!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise invalid(f"temperature {temperature} cannot be negative")
        request.temperature = value
    granularities = form.fields.get("timestamp_granularities[]", []) + form.fields.get("timestamp_granularities", [])
    if granularities and translate:
        raise invalid("timestamp_granularities: timestamps are given for transcriptions only, as in OVMS")
    for kind in granularities:
        if kind == "segment":
            request.segment_timestamps = True
        elif kind == "word":
            request.word_timestamps = True
        else:
            raise invalid('Invalid timestamp_granularities type. Allowed types: "segment", "word"')
    _, content = form.files["file"][-1]
    return TranscriptionCall(model, content, request, response_format, stream == "true")


def _timed(items: list[TimedText], key: str) -> list[dict]:
    return [{key: t.text, "start": t.start, "end": t.end} for t in items]


def transcription_json(result: TranscriptionResult) -> dict:
    """OVMS's answer: {"text"}, plus "words" and "segments" when timestamps were asked for."""
    document: dict = {"text": result.text}
    if result.words is not None:
        document["words"] = _timed(result.words, "word")
    if result.segments is not None:
        document["segments"] = _timed(result.segments, "text")
    return document


def transcription_delta_json(text: str) -> dict:
    """A streamed piece, as OVMS's S2tStreamingHandler writes it (OpenAI's transcript.text.delta event)."""
    return {"type": "transcript.text.delta", "delta": text, "logprobs": []}


def transcription_done_json(result: TranscriptionResult) -> dict:
    return {"type": "transcript.text.done", "text": result.text, "logprobs": []}


@dataclasses.dataclass(slots=True)
class SpeechCall:
    model: str
    request: SpeechRequest


_SPEECH_NOT_SUPPORTED = {
    "instructions": "instructions are not supported by this server's text-to-speech models (SpeechT5 speaks the "
                    "input as it is)",
    "stream_format": "streaming is not supported",
}


def decode_speech(doc: dict) -> SpeechCall:
    """/v3/audio/speech's JSON body, with OVMS's T2sCalculator messages."""
    log_unknown(doc, {"model", "input", "voice", "response_format", "speed", "language"} | set(_SPEECH_NOT_SUPPORTED),
                "audio/speech")
    model = model_field(doc)
    for name, why in _SPEECH_NOT_SUPPORTED.items():
        if doc.get(name) is not None:
            raise invalid(why if name == "stream_format" else f"{name}: {why}")
    if "input" not in doc:
        raise invalid("input field is missing in JSON body")
    text = doc["input"]
    if not isinstance(text, str):
        raise invalid("input field is not a string")
    if not text.strip():
        raise invalid("input field is empty: there is no text to speak")
    voice = doc.get("voice")
    if voice is not None and not isinstance(voice, str):
        raise invalid("voice field is not a string")
    response_format = doc.get("response_format")
    if response_format is not None and response_format != "wav":
        raise invalid(f"response_format {response_format!r} is not supported: this server answers with a WAV file "
                      "(response_format wav)")
    language = doc.get("language", "en-us")
    if not isinstance(language, str):
        raise invalid("language field is not a string")
    speed = doc.get("speed", 1.0)
    if not isinstance(speed, (int, float)) or isinstance(speed, bool):
        raise invalid("speed field is not a number")
    return SpeechCall(model, SpeechRequest(text, voice, language, float(speed)))
