"""Hub remote-url against a local file server: the allow-list (unavailable without one, a URL off it refused with
the URL named), a download through a redirect that drops mid-body (resumed with Range) verified by config.sha256,
a wrong sha256 failing with no file left, size-only checks, a server that states no size, and the cache."""
from __future__ import annotations

import hashlib
import pathlib
import urllib.parse

import pytest

from asset_server import AssetServer, FileFaults
from download_helpers import assert_no_partials, content, service_env
from ovms.download.hubs.remote_url import parse_allowlist

DATA = content("remote", (3 << 20) + 12345)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def assets():
    a = AssetServer().start()
    yield a
    a.stop()


@pytest.fixture
def url_service(assets, service_factory):
    # Allowed: one URL prefix on the file server (the CDN it redirects to is not on the list and need not be).
    return service_factory(service_env(EXTERNAL_SOURCES_URL_ALLOWLIST=f"{assets.url}/public/"))


def admitted(entries: str, url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return any(e.admits(parts) for e in parse_allowlist(entries))


def test_allowlist_entries_match_hosts_and_path_prefixes():
    assert admitted("models.example.com", "https://models.example.com/a/b.onnx")
    assert admitted("models.example.com", "http://MODELS.example.com:8080/b.onnx")  # a bare host: any port
    assert not admitted("models.example.com:8080", "http://models.example.com/b.onnx")
    assert not admitted("models.example.com", "https://models.example.com.evil.net/b.onnx")
    assert admitted("https://h.example/pub/", "https://h.example/pub/x/y.bin")
    assert admitted("https://h.example/pub", "https://h.example/pub/y.bin")
    assert not admitted("https://h.example/pub", "https://h.example/public/y.bin")  # a path boundary, not a prefix
    assert not admitted("https://h.example/pub/", "http://h.example/pub/y.bin")  # scheme pinned by a URL entry
    assert not admitted("https://h.example/pub/", "https://h.example:8443/pub/y.bin")  # and its port (443)
    assert admitted("a.example, https://b.example/m/", "https://b.example/m/f")
    for bad in ("ftp://h.example/", "https://user:pw@h.example/", "not a host!"):
        with pytest.raises(ValueError, match="allow-list entry"):
            parse_allowlist(bad)


def test_unavailable_without_an_allowlist(assets, service):
    plugin = next(p for p in service.get("/plugins").json()["available_plugins"]["downloader"]
                  if p["name"] == "remote-url")
    assert plugin["available"] is False
    assert "--remote_url_allowlist" in plugin["unavailable_reason"]
    assert "EXTERNAL_SOURCES_URL_ALLOWLIST" in plugin["unavailable_reason"]
    url = assets.add("public/model.bin", DATA)
    r = service.download([{"name": url, "hub": "remote-url"}])
    assert r.status_code == 400, r.text
    assert "Hub 'remote-url' is not available: no URL is allow-listed" in r.json()["detail"]
    assert assets.requests == []


def test_urls_off_the_list_and_bad_input_are_refused(assets, url_service):
    off = assets.add("private/model.bin", DATA)
    r = url_service.download([{"name": off, "hub": "remote-url"}])
    assert r.status_code == 400, r.text
    assert f"URL {off} is not on the remote-url allow-list ({assets.url}/public/)" in r.json()["detail"]
    cases = [("not-a-url", ("body", "models", 0, "name"), "is not an http(s) URL"),
             (f"http://u:secret@{assets.url.removeprefix('http://')}/public/m.bin", ("body", "models", 0, "name"),
              "carries credentials"),
             (f"{assets.url}/public/../private/model.bin", ("body", "models", 0, "name"), "'..' segments"),
             (f"{assets.url}/public/", ("body", "models", 0, "name"), "names no file")]
    for name, loc, message in cases:
        r = url_service.download([{"name": name, "hub": "remote-url"}])
        assert r.status_code == 422, (name, r.text)
        detail = r.json()["detail"][0]
        assert tuple(detail["loc"]) == loc and message in detail["msg"], (name, detail)
        assert "secret" not in r.text or "carries credentials" in r.text
    r = url_service.download([{"name": f"{assets.url}/public/m.bin", "hub": "remote-url",
                               "config": {"sha256": "abc"}}])
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "models", 0, "config", "sha256"]
    r = url_service.download([{"name": f"{assets.url}/public/m.bin", "hub": "remote-url", "is_ovms": True}])
    assert r.status_code == 400 and "is_ovms is not supported for hub 'remote-url'" in r.json()["detail"]
    assert assets.requests == [], "nothing refused was fetched"


