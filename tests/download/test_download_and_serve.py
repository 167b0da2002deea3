"""From a download to an answer: the fixture tiny LLM (OpenVINO format) on the Hub imitation, downloaded with
is_ovms, then served by `python -m ovms --config_path`; and the same API mounted on a serving instance's REST port
with --model_download_api, whose config.json picks the model up."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import requests

from download_helpers import ROOT, free_port, service_env

GENAI_FIXTURES = ROOT / "tests" / "fixtures" / "genai"
REPO = "OpenVINO/tiny-llm-ov"

pytestmark = pytest.mark.slow


def publish_fixture(hub) -> None:
    source = GENAI_FIXTURES / "tiny-llm"
    hub.add_repo(REPO, {p.name: p for p in sorted(source.iterdir()) if p.is_file()})


def start_ovms(args: list[str], env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "ovms", *args], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def chat(port: int, log_path, timeout: float = 90, *, model: str = REPO) -> dict:
    """Ask until the model answers (it appears once its config is applied)."""
    deadline = time.monotonic() + timeout
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "temperature": 0}
    while True:
        try:
            r = requests.post(f"http://127.0.0.1:{port}/v3/chat/completions", json=body, timeout=30)
            if r.status_code == 200:
                return r.json()
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.3)


def test_downloaded_model_is_served_by_ovms(hub, service, tmp_path):
    publish_fixture(hub)
    r = service.download([{"name": REPO, "hub": "huggingface", "type": "llm", "is_ovms": True,
                           "config": {"device": "CPU", "cache_size": 1}}], download_path="repo")
    job = service.wait(r.json()["job_ids"][0])
    assert job["status"] == "completed", job
    config_path = service.models_dir / "repo" / "config.json"
    assert job["result"]["config_path"] == str(config_path)
    port = free_port()
    log_path = tmp_path / "ovms.log"
    proc = start_ovms(["--config_path", str(config_path), "--rest_port", str(port), "--rest_bind_address",
                       "127.0.0.1"], service_env(hub), log_path)
    try:
        answer = chat(port, log_path)
    finally:
        stop(proc)
    assert answer["choices"][0]["message"]["content"] == "Hello! How can I help you?"


def test_model_download_api_on_the_serving_port(hub, tmp_path):
    publish_fixture(hub)
    models = tmp_path / "models"
    models.mkdir()
    config_path = models / "config.json"
    config_path.write_text(json.dumps({"model_config_list": []}))
    port = free_port()
    log_path = tmp_path / "ovms.log"
    proc = start_ovms(["--config_path", str(config_path), "--rest_port", str(port), "--rest_bind_address",
                       "127.0.0.1", "--model_download_api", "--file_system_poll_wait_seconds", "1"],
                      service_env(hub), log_path)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if requests.get(api + "/health", timeout=2).json() == {"status": "ok"}:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        bad = requests.post(api + "/models/download", json={"models": [{"name": "", "hub": "huggingface"}]},
                            timeout=10)
        assert bad.status_code == 422
        r = requests.post(api + "/models/download", params={"download_path": "."}, timeout=10,
                          json={"models": [{"name": REPO, "hub": "huggingface", "type": "llm", "is_ovms": True}]})
        assert r.status_code == 200, r.text
        job_id = r.json()["job_ids"][0]
        deadline = time.monotonic() + 60
        while (job := requests.get(f"{api}/jobs/{job_id}", timeout=10).json())["status"] not in (
                "completed", "failed"):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert job["status"] == "completed", job
        assert json.loads(config_path.read_text())["model_config_list"][0]["config"]["name"] == REPO
        answer = chat(port, log_path)
        assert answer["choices"][0]["message"]["content"] == "Hello! How can I help you?"
        assert (models / ".ovms_download" / "jobs.sqlite3").is_file()
    finally:
        stop(proc)


def test_ollama_model_is_served_by_ovms(hub, service_factory, tmp_path):
    """An Ollama model whose layer is the tiny LLM as GGUF: downloaded from the registry imitation, laid out as
    Ollama does plus model.gguf (a link to the layer's blob) and graph.pbtxt, served by `python -m ovms
    --model_path <the model's directory>` and answering as the IR the GGUF was written from."""
    from ollama_imitation import OllamaImitation

    gguf = (GENAI_FIXTURES / "tiny-llm-gguf" / "tiny-llm-F16.gguf").read_bytes()
    registry = OllamaImitation().start()
    try:
        registry.add_model("tiny-llm", "f16", {"model": gguf, "template": b"{{ .Prompt }}",
                                               "params": b'{"stop": ["<|im_end|>"]}'})
        service = service_factory(service_env(hub, OLLAMA_REGISTRY=registry.url))
        job = service.wait(service.download([{"name": "tiny-llm:f16", "hub": "ollama"}],
                                            download_path="o").json()["job_ids"][0])
    finally:
        registry.stop()
    assert job["status"] == "completed", (job, service.log())
    model_dir = service.models_dir / "o" / "ollama" / "tiny-llm:f16"
    assert job["result"]["graph_path"] == str(model_dir / "graph.pbtxt")
    assert (model_dir / "model.gguf").is_symlink() and (model_dir / "model.gguf").read_bytes() == gguf
    assert str(model_dir / (model_dir / "model.gguf").readlink()) == job["result"]["gguf_path"]
    assert 'models_path: "./model.gguf",' in (model_dir / "graph.pbtxt").read_text()
    port = free_port()
    log_path = tmp_path / "ovms.log"
    proc = start_ovms(["--model_path", str(model_dir), "--model_name", "tiny-llm", "--rest_port", str(port),
                       "--rest_bind_address", "127.0.0.1"], service_env(hub), log_path)
    try:
        answer = chat(port, log_path, model="tiny-llm")
    finally:
        stop(proc)
    assert answer["choices"][0]["message"]["content"] == "Hello! How can I help you?"
