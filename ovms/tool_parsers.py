"""Tool-call parsers: the model's text -> (content, tool calls), per model family.

- ``hermes3`` (Hermes, Qwen2.5/Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.
- ``llama3``: an optional ``<|python_tag|>`` then ``{"name": ..., "parameters": {...}}`` objects separated by
  ``;`` (Llama 3.1+ JSON tool calling).
A block that is not valid JSON stays in the content (the model did not call a tool after all).
"""
from __future__ import annotations

import json
import re
import uuid

from ovms.genai_types import ToolCall

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _call(obj, arguments_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=obj["name"], arguments=text)


def parse_hermes3(text: str) -> tuple[str, list[ToolCall]]:
    calls = []
    for match in _HERMES.finditer(text):
        try:
            call = _call(json.loads(match.group(1)), "arguments")
        except json.JSONDecodeError:
            call = None
        if call is None:
            return text, []
        calls.append(call)
    if not calls:
        return text, []
    return text[:text.index("<tool_call>")].strip(), calls


def parse_llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text
    prefix = ""
    if "<|python_tag|>" in text:
        prefix, body = text.split("<|python_tag|>", 1)
    elif not text.lstrip().startswith("{"):
        return text, []
    decoder = json.JSONDecoder()
    calls = []
    position = 0
    body = body.strip()
    while position < len(body):
        try:
            obj, end = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            return text, []
        call = _call(obj, "parameters")
        if call is None:
            return text, []
        calls.append(call)
        position = end
        while position < len(body) and body[position] in "; \n\t":
            position += 1
    return prefix.strip(), calls


PARSERS = {"hermes3": parse_hermes3, "qwen3": parse_hermes3, "llama3": parse_llama3}


def parse_tool_calls(parser: str | None, text: str) -> tuple[str, list[ToolCall]]:
    """Content and tool calls of a generated text (no parser, or an unknown one: all content)."""
    function = PARSERS.get(parser or "")
    if function is None:
        return text, []
    return function(text)


def split_reasoning(parser: str | None, text: str) -> tuple[str | None, str]:
    """(reasoning, content) for models that think in ``<think>...</think>`` (qwen3, deepseek-r1 style).

    Qwen3's template opens ``<think>`` in the prompt, so the output may hold only the closing tag.
    """
    if parser not in ("qwen3", "deepseek_r1") or "</think>" not in text:
        return None, text
    reasoning, content = text.split("</think>", 1)
    return reasoning.replace("<think>", "", 1).strip(), content.lstrip()
