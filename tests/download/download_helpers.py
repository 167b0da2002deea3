"""Helpers for the download service tests: `python -m ovms.download` as a real process, and its client."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "pull"))
sys.path.insert(0, str(pathlib.Path(__file__).parent))

from hub_imitation import Faults, HubImitation  # noqa: E402,F401


def content(seed: str, size: int) -> bytes:
    import hashlib
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(hub: HubImitation | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(
        ("HF_", "GIT_LFS_", "OVMS_PULL_", "OLLAMA_", "GETI_", "ULTRALYTICS_", "EXTERNAL_SOURCES_"))}
    if hub is not None:
        env["HF_ENDPOINT"] = hub.hub_url
    env["OLLAMA_REGISTRY"] = "http://127.0.0.1:9"  # never the public registry from a test; tests set their own
    env.update(GIT_LFS_RESUME_INTERVAL_SECONDS="0.05", OVMS_PULL_STALL_SECONDS="2",
               OVMS_PULL_SEGMENT_BYTES=str(1 << 20), OVMS_PULL_CONNECTIONS="4", OVMS_PULL_SYNC="0",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Service:
    """`python -m ovms.download` on a free port of 127.0.0.1, with its log in a file."""

    def __init__(self, models_dir: pathlib.Path, env: dict[str, str], log_path: pathlib.Path, *args: str) -> None:
        self.models_dir = models_dir
        self.env = env
        self.log_path = log_path
        self.args = args
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}/api/v1"

    def start(self) -> "Service":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "ovms.download", "--port", str(self.port),
                                      "--models_dir", str(self.models_dir), *self.args],
                                     env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # ---- client ------------------------------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url + path, timeout=60, **kw)

    def download(self, models: list[dict], download_path: str = "models", **extra) -> requests.Response:
        return self.post("/models/download", params={"download_path": download_path},
                         json={"models": models, **extra})

    def job(self, job_id: str) -> dict:
        r = self.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, *, until=("completed", "failed", "canceled"), timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in until:
                return job
            assert time.monotonic() < deadline, (job, self.log())
            time.sleep(0.05)


def tiny_repo_files(seed: str = "tiny", big: int = 2 << 20) -> dict[str, bytes]:
    return {
        "config.json": b'{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}',
        "openvino_model.xml": content(seed + "xml", 5000),
        "openvino_model.bin": content(seed + "bin", big),
        "nested/readme.txt": b"nested\n",
    }


def assert_no_partials(root: pathlib.Path) -> None:
    leftovers = [str(p) for p in root.rglob("*") if p.name.endswith((".lfs_part", ".ranges", ".lfswip"))]
    assert leftovers == []
