"""POST /models/list: windows of the Hub imitation's model search (limit/offset over its cursor pages, total only
once the listing ended), filters, the openvino hub's organisation, refused credentials (401), an unreachable hub
(502), hubs that cannot list (501 with the reason), and every 422."""
from __future__ import annotations

import base64

import pytest

from download_helpers import service_env

REPOS = [("OpenVINO/Qwen3-0.6B-int4-ov", ("openvino", "text-generation"), "text-generation"),
         ("OpenVINO/bge-base-fp16-ov", ("openvino",), "feature-extraction"),
         ("Qwen/Qwen3-0.6B", ("transformers",), "text-generation"),
         ("OpenVINO/whisper-tiny-int8-ov", ("openvino",), "automatic-speech-recognition"),
         ("acme/detector", (), "object-detection"),
         ("acme/tiny-chat", ("transformers",), "text-generation"),
         ("OpenVINO/FLUX.1-schnell-int4-ov", ("openvino",), "text-to-image")]


@pytest.fixture
def listed_hub(hub):
    for repo_id, tags, pipeline_tag in REPOS:
        hub.add_repo(repo_id, {"config.json": b"{}"}, tags=tags, pipeline_tag=pipeline_tag)
    hub.search_page_size = 2  # the windows below span several cursor pages
    return hub


def listing(service, **body):
    return service.post("/models/list", json=body)


def test_windows_over_the_hub_search(listed_hub, service):
    r = listing(service, hub="huggingface", limit=3)
    assert r.status_code == 200, r.text
    first = r.json()
    assert [i["name"] for i in first["items"]] == [name for name, _, _ in REPOS[:3]]
    assert (first["count"], first["total"], first["limit"], first["offset"]) == (3, None, 3, 0)
    assert first["has_more"] is True and first["next_offset"] == 3
    searches = [q for q in listed_hub.requests if q["path"] == "/api/models"]
    assert len(searches) == 2, "one item past the window (4) read in pages of 2, then no more"
    last = listing(service, hub="HuggingFace", limit=3, offset=first["next_offset"] + 3).json()
    assert [i["name"] for i in last["items"]] == [REPOS[6][0]]
    assert (last["count"], last["total"], last["has_more"], last["next_offset"]) == (1, 7, False, None)
    beyond = listing(service, hub="huggingface", offset=50).json()
    assert (beyond["items"], beyond["total"], beyond["has_more"]) == ([], 7, False)
    item = first["items"][0]
    assert item == {"name": "OpenVINO/Qwen3-0.6B-int4-ov", "owner": "OpenVINO", "precisions": ["int4"],
                    "tags": ["openvino", "text-generation"], "model_type": "llm",
                    "last_modified": "2026-01-01T00:00:00.000Z",
                    "metadata": {"pipeline_tag": "text-generation", "library_name": "openvino", "downloads": 0,
                                 "likes": 0, "private": False}}


def test_filters_and_the_openvino_organisation(listed_hub, service):
    names = lambda r: [i["name"] for i in r.json()["items"]]  # noqa: E731
    assert names(listing(service, hub="huggingface", filters={"search": "qwen3"})) == [
        "OpenVINO/Qwen3-0.6B-int4-ov", "Qwen/Qwen3-0.6B"]
    assert names(listing(service, hub="huggingface", filters={"author": "acme", "tags": ["transformers"]})) == [
        "acme/tiny-chat"]
    assert names(listing(service, hub="huggingface", filters={"pipeline_tag": "text-to-image"})) == [
        "OpenVINO/FLUX.1-schnell-int4-ov"]
    r = listing(service, hub="openvino", filters={"author": "acme"})  # the openvino hub is the organisation's
    assert r.json()["total"] == 4 and all(n.startswith("OpenVINO/") for n in names(r))
    assert {i["model_type"] for i in r.json()["items"]} == {"llm", "embeddings", "speech2text", "image_generation"}
    r = listing(service, hub="huggingface", filters={"gated": True})
    assert r.status_code == 400 and "filters.gated is not a filter of hub 'huggingface'" in r.json()["detail"]
    plugins = {p["name"]: p for p in service.get("/plugins").json()["available_plugins"]["downloader"]}
    assert plugins["huggingface"]["capabilities"]["supports_listing"] is True
    assert "search" in plugins["huggingface"]["capabilities"]["listing_filter_fields"]
    assert plugins["ollama"]["capabilities"]["supports_listing"] is False


def test_refused_credentials_are_401_and_an_unreachable_hub_502(listed_hub, service, service_factory, tmp_path):
    wrong = base64.b64encode(b"hf_wrong").decode()
    r = listing(service, hub="huggingface", override_credentials={"HF_TOKEN": wrong})
    assert r.status_code == 401, r.text
    assert f"The hub at {listed_hub.hub_url} refused the credentials (HTTP 401)" in r.json()["detail"]
    assert listed_hub.requests[-1]["auth"] == "Bearer hf_wrong"
    good = base64.b64encode(listed_hub.token.encode()).decode()
    assert listing(service, hub="huggingface", override_credentials={"HF_TOKEN": good}).status_code == 200
    down = service_factory(service_env(HF_ENDPOINT="http://127.0.0.1:9", GIT_LFS_RESUME_ATTEMPTS="0"),
                           models_dir=tmp_path / "other")
    r = listing(down, hub="huggingface")
    assert r.status_code == 502 and "http://127.0.0.1:9 could not be reached" in r.json()["detail"], r.text


@pytest.mark.parametrize("hub_name, reason", [
    ("ollama", "the Ollama registry has no listing API"), ("remote-url", "a URL names one file"),
    ("ultralytics", "the asset server publishes files, not an index"),
    ("geti", "listing a Geti server's projects is not implemented")])
def test_hubs_that_cannot_list_are_501_with_the_reason(service, hub_name, reason):
    r = listing(service, hub=hub_name)
    assert r.status_code == 501
    assert r.json()["detail"].startswith(f"Hub '{hub_name}' cannot list models: {reason}"), r.text


@pytest.mark.parametrize("body, loc", [
    ({"hub": "huggingface", "limit": 0}, ["body", "limit"]), ({"hub": "huggingface", "limit": 201}, ["body", "limit"]),
    ({"hub": "huggingface", "offset": -1}, ["body", "offset"]), ({"hub": "gitlab"}, ["body", "hub"]),
    ({"limit": 5}, ["body", "hub"]), ({"hub": "huggingface", "limit": "5"}, ["body", "limit"]),
    ({"hub": "huggingface", "filters": []}, ["body", "filters"])])
def test_invalid_listing_requests_are_422_naming_the_field(service, body, loc):
    r = listing(service, **body)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [loc]
