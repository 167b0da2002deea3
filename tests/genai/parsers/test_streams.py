"""Every parser streams what it parses: for random splits of real model outputs, the concatenated stream
pieces (content, reasoning, each call's name and arguments) equal the non-streamed parse."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovms.genai.types import ToolCallDelta
from ovms.genai.parsers import REASONING_PARSERS, TOOL_PARSERS, OutputParser, ReasoningDelta
from tests.genai.parsers.samples import SAMPLES, TOOLS


def streamed(parser: OutputParser, pieces: list[str]):
    stream = parser.stream(label="test")
    events = []
    for piece in pieces:
        events += stream.feed(piece)
    events += stream.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e for e in events if isinstance(e, str))
    calls: list[list] = []
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.id is not None:
                assert e.index == len(calls) and e.name and e.arguments == "", f"first delta of a call: {e}"
                calls.append([e.name, ""])
            else:
                assert e.index == len(calls) - 1, f"arguments delta {e} is not for the last call named"
                calls[e.index][1] += e.arguments
    # Nothing after the first call is content, and no reasoning comes after content or calls.
    kinds = [type(e).__name__ for e in events]
    if "ReasoningDelta" in kinds:
        assert max(i for i, k in enumerate(kinds) if k == "ReasoningDelta") < min(
            [i for i, k in enumerate(kinds) if k != "ReasoningDelta"] or [len(kinds)])
    return reasoning, content, [tuple(c) for c in calls], stream.finish_reason("stop")


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0] + points, points + [len(text)]) if b > a]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2][:24]}")
def test_whole_answer_parses_as_ovms_does(sample):
    tool, thinking, text, reasoning, content, calls = sample
    got_reasoning, got_content, got_calls = OutputParser(tool, thinking, tools=TOOLS, implicit=False).parse(text)
    assert (got_reasoning, got_content) == (reasoning, content)
    assert [(c.name, c.arguments) for c in got_calls] == calls
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in got_calls)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2][:24]}")
def test_stream_one_character_at_a_time_equals_the_whole_parse(sample):
    tool, thinking, text, reasoning, content, calls = sample
    got = streamed(OutputParser(tool, thinking, tools=TOOLS, implicit=False), list(text))
    assert got == (reasoning or "", content, calls, "tool_calls" if calls else "stop")


@settings(max_examples=60, deadline=None)
@given(sample=st.sampled_from(SAMPLES), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_stream_at_any_split_equals_the_whole_parse(sample, cuts):
    tool, thinking, text, reasoning, content, calls = sample
    parser = OutputParser(tool, thinking, tools=TOOLS, implicit=False)
    whole_reasoning, whole_content, whole_calls = parser.parse(text)
    got = streamed(parser, split(text, cuts))
    assert got == (whole_reasoning or "", whole_content, [(c.name, c.arguments) for c in whole_calls],
                   "tool_calls" if whole_calls else "stop")


IMPLICIT = [("qwen3", "The user wants Paris.\n</think>\n\nIt is sunny.", "The user wants Paris.", "It is sunny."),
            ("qwen3", "Still thinking when max_tokens", "Still thinking when max_tokens", ""),
            ("minicpm5", "\nShort.</think>Done", "Short.", "Done")]


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(IMPLICIT), cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=20))
def test_reasoning_opened_by_the_prompt_streams_as_it_parses(case, cuts):
    thinking, text, reasoning, content = case
    parser = OutputParser(None, thinking, implicit=True)
    assert parser.parse(text) == (reasoning, content, [])
    assert streamed(parser, split(text, cuts)) == (reasoning, content, [], "stop")


def test_long_answers_are_not_read_again_at_every_piece():
    """After the reasoning, and before a tool call's marker, a piece costs the piece, not the answer so far: the
    stream's parse function is not called again (a quadratic stream took 1 s for a 54k-character answer)."""
    calls = []
    parser = OutputParser("qwen3coder", "qwen3", tools=TOOLS, implicit=False)
    stream = parser.stream()
    first, second = stream._first, stream._second
    for stage in (first, second):
        parse = stage._parse
        stage._parse = lambda text, final, parse=parse: calls.append(len(text)) or parse(text, final)
    stream.feed("<think>\nhmm\n</think>\n\nSure")
    calls.clear()
    for _ in range(200):
        assert stream.feed(" word") == [" word"]
    assert calls == []
    events = stream.feed(" <tool_call><function=get_weather><parameter=location>Rome</parameter></function>")
    assert [e.name for e in events if getattr(e, "name", None)] == ["get_weather"] and calls


def test_every_parser_has_a_sample():
    """A parser added to the names without a real output here would go untested."""
    assert {s[0] for s in SAMPLES if s[0]} == set(TOOL_PARSERS)
    assert {s[1] for s in SAMPLES if s[1]} == set(REASONING_PARSERS)


def test_content_goes_out_before_the_call_and_the_name_before_the_arguments():
    parser = OutputParser("qwen3coder", None, tools=TOOLS)
    stream = parser.stream()
    assert stream.feed("Let me look. <tool") == ["Let me look."]
    assert stream.feed("_call>\n<function=get_wea") == []
    first = stream.feed("ther>\n<parameter=location>\nPar")
    assert len(first) == 2 and first[0].name == "get_weather" and first[0].id and first[1].arguments == "{"
    assert [e.arguments for e in stream.feed("is\n</parameter>\n")] == ['"location": "Paris"']
    assert [e.arguments for e in stream.feed("</function>\n</tool_call>")] == ["}"]
    assert stream.finish() == [] and stream.finish_reason("stop") == "tool_calls"


def test_reasoning_streams_as_reasoning_deltas_when_the_prompt_opened_it():
    parser = OutputParser(None, "qwen3", implicit=True)
    stream = parser.stream()
    events = stream.feed("I think") + stream.feed(" so.</thi") + stream.feed("nk>\n\nYes.") + stream.finish()
    assert events == [ReasoningDelta("I think"), ReasoningDelta(" so."), "Yes."]
    assert parser.parse("I think so.</think>\n\nYes.") == ("I think so.", "Yes.", [])


def test_without_tools_in_the_request_calls_stay_content():
    text = 'functools[{"name": "f", "arguments": {}}]'
    assert OutputParser("phi4", None, tools=None).parse(text) == (None, text, [])
    assert not OutputParser("phi4", None, tools=None).active


@pytest.mark.parametrize("parser, pieces", [
    ("lfm2", ["<|tool_call_start|>[get_weather(location='Par", "is', ", "days=2)]<|tool_call_end|>"]),
    ("gemma4", ['<|tool_call>call:get_weather{location:<|"|>Par', 'is<|"|>,', "days:2}<tool_call|>"]),
])
def test_call_syntax_arguments_stream_one_by_one(parser, pieces):
    stream = OutputParser(parser, None, tools=TOOLS, implicit=False).stream()
    first = stream.feed(pieces[0])
    assert len(first) == 2 and first[0].name == "get_weather" and first[1].arguments == "{"
    assert [e.arguments for e in stream.feed(pieces[1])] == ['"location": "Paris"']
    assert [e.arguments for e in stream.feed(pieces[2]) + stream.finish()] == [', "days": 2}']
    assert stream.finish_reason("stop") == "tool_calls"
