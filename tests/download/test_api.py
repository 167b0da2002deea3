"""The REST surface of `python -m ovms.download`: health, every 422, 400 for hubs not available, 404, plugins,
and the OpenAPI document built from the definitions the handlers validate with."""
from __future__ import annotations

import pytest
import requests

from download_helpers import tiny_repo_files


def test_health(service):
    r = service.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def _locs(r: requests.Response) -> list[list]:
    assert r.status_code == 422, r.text
    return [d["loc"] for d in r.json()["detail"]]


HF = {"name": "OpenVINO/tiny-ov", "hub": "huggingface"}


@pytest.mark.parametrize("model, loc, words", [
    ({"name": "", "hub": "huggingface"}, ["body", "models", 0, "name"], "at least 1 character"),
    ({"hub": "huggingface"}, ["body", "models", 0, "name"], "Field required"),
    ({"name": "a/b", "hub": "modelscope"}, ["body", "models", 0, "hub"], "'huggingface'"),
    ({**HF, "type": "llm", "is_ovms": True, "config": {"precision": "int3"}},
     ["body", "models", 0, "config", "precision"], "'int4'"),
    ({**HF, "is_ovms": True, "config": {"device": "TPU"}}, ["body", "models", 0, "config", "device"], "'NPU'"),
    ({**HF, "is_ovms": True, "config": {"cache_size": 0}}, ["body", "models", 0, "config", "cache_size"],
     "greater than 0"),
    ({**HF, "is_ovms": True, "config": {"cache_size": -3}}, ["body", "models", 0, "config", "cache_size"],
     "greater than 0"),
    ({**HF, "type": "audio"}, ["body", "models", 0, "type"], "'speech2text'"),
    ({**HF, "is_ovms": "yes"}, ["body", "models", 0, "is_ovms"], "valid boolean"),
    ({"name": "../../etc", "hub": "huggingface"}, ["body", "models", 0, "name"], "not a Hugging Face repository"),
    ({"name": "org/..", "hub": "huggingface"}, ["body", "models", 0, "name"], "not a Hugging Face repository"),
    ({**HF, "override_credentials": {"HF_TOKEN": "not base64!"}},
     ["body", "models", 0, "override_credentials", "HF_TOKEN"], "base64"),
    ({**HF, "unknown_field": 1}, ["body", "models", 0, "unknown_field"], "Extra inputs"),
])
def test_invalid_model_is_422_naming_the_field(service, model, loc, words):
    r = service.download([model])
    assert _locs(r) == [loc]
    assert words in r.json()["detail"][0]["msg"]
    assert service.get("/jobs").json() == {"jobs": []}


def test_missing_and_escaping_download_path(service):
    r = service.post("/models/download", json={"models": [HF]})
    assert _locs(r) == [["query", "download_path"]]
    for bad in ("../outside", "/etc", "a/../../b", ".ovms_download"):
        r = service.download([HF], download_path=bad)
        assert _locs(r) == [["query", "download_path"]], bad
        assert r.json()["detail"][0]["input"] == bad


def test_bad_json_and_bad_shapes(service):
    r = service.post("/models/download", params={"download_path": "m"}, data=b"{not json",
                     headers={"Content-Type": "application/json"})
    assert _locs(r) == [["body"]] and "JSON decode error" in r.json()["detail"][0]["msg"]
    assert _locs(service.post("/models/download", params={"download_path": "m"}, json={})) == [["body", "models"]]
    assert _locs(service.post("/models/download", params={"download_path": "m"}, json=[1])) == [["body"]]
    assert _locs(service.post("/models/download", params={"download_path": "m"},
                              json={"models": "x"})) == [["body", "models"]]
    r = service.post("/models/download", params={"download_path": "m"},
                     json={"models": [{"name": "", "hub": "x"}, {"hub": "ollama"}]})
    assert sorted(_locs(r)) == [["body", "models", 0, "hub"], ["body", "models", 0, "name"],
                                ["body", "models", 1, "name"]]


def test_empty_list_is_200_with_no_jobs(service):
    r = service.download([])
    assert r.status_code == 200
    assert r.json() == {"message": "Started processing 0 model(s)", "job_ids": [], "status": "processing"}


@pytest.mark.parametrize("hub_name, reason", [("ultralytics", "the ultralytics package is not installed"),
                                              ("geti", "GETI_HOST, GETI_ORGANIZATION_ID, GETI_WORKSPACE_ID, "
                                                       "GETI_TOKEN not set"),
                                              ("remote-url", "no URL is allow-listed")])
def test_hub_not_available_is_400_with_the_reason(service, hub_name, reason):
    name = "https://example.com/yolo11n.pt" if hub_name == "remote-url" else "yolo11n"
    r = service.download([{"name": name, "hub": hub_name}])
    assert r.status_code == 400
    assert f"Hub '{hub_name}' is not available: {reason}" in r.json()["detail"]
    assert service.get("/jobs").json() == {"jobs": []}


@pytest.mark.parametrize("model, words", [
    # An OpenVINO-organisation repository is converted already; on the huggingface hub the precision is judged at
    # fetch time, once the repository's format is known (test_conversion.py).
    ({"name": "tiny-ov", "hub": "openvino", "config": {"precision": "int4"}}, "is already in OpenVINO format"),
    ({**HF, "config": {"device": "GPU"}}, "config.device only applies with is_ovms: true"),
    ({**HF, "is_ovms": True, "config": {"quantize": "x"}}, "config.quantize is not supported"),
    ({**HF, "is_ovms": True, "type": "vision"}, "type 'vision': this service writes no OVMS graph"),
    ({**HF, "override_credentials": {"GETI_TOKEN": "eA=="}}, "override_credentials.GETI_TOKEN is not used"),
])
def test_accepted_shape_but_not_doable_is_400(service, model, words):
    r = service.download([model])
    assert r.status_code == 400 and words in r.json()["detail"], r.text


