"""Pull-and-serve: without --pull, `python -m ovms --source_model ...` pulls, then serves the model."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import openvino as ov
from openvino import opset13 as ops

import pytest

from conftest import ROOT, ovms_command, pull_env

GENAI_FIXTURES = ROOT / "tests" / "fixtures" / "genai"

REPO = "OpenVINO/tiny-relu"


def tiny_relu_model(directory) -> dict:
    x = ops.parameter([1, 4], np.float32, name="x")
    x.output(0).set_names({"x"})
    y = ops.relu(x)
    y.output(0).set_names({"y"})
    model = ov.Model([y], [x], "tiny_relu")
    ov.save_model(model, directory / "model.xml", compress_to_fp16=False)
    return {"1/model.xml": directory / "model.xml", "1/model.bin": directory / "model.bin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, url: str, log_path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        # TimeoutError: a model loading in openvino_genai holds the GIL (the speech pipelines' constructors, 3-4 s
        # on a loaded machine), so the server answers late while it loads
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("fixture", ["tiny-llm", "tiny-vlm"])
def test_pull_then_serve_a_generative_model(hub, tmp_path, fixture):
    """An exported LLM / VLM repository on the Hub imitation: pulled with no --task (inferred from config.json),
    a graph written, served, and answering the openai client with what the model answers on disk."""
    import base64
    import io

    import openai
    from PIL import Image

    source = GENAI_FIXTURES / fixture
    repo = f"OpenVINO/{fixture}-ov"
    hub.add_repo(repo, {p.name: p for p in sorted(source.iterdir()) if p.is_file()})
    port = free_port()
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(ovms_command("--source_model", repo, "--model_repository_path", str(tmp_path / "models"),
                                         "--model_name", "gen", "--rest_port", str(port),
                                         "--rest_bind_address", "127.0.0.1"),
                            env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    content = "Hello"
    if fixture == "tiny-vlm":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(buffer, "PNG")
        content = [{"type": "text", "text": "What is in this picture?"},
                   {"type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}]
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/gen/ready", log_path)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                           timeout=60) as client:
            answer = client.chat.completions.create(model="gen", messages=[{"role": "user", "content": content}],
                                                    max_tokens=32, temperature=0)
    finally:
        stop(proc)
        log.close()
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    if fixture == "tiny-llm":  # trained on this dialogue: greedy decoding answers it verbatim
        assert answer.choices[0].message.content == "Hello! How can I help you?"
    model_dir = tmp_path / "models" / "OpenVINO" / f"{fixture}-ov"
    graph = (model_dir / "graph.pbtxt").read_text()
    assert 'calculator: "HttpLLMCalculator"' in graph
    for p in source.iterdir():
        if p.is_file():
            assert (model_dir / p.name).read_bytes() == p.read_bytes(), p.name
    text = log_path.read_text()
    assert f"Inferred --task text_generation for {repo}" in text and "Traceback" not in text


def test_pull_then_serve_a_classic_model(hub, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    hub.add_repo(REPO, tiny_relu_model(src), lfs=lambda path, size: path.endswith(".bin"))
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(ovms_command("--source_model", REPO, "--model_repository_path", str(tmp_path / "models"),
                                         "--model_name", "relu", "--rest_port", str(port),
                                         "--rest_bind_address", "127.0.0.1"),
                            env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v2/models/relu"
        wait_ready(proc, f"{base}/ready", tmp_path / "server.log")
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "data": [-1.0, 2.0, -3.0, 4.0]}]}).encode()
        req = urllib.request.Request(f"{base}/infer", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())
        assert out["outputs"][0]["data"] == [0.0, 2.0, 0.0, 4.0]
    finally:
        stop(proc)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert f"Model: {REPO} downloaded to: {tmp_path / 'models' / 'OpenVINO' / 'tiny-relu'}" in text
    assert "classic model" in text and not (tmp_path / "models" / "OpenVINO" / "tiny-relu" / "graph.pbtxt").exists()


def test_pull_with_a_draft_model_serves_speculative_decoding(hub, tmp_path):
    """--draft_source_model as OVMS lays it out: the draft beside the model as ORG-NAME, named by the graph's
    draft_models_path, and used: the answer is the plain greedy one and the engine accepts draft tokens."""
    import re

    import openai

    source = GENAI_FIXTURES / "tiny-llm"
    files = {p.name: p for p in sorted(source.iterdir()) if p.is_file()}
    hub.add_repo("OpenVINO/tiny-llm-ov", files)
    hub.add_repo("OpenVINO/tiny-draft-ov", files)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ovms_command(
            "--source_model", "OpenVINO/tiny-llm-ov", "--draft_source_model", "OpenVINO/tiny-draft-ov",
            "--model_repository_path", str(tmp_path / "models"), "--model_name", "gen", "--rest_port", str(port),
            "--rest_bind_address", "127.0.0.1", "--metrics_enable", "--metrics_list",
            "ovms_llm_draft_accepted_tokens"), env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/gen/ready", log_path)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                               timeout=60) as client:
                answer = client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "Hello"}],
                                                        max_tokens=32, temperature=0)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                metrics = response.read().decode()
        finally:
            stop(proc)
    assert answer.choices[0].message.content == "Hello! How can I help you?"
    model_dir = tmp_path / "models" / "OpenVINO" / "tiny-llm-ov"
    assert (model_dir / "OpenVINO-tiny-draft-ov" / "openvino_model.xml").read_bytes() == \
        (source / "openvino_model.xml").read_bytes()
    assert 'draft_models_path: "OpenVINO-tiny-draft-ov"' in (model_dir / "graph.pbtxt").read_text()
    accepted = re.search(r'^ovms_llm_draft_accepted_tokens\{name="gen",version="1"\} (\S+)$', metrics, re.MULTILINE)
    assert accepted and float(accepted.group(1)) > 0, metrics
    assert "Draft model: OpenVINO-tiny-draft-ov downloaded to:" in log_path.read_text()


@pytest.mark.parametrize("gguf_filename", ["tiny-llm-F16.gguf", "tiny-llm-F16-00001-of-00002.gguf"],
                         ids=["one-file", "split"])
def test_pull_a_gguf_then_serve_it(hub, tmp_path, gguf_filename):
    """--gguf_filename from a GGUF repository (a single file, or the first part of a split model, which fetches
    every part), the graph written with models_path "./<file>", served on openvino_genai's GGUF reader with the
    GGUF's tokenizer and chat template, answering as the IR the GGUF was written from."""
    import openai

    gguf_dir = GENAI_FIXTURES / "tiny-llm-gguf"
    files = {"tiny-llm-F16.gguf": gguf_dir / "tiny-llm-F16.gguf", "README.md": b"# tiny-llm GGUF\n"}
    files.update({p.name: p for p in sorted((gguf_dir / "split").glob("*.gguf"))})
    hub.add_repo("unsloth/tiny-llm-GGUF", files)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ovms_command(
            "--source_model", "unsloth/tiny-llm-GGUF", "--gguf_filename", gguf_filename, "--model_repository_path",
            str(tmp_path / "models"), "--model_name", "gen", "--rest_port", str(port), "--rest_bind_address",
            "127.0.0.1"), env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/gen/ready", log_path)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                               timeout=60) as client:
                answer = client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "Hello"}],
                                                        max_tokens=32, temperature=0)
        finally:
            stop(proc)
    assert answer.choices[0].message.content == "Hello! How can I help you?"
    model_dir = tmp_path / "models" / "unsloth" / "tiny-llm-GGUF"
    pulled = sorted(p.name for p in model_dir.glob("*.gguf"))
    wanted = [gguf_filename] if gguf_filename == "tiny-llm-F16.gguf" else sorted(
        p.name for p in (gguf_dir / "split").glob("*.gguf"))
    assert pulled == wanted  # only the asked model's files
    for name in pulled:
        assert (model_dir / name).read_bytes() == files[name].read_bytes()
    assert f'models_path: "./{gguf_filename}",' in (model_dir / "graph.pbtxt").read_text()
    assert "Traceback" not in log_path.read_text()
