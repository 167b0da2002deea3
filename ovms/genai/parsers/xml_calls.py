"""Tool calls written as XML-like tags with one tag per parameter (qwen3coder, minicpm5, onyx).

- ``qwen3coder`` (Qwen3-Coder)::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

- ``minicpm5``: ``<function name="get_weather"><param name="city">Paris</param></function>``
- ``onyx``: ``<atem:function_calls><atem:invoke name="get_weather"><atem:parameter name="city">Paris
  </atem:parameter></atem:invoke></atem:function_calls>``

Parameter values are text; as OVMS does (src/llm/io_processing/qwen3coder, minicpm5, onyx), a parameter that
the request's tool schema types as ``string`` stays text, any other value is read as JSON when it is JSON
(``42``, ``true``, ``{"a": 1}``) and stays text otherwise. One newline on each side of a value is dropped.
Arguments stream parameter by parameter: ``{"city": "Paris"`` when the parameter closes, ``}`` with the call.
Text between and after the calls is content, as OVMS removes only the calls from the text (whitespace around them
is dropped).
"""
from __future__ import annotations

import dataclasses
import json

from ovms.genai.parsers.incremental import Parsed, canonical, content_before, skip_space, text_between, undecided_tail, \
    with_calls


@dataclasses.dataclass(frozen=True, slots=True)
class XmlSyntax:
    wrappers: tuple[str, ...]  # tags around calls, skipped (<tool_call>, </tool_call>)
    function: str  # opens a call; the name follows, up to name_end
    name_end: str
    parameter: str  # opens a parameter; its name follows, up to name_end
    parameter_end: str
    function_end: str
    markers: tuple[str, ...]  # what starts the calls in the answer


QWEN3CODER = XmlSyntax(("<tool_call>", "</tool_call>"), "<function=", ">", "<parameter=", "</parameter>",
                       "</function>", ("<tool_call>", "<function="))
MINICPM5 = XmlSyntax(("<tool_call>", "</tool_call>"), '<function name="', '">', '<param name="', "</param>",
                     "</function>", ("<tool_call>", '<function name="'))
ONYX = XmlSyntax(("<atem:function_calls>", "</atem:function_calls>"), '<atem:invoke name="', '">',
                 '<atem:parameter name="', "</atem:parameter>", "</atem:invoke>", ("<atem:function_calls>",))


def parameter_types(tools: list | None) -> dict[str, dict[str, str]]:
    """{function name: {parameter name: JSON schema type}} from a request's ``tools``."""
    types: dict[str, dict[str, str]] = {}
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        properties = (function.get("parameters") or {}).get("properties") or {}
        types[function["name"]] = {name: schema.get("type") for name, schema in properties.items()
                                   if isinstance(schema, dict) and isinstance(schema.get("type"), str)}
    return types


def _value(text: str, kind: str | None):
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    if kind == "string":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_xml_calls(syntax: XmlSyntax, types: dict[str, dict[str, str]], text: str, final: bool) -> Parsed:
    content, at, _ = content_before(text, syntax.markers, final)
    if at < 0:
        return Parsed(content)
    calls: list[tuple[str, str]] = []
    tags = syntax.wrappers + (syntax.function,)
    position = at
    while True:
        segment_at = position
        position = skip_space(text, position)
        rest = text[position:]
        wrapper = next((tag for tag in syntax.wrappers if rest.startswith(tag)), None)
        if wrapper is not None:
            position += len(wrapper)
            continue
        if not rest.startswith(syntax.function):
            if not calls or not rest or (not final and undecided_tail(rest, tags) == len(rest)):
                break  # no call before it (then none at all), the end, or a tag cut short
            # Text between or after the calls is content, as OVMS removes only the calls from the text.
            content, following = text_between(text, segment_at, syntax.markers, final, content)
            if following < 0:
                break
            position = following
            continue
        name_at = position + len(syntax.function)
        name_end = text.find(syntax.name_end, name_at)
        if name_end < 0:
            break
        name = text[name_at:name_end].strip()
        if not name:
            break
        kinds = types.get(name, {})
        position = name_end + len(syntax.name_end)
        members: list[str] = []
        closed = False
        while True:
            position = skip_space(text, position)
            if text.startswith(syntax.function_end, position):
                position += len(syntax.function_end)
                closed = True
                break
            if not text.startswith(syntax.parameter, position):
                break
            key_at = position + len(syntax.parameter)
            key_end = text.find(syntax.name_end, key_at)
            if key_end < 0:
                break
            value_at = key_end + len(syntax.name_end)
            value_end = text.find(syntax.parameter_end, value_at)
            if value_end < 0:
                break
            key = text[key_at:key_end]
            members.append(f"{canonical(key)}: {canonical(_value(text[value_at:value_end], kinds.get(key)))}")
            position = value_end + len(syntax.parameter_end)
        if closed:
            calls.append((name, "{" + ", ".join(members) + "}"))
            continue
        if not final:
            calls.append((name, "{" + ", ".join(members)))
        break
    return with_calls(text, content, calls, final)
