"""Streamed tool calls: the incremental JSON reader and ToolCallStream, checked against the non-streamed parse.

The central property: however the generated text is split into pieces, the streamed content concatenated and
the tool-call deltas reassembled (by index, as openai users do) equal what ``parse_tool_calls`` returns for the
whole text, arguments string included.
"""
from __future__ import annotations

import json
import logging

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ovms.genai.types import ToolCallDelta
from ovms.genai.json_stream import CanonicalJsonReader, JsonStreamError
from ovms.genai.parsers import PARSERS, STREAM_SYNTAXES, parse_tool_calls, tool_call_stream

MARKERS = {"hermes3": "<tool_call>", "llama3": "<|python_tag|>"}


# ---- helpers -------------------------------------------------------------------------------------------------------

def assemble(pieces: list) -> tuple[str, list[tuple[str, str]]]:
    """Content and (name, arguments) per call, checking the deltas have the OpenAI shape."""
    content, calls = [], []
    for piece in pieces:
        if isinstance(piece, str):
            assert piece, "empty content pieces are not sent"
            content.append(piece)
        elif piece.id is not None:  # the first delta of a call: id, name, no arguments yet
            assert piece.index == len(calls), "calls are numbered 0, 1, ... in order"
            assert piece.id.startswith("call_") and isinstance(piece.name, str) and piece.arguments == ""
            calls.append([piece.name, ""])
        else:
            assert piece.name is None and piece.arguments, "later deltas carry only (non-empty) arguments"
            assert piece.index == len(calls) - 1, "arguments extend the call being read"
            calls[piece.index][1] += piece.arguments
    return "".join(content), [(name, arguments) for name, arguments in calls]


def run(parser: str, pieces: list[str], reason: str = "stop"):
    stream = tool_call_stream(parser)
    out: list = []
    for piece in pieces:
        out += stream.feed(piece)
    out += stream.finish()
    return assemble(out), stream.finish_reason(reason)


def expected(parser: str, text: str):
    content, calls = parse_tool_calls(parser, text)
    return (content, [(c.name, c.arguments) for c in calls]), ("tool_calls" if calls else "stop")


