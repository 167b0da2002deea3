"""/v3/tokenize as OVMS has it: text (one or several), max_length (truncates), pad_to_max_length, padding_side,
add_special_tokens; answers equal the model's own tokenizer; OVMS's messages for bad fields."""
from __future__ import annotations

import openvino_genai
import pytest
import requests

from tests.genai.conftest import LLM_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return openvino_genai.Tokenizer(str(LLM_DIR))


def post(base_url, body):
    return requests.post(f"{base_url}/tokenize", json={"model": "tiny-llm", **body}, timeout=30)


def ids(tokenizer, texts, **options):
    encoded = tokenizer.encode(texts, **options)
    return [[int(t) for t, m in zip(row, mask) if m or options.get("pad_to_max_length")]
            for row, mask in zip(encoded.input_ids.data, encoded.attention_mask.data)]


def test_tokenize_equals_the_model_tokenizer(base_url, tokenizer):
    text = "Hello! How can I help you?"
    response = post(base_url, {"text": text})
    assert response.status_code == 200, response.text
    assert response.json() == {"tokens": ids(tokenizer, [text])[0]}
    plain = post(base_url, {"text": text, "add_special_tokens": False}).json()["tokens"]
    assert plain == ids(tokenizer, [text], add_special_tokens=False)[0]
    several = post(base_url, {"text": ["Hi", text]}).json()["tokens"]
    assert several == ids(tokenizer, ["Hi", text])
    assert len(several[0]) < len(several[1])  # padding removed unless asked for


def test_max_length_truncates_and_padding_is_kept_when_asked(base_url, tokenizer):
    text = "Hello! How can I help you?"
    short = post(base_url, {"text": text, "max_length": 3}).json()["tokens"]
    assert len(short) == 3 and short == ids(tokenizer, [text], max_length=3, truncation=True)[0]
    padded = post(base_url, {"text": ["Hi", text], "max_length": 12, "pad_to_max_length": True,
                             "padding_side": "left"}).json()["tokens"]
    assert [len(row) for row in padded] == [12, 12]
    assert padded == ids(tokenizer, ["Hi", text], max_length=12, truncation=True, pad_to_max_length=True,
                         padding_side="left")


@pytest.mark.parametrize("body, message", [
    ({}, "text field is required"),
    ({"text": []}, "text array should not be empty"),
    ({"text": 5}, "text should be string, array of strings or array of integers"),
    ({"text": [1, 2]}, "Input should be string or array of strings"),
    ({"text": "a", "max_length": 0}, "max_length should be greater than 0"),
    ({"text": "a", "max_length": "4"}, "max_length should be unsigned integer"),
    ({"text": "a", "pad_to_max_length": 1}, "pad_to_max_length should be boolean"),
    ({"text": "a", "padding_side": "middle"}, "padding_side should be either left or right"),
])
def test_bad_fields_get_ovms_messages(base_url, body, message):
    response = post(base_url, body)
    assert response.status_code == 400 and message in response.text, response.text