def test_download_through_a_redirect_resumes_after_a_drop_and_is_verified(assets, url_service):
    url = assets.add("public/models/tiny.onnx", DATA, redirect=True)
    assets.faults["public/models/tiny.onnx"] = FileFaults(drop_after=900_000)
    r = url_service.download([{"name": url, "hub": "remote-url", "config": {"sha256": SHA.upper()}}],
                             download_path="files")
    assert r.status_code == 200, r.text
    job = url_service.wait(r.json()["job_ids"][0])
    assert job["status"] == "completed", (job, url_service.log())
    host = assets.url.removeprefix("http://").replace(":", "_")
    final = url_service.models_dir / "files" / "remote-url" / host / "public" / "models" / "tiny.onnx"
    assert final.read_bytes() == DATA
    assert job["result"]["model_path"] == str(final)
    assert job["result"]["sha256"] == SHA and job["result"]["verified_by"] == "sha256"
    assert job["progress"]["current"] == job["progress"]["total"] == len(DATA)
    body = [r for r in assets.body_requests("public/models/tiny.onnx") if r["range"] != "bytes=0-0"]
    assert any(r["range"] and not r["range"].startswith("bytes=0-") for r in body), \
        f"resumed with a Range from the bytes on disk after the drop: {body}"
    assert_no_partials(url_service.models_dir)
    # Asked again: the same job, answered without a request.
    before = len(assets.requests)
    again = url_service.download([{"name": url, "hub": "remote-url", "config": {"sha256": SHA}}],
                                 download_path="files").json()
    assert again["job_ids"] == [job["id"]] and len(assets.requests) == before


def test_a_wrong_sha256_fails_the_job_and_leaves_no_file(assets, url_service):
    url = assets.add("public/corrupt.bin", DATA)
    assets.faults["public/corrupt.bin"] = FileFaults(flip_at=1_000_000, times=100)  # every transfer corrupt
    job = url_service.wait(url_service.download([{"name": url, "hub": "remote-url",
                                                   "config": {"sha256": SHA}}]).json()["job_ids"][0])
    assert job["status"] == "failed", job
    assert "failed verification" in job["error"] and "sha256" in job["error"], job["error"]
    assert not list(url_service.models_dir.rglob("corrupt.bin")), "no corrupt file under its final name"


def test_without_sha256_the_size_is_checked_and_the_digest_reported(assets, url_service):
    url = assets.add("public/plain.bin", DATA[:70_000])
    job = url_service.wait(url_service.download([{"name": url, "hub": "remote-url"}]).json()["job_ids"][0])
    assert job["status"] == "completed", (job, url_service.log())
    assert job["result"]["verified_by"] == "size"
    assert job["result"]["sha256"] == hashlib.sha256(DATA[:70_000]).hexdigest()
    assert pathlib.Path(job["result"]["model_path"]).read_bytes() == DATA[:70_000]


def test_a_server_that_states_no_size_fails_with_the_reason(assets, url_service):
    url = assets.add("public/stream.bin", DATA[:50_000])
    assets.faults["public/stream.bin"] = FileFaults(no_length=True, times=100)
    job = url_service.wait(url_service.download([{"name": url, "hub": "remote-url"}]).json()["job_ids"][0])
    assert job["status"] == "failed"
    assert f"{url} did not state the file's size" in job["error"], job["error"]
    assert not list(url_service.models_dir.rglob("stream.bin"))

