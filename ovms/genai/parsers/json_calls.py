"""The JSON-object tool-call formats: hermes3 and llama3, read whole or as a stream.

- ``hermes3`` (Hermes, Qwen2.5/Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.
- ``llama3``: an optional ``<|python_tag|>`` then ``{"name": ..., "parameters": {...}}`` objects separated by
  ``;`` (Llama 3.1+ JSON tool calling).
A block that is not valid JSON stays in the content (the model did not call a tool after all).

``PARSERS`` read a whole answer; a ``ToolCallStream`` over ``STREAM_SYNTAXES`` reads it as it is
generated and hands out content and OpenAI-style tool-call deltas in order (see its docstring).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import uuid

from ovms.genai.types import ToolCall, ToolCallDelta
from ovms.genai.json_stream import CHARS, END, KEY, CanonicalJsonReader, JsonStreamError

log = logging.getLogger("ovms.genai.parsers")


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _call(obj, arguments_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=_call_id(), name=obj["name"], arguments=text)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


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


PARSERS = {"hermes3": parse_hermes3, "llama3": parse_llama3}


# ---- streaming ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class _Syntax:
    opener: str  # starts a call (hermes) or a run of calls (llama3)
    closer: str | None  # ends each call (hermes); llama3 separates calls with ";" and whitespace instead
    arguments_keys: tuple[str, ...]  # the member holding the arguments; a second one is read if the first is absent
    bare_json: bool  # an answer that starts with "{" is calls (llama3)


_HERMES_SYNTAX = _Syntax("<tool_call>", "</tool_call>", ("arguments",), bare_json=False)
_LLAMA3_SYNTAX = _Syntax("<|python_tag|>", None, ("parameters", "arguments"), bare_json=True)
STREAM_SYNTAXES = {"hermes3": _HERMES_SYNTAX, "llama3": _LLAMA3_SYNTAX}

# What a ToolCallStream is reading, named by the method that reads it.
_START = "_read_start"  # the beginning of the answer (llama3: whitespace so far, "{" would start calls)
_CONTENT = "_read_content"
_OPENING = "_read_opening"  # the opener and whitespace after it; a call needs "{" next
_CALL = "_read_call"  # the JSON object of a call
_AFTER_CALL = "_read_after_call"  # whitespace and the closer (hermes), or separators (llama3)

# What the member being read is to the call.
_NAME, _ARGUMENTS, _ARGUMENTS_FALLBACK = "name", "arguments", "fallback"


class _Call:
    """A call being read: its raw text (given back as content if it turns out not to be a call) and its parts."""

    __slots__ = ("lead", "raw", "reader", "index", "id", "name", "name_parts", "member", "arguments_seen",
                 "early_arguments", "fallback_arguments")

    def __init__(self, lead: str, raw: str) -> None:
        self.lead = lead  # the whitespace before the opener, dropped only if this is a call
        self.raw = [raw]
        self.reader = CanonicalJsonReader(members=True)
        self.index = -1
        self.id: str | None = None  # set when the name is known and the first delta went out
        self.name: str | None = None
        self.name_parts: list[str] | None = None  # the "name" member's characters; None if it is not a string
        self.member: str | None = None
        self.arguments_seen = False
        self.early_arguments: list[str] = []  # canonical arguments read before the name
        self.fallback_arguments: list[str] | None = None  # llama3 "arguments" while "parameters" may follow

    def raw_tail(self, length: int) -> str:
        raw = "".join(self.raw)
        return raw[len(raw) - length:] if length else ""


class ToolCallStream:
    """Reads one choice's generated text as it arrives and hands out, in text order, content (``str``) and
    ``ToolCallDelta`` pieces, as OpenAI and vLLM stream tool calls.

    Content goes out as soon as it cannot be the start of an opener; only a possible opener prefix, and the
    whitespace before it (the non-streamed parse strips it), is held back. Inside a call, the first delta goes out
    when the name is complete and the arguments then follow as they grow, written canonically (``ovms.genai.json_stream``)
    so that the fragments of a call, concatenated, are exactly the ``arguments`` that ``parse_tool_calls`` gives for
    the same text. Whatever turns out not to be a call goes out as content: no text is lost.

    The result does not depend on how the text is split. It equals ``parse_tool_calls`` for answers made of content
    then calls, with these differences, all from decisions the non-streamed parse makes after seeing the whole text:
    whitespace that starts the content is kept (it went out before a call was in sight); text after or between
    calls is content (the non-streamed parse drops it); an invalid call after valid ones is content, while the
    valid ones stand (the non-streamed parse turns them all into content); a member repeated in a call keeps its
    first value (``json.loads`` keeps the last).
    """

    def __init__(self, syntax: _Syntax, *, label: str = "") -> None:
        self._syntax = syntax
        self._label = label or "tool-call stream"
        self._mode = _START if syntax.bare_json else _CONTENT
        self._held = ""  # text read but not yet given out as content (see _CONTENT and _AFTER_CALL)
        self._call: _Call | None = None
        self._calls = 0
        self._complete = True  # every call given out so far is a complete JSON object
        self._events: list[str | ToolCallDelta] = []

    @property
    def called(self) -> bool:
        """Whether a tool-call delta went out."""
        return self._calls > 0

    def feed(self, text: str) -> list[str | ToolCallDelta]:
        """The content and tool-call deltas that ``text``, the next piece of the answer, settles."""
        while text:
            text = getattr(self, self._mode)(text)
        return self._take()

    def finish(self) -> list[str | ToolCallDelta]:
        """The answer ended: what was held back goes out (as content, unless it is whitespace around calls)."""
        mode, held, call = self._mode, self._held, self._call
        self._held, self._call = "", None
        if mode in (_START, _CONTENT):
            if not (self.called and held.isspace()):
                self._content(held)
        elif mode == _AFTER_CALL:
            if self._syntax.closer is not None:
                self._content(held.lstrip())  # a closer cut short; whitespace and llama3 separators are dropped
        elif call is not None and call.id is None:
            log.debug("%s: the answer ended inside %r before a call's name; it is sent as content", self._label,
                      self._syntax.opener)
            self._content(call.lead + "".join(call.raw))
        elif call is not None:
            log.info("%s: the answer ended inside the arguments of tool call %d (%s); they are incomplete JSON",
                     self._label, call.index, call.name)
            self._complete = False
            self._content(call.raw_tail(call.reader.pending_chars))
        self._mode = _CONTENT
        return self._take()

    def finish_reason(self, reason: str | None) -> str | None:
        """``"tool_calls"`` when calls went out and all of them are complete; else the generation's own reason."""
        return "tool_calls" if self.called and self._complete else reason

    # ---- one method per mode: each reads a prefix of the text and returns the rest, for the next mode ----------

    def _read_start(self, text: str) -> str:
        held = self._held + text
        body = held.lstrip()
        if not body:
            self._held = held
            return ""
        self._held = ""
        if body[0] == "{":
            return self._start_call(held[:len(held) - len(body)], body)
        self._mode = _CONTENT
        return held

    def _read_content(self, text: str) -> str:
        text = self._held + text
        opener = self._syntax.opener
        at = text.find(opener)
        if at >= 0:
            before = text[:at]
            content = before.rstrip()
            self._content(content)
            self._held = ""
            self._call = _Call(before[len(content):], opener)
            self._mode = _OPENING
            return text[at + len(opener):]
        keep = _undecided_tail(text, opener)
        self._content(text[:len(text) - keep])
        self._held = text[len(text) - keep:]
        return ""

    def _read_opening(self, text: str) -> str:
        body = text.lstrip()
        self._call.raw.append(text[:len(text) - len(body)])
        if not body:
            return ""
        if body[0] == "{":
            self._mode = _CALL
            return body
        return self._abandon(f"{body[0]!r} follows it where a JSON object should start", body)

    def _start_call(self, lead: str, body: str) -> str:
        self._call = _Call(lead, "")
        self._mode = _CALL
        return body

    def _read_call(self, text: str) -> str:
        call = self._call
        try:
            end = call.reader.feed(text)
        except JsonStreamError as exc:
            call.raw.append(text[:exc.position])
            self._route(call)
            return self._abandon(str(exc), text[exc.position:])
        call.raw.append(text[:end])
        self._route(call)
        if not call.reader.done:
            return ""
        if call.id is None:
            return self._abandon('the JSON object has no "name" string', text[end:])
        if not call.arguments_seen:  # as parse_tool_calls: the other arguments member, else {}
            fallback = call.fallback_arguments
            self._arguments(call, "{}" if fallback is None else "".join(fallback))
        self._call = None
        self._mode = _AFTER_CALL
        return text[end:]

    def _read_after_call(self, text: str) -> str:
        held = self._held + text
        closer = self._syntax.closer
        if closer is None:
            body = _strip_separators(held)
        else:
            body = held.lstrip()
            if body.startswith(closer):
                self._held = ""
                self._mode = _CONTENT
                return body[len(closer):]
        if not body or (closer is not None and closer.startswith(body)):
            self._held = held
            return ""
        self._held = ""
        if closer is None and body[0] == "{":
            return self._start_call(held[:len(held) - len(body)], body)
        self._mode = _CONTENT
        return held

    # ---- calls ----------------------------------------------------------------------------------------------------

    def _route(self, call: _Call) -> None:
        """Turn the JSON reader's events into the call's name and argument deltas."""
        for kind, value in call.reader.take_events():
            if kind == KEY:
                call.member = self._member_role(call, value)
            elif kind == END:
                if call.member == _NAME and call.name_parts is not None:
                    self._name_known(call, "".join(call.name_parts))
                call.member = None
            elif call.member == _NAME:
                if kind == CHARS and call.name_parts is not None:
                    call.name_parts.append(value)
                else:
                    call.name_parts = None
            elif call.member == _ARGUMENTS:
                if call.id is None:
                    call.early_arguments.append(value)
                else:
                    self._arguments(call, value)
            elif call.member == _ARGUMENTS_FALLBACK:
                call.fallback_arguments.append(value)

    def _member_role(self, call: _Call, key: str) -> str | None:
        keys = self._syntax.arguments_keys
        if key == "name" and call.id is None:
            call.name_parts = []
            return _NAME
        if key == keys[0] and not call.arguments_seen:
            call.arguments_seen = True
            return _ARGUMENTS
        if key in keys[1:] and call.fallback_arguments is None:
            call.fallback_arguments = []
            return _ARGUMENTS_FALLBACK
        return None

    def _name_known(self, call: _Call, name: str) -> None:
        call.name, call.id, call.index = name, _call_id(), self._calls
        self._calls += 1
        self._events.append(ToolCallDelta(call.index, "", id=call.id, name=name))
        self._arguments(call, "".join(call.early_arguments))
        call.early_arguments = []

    def _arguments(self, call: _Call, text: str) -> None:
        if not text:
            return
        last = self._events[-1] if self._events else None
        if isinstance(last, ToolCallDelta) and last.index == call.index and last.id is None:
            last.arguments += text
        else:
            self._events.append(ToolCallDelta(call.index, text))

    def _abandon(self, reason: str, rest: str) -> str:
        """The call being read is not valid: its unsent text goes out as content, and reading goes on as content."""
        call = self._call
        if call.id is None:
            log.debug("%s: the text after %r is not a tool call (%s); it is sent as content", self._label,
                      self._syntax.opener, reason)
            self._content(call.lead + "".join(call.raw))
        else:
            log.info("%s: the arguments of tool call %d (%s) are not valid JSON (%s); the rest of the answer is "
                     "sent as content", self._label, call.index, call.name, reason)
            self._complete = False
            self._content(call.raw_tail(call.reader.pending_chars))
        self._call = None
        self._mode = _CONTENT
        return rest

    # ---- output ---------------------------------------------------------------------------------------------------

    def _content(self, text: str) -> None:
        if not text:
            return
        if self._events and isinstance(self._events[-1], str):
            self._events[-1] += text
        else:
            self._events.append(text)

    def _take(self) -> list[str | ToolCallDelta]:
        events, self._events = self._events, []
        return events


def _undecided_tail(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` may still be the start of ``marker`` or whitespace before it."""
    keep = 0
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            keep = length
            break
    end = len(text) - keep
    return len(text) - len(text[:end].rstrip())


def _strip_separators(text: str) -> str:
    """``text`` without the ";" and whitespace that separate llama3 calls."""
    start = 0
    while start < len(text) and (text[start] == ";" or text[start].isspace()):
        start += 1
    return text[start:]
