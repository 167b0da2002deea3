"""/v3/audio/transcriptions, /translations and /speech through a real ovms and the real openai client.

The served answers must equal what the same openvino_genai pipelines return in this process for the same input
(the fixtures: tests/fixtures/genai/build_audio.py). Refusals are 400s with messages a person can act on, after
which the server keeps serving.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import openvino as ov
import openvino_genai as ov_genai
import pytest
import soundfile

from ovms.genai.audio_input import decode_audio
from ovms.metrics import DEFAULT_FAMILIES
from tests.conftest import ThreadedServer
from tests.genai.conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
from audio_sounds import SOUNDS, sound  # noqa: E402

WHISPER_DIR = FIXTURES / "tiny-whisper"
SPEECHT5_DIR = FIXTURES / "tiny-speecht5"
PLUGIN = {"NUM_STREAMS": "1"}

# As `ovms --pull --task speech2text` writes it (OVMS's graph_export.cpp), LOOPBACK edge included.
S2T_GRAPH = """
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
    input_stream_info: {{ tag_index: 'LOOPBACK:0', back_edge: true }}
    node_options: {{
        [type.googleapis.com / mediapipe.S2tCalculatorOptions]: {{
            models_path: "{path}"
            target_device: "CPU"
            plugin_config: '{{"NUM_STREAMS":"1"}}'
        }}
    }}
}}
"""

T2S_GRAPH = """
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
            models_path: "{path}"
            target_device: "CPU"
            plugin_config: '{{"NUM_STREAMS":"1"}}'
            voices: {{ name: "also-tiny" path: "{path}/voices/tiny.bin" }}
            speed_max: 2.0
        }}
    }}
}}
"""


def wav(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def audio_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    # whisper-plain: a hand-written graph without the LOOPBACK edge, which OVMS needs for streaming
    plain = "\n".join(line for line in S2T_GRAPH.splitlines() if "LOOPBACK" not in line)
    words = S2T_GRAPH.replace('target_device: "CPU"', 'target_device: "CPU" enable_word_timestamps: true')
    graphs = (("whisper", S2T_GRAPH, WHISPER_DIR), ("speecht5", T2S_GRAPH, SPEECHT5_DIR),
              ("whisper-plain", plain, WHISPER_DIR), ("whisper-words", words, WHISPER_DIR))
    for name, graph, path in graphs:
        (root / name).mkdir()
        (root / name / "graph.pbtxt").write_text(graph.format(path=path))
    config = {"mediapipe_config_list": [{"name": n, "base_path": str(root / n)} for n, _, _ in graphs]}
    (root / "config.json").write_text(json.dumps(config))
    with ThreadedServer(config_path=root / "config.json", metrics_families=frozenset(DEFAULT_FAMILIES)) as running:
        yield running


@pytest.fixture(scope="module")
def client(audio_server):
    with openai.OpenAI(base_url=f"http://{audio_server.rest_url}/v3", api_key="unused", max_retries=0,
                       timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def whisper():
    return ov_genai.WhisperPipeline(str(WHISPER_DIR), "CPU", **PLUGIN)


@pytest.fixture(scope="module")
def speecht5():
    return ov_genai.Text2SpeechPipeline(str(SPEECHT5_DIR), "CPU", **PLUGIN)


def post(server, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{server.rest_url}{path}", data=body,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("case", SOUNDS, ids=[s["name"] for s in SOUNDS])
def test_transcription_equals_the_pipeline_in_process(client, whisper, case):
    samples = sound(case["name"])
    expected = "".join(whisper.generate(samples).texts)
    answer = client.audio.transcriptions.create(model="whisper", file=("sound.wav", wav(samples, subtype="FLOAT")))
    assert answer.text == expected
    assert answer.text == " " + case["transcription"]  # the fixture learned a distinct sentence per sound
    text = client.audio.transcriptions.create(model="whisper", file=("sound.wav", wav(samples, subtype="FLOAT")),
                                              response_format="text")
    assert text == expected


@pytest.mark.parametrize("case", SOUNDS, ids=[s["name"] for s in SOUNDS])
def test_translation_equals_the_pipeline_in_process(client, whisper, case):
    samples = sound(case["name"])
    expected = "".join(whisper.generate(samples, task="translate").texts)
    answer = client.audio.translations.create(model="whisper", file=("sound.wav", wav(samples, subtype="FLOAT")))
    assert answer.text == expected == " " + case["translation"]


@pytest.mark.parametrize("fmt,subtype,rate,channels", [("WAV", "PCM_16", 16000, 1), ("FLAC", "PCM_16", 16000, 1),
                                                       ("MP3", "MPEG_LAYER_III", 16000, 1),
                                                       ("WAV", "PCM_16", 44100, 2)])
def test_wav_flac_mp3_and_resampled_stereo(client, whisper, fmt, subtype, rate, channels):
    """Each container decodes to the samples the pipeline gets in process (decode_audio: libsndfile, then OVMS's
    linear resampling to 16 kHz and the mean of two channels)."""
    t = np.arange(rate) / rate
    samples = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    if channels == 2:
        samples = np.stack([samples, samples], axis=1)
    data = wav(samples, rate, fmt, subtype)
    decoded = decode_audio(data)
    assert len(decoded) == 16000 and decoded.dtype == np.float32
    expected = "".join(whisper.generate(decoded).texts)
    answer = client.audio.transcriptions.create(model="whisper", file=(f"low.{fmt.lower()}", data))
    assert answer.text == expected == " a low hum"


@pytest.mark.parametrize("case", SOUNDS, ids=[s["name"] for s in SOUNDS])
def test_streamed_transcription_equals_the_pipeline_streamer(client, whisper, case):
    """stream=true (OVMS, with the graph's LOOPBACK): a transcript.text.delta event per piece the pipeline's
    streamer gets, then transcript.text.done with the whole text."""
    samples = sound(case["name"])
    pieces: list[str] = []
    result = whisper.generate(samples, streamer=lambda text: pieces.append(text))
    events = list(client.audio.transcriptions.create(model="whisper", file=("s.wav", wav(samples, subtype="FLOAT")),
                                                     stream=True))
    assert [e.type for e in events] == ["transcript.text.delta"] * (len(events) - 1) + ["transcript.text.done"]
    assert [e.delta for e in events[:-1]] == [p for p in pieces if p]
    assert events[-1].text == "".join(result.texts) == "".join(pieces)
    assert len(events) > 2


def test_segment_timestamps_and_language(client, whisper):
    samples = sound("high")
    result = whisper.generate(samples, return_timestamps=True, language="<|en|>")
    response = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("high.wav", wav(samples, subtype="FLOAT")), language="en",
        timestamp_granularities=["segment"])
    body = json.loads(response.text)
    assert body["text"] == "".join(result.texts)
    assert body["segments"] == [{"text": c.text, "start": pytest.approx(c.start_ts), "end": pytest.approx(c.end_ts)}
                                for c in result.chunks]
    assert body["segments"] and body["segments"][0]["end"] > body["segments"][0]["start"]


def test_word_timestamps_with_the_graph_option(client):
    """enable_word_timestamps: true (S2tCalculatorOptions) loads the pipeline with word_timestamps; a request with
    timestamp_granularities word and segment gets both lists, as the pipeline gives them in process."""
    pipe = ov_genai.WhisperPipeline(str(WHISPER_DIR), "CPU", word_timestamps=True, **PLUGIN)
    samples = sound("low")
    result = pipe.generate(samples, word_timestamps=True, return_timestamps=True)
    response = client.audio.transcriptions.with_raw_response.create(
        model="whisper-words", file=("low.wav", wav(samples, subtype="FLOAT")),
        timestamp_granularities=["word", "segment"])
    body = json.loads(response.text)
    assert body["text"] == "".join(result.texts) == " a low hum"
    assert body["words"] == [{"word": w.word, "start": pytest.approx(w.start_ts), "end": pytest.approx(w.end_ts)}
                             for w in result.words]
    assert [w["word"] for w in body["words"]] == [" a", " low", " hum"]
    assert body["segments"] == [{"text": c.text, "start": pytest.approx(c.start_ts), "end": pytest.approx(c.end_ts)}
                                for c in result.chunks]
    plain = client.audio.transcriptions.with_raw_response.create(model="whisper-words",
                                                                 file=("low.wav", wav(samples, subtype="FLOAT")))
    assert json.loads(plain.text) == {"text": " a low hum"}  # no timestamps unless asked


def test_temperature_samples_as_the_pipeline_does(client, whisper):
    samples = sound("noise")
    config = whisper.get_generation_config()
    config.temperature, config.do_sample = 0.5, True
    expected = "".join(whisper.generate(samples, config).texts)
    answer = client.audio.transcriptions.create(model="whisper", file=("n.wav", wav(samples, subtype="FLOAT")),
                                                temperature=0.5)
    assert answer.text == expected


def test_speech_equals_the_pipeline_in_process(client, speecht5):
    text = "Hello from a tiny voice."
    voice = ov.Tensor(np.fromfile(SPEECHT5_DIR / "voices" / "tiny.bin", np.float32).reshape(1, 512))
    result = speecht5.generate(text, voice)
    expected = np.array(result.speeches[0].data, copy=True).reshape(-1)
    answer = client.audio.speech.create(model="speecht5", input=text, voice="tiny", response_format="wav")
    samples, rate = soundfile.read(io.BytesIO(answer.content), dtype="float32")
    info = soundfile.info(io.BytesIO(answer.content))
    assert (info.format, info.subtype, info.channels) == ("WAV", "FLOAT", 1)  # as OVMS writes it
    assert rate == result.output_sample_rate == 16000
    assert len(expected) > 16000 and np.abs(expected).max() > 0.01  # audible, and depends on the text
    np.testing.assert_array_equal(samples, expected)
    assert len(answer.content) == 44 + 4 * len(expected)  # RIFF header and samples only: the same speech, same bytes
    # the graph's voices entry names the same file under another name
    same = client.audio.speech.create(model="speecht5", input=text, voice="also-tiny", response_format="wav")
    assert same.content == answer.content


def test_speech_default_voice(audio_server, speecht5):
    """Without a voice, the pipeline's default speaker (OVMS passes an empty tensor)."""
    text = "Numbers one two three."
    expected = np.array(speecht5.generate(text).speeches[0].data, copy=True).reshape(-1)
    status, body = post(audio_server, "/v3/audio/speech", json.dumps({"model": "speecht5", "input": text}).encode(),
                        "application/json")
    assert status == 200
    samples, _ = soundfile.read(io.BytesIO(body), dtype="float32")
    np.testing.assert_array_equal(samples, expected)


def multipart(fields: dict[str, str], audio: bytes) -> tuple[bytes, str]:
    boundary = "audio-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 f'Content-Type: audio/wav\r\n\r\n'.encode() + audio + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _error(exc_info) -> str:
    return exc_info.value.response.json()["error"]


def test_refusals_are_400_and_the_server_keeps_serving(client, audio_server):
    refusals = [
        (dict(file=("empty.wav", b"")), "File parsing fails: the uploaded audio file is empty"),
        (dict(file=("text.wav", b"this is not audio at all")), "Received input file is not valid wav nor mp3 audio "
                                                                "file (24 bytes; WAV, FLAC and MP3 are read)"),
        (dict(file=("short.wav", wav(np.zeros(100, np.float32)))), "the audio is too short: 100 samples"),
        (dict(file=("ok.wav", wav(sound("low"))), response_format="srt"), "response_format 'srt' is not supported"),
        (dict(file=("ok.wav", wav(sound("low"))), language="english"), "Invalid language code."),
        (dict(file=("ok.wav", wav(sound("low"))), language="xx"), "language: 'xx' is not a language of model "
                                                                  "whisper"),
        (dict(file=("ok.wav", wav(sound("low"))), timestamp_granularities=["word"]),
         "Word timestamps not supported for this model"),
        (dict(file=("ok.wav", wav(sound("low"))), prompt="Hello"), "prompt: a prompt to guide the transcription is "
                                                                   "not supported"),
    ]
    for fields, message in refusals:
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.transcriptions.create(model="whisper", **fields)
        assert caught.value.status_code == 400
        assert message in _error(caught), (fields, _error(caught))
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="whisper", file=("e.wav", b""))
    assert "the uploaded audio file is empty" in _error(caught)
    speech_refusals = [
        (dict(input="Hi", voice="nobody"), "Requested voice 'nobody' not found in available voices (also-tiny, tiny)"),
        (dict(input="Hi", voice="tiny", response_format="mp3"), "response_format 'mp3' is not supported"),
        (dict(input="Hi", voice="tiny", speed=3.0), "speed must be between speed_min (0.25) and speed_max (2)"),
        (dict(input="Hi", voice="tiny", speed=1.5), "speed: model speecht5 (SpeechT5) speaks at one speed; 1.5 is "
                                                    "not supported"),
        (dict(input="Hi", voice="tiny", extra_body={"language": "fr"}), "language: model speecht5 (SpeechT5) speaks "
                                                                        "English only; 'fr' is not supported"),
        (dict(input="Hi", voice="tiny", instructions="whisper"), "instructions: instructions are not supported"),
        (dict(input=" ", voice="tiny"), "input field is empty"),
    ]
    for fields, message in speech_refusals:
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.speech.create(model="speecht5", **fields)
        assert message in _error(caught), (fields, _error(caught))
    stream_refusals = [
        ("whisper-plain", "transcriptions", {}, "streaming is not supported for this graph configuration (LOOPBACK "
                                                "not configured)"),
        ("whisper", "translations", {}, "streaming is not supported for translations endpoint"),
        ("whisper", "transcriptions", {"timestamp_granularities[]": "segment"},
         "timestamp_granularities cannot be combined with stream"),
        ("whisper", "transcriptions", {"language": "xx"}, "language: 'xx' is not a language of model whisper"),
    ]
    for model, endpoint, extra, message in stream_refusals:  # refused before any event: a 400 with the reason
        body, content_type = multipart({"model": model, "stream": "true", **extra}, wav(sound("low")))
        status, answer = post(audio_server, f"/v3/audio/{endpoint}", body, content_type)
        assert status == 400 and message in json.loads(answer)["error"], (model, endpoint, answer)
    # a model of another kind, and a body that is not multipart
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.speech.create(model="whisper", input="Hi", voice="tiny")
    assert caught.value.status_code == 501 and "model whisper does not serve text to speech" in _error(caught)
    status, body = post(audio_server, "/v3/audio/transcriptions", b'{"model": "whisper"}', "application/json")
    assert status == 400 and b"send multipart/form-data" in body
    # still serving
    assert client.audio.transcriptions.create(model="whisper", file=("ok.wav", wav(sound("low")))).text == " a low hum"


