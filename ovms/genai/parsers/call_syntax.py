"""Tool calls written as function calls rather than JSON: lfm2 (Python syntax) and gemma4 (Gemma's own).

- ``lfm2`` (LFM2, LFM2.5): ``<|tool_call_start|>[get_weather(city="Paris", days=3), f(flag=True)]<|tool_call_end|>``;
  keyword values are Python literals (``'x'``, ``True``, ``None``, lists, dicts). OVMS src/llm/io_processing/lfm2.
- ``gemma4``: ``<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>``; keys are bare, strings
  are delimited by ``<|"|>``, other values are JSON literals. OVMS src/llm/io_processing/gemma4.

A call's name goes out as soon as it is written, its arguments one by one as each is complete (``{"city": "Paris"``,
then ``, "days": 3``, then ``}``). As in OVMS, only the calls are taken out of the text: text between and after
the call blocks is content.
"""
from __future__ import annotations

import ast
import json

from ovms.genai.parsers.incremental import Parsed, canonical, content_before, skip_space, text_between, with_calls

LFM2_START, LFM2_END = "<|tool_call_start|>", "<|tool_call_end|>"


def _python_keyword(item: str) -> str | None:
    """``city='Paris'`` -> '"city": "Paris"'; None when it is not one keyword with a literal value.

    The name is read by hand, not by Python's parser: a tool's argument may be named like a Python keyword
    (``in``, ``from``, ``class``), which ``f(in='A')`` would refuse.
    """
    name, equals, value = item.partition("=")
    name = name.strip()
    if not equals or not name.isidentifier():
        return None
    try:
        return f"{canonical(name)}: {canonical(ast.literal_eval(value.strip()))}"
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None


def _python_members(text: str, paren: int) -> tuple[list[str] | None, int]:
    """The keyword arguments after the "(" at ``paren`` as JSON members, those complete so far, and the index
    after the closing ")" (-1: not written yet); None when one is not a keyword with a literal value."""
    members: list[str] = []
    depth, quote, start, position = 0, "", paren + 1, paren + 1
    while position < len(text):
        c = text[position]
        if quote:
            if c == "\\":
                position += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}" and depth > 0:
            depth -= 1
        elif c in ",)" and depth == 0:
            item = text[start:position].strip()
            if item:
                member = _python_keyword(item)
                if member is None:
                    return None, -1
                members.append(member)
            elif c == ",":
                return None, -1
            if c == ")":
                return members, position + 1
            start = position + 1
        position += 1
    return members, -1


def _is_name(text: str) -> bool:
    return bool(text) and text.replace("_", "a").replace(".", "a").replace("-", "a").isalnum()


def parse_lfm2(text: str, final: bool) -> Parsed:
    content, at, marker = content_before(text, (LFM2_START,), final)
    if at < 0:
        return Parsed(content)
    calls: list[tuple[str, str]] = []
    while at >= 0:  # one <|tool_call_start|>[...]<|tool_call_end|> block per turn
        position = skip_space(text, at + len(LFM2_START))
        if not text.startswith("[", position):
            break
        position += 1
        while True:
            position = skip_space(text, position)
            if text.startswith(",", position):
                position += 1
                continue
            if text.startswith("]", position):
                position += 1
                break
            paren = text.find("(", position)
            name = text[position:paren].strip() if paren >= 0 else ""
            if not _is_name(name):
                return with_calls(text, content, calls, final)
            members, end = _python_members(text, paren)
            if members is None or (end < 0 and final):
                return with_calls(text, content, calls, final)
            calls.append((name, "{" + ", ".join(members) + ("}" if end >= 0 else "")))
            if end < 0:
                return with_calls(text, content, calls, final)
            position = end
        after = skip_space(text, position)
        if text.startswith(LFM2_END, after):
            position = after + len(LFM2_END)
        elif not final and LFM2_END.startswith(text[after:]):
            break  # the end tag may be coming
        content, at = text_between(text, position, (LFM2_START,), final, content)
    return with_calls(text, content, calls, final)


GEMMA4_START, GEMMA4_END, GEMMA4_QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'


