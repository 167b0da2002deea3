"""Fixtures for pull-mode tests: a Hub imitation per test, tiny repositories, and `python -m ovms --pull` runs."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from hub_imitation import HubImitation  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120


def content(seed: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes (so a failing byte comparison is reproducible)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


@pytest.fixture(scope="session")
def big_files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Large-ish LFS payloads on disk, made once per session."""
    d = tmp_path_factory.mktemp("blobs")
    files = {}
    for name, size in (("model8m.bin", 8 << 20), ("model3m.bin", 3 << 20 | 12345), ("kill24m.bin", 24 << 20)):
        p = d / name
        p.write_bytes(content(name, size))
        files[name] = p
    return files


@pytest.fixture
def hub():
    h = HubImitation(tree_page_size=3).start()
    yield h
    h.stop()


def tiny_llm_files(big_files) -> dict[str, bytes | pathlib.Path]:
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}',
        "generation_config.json": b'{"do_sample": false}',
        "openvino_model.xml": content("xml", 20_000),
        "openvino_model.bin": big_files["model8m.bin"],
        "openvino_tokenizer.bin": big_files["model3m.bin"],
        "openvino_tokenizer.xml": b"<net name='tokenizer'/>",
        "nested/dir/readme.txt": b"nested file\n",
        "empty.txt": b"",
    }


@pytest.fixture
def llm_repo(hub, big_files):
    return hub.add_repo("OpenVINO/tiny-llm-ov", tiny_llm_files(big_files))


@dataclasses.dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def pull_env(hub: HubImitation, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GIT_LFS_", "OVMS_PULL_"))}
    env.update(HF_ENDPOINT=hub.hub_url, GIT_LFS_RESUME_INTERVAL_SECONDS="0.05", OVMS_PULL_STALL_SECONDS="1",
               OVMS_PULL_SEGMENT_BYTES=str(1 << 20), OVMS_PULL_CONNECTIONS="6", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def ovms_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovms", *args]


def run_ovms(args: list[str], env: dict[str, str]) -> Run:
    proc = subprocess.run(ovms_command(*args), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def pull(hub, tmp_path):
    """pull(source_model, *flags, **env) -> Run of `python -m ovms --pull` into tmp_path/models."""
    models = tmp_path / "models"

    def _pull(source_model: str, *flags: str, **env: str) -> Run:
        return run_ovms(["--pull", "--source_model", source_model, "--model_repository_path", str(models),
                         *flags], pull_env(hub, **env))

    _pull.models = models
    return _pull


def assert_pulled(model_dir: pathlib.Path, files: dict[str, bytes | pathlib.Path]) -> None:
    """Every file byte-identical, no in-flight state left."""
    for path, expected in files.items():
        data = expected if isinstance(expected, bytes) else expected.read_bytes()
        got = (model_dir / path).read_bytes()
        assert got == data, f"{path}: {len(got)} bytes differ from the hub's {len(data)}"
    leftovers = [p.name for p in model_dir.rglob("*") if p.name.endswith((".lfs_part", ".ranges")) or
                 ".tmp" in p.name]
    assert leftovers == []
    assert not model_dir.with_name(model_dir.name + ".lfswip").exists()
