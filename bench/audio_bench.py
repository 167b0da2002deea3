"""Latency of /v3/audio/transcriptions, /translations and /speech against the same openvino_genai pipelines in
process, for one request at a time and for 4 concurrent ones, in the same run.

    .venv/bin/python bench/audio_bench.py [--rounds 15] [--endpoints transcriptions,translations,speech]

One `python -m ovms` process serves the fixtures tiny-whisper and tiny-speecht5 (graphs as `--pull` writes them,
NUM_STREAMS 1); this process loads the same directories into WhisperPipeline / Text2SpeechPipeline with the same
properties. The client is the openai package (one client per thread). Inputs: the 1-second "low" tone as a 16 kHz
float WAV (transcription, translation), and "Hello from a tiny voice." with the voice "tiny" (speech: 8.3 s of
audio). In process, the 4 concurrent calls share one pipeline behind a lock, as the server runs them (one pipeline,
one request at a time).

Per endpoint and mode it prints the median over rounds (ovms and in-process alternate in each round) of:
  1 request    the latency of one call;
  4 concurrent the wall time until all 4 answered.
and the ratio ovms / in process. Everything shares this machine's cores with the clients.
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import openvino as ov
import openvino_genai as ov_genai
import soundfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "genai"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(FIXTURES))

from audio_sounds import sound  # noqa: E402
from ovms.pull import graph  # noqa: E402
from tests.test_cli import free_port  # noqa: E402

WHISPER, SPEECHT5 = FIXTURES / "tiny-whisper", FIXTURES / "tiny-speecht5"
PLUGIN = {"NUM_STREAMS": "1"}
TEXT = "Hello from a tiny voice."


def serve(tmp: pathlib.Path) -> tuple[subprocess.Popen, int]:
    entries = []
    for name, task, source in (("whisper", "speech2text", WHISPER), ("speecht5", "text2speech", SPEECHT5)):
        (tmp / name).mkdir()
        graph.write_graph(tmp / name, task, graph.GraphOptions(model_name=name, models_path=str(source)))
        entries.append({"name": name, "base_path": str(tmp / name)})
    (tmp / "config.json").write_text(json.dumps({"mediapipe_config_list": entries}))
    rest = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ovms", "--config_path", str(tmp / "config.json"), "--port",
                                str(free_port()), "--rest_port", str(rest), "--grpc_bind_address", "127.0.0.1",
                                "--rest_bind_address", "127.0.0.1", "--log_level", "WARNING"], cwd=ROOT)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{rest}/v2/health/ready", timeout=2):
                return process, rest
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("ovms did not become ready")
            time.sleep(0.2)


def timed(calls: list) -> float:
    """Milliseconds until every call returned (run together when there are several)."""
    started = time.perf_counter()
    if len(calls) == 1:
        calls[0]()
    else:
        with ThreadPoolExecutor(len(calls)) as pool:
            for future in [pool.submit(c) for c in calls]:
                future.result()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--endpoints", default="transcriptions,translations,speech")
    args = parser.parse_args()
    samples = sound("low")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    wav = buffer.getvalue()
    whisper = ov_genai.WhisperPipeline(str(WHISPER), "CPU", **PLUGIN)
    speecht5 = ov_genai.Text2SpeechPipeline(str(SPEECHT5), "CPU", **PLUGIN)
    voice = ov.Tensor(np.fromfile(SPEECHT5 / "voices" / "tiny.bin", np.float32).reshape(1, 512))
    lock = threading.Lock()

    def local_transcribe(task: str):
        with lock:
            return "".join(whisper.generate(samples, task=task).texts)

    def local_speak():
        with lock:
            return np.array(speecht5.generate(TEXT, voice).speeches[0].data, copy=True)

    with tempfile.TemporaryDirectory() as tmp:
        process, port = serve(pathlib.Path(tmp))
        clients = [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="x", max_retries=0, timeout=120)
                   for _ in range(4)]
        try:
            served = {
                "transcriptions": lambda c: c.audio.transcriptions.create(model="whisper", file=("a.wav", wav)).text,
                "translations": lambda c: c.audio.translations.create(model="whisper", file=("a.wav", wav)).text,
                "speech": lambda c: c.audio.speech.create(model="speecht5", input=TEXT, voice="tiny").content,
            }
            local = {"transcriptions": lambda: local_transcribe("transcribe"),
                     "translations": lambda: local_transcribe("translate"), "speech": local_speak}
            # same answers (and a warm-up of both sides)
            assert served["transcriptions"](clients[0]) == local["transcriptions"]()
            assert served["translations"](clients[0]) == local["translations"]()
            speech, _ = soundfile.read(io.BytesIO(served["speech"](clients[0])), dtype="float32")
            assert np.array_equal(speech, local["speech"]().reshape(-1))
            results = {}
            for endpoint in args.endpoints.split(","):
                for concurrency in (1, 4):
                    times: dict[str, list[float]] = {"ovms": [], "in-process": []}
                    for round_index in range(args.rounds):
                        sides = ["ovms", "in-process"] if round_index % 2 == 0 else ["in-process", "ovms"]
                        for side in sides:
                            if side == "ovms":
                                calls = [lambda c=c: served[endpoint](c) for c in clients[:concurrency]]
                            else:
                                calls = [local[endpoint]] * concurrency
                            times[side].append(timed(calls))
                    ovms_ms, local_ms = (statistics.median(times[s]) for s in ("ovms", "in-process"))
                    results[(endpoint, concurrency)] = (ovms_ms, local_ms)
                    print(f"{endpoint:15} {concurrency} {'request ' if concurrency == 1 else 'concurrent'}  ovms "
                          f"{ovms_ms:8.1f} ms  in-process {local_ms:8.1f} ms  ratio {ovms_ms / local_ms:5.2f}",
                          flush=True)
        finally:
            for client in clients:
                client.close()
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