def test_v1_aliases(audio_server):
    status, body = post(audio_server, "/v1/audio/speech",
                        json.dumps({"model": "speecht5", "input": "Hi", "voice": "tiny"}).encode(), "application/json")
    assert status == 200 and body[:4] == b"RIFF"
    with openai.OpenAI(base_url=f"http://{audio_server.rest_url}/v1", api_key="unused", max_retries=0) as v1:
        assert v1.audio.translations.create(model="whisper", file=("h.wav", wav(sound("high")))).text == \
            " sharp sound"


def test_four_concurrent_transcriptions(client, whisper):
    """Requests queue on the servable's one pipeline thread; each gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["low", "high", "noise", "low"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: client.audio.transcriptions.create(
            model="whisper", file=(f"{n}.wav", wav(sound(n), subtype="FLOAT"))).text, names))
    assert answers == ["".join(whisper.generate(sound(n)).texts) for n in names]


def test_a_busy_servable_answers_503(client, audio_server):
    """Past its queue bound a speech servable refuses with OVMS's 503, as a text generation servable does."""
    servable = audio_server.server.registry.version_entry("whisper").servable
    worker = servable.worker
    release = threading.Event()

    async def occupy():
        worker.max_queued = 1
        return asyncio.ensure_future(worker.run(lambda cancel: release.wait(60)))

    task = audio_server.call(occupy())
    audio_server.call(asyncio.sleep(0))  # the job is submitted (in_flight counts it) once run() has started
    try:
        assert worker.in_flight == 1
        with pytest.raises(openai.APIStatusError) as caught:
            client.audio.transcriptions.create(model="whisper", file=("ok.wav", wav(sound("low"))))
        assert caught.value.status_code == 503
        assert "Server busy" in _error(caught) and "1 requests in flight on whisper" in _error(caught)
    finally:
        release.set()
        audio_server.call(asyncio.wait_for(asyncio.shield(task), 60))
        worker.max_queued = 32
    assert client.audio.transcriptions.create(model="whisper", file=("ok.wav", wav(sound("low")))).text == " a low hum"


