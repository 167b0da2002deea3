"""skip_special_tokens (OVMS's request field): false puts the model's special tokens in the text, as
openvino_genai's decode(skip_special_tokens=False) writes them, and turns the output parsers off (OVMS)."""
from __future__ import annotations

import openvino_genai
import requests

from tests.genai.conftest import LLM_DIR

HELLO = {"model": "tiny-llm", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 30,
         "temperature": 0}


def test_skip_special_tokens_false_keeps_them_in_unary_and_streamed_text(base_url):
    tokenizer = openvino_genai.Tokenizer(str(LLM_DIR))
    plain = requests.post(f"{base_url}/chat/completions", json=HELLO, timeout=60).json()
    raw = requests.post(f"{base_url}/chat/completions", json={**HELLO, "skip_special_tokens": False},
                        timeout=60).json()
    text, raw_text = plain["choices"][0]["message"]["content"], raw["choices"][0]["message"]["content"]
    assert raw_text != text and raw_text.startswith(text)
    ids = tokenizer.encode(raw_text, add_special_tokens=False).input_ids.data[0].tolist()
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # what was added is special tokens only
    assert tokenizer.decode(ids, skip_special_tokens=False) == raw_text
    streamed = requests.post(f"{base_url}/chat/completions", stream=True, timeout=60,
                             json={**HELLO, "skip_special_tokens": False, "stream": True})
    import json

    pieces = [json.loads(line[6:]) for line in streamed.iter_lines(decode_unicode=True)
              if line.startswith("data: {")]
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces if p["choices"]) == raw_text


def test_skip_special_tokens_must_be_a_bool(base_url):
    response = requests.post(f"{base_url}/chat/completions", json={**HELLO, "skip_special_tokens": "no"},
                             timeout=30)
    assert response.status_code == 400 and "skip_special_tokens is not a bool" in response.text


def test_verbose_response_adds_the_prompt_and_the_raw_output(tmp_path):
    """--verbose_response (OVMS): "__verbose" {prompt after the chat template, raw output with special tokens}
    on a unary answer and on the final chunk of a stream."""
    import json

    from ovms.cli import build_parser, openai_settings
    from tests.conftest import ThreadedServer
    from tests.genai.conftest import write_config

    settings = openai_settings(build_parser().parse_args(["--verbose_response", "--port", "9"]))
    assert settings.verbose_response
    assert not openai_settings(build_parser().parse_args(["--port", "9"])).verbose_response
    with ThreadedServer(config_path=write_config(tmp_path), openai=settings) as server:
        url = f"http://{server.rest_url}/v3/chat/completions"
        unary = requests.post(url, json=HELLO, timeout=60).json()
        verbose = unary["__verbose"]
        assert verbose["prompt"].startswith("<|im_start|>") and "Hello" in verbose["prompt"]
        content = unary["choices"][0]["message"]["content"]
        assert verbose["content"] != content and verbose["content"].startswith(content)
        assert "<|im_end|>" in verbose["content"]
        streamed = requests.post(url, json={**HELLO, "stream": True}, stream=True, timeout=60)
        chunks = [json.loads(line[6:]) for line in streamed.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]
        final = [c for c in chunks if "__verbose" in c]
        assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] is not None
        assert final[0]["__verbose"] == verbose
