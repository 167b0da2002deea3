"""gpt-oss's Harmony format, for the ``gptoss`` tool parser and the ``gptoss`` reasoning parser.

An answer is a run of messages, each ``<|channel|>CHANNEL[<|constrain|>TYPE]<|message|>TEXT`` closed by
``<|end|>``, ``<|return|>`` or ``<|call|>`` (a next message may be introduced by ``<|start|>assistant``)::

    <|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant<|channel|>commentary
    to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>

As OVMS reads it (src/llm/io_processing/gptoss/harmony.cpp): ``analysis`` messages are the reasoning, ``final`` and
``commentary`` messages the content (joined with a space), and a ``commentary`` (or ``analysis``) message whose
channel names ``to=functions.NAME`` is a call of NAME with the message as its arguments, as written. Text outside
messages is dropped. An answer cut short ends its last message. The special tokens (``TOKENS``) must be in the decoded
text.
"""
from __future__ import annotations

import re

from ovms.genai.parsers.incremental import Parsed, find_first, undecided_tail

CHANNEL, CONSTRAIN, MESSAGE = "<|channel|>", "<|constrain|>", "<|message|>"
CLOSERS = ("<|end|>", "<|return|>", "<|call|>")
TOKENS = (CHANNEL, CONSTRAIN, MESSAGE, "<|start|>") + CLOSERS
_FUNCTIONS = "to=functions."
_SPACE = re.compile(r"\s*")


class _MessageReader:
    """The messages of a text that only grows between calls, each character looked at about once: closed messages
    are kept, and the open one is searched for its end in the new text only."""

    _LONGEST = max(len(token) for token in CLOSERS + (CHANNEL,))

    def __init__(self) -> None:
        self._closed: list[tuple[str, str]] = []
        self._at = 0  # where the next message's channel is looked for
        self._open: tuple[str, int] | None = None  # (channel, where its text starts)
        self._search = 0  # where the open message's end is looked for

    def messages(self, text: str, final: bool) -> list[tuple[str, str]]:
        """(channel, text) of each message whose header is complete; the last one's text as far as it is settled."""
        while True:
            if self._open is None:
                position = text.find(CHANNEL, self._at)
                if position < 0:
                    break
                header_at = position + len(CHANNEL)
                message_at = text.find(MESSAGE, header_at)
                if message_at < 0:
                    break
                next_channel = text.find(CHANNEL, header_at)
                if 0 <= next_channel < message_at:  # a channel without a message: OVMS starts over at the next one
                    self._at = next_channel
                    continue
                channel = text[header_at:message_at].split(CONSTRAIN, 1)[0].strip()
                self._open = (channel, message_at + len(MESSAGE))
                self._search = message_at + len(MESSAGE)
            channel, body_at = self._open
            end, _ = find_first(text, CLOSERS + (CHANNEL,), self._search)
            if end < 0:
                self._search = max(body_at, len(text) - self._LONGEST + 1)
                break
            self._closed.append((channel, text[body_at:end]))
            self._open, self._at = None, end
        if self._open is None:
            return list(self._closed)
        channel, body_at = self._open
        body = text[body_at:]
        if not final:
            body = body[:len(body) - undecided_tail(body, TOKENS)]
        return self._closed + [(channel, body)]


def _function(channel: str) -> str | None:
    if not (channel.startswith("commentary") or channel.startswith("analysis")):
        return None
    at = channel.find(_FUNCTIONS)
    if at < 0:
        return None
    name = channel[at + len(_FUNCTIONS):]
    for stop in " \t\n\r<":
        name = name.split(stop, 1)[0]
    return name


class HarmonyParser:
    """Reasoning (when ``reasoning``), content and calls (when ``calls``) of a Harmony answer; one per answer read
    (it keeps what it read of the text, which may only grow between calls).

    An answer that does not start with a Harmony token is plain content (the model did not use the format).
    """

    def __init__(self, *, reasoning: bool, calls: bool) -> None:
        self._reasoning, self._calls = reasoning, calls
        self._reader = _MessageReader()

    def __call__(self, text: str, final: bool) -> Parsed:
        lead = _SPACE.match(text).end()
        start = text[lead:lead + 2]
        if start and not start.startswith("<|") and start != "<":
            return Parsed(text, passthrough=not final)
        thoughts, content, found = [], [], []
        for channel, body in self._reader.messages(text, final):
            name = _function(channel)
            if name is not None:
                if self._calls and name:
                    found.append((name, body))
            elif channel == "analysis":
                thoughts.append(body)
            elif channel in ("final", "commentary"):
                content.append(body)
        return Parsed(" ".join(content), found, " ".join(thoughts) if self._reasoning and thoughts else None)
