"""The OpenAI endpoints' settings as operators type them: `--api_key_file`, the `API_KEY` environment variable
and the CORS flags, on `python -m ovms` serving the fixture LLM, driven by the openai client and raw HTTP."""
from __future__ import annotations

import openai
import pytest
import requests

from tests.genai.conftest import LLM_DIR
from tests.test_cli import serve, stop, wait_ready

HELLO = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
LLM_FLAGS = ("--model_name", "tiny", "--model_path", str(LLM_DIR), "--task", "text_generation", "--cache_size", "1")
REFUSED = "Unauthorized: missing or wrong API key"


def served(tmp_path, *flags):
    process, _, rest_port = serve(*LLM_FLAGS, *flags, log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process, timeout=120)
    except BaseException:
        stop(process)
        raise
    return process, f"http://127.0.0.1:{rest_port}"


def assert_only_v3_is_guarded(url: str, key: str) -> None:
    """README: the key guards the /v3 endpoints and their /v1 aliases; KServe, health and management stay open."""
    for method, path, body in (("POST", "/v3/chat/completions", HELLO), ("POST", "/v1/chat/completions", HELLO),
                               ("POST", "/v3/v1/chat/completions", HELLO),
                               ("POST", "/v3/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2}),
                               ("POST", "/v3/tokenize", {"model": "tiny", "text": "Hi"}),
                               ("GET", "/v3/models", None), ("GET", "/v3/models/tiny", None)):
        for headers in ({}, {"Authorization": f"Bearer {key}x"}, {"Authorization": key}):
            r = requests.request(method, url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"] == REFUSED, (method, path, headers, r.text)
        r = requests.request(method, url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200, (method, path, r.text)
    for path in ("/v2/health/ready", "/v2/health/live", "/v1/config"):
        assert requests.get(url + path, timeout=10).status_code == 200, path
    with openai.OpenAI(base_url=url + "/v3", api_key=key, max_retries=0, timeout=60) as client:
        assert client.chat.completions.create(**HELLO).usage.completion_tokens > 0
        assert [m.id for m in client.models.list()] == ["tiny"]
    with openai.OpenAI(base_url=url + "/v3", api_key="not-the-key", max_retries=0, timeout=60) as client:
        with pytest.raises(openai.AuthenticationError) as refused:  # OVMS's body: {"error": "<text>"}
            client.chat.completions.create(**HELLO)
        assert refused.value.status_code == 401 and refused.value.body == REFUSED


def test_api_key_file_and_cors_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    (tmp_path / "key").write_text("from-the-file\n")  # the trailing newline an editor adds is not part of the key
    process, url = served(tmp_path, "--api_key_file", str(tmp_path / "key"),
                          "--allowed_origins", "http://ui.local,http://admin.local",
                          "--allowed_methods", "POST,OPTIONS", "--allowed_headers", "Authorization,Content-Type",
                          "--allow_credentials")
    try:
        assert_only_v3_is_guarded(url, "from-the-file")
        # a browser's preflight carries no key: it is answered, with the flags' values
        preflight = requests.options(url + "/v3/chat/completions", timeout=10, headers={
            "Origin": "http://admin.local", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://admin.local"
        assert preflight.headers["Access-Control-Allow-Methods"] == "POST,OPTIONS"
        assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization,Content-Type"
        assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
        other = requests.options(url + "/v3/chat/completions", timeout=10, headers={
            "Origin": "http://evil.local", "Access-Control-Request-Method": "POST"})
        assert not {h for h in other.headers if h.lower().startswith("access-control-")}, other.headers
        answer = requests.post(url + "/v3/chat/completions", json=HELLO, timeout=60, headers={
            "Origin": "http://ui.local", "Authorization": "Bearer from-the-file"})
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "http://ui.local"
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    finally:
        stop(process)


def test_api_key_environment_variable_and_default_cors(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY", "from-the-environment")
    process, url = served(tmp_path)
    try:
        assert_only_v3_is_guarded(url, "from-the-environment")
        preflight = requests.options(url + "/v3/chat/completions", timeout=10, headers={
            "Origin": "http://anything.local", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"  # defaults: any origin, no credentials
        assert "Access-Control-Allow-Credentials" not in preflight.headers
    finally:
        stop(process)


def test_without_a_key_v3_is_open(tmp_path, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    process, url = served(tmp_path)
    try:
        assert requests.post(url + "/v3/chat/completions", json=HELLO, timeout=60).status_code == 200
    finally:
        stop(process)
