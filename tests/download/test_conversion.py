"""Conversion in the download service (is_ovms: true on a transformers-format huggingface repository).

Fast tests put a fake optimum-cli / convert_tokenizer on the service's PATH (they record their command lines and
write an IR-shaped directory, or sleep until killed); the slow ones run optimum-intel's real optimum-cli from the
fixtures venv on a tiny Qwen2 built by tests/pull/real_export_models.py, as tests/pull/test_real_export.py does, and
serve the result with `python -m ovms --config_path`. Those fail, not skip, without the fixtures venv (`make test`
builds it with `make fixtures-venv`).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import requests

from download_helpers import ROOT, free_port, service_env

FIXTURE_BIN = ROOT / ".venv-fixtures" / "bin"
BUILDER = ROOT / "tests" / "pull" / "real_export_models.py"
SRC = "someorg/tiny-qwen2"
QWEN2_CONFIG = b'{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}'

FAKE_OPTIMUM_CLI = r"""
import json, os, pathlib, sys, time
with open(CALLS, "a") as f:
    f.write(json.dumps({"argv": ["optimum-cli", *sys.argv[1:]], "pid": os.getpid(),
                        "offline": os.environ.get("HF_HUB_OFFLINE")}) + "\n")
time.sleep(float(os.environ.get("FAKE_OPTIMUM_SLEEP", "0")))
out = pathlib.Path(sys.argv[-1])
out.mkdir(parents=True, exist_ok=True)
for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
    (out / name).write_text(name)
