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

from ovms.tool_parsers.incremental import Parsed, find_first, undecided_tail

CHANNEL, CONSTRAIN, MESSAGE = "<|channel|>", "<|constrain|>", "<|message|>"
CLOSERS = ("<|end|>", "<|return|>", "<|call|>")
TOKENS = (CHANNEL, CONSTRAIN, MESSAGE, "<|start|>") + CLOSERS
_FUNCTIONS = "to=functions."


def _messages(text: str, final: bool) -> list[tuple[str, str]]:
    """(channel, text) of each message whose header is complete; the last one's text as far as it is settled."""
    messages = []
    position = text.find(CHANNEL)
    while position >= 0:
        header_at = position + len(CHANNEL)
        message_at = text.find(MESSAGE, header_at)
        if message_at < 0:
            break
        channel = text[header_at:message_at]
        next_channel = text.find(CHANNEL, header_at)
        if 0 <= next_channel < message_at:  # a channel without a message: OVMS starts over at the next one
            position = next_channel
            continue
        channel = channel.split(CONSTRAIN, 1)[0].strip()
        body_at = message_at + len(MESSAGE)
        end, _ = find_first(text, CLOSERS + (CHANNEL,), body_at)
        if end < 0:
            body = text[body_at:]
            if not final:
                body = body[:len(body) - undecided_tail(body, TOKENS)]
            messages.append((channel, body))
            break
        messages.append((channel, text[body_at:end]))
        position = text.find(CHANNEL, end)
    return messages


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


def parse_harmony(text: str, final: bool, *, reasoning: bool, calls: bool) -> Parsed:
    """Reasoning (when ``reasoning``), content and calls (when ``calls``) of a Harmony answer.

    An answer that does not start with a Harmony token is plain content (the model did not use the format).
    """
    start = text.lstrip()
    if start and not start.startswith("<|") and start != "<":
        return Parsed(text)
    thoughts, content, found = [], [], []
    messages = _messages(text, final)
    for channel, body in messages:
        name = _function(channel)
        if name is not None:
            if calls and name:
                found.append((name, body))
        elif channel == "analysis":
            thoughts.append(body)
        elif channel in ("final", "commentary"):
            content.append(body)
    return Parsed(" ".join(content), found, " ".join(thoughts) if reasoning and thoughts else None)
