"""Pull, then serve, speech models: a Whisper and a SpeechT5 repository on the Hub imitation, pulled with no --task
(inferred from config.json as OVMS's default_task_detector does), served from the graph pull wrote."""
from __future__ import annotations

import io
import subprocess

import numpy as np
import openai
import pytest
import soundfile

from conftest import ROOT, ovms_command, pull_env
from test_pull_and_serve import GENAI_FIXTURES, free_port, stop, wait_ready


@pytest.mark.parametrize("fixture,task,calculator", [("tiny-whisper", "speech2text", "S2tCalculator"),
                                                     ("tiny-speecht5", "text2speech", "T2sCalculator")])
def test_pull_then_serve_a_speech_model(hub, tmp_path, fixture, task, calculator):
    source = GENAI_FIXTURES / fixture
    repo = f"OpenVINO/{fixture}-ov"
    hub.add_repo(repo, {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()})
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ovms_command("--source_model", repo, "--model_repository_path",
                                             str(tmp_path / "models"), "--model_name", "speech", "--rest_port",
                                             str(port), "--rest_bind_address", "127.0.0.1"),
                                env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/speech/ready", log_path)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                               timeout=60) as client:
                if task == "speech2text":
                    t = np.arange(16000) / 16000
                    buffer = io.BytesIO()
                    soundfile.write(buffer, (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), 16000,
                                    format="WAV")
                    answer = client.audio.transcriptions.create(model="speech", file=("a.wav", buffer.getvalue()))
                    assert answer.text == " a low hum"
                else:  # the voice comes from the pulled voices/ directory
                    wav = client.audio.speech.create(model="speech", input="Hello", voice="tiny").content
                    assert soundfile.info(io.BytesIO(wav)).frames > 16000
        finally:
            stop(proc)
    model_dir = tmp_path / "models" / "OpenVINO" / f"{fixture}-ov"
    assert f'calculator: "{calculator}"' in (model_dir / "graph.pbtxt").read_text()
    text = log_path.read_text()
    assert f"Inferred --task {task} for {repo}" in text and "Traceback" not in text
