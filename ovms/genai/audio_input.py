"""Uploaded audio files as Whisper's input (16 kHz mono float32), and synthesized speech as a WAV file.

Decoding is libsndfile's (the ``soundfile`` package, which bundles libsndfile 1.2 with WAV, FLAC, OGG and MP3
readers); OVMS reads WAV and MP3 with dr_wav / dr_mp3 (src/audio/audio_utils.cpp). Resampling to 16 kHz is OVMS's:
linear interpolation between neighbouring samples (audio_utils.cpp resample_audio, from openvino.genai's
whisper_speech_recognition sample), so both servers hand Whisper the same samples for the same file. Stereo is
downmixed by averaging the two channels; like OVMS, more channels are refused.
"""
from __future__ import annotations

import io
import os
import re
import struct

import numpy as np
import soundfile

from ovms.genai.types import SAMPLE_RATE
from ovms.errors import Kind, ServingError

NOT_AUDIO = "Received input file is not valid wav nor mp3 audio file"  # OVMS's message (s2t_calculator.cc)
MIN_SAMPLES = 201  # openvino_genai's feature extractor refuses fewer ("raw_speech too short for reflect padding")
DEFAULT_MAX_BYTES = 1 << 30  # OVMS: OVMS_AUDIO_MAX_FILE_SIZE_BYTES, default 1 GB of decoded float32 samples


def _invalid(message: str) -> ServingError:
    return ServingError(Kind.GENAI_INVALID_REQUEST, message)


def max_decoded_bytes() -> int:
    value = os.environ.get("OVMS_AUDIO_MAX_FILE_SIZE_BYTES", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_BYTES


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """OVMS's linear resampling: output[i] interpolates input at i * rate / target (the last sample past the end)."""
    if rate == target:
        return samples
    length = len(samples) * target // rate
    position = np.arange(length, dtype=np.float64) * (rate / target)
    left = position.astype(np.int64)
    frac = (position - left).astype(np.float32)
    right = np.minimum(left + 1, len(samples) - 1)
    out = samples[left] * (1.0 - frac) + samples[right] * frac
    out[left + 1 >= len(samples)] = samples[-1]
    return out.astype(np.float32)


def decode_audio(data: bytes) -> np.ndarray:
    """An uploaded file as 16 kHz mono float32 samples; a 400 naming what is wrong with it otherwise."""
    if not data:
        raise _invalid("File parsing fails: the uploaded audio file is empty (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            if audio.channels not in (1, 2):
                raise _invalid(f"{NOT_AUDIO}: it has {audio.channels} channels; audio must be mono or stereo")
            limit = max_decoded_bytes()
            decoded = max(audio.frames, audio.frames * SAMPLE_RATE // max(audio.samplerate, 1)) * 4 * audio.channels
            if decoded > limit:
                raise _invalid(f"Audio file size {decoded} exceeds maximum allowed size ({limit})")
            frames = audio.read(dtype="float32", always_2d=True)
            rate = audio.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = re.sub(r"^Error opening <[^>]*>: ", "", str(exc))  # soundfile names the in-memory file object
        raise _invalid(f"{NOT_AUDIO} ({len(data)} bytes; WAV, FLAC and MP3 are read): {reason}") from None
    if frames.shape[0] == 0:
        raise _invalid("File parsing fails: the audio file holds no samples")
    samples = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    samples = resample(np.ascontiguousarray(samples, dtype=np.float32), rate)
    if len(samples) < MIN_SAMPLES:
        milliseconds = len(samples) / SAMPLE_RATE * 1000
        raise _invalid(f"the audio is too short: {len(samples)} samples at 16 kHz ({milliseconds:.1f} ms); Whisper "
                       f"needs at least {MIN_SAMPLES}")
    return samples


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono 32-bit float WAV file as OVMS's /v3/audio/speech writes it (dr_wav, DR_WAVE_FORMAT_IEEE_FLOAT): a
    44-byte RIFF header, then the samples. Written here rather than by libsndfile, which adds a PEAK chunk holding
    the time of writing, so the same speech would not be the same bytes."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 3, 1, sample_rate,
                         sample_rate * 4, 4, 32, b"data", len(data))
    return header + data