"""


def fake_optimum(tmp_path) -> tuple[str, object]:
    bin_dir, calls = tmp_path / "fake-bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "optimum-cli"
    script.write_text(f"#!{sys.executable}\nCALLS = {str(calls)!r}\n{FAKE_OPTIMUM_CLI}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}:{os.environ['PATH']}", calls


def read_calls(calls) -> list[dict]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def staging_left(models_dir) -> list[str]:
    staging = models_dir / ".ovms_download" / "staging"
    return sorted(str(p) for p in staging.rglob("*")) if staging.exists() else []


def publish_transformers(hub, repo_id: str = SRC) -> None:
    hub.add_repo(repo_id, {"config.json": QWEN2_CONFIG, "model.safetensors": b"\1" * 4096,
                           "tokenizer.json": b"{}"})


@pytest.mark.parametrize("config, weight_format, extra", [
    ({"precision": "int4", "device": "CPU"}, "int4", []),
    ({"precision": "fp16"}, "fp16", []),
    ({}, "int8", []),  # ovms --pull's default
    ({"precision": "int8", "device": "NPU"}, "int4", ["--sym", "--ratio", "1.0", "--group-size", "-1"]),
], ids=["int4", "fp16", "default", "npu"])
def test_transformers_repository_is_converted_into_the_ovms_layout(hub, service_factory, tmp_path, config,
                                                                   weight_format, extra):
    path, calls = fake_optimum(tmp_path)
    publish_transformers(hub)
    service = service_factory(service_env(hub, PATH=path))
    job = service.wait(service.download([{"name": SRC, "hub": "huggingface", "type": "llm", "is_ovms": True,
                                          "config": config}], download_path="dl").json()["job_ids"][0])
    assert job["status"] == "completed", (job, service.log())
    final = service.models_dir / "dl" / "someorg" / "tiny-qwen2"
    [call] = read_calls(calls)
    argv = call["argv"]
    source, target = argv[argv.index("--model") + 1], argv[-1]
    assert argv == ["optimum-cli", "export", "openvino", "--model", source, "--trust-remote-code",
                    "--weight-format", weight_format, "--task", "text-generation-with-past", *extra, target]
    staging = str(service.models_dir / ".ovms_download" / "staging")
    assert source.startswith(staging) and source.endswith("/someorg/tiny-qwen2") and target.startswith(staging)
    assert call["offline"] == "1", "the converter reads the downloaded copy, never a hub"
    assert sorted(p.name for p in final.iterdir()) == [".ovms_download.json", "graph.pbtxt", "openvino_detokenizer.xml",
                                                       "openvino_model.bin", "openvino_model.xml",
                                                       "openvino_tokenizer.xml"]
    graph = (final / "graph.pbtxt").read_text()
    assert 'calculator: "HttpLLMCalculator"' in graph
    assert f'device: "{config.get("device", "CPU")}"' in graph
    config_json = json.loads((service.models_dir / "dl" / "config.json").read_text())
    assert config_json["model_config_list"] == [{"config": {"name": SRC, "base_path": str(final)}}]
    result = job["result"]
    assert result["converted"] is True and result["weight_format"] == weight_format
    assert result["model_path"] == str(final) and result["from_cache"] is False
    assert staging_left(service.models_dir) == []


def test_a_repeated_conversion_is_answered_from_the_record(hub, service_factory, tmp_path):
    """The same request again joins the completed job; with the job store lost, the conversion record answers it
    without asking the hub or converting; another precision converts again and replaces it."""
    path, calls = fake_optimum(tmp_path)
    publish_transformers(hub)
    env = service_env(hub, PATH=path)
    model = {"name": SRC, "hub": "huggingface", "type": "llm", "is_ovms": True, "config": {"precision": "int4"}}
    first = service_factory(env)
    job = first.wait(first.download([model]).json()["job_ids"][0])
    assert job["status"] == "completed", job
    assert first.download([model]).json()["job_ids"] == [job["id"]]
    first.stop()
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"):
        (first.models_dir / ".ovms_download" / name).unlink(missing_ok=True)
    second = service_factory(env)
    before = len(hub.requests)
    again = second.wait(second.download([model]).json()["job_ids"][0])
    assert again["status"] == "completed" and again["result"]["from_cache"] is True, (again["error"], again["result"])
    assert again["result"]["converted"] is True and again["result"]["weight_format"] == "int4"
    assert len(hub.requests) == before and len(read_calls(calls)) == 1
    other = second.wait(second.download([{**model, "config": {"precision": "fp16"}}]).json()["job_ids"][0])
    assert other["status"] == "completed" and other["result"]["from_cache"] is False, other
    assert [c["argv"][c["argv"].index("--weight-format") + 1] for c in read_calls(calls)] == ["int4", "fp16"]
    record = json.loads((second.models_dir / "models" / "someorg" / "tiny-qwen2" / ".ovms_download.json").read_text())
    assert record["weight_format"] == "fp16" and record["source_model"] == SRC


def test_cancel_kills_the_converter_and_leaves_nothing(hub, service_factory, tmp_path):
    path, calls = fake_optimum(tmp_path)
    publish_transformers(hub)
    service = service_factory(service_env(hub, PATH=path, FAKE_OPTIMUM_SLEEP="120"))
    model = {"name": SRC, "hub": "huggingface", "type": "llm", "is_ovms": True}
    job_id = service.download([model]).json()["job_ids"][0]
    service.wait(job_id, until=("converting", "failed", "completed"))
    deadline = time.monotonic() + 30
    while not read_calls(calls):
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    pid = read_calls(calls)[0]["pid"]
    started = time.monotonic()
    r = service.delete(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 10
    job = service.job(job_id)
    assert job["status"] == "canceled" and job["error"] == "Canceled by request."
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower(), \
        "optimum-cli was killed"
    assert not (service.models_dir / "models" / "someorg").exists()
    assert staging_left(service.models_dir) == []


def test_without_optimum_cli_the_job_fails_with_the_install_hint_and_plugins_say_so(hub, service_factory,
                                                                                   tmp_path):
    publish_transformers(hub)
    service = service_factory(service_env(hub, PATH="/usr/bin:/bin"))
    converter = service.get("/plugins").json()["available_plugins"]["converter"][0]
    assert converter["available"] is False
    assert "optimum-cli is not on PATH" in converter["unavailable_reason"]
    assert 'pip install "optimum-intel[openvino]"' in converter["unavailable_reason"]
    r = service.download([{"name": SRC, "hub": "huggingface", "is_ovms": True, "config": {"precision": "int8"}}])
    assert r.status_code == 200, r.text  # the format is not known before the job looks at the repository
    job = service.wait(r.json()["job_ids"][0])
    assert job["status"] == "failed"
    assert "not in OpenVINO format" in job["error"] and "optimum-cli is not on the service's PATH" in job["error"]
    assert "pip install" in job["error"]
    assert not (service.models_dir / "models" / "someorg").exists()
    assert not [r for r in hub.requests if r["origin"] == "cdn"], "nothing downloaded for a conversion that cannot run"


def test_plugins_report_the_converter_available_with_optimum_cli_on_path(hub, service_factory, tmp_path):
    path, _ = fake_optimum(tmp_path)
    service = service_factory(service_env(hub, PATH=path))
    body = service.get("/plugins").json()
    converter = body["available_plugins"]["converter"][0]
    assert converter["available"] is True and converter["unavailable_reason"] is None
    assert "optimum-intel" in converter["description"]
    assert body["available_count"] == sum(p["available"] for kind in body["available_plugins"].values()
                                          for p in kind)


def test_precision_on_an_openvino_repository_is_judged_at_fetch_time(hub, service):
    from download_helpers import tiny_repo_files
    hub.add_repo("OpenVINO/tiny-int4-ov", tiny_repo_files())
    hub.add_repo("OpenVINO/tiny-ov", tiny_repo_files())
    for name, precision, words in (("OpenVINO/tiny-int4-ov", "int8", "(in int4)"),
                                   ("OpenVINO/tiny-ov", "fp16", "its name states no precision")):
        r = service.download([{"name": name, "hub": "huggingface", "is_ovms": True, "type": "llm",
                               "config": {"precision": precision}}])
        assert r.status_code == 200, r.text
        job = service.wait(r.json()["job_ids"][0])
        assert job["status"] == "failed" and "already in OpenVINO format" in job["error"] and words in job["error"]
    ok = service.wait(service.download([{"name": "OpenVINO/tiny-int4-ov", "hub": "huggingface", "is_ovms": True,
                                         "type": "llm", "config": {"precision": "int4"}}]).json()["job_ids"][0])
    assert ok["status"] == "completed" and ok["result"]["converted"] is False, ok


# ---- the real optimum-cli -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    python, optimum_cli = FIXTURE_BIN / "python", FIXTURE_BIN / "optimum-cli"
    if not (python.exists() and optimum_cli.exists()):
        pytest.fail(f"{FIXTURE_BIN} has no python/optimum-cli: run `make fixtures-venv` (make test builds it).",
                    pytrace=False)
    root = tmp_path_factory.mktemp("hf-repos")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(python), str(BUILDER), "llm", str(root / "llm")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "llm"


def publish_tiny_llm(hub, source) -> None:
    hub.add_repo(SRC, {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()})


def real_env(hub, tmp_path) -> dict[str, str]:
    return service_env(hub, PATH=f"{FIXTURE_BIN}:{os.environ['PATH']}", HF_HOME=str(tmp_path / "hf-home"))


def chat(port: int, model: str, question: str, log_path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 20,
            "temperature": 0}
    while True:
        try:
            r = requests.post(f"http://127.0.0.1:{port}/v3/chat/completions", json=body, timeout=60)
            if r.status_code == 200:
                return r.json()
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.3)


@pytest.mark.slow
def test_real_conversion_int8_is_served_by_ovms(hub, service_factory, tmp_path, tiny_llm):
    from real_export_models import ANSWER, QUESTION
    publish_tiny_llm(hub, tiny_llm)
    service = service_factory(real_env(hub, tmp_path))
    assert service.get("/plugins").json()["available_plugins"]["converter"][0]["available"] is True
    started = time.monotonic()
    r = service.download([{"name": SRC, "hub": "huggingface", "type": "llm", "is_ovms": True,
                           "config": {"precision": "int8", "device": "CPU", "cache_size": 1}}], download_path="repo")
    assert r.status_code == 200, r.text
    job_id = r.json()["job_ids"][0]
    seen = service.wait(job_id, until=("converting", "completed", "failed"), timeout=120)["status"]
    job = service.wait(job_id, timeout=300)
    print(f"download + real int8 conversion took {time.monotonic() - started:.1f} s")
    assert job["status"] == "completed", (job, service.log())
    assert seen in ("converting", "completed")
    final = service.models_dir / "repo" / "someorg" / "tiny-qwen2"
    xml = (final / "openvino_model.xml").read_text()
    assert 'element_type="u8"' in xml or 'element_type="i8"' in xml, "int8 weights"
    for name in ("openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "graph.pbtxt"):
        assert (final / name).is_file(), sorted(os.listdir(final))
    assert not (final / "model.safetensors").exists()
    assert "Converting someorg/tiny-qwen2: optimum-cli export openvino" in service.log()
    assert staging_left(service.models_dir) == []
    config_path = service.models_dir / "repo" / "config.json"
    port = free_port()
    log_path = tmp_path / "ovms.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ovms", "--config_path", str(config_path), "--rest_port",
                                 str(port), "--rest_bind_address", "127.0.0.1"], env=service_env(hub), cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        answer = chat(port, SRC, QUESTION, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert answer["choices"][0]["message"]["content"] == ANSWER
    # The same request again: the completed job, no new conversion.
    before = service.log().count("Converting someorg/tiny-qwen2")
    assert service.download([{"name": SRC, "hub": "huggingface", "type": "llm", "is_ovms": True,
                              "config": {"precision": "int8", "device": "CPU", "cache_size": 1}}],
                            download_path="repo").json()["job_ids"] == [job_id]
    assert service.log().count("Converting someorg/tiny-qwen2") == before


@pytest.mark.slow
def test_real_conversion_canceled_leaves_no_model(hub, service_factory, tmp_path, tiny_llm):
    publish_tiny_llm(hub, tiny_llm)
    service = service_factory(real_env(hub, tmp_path))
    job_id = service.download([{"name": SRC, "hub": "huggingface", "type": "llm", "is_ovms": True,
                                "config": {"precision": "int8"}}]).json()["job_ids"][0]
    status = service.wait(job_id, until=("converting", "completed", "failed"), timeout=120)["status"]
    assert status == "converting", service.log()
    time.sleep(1.0)  # optimum-cli is starting (its import alone takes seconds here)
    r = service.delete(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    job = service.job(job_id)
    assert job["status"] == "canceled", job
    assert not (service.models_dir / "models" / "someorg").exists()
    assert staging_left(service.models_dir) == []
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [line for line in out if "optimum" in line and str(service.models_dir) in line], \
        "no optimum-cli left running on the job's staging directory"
