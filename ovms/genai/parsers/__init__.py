"""Output parsers of generated chat answers: reasoning, content and tool calls, under OVMS's parser names.

A graph names them (``tool_parser``, ``reasoning_parser``), or they are detected from the model's chat template
as OVMS detects them (src/llm/io_processing/chat_template/analyzer.cpp); ``"none"`` turns detection off. A name
OVMS does not have fails the graph's load with OVMS's message.

``OutputParser.parse`` reads a whole answer; ``OutputParser.stream`` reads it as it is generated and hands out,
in order, content (``str``), ``ReasoningDelta`` and ``ToolCallDelta`` pieces whose concatenation is what
``parse`` gives (tests/genai/test_parser_streams.py). One module per format family:

- ``json_calls``: hermes3, llama3 (with their own hand-written stream reader, ``ToolCallStream``)
- ``json_lists``: phi4, mistral, devstral
- ``xml_calls``: qwen3coder, minicpm5, onyx
- ``call_syntax``: lfm2, gemma4
- ``harmony``: gptoss (tool calls and reasoning)
- ``reasoning``: qwen3, lfm2, minicpm5, gemma4 (think tags), onyx

``guided`` builds the tool-call constraint of ``enable_tool_guided_generation`` and ``tool_choice: "required"``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from ovms.genai.types import ToolCall
from ovms.genai.parsers import call_syntax, guided, harmony, json_calls, json_lists, reasoning, xml_calls
from ovms.genai.parsers.incremental import Parsed, ReasoningDelta, SettledStream, call_id
from ovms.genai.parsers.json_calls import PARSERS, STREAM_SYNTAXES, ToolCallStream

__all__ = ["TOOL_PARSERS", "REASONING_PARSERS", "DISABLED", "OutputParser", "OutputStream", "ReasoningDelta",
           "check_parser_names", "detect_parsers", "resolve_parsers", "parse_tool_calls", "split_reasoning",
           "tool_call_stream", "implicit_reasoning_start", "special_tokens", "PARSERS", "STREAM_SYNTAXES",
           "ToolCallStream"]

# OVMS's names, in its order (src/llm/io_processing/parser_config_validation.cpp): its load error lists them so.
TOOL_PARSERS = ("llama3", "hermes3", "phi4", "mistral", "gptoss", "qwen3coder", "devstral", "lfm2", "gemma4",
                "onyx", "minicpm5")
REASONING_PARSERS = ("qwen3", "gemma4", "gptoss", "onyx", "minicpm5", "lfm2")
DISABLED = "none"  # a graph's way to turn auto-detection off (PARSER_DISABLED_VALUE)

# The parsers that read special tokens, so that the text must keep them (requiresStreamingWithSpecialTokens).
_SPECIAL_TOOL = {"gptoss", "devstral", "gemma4", "lfm2", "minicpm5", "onyx"}
_SPECIAL_REASONING = {"gemma4", "gptoss", "lfm2", "minicpm5", "onyx"}
_MARKER_TOKENS = {
    "mistral": ("[TOOL_CALLS]",), "devstral": ("[TOOL_CALLS]", "[ARGS]"),
    "gptoss": harmony.TOKENS, "gemma4": (call_syntax.GEMMA4_START, call_syntax.GEMMA4_END, call_syntax.GEMMA4_QUOTE,
                                         "<|channel>", "<channel|>"),
    "lfm2": (call_syntax.LFM2_START, call_syntax.LFM2_END, "<think>", "</think>"),
    "qwen3": ("<think>", "</think>"), "minicpm5": ("<think>", "</think>"),
    "hermes3": ("<tool_call>", "</tool_call>"), "llama3": ("<|python_tag|>",),
    "qwen3coder": ("<tool_call>", "</tool_call>"),
    "onyx": reasoning.ONYX_ENDS + (reasoning.ONYX_MESSAGE, "<|start|>"),
}


def check_parser_names(tool_parser: str | None, reasoning_parser: str | None) -> None:
    """Raise ``ValueError`` with OVMS's message for a parser name it does not have, or a pair it cannot combine."""
    if tool_parser and tool_parser != DISABLED and tool_parser not in TOOL_PARSERS:
        raise ValueError(f'Unsupported tool_parser "{tool_parser}" specified in graph configuration. Supported tool '
                         f'parsers are: {", ".join(TOOL_PARSERS)}')
    if reasoning_parser and reasoning_parser != DISABLED and reasoning_parser not in REASONING_PARSERS:
        raise ValueError(f'Unsupported reasoning_parser "{reasoning_parser}" specified in graph configuration. '
                         f'Supported reasoning parsers are: {", ".join(REASONING_PARSERS)}')
    if tool_parser in TOOL_PARSERS and reasoning_parser in REASONING_PARSERS and \
            (tool_parser in _SPECIAL_TOOL) != (reasoning_parser in _SPECIAL_REASONING):
        raise ValueError(f"Cannot use tool parser {tool_parser} with reasoning parser {reasoning_parser} as they have "
                         f"different requirements for special tokens in streaming mode")


