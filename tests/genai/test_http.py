"""Raw HTTP: OVMS error codes and texts, golden SSE transcript, disconnect cancels, API key, CORS, busy."""
from __future__ import annotations

import concurrent.futures
import json
import pathlib
import re
import socket
import time

import pytest
import requests

from tests.conftest import ThreadedServer
from tests.genai.conftest import write_config

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
HELLO = {"model": "tiny-llm", "messages": [{"role": "user", "content": "Hello"}]}


def post(base_url, path, body, *, headers=None, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base_url}/{path}", data=data, headers={"Content-Type": "application/json",
                                                                   **(headers or {})}, timeout=30, **kwargs)


@pytest.mark.parametrize("body, status, text", [
    (b"{not json", 412, "The file is not valid json"),
    (b"[1, 2]", 412, "The file is not valid json"),
    ({"model": "tiny-llm"}, 400, "Messages missing in request"),
    ({"model": "tiny-llm", "messages": []}, 400, "Messages array cannot be empty"),
    ({"messages": HELLO["messages"]}, 400, "model missing in request"),
    ({**HELLO, "max_tokens": "many"}, 400, "max_tokens is not an unsigned integer"),
    ({**HELLO, "max_tokens": 0}, 400, "max_tokens value should be greater than 0"),
    ({**HELLO, "temperature": 3}, 400, "temperature out of range(0.0, 2.0)"),
    ({**HELLO, "top_p": "x"}, 400, "top_p is not a valid number"),
    ({**HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop array must have no more than 4 strings"),
    ({**HELLO, "stream": "yes"}, 400, "Stream is not bool"),
    ({**HELLO, "stream_options": {"include_usage": True}}, 400, "stream_options provided, but stream not set"),
    ({**HELLO, "n": 3, "best_of": 2}, 400, "n value cannot be greater than best_of"),
    ({"model": "tiny-llm", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}, 400,
     "image_url parts are not supported by a text generation model"),
    ({**HELLO, "model": "no-such-model"}, 404, "Model with requested name is not found"),
    ({**HELLO, "model": "tiny-embedder"}, 501, "does not serve text generation"),
    ({**HELLO, "response_format": {"type": "xml"}}, 400, "response_format.type"),
])
def test_chat_errors_name_the_field(base_url, body, status, text):
    response = post(base_url, "chat/completions", body)
    assert response.status_code == status, response.text
    assert text in response.json()["error"]


def test_other_endpoint_errors(base_url):
    assert post(base_url, "completions", {"model": "tiny-llm"}).json()["error"].endswith("prompt missing in request")
    assert "input" in post(base_url, "embeddings", {"model": "tiny-embedder", "input": [1.5]}).json()["error"]
    assert post(base_url, "embeddings", {"model": "tiny-embedder", "input": "a",
                                         "encoding_format": "hex"}).status_code == 400
    assert "documents" in post(base_url, "rerank", {"model": "tiny-reranker", "query": "q"}).json()["error"]
    assert requests.get(f"{base_url}/models/nope", timeout=10).status_code == 404


def test_unknown_fields_are_accepted(base_url):
    response = post(base_url, "chat/completions", {**HELLO, "max_tokens": 3, "some_future_field": {"x": 1}})
    assert response.status_code == 200


def test_tokenize(base_url):
    tokens = post(base_url, "tokenize", {"model": "tiny-llm", "text": "Hello"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character table that ByteLevel BPE vocabularies are written in (tokenizer.json's
    pre_tokenizer is ByteLevel), inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = dict(zip(printable, printable)), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


@pytest.mark.parametrize("text", ["Hello", "What is the weather in Paris?", "<|im_start|>user\nHi<|im_end|>",
                                  "caf\u00e9 \U0001f44b  two  spaces\n"], ids=["word", "prompt", "special", "unicode"])
def test_tokenize_ids_are_the_tokenizers_own(base_url, text):
    """/v3/tokenize against the fixture's tokenizer loaded without ovms or openvino_genai: the tokenizer IR run
    by OpenVINO with openvino_tokenizers' ops; and the ids spell the text back in tokenizer.json's vocabulary."""
    import numpy as np
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

    from tests.genai.conftest import LLM_DIR
    tokens = post(base_url, "tokenize", {"model": "tiny-llm", "text": text}).json()["tokens"]
    ir = ov.Core().compile_model(LLM_DIR / "openvino_tokenizer.xml", "CPU")
    assert tokens == ir(np.array([text]))["input_ids"][0].tolist()
    spec = json.loads((LLM_DIR / "tokenizer.json").read_text())
    assert spec["post_processor"]["single"] == [{"Sequence": {"id": "A", "type_id": 0}}]  # adds no tokens
    pieces = {i: t for t, i in spec["model"]["vocab"].items()}
    special = {t["id"]: t["content"].encode() for t in spec["added_tokens"]}
    alphabet = byte_level_alphabet()
    spelled = b"".join(special[i] if i in special else bytes(alphabet[c] for c in pieces[i]) for i in tokens)
    assert spelled.decode() == text
    assert len(tokens) < len(text.encode())  # merges were applied, not one id per byte


def normalized_sse(raw: str) -> str:
    """Ids and times fixed, and consecutive content chunks merged into the last one (with its finish_reason):
    how many tokens a chunk carries depends on timing (a lagging client gets coalesced chunks)."""
    raw = re.sub(r'"id": "chatcmpl-[0-9a-f]+"', '"id": "ID"', raw)
    raw = re.sub(r'"created": \d+', '"created": 0', raw)
    assert raw.endswith("\n\n"), raw[-50:]
    events = raw[:-2].split("\n\n")
    merged: list = []
    for event in events:
        assert event.startswith("data: "), event
        body = event[6:]
        if body != "[DONE]":
            document = json.loads(body)
            choices = document["choices"]
            if choices and set(choices[0]["delta"]) == {"content"} and merged and isinstance(merged[-1], dict) \
                    and merged[-1]["choices"] and set(merged[-1]["choices"][0]["delta"]) == {"content"} \
                    and merged[-1]["choices"][0]["finish_reason"] is None:
                previous = merged[-1]["choices"][0]
                previous["delta"]["content"] += choices[0]["delta"]["content"]
                previous["finish_reason"] = choices[0]["finish_reason"]
                continue
            merged.append(document)
        else:
            merged.append(body)
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)}\n\n" for e in merged)


def test_golden_sse_transcript(base_url):
    response = post(base_url, "chat/completions", {**HELLO, "stream": True,
                                                   "stream_options": {"include_usage": True}}, stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    transcript = normalized_sse(response.content.decode())
    assert transcript == (GOLDEN / "chat_hello_stream.sse").read_text()


def test_client_disconnect_cancels_generation(genai_server):
    servable = genai_server.server.registry.resolve("tiny-llm")
    before = servable.cancelled_requests
    host, port = genai_server.rest_url.split(":")
    body = json.dumps({**HELLO, "stream": True, "ignore_eos": True, "max_tokens": 480}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v3/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"200 OK" in sock.recv(4096)
    deadline = time.time() + 10
    while servable.cancelled_requests == before and time.time() < deadline:
        time.sleep(0.01)
    assert servable.cancelled_requests == before + 1
    while servable.in_flight and time.time() < deadline:
        time.sleep(0.01)
    assert servable.in_flight == 0 and not servable._active  # the sequence was freed


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    from ovms.transport.openai_rest import OpenAISettings

    families = frozenset({"ovms_requests_success", "ovms_requests_fail", "ovms_llm_time_to_first_token_us",
                          "ovms_llm_time_per_output_token_us", "ovms_llm_kv_cache_usage",
                          "ovms_llm_generated_tokens"})
    running = ThreadedServer(config_path=write_config(tmp_path_factory.mktemp("guarded"), max_num_seqs=1),
                             metrics_families=families)
    running.server.dataplane.openai_settings = OpenAISettings(api_key="s3cret", allowed_origins="http://ui.local",
                                                              allow_credentials=True)
    with running:
        yield f"http://{running.rest_url}/v3"


def test_api_key_is_401_when_missing_or_wrong(guarded_server):
    import openai

    assert post(guarded_server, "chat/completions", HELLO).status_code == 401
    wrong = post(guarded_server, "chat/completions", HELLO, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    with openai.OpenAI(base_url=guarded_server, api_key="s3cret", max_retries=0) as client:
        assert client.chat.completions.create(**HELLO, max_tokens=4).choices[0].message.content
    with openai.OpenAI(base_url=guarded_server, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_cors_preflight_and_headers(guarded_server):
    preflight = requests.options(f"{guarded_server}/chat/completions", timeout=10, headers={
        "Origin": "http://ui.local", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://ui.local"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    other = requests.options(f"{guarded_server}/chat/completions", headers={"Origin": "http://evil"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_busy_beyond_the_queue(guarded_server):
    body = {**HELLO, "ignore_eos": True, "max_tokens": 400}
    headers = {"Authorization": "Bearer s3cret"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(guarded_server, "chat/completions", body, headers=headers),
                                 range(8)))
    codes = sorted(r.status_code for r in statuses)
    assert 200 in codes and 503 in codes, codes
    busy = next(r for r in statuses if r.status_code == 503)
    assert "Server busy" in busy.json()["error"]


def test_genai_metrics(guarded_server):
    headers = {"Authorization": "Bearer s3cret"}
    assert post(guarded_server, "chat/completions", {**HELLO, "max_tokens": 5}, headers=headers).status_code == 200
    assert post(guarded_server, "chat/completions", {**HELLO, "max_tokens": 5, "stream": True},
                headers=headers).status_code == 200
    text = requests.get(guarded_server.replace("/v3", "/metrics"), timeout=10).text
    assert 'ovms_requests_success{api="V3",interface="REST",method="Unary",name="tiny-llm"}' in text
    assert 'ovms_requests_success{api="V3",interface="REST",method="Stream",name="tiny-llm"}' in text
    assert re.search(r'ovms_llm_time_to_first_token_us_count\{interface="REST",name="tiny-llm",version="1"\} '
                     r'[1-9]', text), text
    assert 'ovms_llm_time_per_output_token_us_bucket' in text
    assert re.search(r'ovms_llm_generated_tokens\{name="tiny-llm",version="1"\} [1-9]', text)
    assert 'ovms_llm_kv_cache_usage{name="tiny-llm",version="1"}' in text


def test_status_readiness_config_and_metadata_cover_graphs(genai_server, base_url):
    root = base_url.removesuffix("/v3")
    config = requests.get(f"{root}/v1/config", timeout=10).json()
    for name in ("tiny-llm", "tiny-embedder", "tiny-reranker", "minilm"):
        assert config[name]["model_version_status"][0]["state"] == "AVAILABLE"
        assert requests.get(f"{root}/v2/models/{name}/ready", timeout=10).status_code == 200
    metadata = requests.get(f"{root}/v2/models/tiny-llm", timeout=10).json()
    assert metadata["versions"] == ["1"] and metadata["inputs"] == [] and metadata["platform"] == "OpenVINO GenAI"
    # the OVMS /v1 alias of the OpenAI endpoints, next to TensorFlow Serving's /v1/models/{name}
    assert post(root + "/v1", "chat/completions", {**HELLO, "max_tokens": 2}).status_code == 200
    assert requests.get(f"{root}/v1/models/tiny-llm", timeout=10).json()["model_version_status"]


def test_body_limit(guarded_server):
    response = requests.post(f"{guarded_server}/chat/completions", data=b"x" * (65 << 20), timeout=60,
                             headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
    assert response.status_code == 400 and "limit" in response.json()["error"]