class _CountingPipeline:
    """The servable's pipeline, counting generate calls."""

    def __init__(self, pipe) -> None:
        self.pipe, self.calls = pipe, 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.pipe.generate(*args, **kwargs)

    def get_generation_config(self):
        return self.pipe.get_generation_config()


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 30  # a bound against a hang, not a measurement
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_request_whose_client_left_is_not_run(client, audio_server):
    """A request queued behind a busy pipeline whose client closes the connection is dropped, not transcribed."""
    servable = audio_server.server.registry.version_entry("whisper").servable
    worker, pipe = servable.worker, servable._pipe
    counting = servable._pipe = _CountingPipeline(pipe)
    release = threading.Event()

    async def occupy():
        return asyncio.ensure_future(worker.run(lambda cancel: release.wait(60)))

    task = audio_server.call(occupy())
    try:
        body, content_type = multipart({"model": "whisper"}, wav(sound("low")))
        host, port = audio_server.rest_url.split(":")
        def connections():  # aiohttp's open connections (the property returns a copy)
            return audio_server.server._runner.server.connections

        before = connections()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST /v3/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            _until(lambda: worker.in_flight == 2, "the request did not reach the servable's queue")
            ours = [c for c in connections() if all(c is not b for b in before)]
            assert len(ours) == 1
        # the server has seen the connection close before the pipeline is free again
        _until(lambda: ours[0].transport is None or ours[0].transport.is_closing(),
               "the server did not see the client leave")
        release.set()
        audio_server.call(asyncio.wait_for(asyncio.shield(task), 60))
        _until(lambda: worker.in_flight == 0, "the abandoned request did not leave the queue")
        assert counting.calls == 0
    finally:
        release.set()
        servable._pipe = pipe
    assert client.audio.transcriptions.create(model="whisper", file=("ok.wav", wav(sound("low")))).text == " a low hum"