def detect_parsers(template: str | None) -> tuple[str | None, str | None]:
    """(tool parser, reasoning parser) a chat template teaches, as OVMS's ChatTemplateAnalyzer detects them."""
    if not template:
        return None, None
    has = template.__contains__
    think = has("<think>") or has("content.split('</think>')")
    if has("<|channel|>"):
        return "gptoss", "gptoss"
    if has("<|start|>") and has("<|message|>") and has("<|eom|>") and has("<|eot|>"):
        return "onyx", "onyx"
    if has("'<|tool_call>call:'") or has("<|tool_call>call:"):
        return "gemma4", "gemma4"
    if has("<parameter=") and has("</parameter>") and has("<function="):
        return "qwen3coder", "qwen3" if has("<think>") or has("</think>") else None
    if has('<param name="'):
        return "minicpm5", "minicpm5"
    if has("<|assistant_tool_call|>") or has("<|tool_call_start|>") or has("keep_past_thinking"):
        return "lfm2", "lfm2" if has("message.thinking") else None
    if has("functools"):
        return "phi4", None
    if has("[TOOL_CALLS]") and has("[ARGS]"):
        return "devstral", None
    if has("[TOOL_CALLS]") or (has("[AVAILABLE_TOOLS]") and has("[/AVAILABLE_TOOLS]")):
        return "mistral", None
    if has("<|python_tag|>"):
        return "llama3", None
    if has("<tool_call>") and has("</tool_call>"):
        return "hermes3", "qwen3" if think else None
    return None, "qwen3" if think else None


def resolve_parsers(tool_parser: str | None, reasoning_parser: str | None,
                    template: str | None) -> tuple[str | None, str | None]:
    """The parsers a model uses: the graph's names, else the detected ones; ``"none"`` is no parser."""
    detected_tool, detected_reasoning = detect_parsers(template)
    tool = None if tool_parser == DISABLED else tool_parser or detected_tool
    thinking = None if reasoning_parser == DISABLED else reasoning_parser or detected_reasoning
    check_parser_names(tool, thinking)
    return tool, thinking


def special_tokens(tool_parser: str | None, reasoning_parser: str | None) -> set[str]:
    """The marker tokens the parsers read, which the decoded text must keep even when they are special tokens."""
    return {token for name in (tool_parser, reasoning_parser) for token in _MARKER_TOKENS.get(name or "", ())}


def implicit_reasoning_start(reasoning_parser: str | None, prompt: str | None) -> bool:
    return reasoning.implicit_start(reasoning_parser, prompt)


# ---- the parsers ----------------------------------------------------------------------------------------

def _tool_function(parser: str, tools: list | None) -> Callable[[str, bool], Parsed] | None:
    if parser == "phi4":
        return json_lists.parse_phi4
    if parser == "mistral":
        return json_lists.parse_mistral
    if parser == "devstral":
        return json_lists.parse_devstral
    if parser == "lfm2":
        return call_syntax.parse_lfm2
    if parser == "gemma4":
        return call_syntax.parse_gemma4
    syntax = {"qwen3coder": xml_calls.QWEN3CODER, "minicpm5": xml_calls.MINICPM5, "onyx": xml_calls.ONYX}.get(parser)
    if syntax is not None:
        return functools.partial(xml_calls.parse_xml_calls, syntax, xml_calls.parameter_types(tools))
    return None


# The parsers whose answer is content until the first of these (incremental.content_before): their stream looks
# for the marker in new text only. (mistral also takes a list at the very start, so it has none here.)
_CONTENT_MARKERS = {"phi4": ("functools",), "devstral": ("[TOOL_CALLS]",), "qwen3coder": xml_calls.QWEN3CODER.markers,
                    "minicpm5": xml_calls.MINICPM5.markers, "onyx": xml_calls.ONYX.markers,
                    "lfm2": (call_syntax.LFM2_START,), "gemma4": (call_syntax.GEMMA4_START,)}


def _legacy_parse(parser: str, text: str, final: bool) -> Parsed:
    content, calls = PARSERS[parser](text)
    return Parsed(content, [(call.name, call.arguments) for call in calls])


