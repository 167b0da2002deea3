"""The ollama hub against the Ollama registry imitation: manifest then blobs by digest, laid out as Ollama does,
every blob sha256-checked (a wrong digest is fetched again, then the job fails), resumed after drops, after an
ignored Range and after SIGKILL + restart."""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from download_helpers import assert_no_partials, content, service_env
from ollama_imitation import BlobFaults, OllamaImitation

GGUF = b"GGUF" + content("gguf", 3 << 20)
LAYERS = {"model": GGUF, "template": b"{{ .Prompt }}", "license": b"MIT", "params": b'{"stop": ["<|end|>"]}'}


@pytest.fixture
def registry():
    r = OllamaImitation().start()
    yield r
    r.stop()


@pytest.fixture
def ollama_service(hub, registry, service_factory):
    return service_factory(service_env(hub, OLLAMA_REGISTRY=registry.url))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_pull_lays_out_manifest_and_blobs_as_ollama(registry, ollama_service):
    manifest = registry.add_model("tinyllama", "1b", LAYERS)
    registry.faults[digest(GGUF)] = BlobFaults(drop_after=700_000)  # dropped once: resumed with Range
    registry.faults[digest(LAYERS["template"])] = BlobFaults(wrong_bytes=True)  # wrong bytes once: fetched again
    job = ollama_service.wait(ollama_service.download([{"name": "tinyllama:1b", "hub": "ollama"}],
                                                      download_path="o").json()["job_ids"][0])
    assert job["status"] == "completed", (job, ollama_service.log())
    root = ollama_service.models_dir / "o" / "ollama" / "tinyllama:1b"
    host = registry.url.removeprefix("http://")
    stored = (root / "manifests" / host / "library" / "tinyllama" / "1b").read_bytes()
    assert json.loads(stored) == manifest
    for entry in [manifest["config"], *manifest["layers"]]:
        blob = root / "blobs" / entry["digest"].replace(":", "-")
        assert digest(blob.read_bytes()) == entry["digest"]
    assert (root / "blobs" / digest(GGUF).replace(":", "-")).read_bytes() == GGUF
    assert job["result"]["gguf_path"] == str(root / "blobs" / digest(GGUF).replace(":", "-"))
    assert any(r["range"] for r in registry.blob_requests(digest(GGUF))), "resumed with Range after the drop"
    assert len(registry.blob_requests(digest(LAYERS["template"]))) == 2, "the wrong bytes were fetched again"
    manifest_request = next(r for r in registry.requests if "/manifests/" in r["path"])
    assert manifest_request["accept"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert_no_partials(ollama_service.models_dir)
    # Asked again: the same job, no request to the registry.
    before = len(registry.requests)
    again = ollama_service.download([{"name": "tinyllama:1b", "hub": "ollama"}], download_path="o").json()
    assert again["job_ids"] == [job["id"]] and len(registry.requests) == before


def test_a_blob_that_never_matches_its_digest_fails_the_job(registry, ollama_service):
    registry.add_model("broken", "latest", LAYERS)
    registry.faults[digest(GGUF)] = BlobFaults(wrong_bytes=True, times=1000)
    job = ollama_service.wait(ollama_service.download([{"name": "broken", "hub": "ollama"}]).json()["job_ids"][0])
    assert job["status"] == "failed" and "failed verification" in job["error"], job
    assert not (ollama_service.models_dir / "models" / "ollama" / "broken").exists()


def test_server_ignoring_range_and_namespaced_model(registry, ollama_service):
    registry.add_model("someone/custom", "q4", LAYERS)
    registry.faults[digest(GGUF)] = BlobFaults(drop_after=500_000, times=1)
    registry.faults[digest(GGUF)].ignore_range = True
    job = ollama_service.wait(ollama_service.download([{"name": "someone/custom", "hub": "ollama",
                                                        "revision": "q4"}]).json()["job_ids"][0])
    assert job["status"] == "completed", (job, ollama_service.log())
    root = ollama_service.models_dir / "models" / "ollama" / "someone/custom"
    assert (root / "manifests" / registry.url.removeprefix("http://") / "someone" / "custom" / "q4").is_file()
    assert (root / "blobs" / digest(GGUF).replace(":", "-")).read_bytes() == GGUF


def test_unknown_model_and_bad_names(registry, ollama_service):
    job = ollama_service.wait(ollama_service.download([{"name": "nothing:here", "hub": "ollama"}]).json()["job_ids"][0])
    assert job["status"] == "failed" and "library/nothing:here was not found" in job["error"]
    for bad in ("../x", "Upper:tag", "a/b/c"):
        r = ollama_service.download([{"name": bad, "hub": "ollama"}])
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "models", 0, "name"], bad
    r = ollama_service.download([{"name": "x", "hub": "ollama", "is_ovms": True}])
    assert r.status_code == 400 and "GGUF" in r.json()["detail"]


def test_sigkill_mid_pull_resumes_after_restart(hub, registry, service_factory):
    big = b"GGUF" + content("big-gguf", 6 << 20)
    registry.add_model("slow", "latest", {**LAYERS, "model": big})
    registry.faults[digest(big)] = BlobFaults(throttle_bps=384 << 10, times=10_000)
    env = service_env(hub, OLLAMA_REGISTRY=registry.url)
    first = service_factory(env)
    job_id = first.download([{"name": "slow", "hub": "ollama"}]).json()["job_ids"][0]
    deadline = time.monotonic() + 60
    while first.job(job_id)["progress"]["current"] < 0.4 * len(big):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    first.kill()
    seen = len(registry.requests)
    second = service_factory(env)
    job = second.wait(job_id)
    assert job["status"] == "completed", (job, second.log())
    after = [r for r in registry.requests[seen:] if r["origin"] == "cdn" and r["path"].endswith(digest(big))]
    assert after and all(r["range"] and not r["range"].startswith("bytes=0-") for r in after), after
    root = second.models_dir / "models" / "ollama" / "slow"
    assert (root / "blobs" / digest(big).replace(":", "-")).read_bytes() == big
