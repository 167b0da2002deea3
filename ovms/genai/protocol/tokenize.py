"""/v3/tokenize as OVMS reads it (src/tokenize/tokenize_parser.cpp)."""
from __future__ import annotations

import dataclasses
from typing import Any

from ovms.genai.protocol.common import invalid, log_unknown


@dataclasses.dataclass(slots=True)
class TokenizeCall:
    """/v3/tokenize as OVMS reads it (src/tokenize/tokenize_parser.cpp)."""

    model: str
    texts: list[str]
    options: dict  # max_length (+ truncation), pad_to_max_length, add_special_tokens, padding_side


def decode_tokenize(doc: Any) -> TokenizeCall:
    if not isinstance(doc, dict):
        raise invalid("Received json is not an object")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is missing or not a string")
    text = doc.get("text")
    if text is None:
        raise invalid("text field is required")
    if isinstance(text, str):
        texts = [text]
    elif isinstance(text, list):
        if not text:
            raise invalid("text array should not be empty")
        if all(isinstance(t, str) for t in text):
            texts = list(text)
        elif all(isinstance(t, int) and not isinstance(t, bool) for t in text):
            raise invalid("Input should be string or array of strings")
        else:
            raise invalid("every element in text array should be either string or int")
    else:
        raise invalid("text should be string, array of strings or array of integers")
    options: dict = {}
    if "max_length" in doc:
        value = doc["max_length"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid("max_length should be unsigned integer")
        if value == 0:
            raise invalid("max_length should be greater than 0")
        options["max_length"] = value
        options["truncation"] = True  # OVMS: max_length implies truncation
    for name in ("pad_to_max_length", "add_special_tokens"):
        if name in doc:
            if not isinstance(doc[name], bool):
                raise invalid(f"{name} should be boolean")
            options[name] = doc[name]
    if "padding_side" in doc:
        side = doc["padding_side"]
        if not isinstance(side, str):
            raise invalid("padding_side should be string, either left or right")
        if side not in ("left", "right"):
            raise invalid("padding_side should be either left or right")
        options["padding_side"] = side
    log_unknown(doc, {"model", "text", "max_length", "pad_to_max_length", "add_special_tokens", "padding_side"},
                 "tokenize")
    return TokenizeCall(model, texts, options)


def tokenize_json(rows: list[list[int]]) -> dict:
    """OVMS answers one list for one text, a list of lists for several."""
    return {"tokens": rows if len(rows) > 1 else rows[0]}