class _GemmaReader:
    """Reads Gemma 4's argument syntax into Python values."""

    def __init__(self, text: str, position: int) -> None:
        self.text, self.position = text, position

    def value(self):
        text = self.text
        self.position = skip_space(text, self.position)
        if text.startswith(GEMMA4_QUOTE, self.position):
            start = self.position + len(GEMMA4_QUOTE)
            end = text.find(GEMMA4_QUOTE, start)
            if end < 0:
                raise ValueError("a string is not closed")
            self.position = end + len(GEMMA4_QUOTE)
            return text[start:end]
        if text.startswith("{", self.position):
            return self._object()
        if text.startswith("[", self.position):
            return self._array()
        start = self.position
        while self.position < len(text) and text[self.position] not in ",}]":
            self.position += 1
        word = text[start:self.position].strip()
        if self.position == len(text) or not word:
            raise ValueError("a value is not complete")
        try:
            return json.loads(word)
        except ValueError:
            return word

    def _object(self) -> dict:
        result = {}
        self.position += 1
        while True:
            self.position = skip_space(self.text, self.position)
            if self.text.startswith("}", self.position):
                self.position += 1
                return result
            if self.text.startswith(",", self.position):
                self.position += 1
                continue
            colon = self.text.find(":", self.position)
            if colon < 0:
                raise ValueError("a key is not complete")
            key = self.text[self.position:colon].strip().strip('"')
            if self.text[self.position:colon].startswith(GEMMA4_QUOTE):
                key = self.text[self.position:colon].strip().replace(GEMMA4_QUOTE, "")
            self.position = colon + 1
            result[key] = self.value()

    def _array(self) -> list:
        result = []
        self.position += 1
        while True:
            self.position = skip_space(self.text, self.position)
            if self.text.startswith("]", self.position):
                self.position += 1
                return result
            if self.text.startswith(",", self.position):
                self.position += 1
                continue
            if self.position >= len(self.text):
                raise ValueError("an array is not closed")
            result.append(self.value())


def _gemma_members(text: str, brace: int) -> tuple[list[str], int]:
    """The members of the Gemma object at ``brace`` as JSON members, those complete so far, and the index after
    its "}" (-1: not written yet); ValueError when it is not Gemma's syntax."""
    reader = _GemmaReader(text, brace + 1)
    members: list[str] = []
    while True:
        position = skip_space(text, reader.position)
        if position >= len(text):
            return members, -1
        if text[position] == "}":
            return members, position + 1
        if text[position] == ",":
            reader.position = position + 1
            continue
        colon = text.find(":", position)
        if colon < 0:
            return members, -1
        key = text[position:colon].strip().replace(GEMMA4_QUOTE, "").strip('"')
        if not key:
            raise ValueError("a member has no name")
        reader.position = colon + 1
        try:
            value = reader.value()
        except ValueError:
            return members, -1  # not complete yet
        members.append(f"{canonical(key)}: {canonical(value)}")


def parse_gemma4(text: str, final: bool) -> Parsed:
    content, at, marker = content_before(text, (GEMMA4_START,), final)
    if at < 0:
        return Parsed(content)
    calls: list[tuple[str, str]] = []
    position = at + len(GEMMA4_START)
    while True:  # <|tool_call>call:a{...}[call:b{...}]<tool_call|>, blocks with text between them
        position = skip_space(text, position)
        if not text.startswith("call:", position):
            break
        brace = text.find("{", position)
        name = text[position + len("call:"):brace].strip() if brace >= 0 else ""
        if not _is_name(name):
            break
        try:
            members, end = _gemma_members(text, brace)
        except (ValueError, IndexError):
            break
        if end < 0 and final:
            break
        calls.append((name, "{" + ", ".join(members) + ("}" if end >= 0 else "")))
        if end < 0:
            break
        position = skip_space(text, end)
        if text.startswith("call:", position):
            continue
        if text.startswith(GEMMA4_END, position):
            position += len(GEMMA4_END)
        elif not final and (GEMMA4_END.startswith(text[position:]) or "call:".startswith(text[position:])):
            break  # the end tag or another call may be coming
        content, at = text_between(text, position, (GEMMA4_START,), final, content)
        if at < 0:
            break
        position = at + len(GEMMA4_START)
    return with_calls(text, content, calls, final)
