"""What every OpenAI / Cohere endpoint's codec shares: OVMS's 400, JSON body parsing, field readers, ids, SSE.

Validation happens at the edge, with OVMS's messages (src/llm/apis/openai_completions.cpp) so the field is named
in every 400. Unknown fields are accepted and logged, as OVMS does.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import secrets
import time

from ovms.errors import Kind, ServingError
from ovms.genai.types import Usage

log = logging.getLogger("ovms.openai")


def invalid(message: str) -> ServingError:
    return ServingError(Kind.GENAI_INVALID_REQUEST, message)


def model_field(doc: dict) -> str:
    """The request's ``model``, with OVMS's messages."""
    model = doc.get("model")
    if model is None:
        raise invalid("model missing in request")
    if not isinstance(model, str):
        raise invalid("model is not a string")
    return model


def parse_body(body: bytes) -> dict:
    """The request JSON object; anything else is OVMS's 412 "The file is not valid json"."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingError(Kind.OPENAI_JSON_INVALID, f"request body: {exc}") from None
    except RecursionError:
        raise ServingError(Kind.OPENAI_JSON_INVALID, "request body: nested too deeply to parse") from None
    if not isinstance(document, dict):
        raise ServingError(Kind.OPENAI_JSON_INVALID, "request body must be a JSON object")
    return document


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def uint(doc: dict, name: str, *, positive: bool = False) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(f"{name} is not an unsigned integer")
    if value > 4294967295:
        raise invalid(f"{name} value can't be greater than 4294967295")
    if positive and value == 0:
        raise invalid(f"{name} value should be greater than 0")
    return value


def number(doc: dict, name: str, low: float | None = None, high: float | None = None) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if not is_number(value):
        raise invalid(f"{name} is not a valid number")
    if low is not None and not low <= value <= high:
        raise invalid(f"{name} out of range({low}, {high})")
    return float(value)


def boolean(doc: dict, name: str, default: bool = False) -> bool:
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{name} accepts values true or false")
    return value


def log_unknown(doc: dict, known: set[str], endpoint: str) -> None:
    unknown = set(doc) - known
    if unknown:
        log.info("%s: ignoring unknown fields %s", endpoint, ", ".join(sorted(unknown)))


_ID_BASE = secrets.token_hex(8)  # random per process; a counter after it keeps ids unique without a syscall each


_ID_COUNTER = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{_ID_BASE}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


def usage_json(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def sse(document: dict | str) -> bytes:
    """One Server-Sent Event: ``data: <json>`` and a blank line."""
    data = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def now() -> int:
    return int(time.time())


@dataclasses.dataclass(slots=True)
class Form:
    """A multipart/form-data body as the transport read it: text fields (repeatable) and files."""

    fields: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    files: dict[str, list[tuple[str, bytes]]] = dataclasses.field(default_factory=dict)  # name -> (filename, content)

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None
