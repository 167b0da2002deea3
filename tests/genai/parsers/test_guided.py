"""The tool-call constraint OVMS builds per parser (src/llm/io_processing/*/generation_config_builder.cpp)."""
from __future__ import annotations

import json

import pytest

from ovms.genai.parsers.guided import GUIDED_PARSERS, tool_call_tags

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "now"}}]
CITY = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'


def test_hermes3_one_tag_per_tool_after_tool_call():
    tags = tool_call_tags("hermes3", TOOLS, required=False)
    assert tags == {"triggers": ["<tool_call>"], "at_least_one": False, "tags": [
        {"begin": '<tool_call>\n{"name": "get_weather", "arguments": ', "schema": CITY, "end": "}\n</tool_call>"},
        {"begin": '<tool_call>\n{"name": "now", "arguments": ', "schema": '{"type": "object"}',
         "end": "}\n</tool_call>"}]}


def test_llama3_and_devstral_tags():
    llama3 = tool_call_tags("llama3", TOOLS[:1], required=True)
    assert llama3 == {"triggers": ['{"name":'], "at_least_one": True, "tags": [
        {"begin": '{"name": "get_weather", "parameters": ', "schema": CITY, "end": "}"}]}
    devstral = tool_call_tags("devstral", TOOLS[:1], required=False)
    assert devstral["triggers"] == ["[TOOL_CALLS]"]
    assert devstral["tags"] == [{"begin": "[TOOL_CALLS]get_weather[ARGS]", "schema": CITY, "end": ""}]


def test_phi4_one_list_of_any_tool():
    (tag,) = tool_call_tags("phi4", TOOLS, required=False)["tags"]
    assert tag["begin"] == "functools" and tag["end"] == ""
    schema = json.loads(tag["schema"])
    assert schema["type"] == "array"
    assert [item["properties"]["name"]["enum"] for item in schema["items"]["anyOf"]] == [["get_weather"], ["now"]]
    assert schema["items"]["anyOf"][0]["properties"]["arguments"] == json.loads(CITY)


@pytest.mark.parametrize("parser", ["qwen3coder", "mistral", "gptoss", None])
def test_parsers_without_an_ovms_builder_have_no_constraint(parser):
    assert parser not in GUIDED_PARSERS
    assert tool_call_tags(parser, TOOLS, required=True) is None


def test_no_tools_no_constraint():
    assert tool_call_tags("hermes3", [], required=True) is None
