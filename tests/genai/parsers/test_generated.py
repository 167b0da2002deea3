"""Random calls written in every parser's format: the whole-answer parse gives back exactly the calls written
(and the content before them), and the stream at a random split gives the same."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovms.genai.parsers import TOOL_PARSERS, OutputParser
from tests.genai.parsers.test_streams import split, streamed

NAMES = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)
KEYS = st.from_regex(r"[a-z][a-z_0-9]{0,7}", fullmatch=True)
# Text that cannot be read as a marker of any format, a JSON value, or Gemma's and Python's syntax.
WORDS = st.text(st.sampled_from("abcdeghijklmnopqrstuvwxyz ABCXYZ.é日👋"), min_size=1, max_size=20).map(str.strip)
VALUES = st.one_of(WORDS, st.integers(-10**6, 10**6), st.booleans())
CALLS = st.lists(st.tuples(NAMES, st.dictionaries(KEYS, VALUES, max_size=4)), min_size=1, max_size=3,
                 unique_by=lambda call: call[0])  # one schema per name


def _gemma(value) -> str:
    if isinstance(value, str):
        return f'<|"|>{value}<|"|>'
    return json.dumps(value)


def _xml(open_call, close_call, parameter, parameter_end, calls) -> str:
    return "".join(open_call(name) + "".join(parameter(k) + (v if isinstance(v, str) else json.dumps(v)) +
                                             parameter_end for k, v in args.items()) + close_call
                   for name, args in calls)


def written(parser: str, calls, content: str) -> str:
    """The answer a model of the parser's family writes for ``calls`` after ``content``."""
    lead = content + " " if content else ""
    if parser == "hermes3":
        return lead + "".join(f'<tool_call>\n{json.dumps({"name": n, "arguments": a})}\n</tool_call>\n'
                              for n, a in calls)
    if parser == "llama3":
        return lead + "<|python_tag|>" + "; ".join(json.dumps({"name": n, "parameters": a}) for n, a in calls)
    if parser == "phi4":
        return lead + "functools" + json.dumps([{"name": n, "arguments": a} for n, a in calls])
    if parser == "mistral":
        return lead + "[TOOL_CALLS]" + json.dumps([{"name": n, "arguments": a} for n, a in calls]) + "</s>"
    if parser == "devstral":
        return lead + "".join(f"[TOOL_CALLS]{n}[ARGS]{json.dumps(a)}" for n, a in calls) + "</s>"
    if parser == "gptoss":
        final = f"<|start|>assistant<|channel|>final<|message|>{content}<|return|>" if content else ""
        return ("<|channel|>analysis<|message|>Thinking.<|end|>" + final +
                "".join(f"<|start|>assistant<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>"
                        f"{json.dumps(a)}<|call|>" for n, a in calls))
    if parser == "qwen3coder":
        return lead + _xml(lambda n: f"<tool_call>\n<function={n}>\n", "</function>\n</tool_call>\n",
                           lambda k: f"<parameter={k}>\n", "\n</parameter>\n", calls)
    if parser == "minicpm5":
        return lead + _xml(lambda n: f'<function name="{n}">', "</function>", lambda k: f'<param name="{k}">',
                           "</param>", calls)
    if parser == "onyx":
        return lead + "<atem:function_calls>\n" + _xml(
            lambda n: f'<atem:invoke name="{n}">\n', "</atem:invoke>\n", lambda k: f'<atem:parameter name="{k}">',
            "</atem:parameter>\n", calls) + "</atem:function_calls>"
    if parser == "lfm2":
        return lead + "<|tool_call_start|>[" + ", ".join(
            f"{n}(" + ", ".join(f"{k}={v!r}" for k, v in a.items()) + ")" for n, a in calls) + "]<|tool_call_end|>"
    if parser == "gemma4":
        return lead + "<|tool_call>" + "".join(
            f"call:{n}{{" + ",".join(f"{k}:{_gemma(v)}" for k, v in a.items()) + "}" for n, a in calls) + \
            "<tool_call|>"
    raise AssertionError(f"no writer for {parser}")


def tools_for(calls) -> list[dict]:
    """Tool schemas that type every written value as it was written (the XML formats read values by schema)."""
    kinds = {str: "string", bool: "boolean", int: "integer"}
    return [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
        k: {"type": kinds[type(v)]} for k, v in args.items()}}}} for name, args in calls]


@pytest.mark.parametrize("parser", TOOL_PARSERS)
@settings(max_examples=40, deadline=None)
@given(calls=CALLS, content=st.one_of(st.just(""), WORDS), cuts=st.lists(st.integers(0, 5000), max_size=30))
def test_written_calls_parse_back_whole_and_streamed(parser, calls, content, cuts):
    tools = tools_for(calls)
    text = written(parser, calls, content)
    output = OutputParser(parser, None, tools=tools, implicit=False)
    if parser == "gptoss":
        output = OutputParser(parser, "gptoss", tools=tools, implicit=False)
    reasoning, got_content, got_calls = output.parse(text)
    expected = [(n, json.dumps(a, ensure_ascii=False)) for n, a in calls]
    assert [(c.name, c.arguments if parser != "gptoss" else json.dumps(json.loads(c.arguments), ensure_ascii=False))
            for c in got_calls] == expected, text
    assert got_content == content, text
    stream = streamed(output, split(text, cuts))
    assert stream == (reasoning or "", got_content, [(c.name, c.arguments) for c in got_calls], "tool_calls")


def test_lfm2_arguments_named_like_python_keywords():
    """Found by the generated calls above: a tool argument named ``in`` (or ``from``, ``class``) is a keyword to
    Python's parser, which refused ``f(in='A')``, so the call was not read at all."""
    from ovms.genai.parsers.call_syntax import parse_lfm2

    parsed = parse_lfm2("<|tool_call_start|>[a(in='A', from_=1, c='x=y'), b(class=None)]<|tool_call_end|>", True)
    assert parsed.calls == [("a", '{"in": "A", "from_": 1, "c": "x=y"}'), ("b", '{"class": null}')]