class OutputParser:
    """The reasoning and tool parsers of one request (tool parsing only when the request has tools)."""

    def __init__(self, tool_parser: str | None, reasoning_parser: str | None, *, tools: list | None = None,
                 implicit: bool | None = None) -> None:
        tool = tool_parser if tools else None
        self._harmony = None
        self._reasoning = self._tools = None
        self._legacy = tool in PARSERS
        if "gptoss" in (tool_parser, reasoning_parser):  # one Harmony reader does both jobs
            self._harmony = functools.partial(harmony.HarmonyParser, reasoning=reasoning_parser == "gptoss",
                                              calls=tool == "gptoss")
            return
        if reasoning_parser in reasoning.THINK_TAGS:
            self._reasoning = functools.partial(_think, reasoning.THINK_TAGS[reasoning_parser], implicit)
        elif reasoning_parser == "onyx":
            self._reasoning = reasoning.parse_onyx
        self._markers: tuple[str, ...] = ()
        if tool and not self._legacy:
            self._tools = _tool_function(tool, tools)
            self._markers = _CONTENT_MARKERS.get(tool, ())
        elif tool:
            self._tools = functools.partial(_legacy_parse, tool)
        self._tool_name = tool

    @property
    def active(self) -> bool:
        """Whether there is anything to parse (else the text is all content)."""
        return bool(self._harmony or self._reasoning or self._tools)

    def parse(self, text: str) -> tuple[str | None, str, list[ToolCall]]:
        """(reasoning, content, tool calls) of a whole answer."""
        if self._harmony is not None:
            parsed = self._harmony()(text, True)
        else:
            parsed = self._reasoning(text, True) if self._reasoning else Parsed(text)
            if self._tools is not None:
                parsed = dataclasses.replace(self._tools(parsed.content, True), reasoning=parsed.reasoning)
        calls = [ToolCall(id=call_id(), name=name, arguments=arguments) for name, arguments in parsed.calls]
        return parsed.reasoning, parsed.content, calls

    def stream(self, *, label: str = "") -> "OutputStream":
        if self._harmony is not None:
            return OutputStream(SettledStream(self._harmony(), label=label), None)
        first = SettledStream(self._reasoning, label=label) if self._reasoning else None
        if self._tools is None:
            second = None
        elif self._legacy:
            second = ToolCallStream(STREAM_SYNTAXES[self._tool_name], label=label)
        else:
            second = SettledStream(self._tools, label=label, markers=self._markers)
        return OutputStream(first, second)


def _think(tags, implicit, text: str, final: bool) -> Parsed:
    return reasoning.parse_think(tags, text, final, implicit)


class OutputStream:
    """One choice's answer read as it arrives: reasoning first, then its content through the tool parser."""

    def __init__(self, first, second) -> None:
        self._first, self._second = first, second

    def feed(self, text: str) -> list:
        return self._through(self._first.feed(text) if self._first else [text], finish=False)

    def finish(self) -> list:
        return self._through(self._first.finish() if self._first else [], finish=True)

    def finish_reason(self, reason: str | None) -> str | None:
        last = self._second or self._first
        return last.finish_reason(reason) if last is not None else reason

    def _through(self, events: list, *, finish: bool) -> list:
        if self._second is None:
            return [e for e in events if not isinstance(e, str) or e]
        out: list = []
        for event in events:
            out += self._second.feed(event) if isinstance(event, str) else [event]
        if finish:
            out += self._second.finish()
        return out


# ---- the functions the transport used before OutputParser (kept for callers and tests) -----------------------

def parse_tool_calls(parser: str | None, text: str, *, tools: list | None = None) -> tuple[str, list[ToolCall]]:
    """Content and tool calls of a generated text (no parser: all content)."""
    if not parser:
        return text, []
    _, content, calls = OutputParser(parser, None, tools=tools or [{}]).parse(text)
    return content, calls


def tool_call_stream(parser: str | None, *, tools: list | None = None, label: str = "") -> OutputStream | None:
    """A streaming reader of the tool parser's format, or None without a parser."""
    if not parser:
        return None
    return OutputParser(parser, None, tools=tools or [{}]).stream(label=label)


def split_reasoning(parser: str | None, text: str, *, implicit: bool | None = None) -> tuple[str | None, str]:
    """(reasoning, content) of a whole answer (no reasoning parser: (None, text))."""
    if not parser:
        return None, text
    thinking, content, _ = OutputParser(None, parser, implicit=implicit).parse(text)
    return thinking, content