def split(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted(cuts)
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def chunkings(data, text: str) -> list[str]:
    return split(text, data.draw(st.lists(st.integers(0, len(text)), max_size=12), label="cuts"))


# ---- strategies ----------------------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
           | st.text(max_size=8) | st.sampled_from(["é", "こんにちは", "👋", "\u2028", "\\", '"', "\x00\n\t"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
containers = st.lists(values, max_size=4) | st.dictionaries(st.text(max_size=6), values, max_size=4)


@st.composite
def formatted(draw, value):
    """``value`` as a model (or a person) might write it: any spacing, escaped or raw non-ASCII."""
    return json.dumps(value, indent=draw(st.sampled_from([None, 0, 2, "\t"])),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t")])),
                      ensure_ascii=draw(st.booleans()))


@st.composite
def call_objects(draw, arguments_key: str):
    """The JSON text of one call, with its (name, arguments) as parse_tool_calls gives them."""
    name = draw(st.text(max_size=10) | st.sampled_from(["get_weather", "天気", "emoji_👋"]))
    arguments = draw(st.dictionaries(st.text(max_size=6), values, max_size=4))
    as_string = draw(st.booleans())  # some models write the arguments as a JSON string
    members = [("name", name), (arguments_key, json.dumps(arguments, ensure_ascii=False) if as_string else arguments)]
    if draw(st.booleans()):
        members.append(("type", "function"))  # members the parsers do not use
    members = draw(st.permutations(members))  # the name may come after the arguments
    text = draw(formatted(dict(members)))
    return text, (name, json.dumps(arguments, ensure_ascii=False))


spaces = st.sampled_from(["", " ", "\n", "\n\n", " \n\t"])
content = st.text(max_size=20).map(str.lstrip)  # content that starts with whitespace: see ToolCallStream's doc


@st.composite
def hermes_answers(draw):
    """Content, then <tool_call> blocks, as Hermes / Qwen write them; the last closer may be missing (EOS)."""
    prose = draw(content.filter(lambda t: "<tool_call>" not in t))
    calls = draw(st.lists(call_objects("arguments"), max_size=3))
    blocks = [f"<tool_call>{draw(spaces)}{text}{draw(spaces)}</tool_call>" for text, _ in calls]
    if blocks and draw(st.booleans()):
        blocks[-1] = blocks[-1].removesuffix("</tool_call>")
    text = prose + draw(spaces) + "".join(b + draw(spaces) for b in blocks)
    return text, [call for _, call in calls]


@st.composite
def llama3_answers(draw):
    """Llama 3.1 JSON tool calls: after <|python_tag|> (maybe with content before it), or a bare JSON answer."""
    calls = draw(st.lists(call_objects(draw(st.sampled_from(["parameters", "arguments"]))), min_size=1,
                          max_size=3))
    body = "".join(text + draw(st.sampled_from([";", "; ", "\n", " ;\n", ""])) for text, _ in calls)
    if draw(st.booleans()):
        prose = draw(content.filter(lambda t: "<|python_tag|>" not in t and not t.startswith("{")))
        text = prose + draw(spaces) + "<|python_tag|>" + draw(spaces) + body
    else:
        text = draw(spaces) + body
    return text, [call for _, call in calls]


MARKUP = ["<tool_call>", "</tool_call>", "<|python_tag|>", "<tool", "{", "}", "[", "]", '"name"', '"arguments"',
          '"parameters"', '"f"', ":", ",", ";", " ", "\n", "1", "-2.5e3", "true", "nul", '"', "\\", "\\u00e9",
          "\\ud83d", "\\ude00", "é", "👋", "x"]
markup_texts = st.lists(st.sampled_from(MARKUP) | st.text(max_size=3), max_size=30).map("".join)


# ---- the JSON reader -----------------------------------------------------------------------------------------------

@given(data=st.data(), value=containers)
def test_reader_writes_what_json_dumps_writes_at_any_split(data, value):
    text = data.draw(formatted(value))
    reader = CanonicalJsonReader()
    for piece in chunkings(data, text):
        reader.feed(piece)
    assert reader.done
    assert "".join(t for _, t in reader.take_events()) == json.dumps(json.loads(text), ensure_ascii=False)


@given(data=st.data(), text=st.sampled_from(["{", "["]).flatmap(lambda s: markup_texts.map(lambda t: s + t)))
def test_reader_accepts_and_rejects_what_raw_decode_does(data, text):
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        value = end = None
    reader = CanonicalJsonReader()
    consumed = 0
    try:
        for piece in chunkings(data, text):
            consumed += reader.feed(piece)
            if reader.done:
                break
    except JsonStreamError:
        assert end is None
        return
    if end is None:
        assert not reader.done
        return
    assert reader.done and consumed == end
    assert "".join(t for _, t in reader.take_events()) == json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("text, message, offending", [
    ('{"a" 1}', "expected ':' after a member name, found '1'", "1"),
    ("[1 2]", "expected ',' or ']' after an array item, found '2'", "2"),
    ('["\x01"]', "control character U+0001 inside a string (JSON needs it escaped)", "\x01"),
    ("[tru]", "'tru' is not a JSON number or literal", "]"),
    ('["\\x"]', "invalid escape \\x in a string", "x"),
    ('["\\u12G4"]', "invalid escape \\u12G in a string (\\u needs four hex digits)", "G"),
    ("{1: 2}", "expected a member name in double quotes, found '1'", "1"),
])
def test_reader_errors_say_what_was_expected(text, message, offending):
    with pytest.raises(JsonStreamError) as caught:
        CanonicalJsonReader().feed(text)
    assert str(caught.value) == message
    assert text[caught.value.position] == offending


# ---- ToolCallStream against parse_tool_calls --------------------------------------------------------------------

def test_every_parser_streams():
    assert set(STREAM_SYNTAXES) == set(PARSERS) == {"hermes3", "llama3"}  # the others: tests/tool_parsers
    assert tool_call_stream(None) is None and tool_call_stream("mistral") is not None


@settings(max_examples=150)
@given(data=st.data(), answer=hermes_answers())
def test_hermes_stream_equals_the_whole_text_parse_at_any_split(data, answer):
    text, calls = answer
    assert expected("hermes3", text)[0][1] == calls  # the generator writes what the parser reads
    assert run("hermes3", chunkings(data, text)) == expected("hermes3", text)


@settings(max_examples=150)
@given(data=st.data(), answer=llama3_answers())
def test_llama3_stream_equals_the_whole_text_parse_at_any_split(data, answer):
    text, calls = answer
    assert expected("llama3", text)[0][1] == calls
    assert run("llama3", chunkings(data, text)) == expected("llama3", text)


MULTI_BYTE = {
    "hermes3": ['こんにちは 👋\n<tool_call>\n{"name": "天気", "arguments": {"city": "東京", "note": "☀️ 🌧"}}\n'
                '</tool_call>',
                '<tool_call>{"arguments": {"s": "\\u00e9\\ud83d\\ude00\\n"}, "name": "f"}</tool_call>\n'
                '<tool_call>{"name": "g", "arguments": "{\\"raw\\": \\"ü\\"}"}</tool_call>',
                "Só texto, sem chamadas 👋 <tool", "<tool_call>not json</tool_call> ok 🙂"],
    "llama3": ['Vérifions. <|python_tag|>{"name": "météo", "parameters": {"ville": "Zürich", "n": 1E2}}; '
               '{"name": "g", "parameters": {}}',
               '  {"parameters": {"q": "日本語 👋"}, "name": "search"}',
               '{"answer": "no name, so not a call"}', "<|python_tag|>print('👋')"],
}


@pytest.mark.parametrize("parser, text", [(p, t) for p, texts in MULTI_BYTE.items() for t in texts])
def test_multi_byte_text_split_at_every_character(parser, text):
    want = expected(parser, text)
    assert run(parser, list(text)) == want
    for at in range(len(text) + 1):
        assert run(parser, [text[:at], text[at:]]) == want, at


@pytest.mark.parametrize("parser", ["hermes3", "llama3"])
@given(data=st.data(), text=markup_texts)
@example(data=None, text='<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>')
def test_any_text_same_result_at_any_split_and_nothing_lost(parser, data, text):
    whole = run(parser, [text])
    if data is not None:
        assert run(parser, chunkings(data, text)) == whole
    assert run(parser, list(text)) == whole
    (content, calls), _ = whole
    if not calls:
        assert content == text  # no call: every character is content, whitespace included


# ---- incremental behaviour -----------------------------------------------------------------------------------------

def test_content_goes_out_at_once_and_only_a_possible_marker_is_held():
    stream = tool_call_stream("hermes3")
    assert stream.feed("Let me check") == ["Let me check"]
    assert stream.feed(" the weather.\n<tool") == [" the weather."]  # "\n<tool" may open a call
    assert stream.feed("s> are") == ["\n<tools> are"]  # it did not
    assert stream.feed(" nice.") == [" nice."]


def test_name_then_arguments_go_out_as_they_are_generated():
    stream = tool_call_stream("hermes3")
    assert stream.feed("Sure. <tool_call>\n{\"name\": \"get_wea") == ["Sure."]
    first, arguments = stream.feed('ther", "arguments": {"city": "Pa')
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "") and first.id.startswith("call_")
    assert arguments == ToolCallDelta(0, '{"city": "Pa')
    assert stream.feed("") == []
    (more,) = stream.feed('ris", "days": 3')
    assert more == ToolCallDelta(0, 'ris", "days": ')  # 3 waits: it may be 30
    assert stream.feed("0}}") == [ToolCallDelta(0, "30}")]
    assert stream.feed("\n</tool_call>\n") == []
    assert stream.finish() == [] and stream.finish_reason("stop") == "tool_calls"


def test_arguments_written_before_the_name_wait_for_it():
    stream = tool_call_stream("hermes3")
    assert stream.feed('<tool_call>{"arguments": {"a": [1,2]}, ') == []
    pieces = stream.feed('"name": "f"}</tool_call>')
    assert [(p.name, p.arguments) for p in pieces] == [("f", ""), (None, '{"a": [1, 2]}')]


def test_two_calls_get_indices_0_and_1():
    text = ('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>')
    (content, calls), reason = run("hermes3", [text])
    assert (content, calls, reason) == ("", [("a", "{}"), ("b", '{"x": 1}')], "tool_calls")


def test_not_a_call_is_sent_as_content():
    text = "<tool_call>I changed my mind</tool_call>"
    assert run("hermes3", list(text)) == ((text, []), "stop")


def test_arguments_that_break_keep_the_call_and_send_the_rest_as_content(caplog):
    text = '<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>'
    stream = tool_call_stream("hermes3", label="chatcmpl-1 choice 0")
    with caplog.at_level(logging.INFO, logger="ovms.genai.parsers"):
        (content, calls) = assemble(stream.feed(text) + stream.finish())
    assert calls == [("f", '{"a": ')] and content == "tru}}</tool_call>"
    assert stream.finish_reason("stop") == "stop"  # not "tool_calls": the call is broken
    assert ("chatcmpl-1 choice 0: the arguments of tool call 0 (f) are not valid JSON ('tru' is not a JSON "
            "number or literal); the rest of the answer is sent as content") in caplog.messages


def test_answer_cut_inside_the_arguments_reports_length(caplog):
    stream = tool_call_stream("hermes3", label="chatcmpl-2 choice 0")
    with caplog.at_level(logging.INFO, logger="ovms.genai.parsers"):
        content, calls = assemble(stream.feed('<tool_call>{"name": "f", "arguments": {"n": 12') + stream.finish())
    assert calls == [("f", '{"n": ')] and content == "12"
    assert stream.finish_reason("length") == "length"
    assert ("chatcmpl-2 choice 0: the answer ended inside the arguments of tool call 0 (f); they are incomplete "
            "JSON") in caplog.messages


def test_llama3_plain_answer_and_code_stay_content():
    for text in ["The answer is 4.", '{"answer": 4}', "<|python_tag|>print(1)", "   "]:
        assert run("llama3", list(text)) == ((text, []), "stop"), text