def test_unknown_job_is_404(service):
    r = service.get("/jobs/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Job nope not found"}
    assert service.delete("/jobs/nope").status_code == 404
    assert service.get("/jobs/nope/events").status_code == 404
    r = service.get("/models/jobs", params={"model_name": "nobody"})
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    assert _locs(service.get("/models/jobs")) == [["query", "model_name"]]


def test_plugins_say_what_is_available(service):
    body = service.get("/plugins").json()
    downloaders = {p["name"]: p for p in body["available_plugins"]["downloader"]}
    assert set(downloaders) == {"huggingface", "openvino", "ollama", "ultralytics", "geti", "remote-url"}
    assert downloaders["ollama"]["available"] is True
    assert downloaders["huggingface"]["available"] is True and downloaders["huggingface"]["unavailable_reason"] is None
    assert downloaders["geti"]["available"] is False and "GETI_TOKEN" in downloaders["geti"]["unavailable_reason"]
    converters = body["available_plugins"]["converter"]
    # available exactly when optimum-cli is on the service's PATH (test_conversion.py sets it either way)
    assert [c["name"] for c in converters] == ["openvino"] and "optimum-intel" in converters[0]["description"]
    assert body["total_count"] == len(downloaders) + len(converters)
    assert body["available_count"] == sum(p["available"] for p in [*downloaders.values(), *converters])
    assert set(downloaders["huggingface"]["capabilities"]) == {"supports_parallel_downloads", "supports_listing",
                                                               "listing_filter_fields"}


def test_openapi_matches_what_is_validated(service):
    doc = service.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/api/v1/models/download"]["post"]
    assert post["parameters"][0]["name"] == "download_path" and post["parameters"][0]["required"] is True
    model = doc["components"]["schemas"]["ModelRequest"]
    assert model["required"] == ["name", "hub"]
    assert model["properties"]["hub"]["enum"] == ["huggingface", "ollama", "ultralytics", "geti", "openvino",
                                                  "remote-url"]
    config = doc["components"]["schemas"]["ModelConfig"]
    assert config["properties"]["precision"]["enum"] == ["int4", "int8", "fp16", "fp32"]
    assert config["properties"]["cache_size"]["exclusiveMinimum"] is True
    for path in ("/api/v1/health", "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events",
                 "/api/v1/models/jobs", "/api/v1/models/results", "/api/v1/plugins"):
        assert path in doc["paths"], path
    assert "delete" in doc["paths"]["/api/v1/jobs/{job_id}"]
    # A document and a validator from one definition: each enum value listed is accepted (422 never names it).
    for hub_name in model["properties"]["hub"]["enum"]:
        r = service.download([{"name": "x/y", "hub": hub_name.upper()}])
        named = [d["loc"] for d in r.json()["detail"]] if r.status_code == 422 else []
        assert ["body", "models", 0, "hub"] not in named, (hub_name, r.text)


def test_unit_validation_round_trip():
    from ovms.download import schema

    ok = schema.validate(schema.DownloadRequest, {"models": [{"name": "a/b", "hub": "HuggingFace",
                                                              "config": {"device": "gpu", "extra": 1}}]})
    assert ok["models"][0]["hub"] == "huggingface" and ok["models"][0]["config"]["device"] == "GPU"
    assert ok["models"][0]["config"]["extra"] == 1 and ok["parallel_downloads"] is False
    assert tiny_repo_files()["config.json"].startswith(b"{")


def test_docs_page_serves_its_assets_locally(service):
    """The Swagger UI page and its script and stylesheet come from the service itself (no CDN)."""
    import urllib.request

    base = service.url.removesuffix("/api/v1")
    with urllib.request.urlopen(f"{base}/api/v1/docs", timeout=10) as response:
        page = response.read().decode()
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "/api/v1/openapi.json" in page and "http://" not in page and "https://" not in page
    for asset, kind in (("swagger-ui-bundle.js", "application/javascript"), ("swagger-ui.css", "text/css")):
        assert f"/api/v1/docs/static/{asset}" in page
        with urllib.request.urlopen(f"{base}/api/v1/docs/static/{asset}", timeout=10) as response:
            assert response.headers["Content-Type"].startswith(kind) and len(response.read()) > 10_000


@pytest.mark.parametrize("args, env, message", [
    (["--remote_url_allowlist", "ftp://files.example/"], {}, "--remote_url_allowlist: remote-url allow-list entry "
                                                            "'ftp://files.example/' is not an http(s) URL prefix"),
    ([], {"OVMS_PULL_CONNECTIONS": "many"}, "OVMS_PULL_CONNECTIONS='many' is not a whole number."),
    (["--max_connections", "0"], {}, "--max_connections must be at least 1."),
])
def test_bad_startup_settings_exit_64_with_the_reason(tmp_path, args, env, message):
    import subprocess
    import sys

    from download_helpers import ROOT, service_env
    proc = subprocess.run([sys.executable, "-m", "ovms.download", "--port", "1", "--models_dir", str(tmp_path),
                           *args], env=service_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
