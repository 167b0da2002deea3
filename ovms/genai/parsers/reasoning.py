"""Reasoning parsers: the model's thinking -> ``reasoning_content``, the rest -> content.

- ``qwen3``, ``lfm2`` (LFM2.5), ``minicpm5``: ``<think>...</think>`` (OVMS src/llm/io_processing/qwen3, lfm2,
  minicpm5). When the rendered prompt ends with ``<think>`` (the template opened it), the answer starts inside
  the reasoning and holds only the closing tag; without a closing tag all of it is reasoning.
- ``gemma4``: ``<|channel>thought\\n...<channel|>`` (OVMS .../gemma4).
- ``gptoss``: Harmony ``analysis`` messages (``ovms.genai.parsers.harmony``).
- ``onyx``: Harmony-like turns ``[<|start|>assistant] to=RECIPIENT<|message|>BODY<|eom|>`` (or ``<|eot|>``); the
  turns to ``self`` are the reasoning, the framing of the others is removed (OVMS .../onyx).

Reasoning is recognised at the start of the answer only (after whitespace), as OVMS's stream does; it is
stripped of surrounding whitespace, and the content after it of leading whitespace.
"""
from __future__ import annotations

from ovms.genai.parsers.incremental import Parsed, undecided_tail

THINK_TAGS = {"qwen3": ("<think>", "</think>"), "lfm2": ("<think>", "</think>"),
              "minicpm5": ("<think>", "</think>"), "gemma4": ("<|channel>thought\n", "<channel|>")}


def implicit_start(parser: str | None, prompt: str | None) -> bool:
    """Whether the prompt opened the reasoning (it ends with the start tag), as OVMS's
    detectAndSetImplicitReasoningStart decides."""
    tags = THINK_TAGS.get(parser or "")
    return bool(tags and prompt and prompt.rstrip().endswith(tags[0]))


def parse_think(tags: tuple[str, str], text: str, final: bool, implicit: bool | None) -> Parsed:
    """``implicit`` None (a caller that does not know the prompt): implicit when the answer closes a reasoning
    it did not open."""
    start, end = tags
    stripped = text.lstrip()
    known = implicit is not None  # passthrough needs it: a guess from the text may change with more text
    if implicit is None:
        implicit = end in text and not stripped.startswith(start)
    body_at = 0
    if not implicit:
        if stripped.startswith(start):
            body_at = len(text) - len(stripped) + len(start)
        elif not final and start.startswith(stripped):
            return Parsed("")  # whitespace or a start tag cut short: wait
        else:
            return Parsed(text, passthrough=known and not final)
    body = text[body_at:]
    at = body.find(end)
    if at >= 0:
        content = body[at + len(end):].lstrip()
        return Parsed(content, reasoning=body[:at].strip(), passthrough=known and bool(content) and not final)
    if not final:
        body = body[:len(body) - undecided_tail(body, (end,))]
    return Parsed("", reasoning=body.strip())


# ---- onyx -----------------------------------------------------------------------------------------------

ONYX_MESSAGE, ONYX_START = "<|message|>", "<|start|>assistant"
ONYX_ENDS = ("<|eom|>", "<|eot|>")
_ONYX_TOKENS = (ONYX_MESSAGE, "<|start|>", ONYX_START) + ONYX_ENDS


def parse_onyx(text: str, final: bool) -> Parsed:
    """Reasoning (turns to ``self``, joined by newlines) and content (the other turns' bodies, joined)."""
    start = text.lstrip()
    if start and not (start.startswith(("to=", "<|")) or "to=".startswith(start) or "<|".startswith(start)):
        return Parsed(text)  # no framing: all content
    thoughts, content = [], []
    position = 0
    while True:
        message_at = text.find(ONYX_MESSAGE, position)
        if message_at < 0:
            break
        header = text[position:message_at].replace(ONYX_START, "").strip()
        for end in ONYX_ENDS:
            header = header.replace(end, "").strip()
        recipient = header[3:].strip() if header.startswith("to=") else ""
        body_at = message_at + len(ONYX_MESSAGE)
        ends = [at for at in (text.find(token, body_at) for token in ONYX_ENDS + ("<|start|>",)) if at >= 0]
        body_end = min(ends) if ends else len(text)
        body = text[body_at:body_end]
        if not ends and not final:
            body = body[:len(body) - undecided_tail(body, _ONYX_TOKENS)]
        (thoughts if recipient == "self" else content).append(body)
        if not ends:
            break
        position = body_end
        for end in ONYX_ENDS:
            if text.startswith(end, position):
                position += len(end)
    return Parsed("".join(content), reasoning="\n".join(thoughts) if thoughts else None)