def test_metrics_count_and_time_each_endpoint(client, audio_server):
    def scrape() -> str:
        with urllib.request.urlopen(f"http://{audio_server.rest_url}/metrics", timeout=10) as response:
            return response.read().decode()

    def value(text: str, pattern: str) -> float:
        match = re.search(pattern + r" (\S+)", text)
        return float(match.group(1)) if match else 0.0

    ok_t = r'ovms_requests_success\{api="V3",interface="REST",method="Unary",name="whisper"\}'
    fail_t = r'ovms_requests_fail\{api="V3",interface="REST",method="Unary",name="whisper"\}'
    ok_s = r'ovms_requests_success\{api="V3",interface="REST",method="Unary",name="speecht5"\}'
    time_t = r'ovms_request_time_us_count\{interface="REST",name="whisper",version="1"\}'
    time_s = r'ovms_request_time_us_count\{interface="REST",name="speecht5",version="1"\}'
    before = scrape()
    client.audio.transcriptions.create(model="whisper", file=("ok.wav", wav(sound("low"))))
    client.audio.translations.create(model="whisper", file=("ok.wav", wav(sound("low"))))
    client.audio.speech.create(model="speecht5", input="Hi", voice="tiny")
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper", file=("e.wav", b""))
    after = scrape()
    assert value(after, ok_t) - value(before, ok_t) == 2
    assert value(after, fail_t) - value(before, fail_t) == 1
    assert value(after, ok_s) - value(before, ok_s) == 1
    assert value(after, time_t) - value(before, time_t) == 2
    assert value(after, time_s) - value(before, time_s) == 1
