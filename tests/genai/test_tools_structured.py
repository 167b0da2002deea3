"""Tool calls (hermes3 parser detected from the chat template) and structured output through the openai client."""
from __future__ import annotations

import json

import pydantic

from ovms.tool_parsers import parse_tool_calls
from tests.fixtures.genai.dialogues import DIALOGUES, TOOLS

MODEL = "tiny-llm"
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tool_call_parsed_from_the_model_output(client):
    response = client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, max_tokens=60)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")


def test_tool_call_streamed(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, stream=True))
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(client):
    dialogue = DIALOGUES[-1]
    response = client.chat.completions.create(model=MODEL, messages=dialogue["messages"], tools=TOOLS,
                                              max_tokens=60)
    assert response.choices[0].message.content == dialogue["answer"]
    assert response.choices[0].finish_reason == "stop"


def test_tool_choice_none_gives_plain_text(client):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                              tools=TOOLS, tool_choice="none", max_tokens=30)
    assert response.choices[0].message.tool_calls is None


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_structured_output_with_parse(client):
    completion = client.beta.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Describe Ann as JSON"}], response_format=Person,
        max_tokens=40)
    assert completion.choices[0].message.parsed == Person(name="Ann", age=30)


def test_structured_output_constrains_an_untrained_prompt(client):
    """The grammar forces JSON even where the model would answer with prose."""
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": Person.model_json_schema()}})
    Person.model_validate_json(response.choices[0].message.content)


def test_parsers_unit():
    content, calls = parse_tool_calls("hermes3", 'Sure.<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>')
    assert content == "Sure." and calls[0].name == "f" and json.loads(calls[0].arguments) == {"a": 1}
    content, calls = parse_tool_calls("llama3", '<|python_tag|>{"name": "f", "parameters": {"x": "y"}}; '
                                                 '{"name": "g", "parameters": {}}')
    assert content == "" and [c.name for c in calls] == ["f", "g"]
    assert json.loads(calls[0].arguments) == {"x": "y"}
    assert parse_tool_calls("llama3", "plain answer") == ("plain answer", [])
    assert parse_tool_calls("hermes3", "<tool_call>not json</tool_call>")[1] == []
    assert parse_tool_calls(None, "<tool_call>{}</tool_call>")[1] == []


def test_reasoning_split():
    from ovms.tool_parsers import split_reasoning

    assert split_reasoning("qwen3", "<think>\nhmm\n</think>\n\nAnswer") == ("hmm", "Answer")
    assert split_reasoning("qwen3", "hmm</think>Answer") == ("hmm", "Answer")
    assert split_reasoning(None, "<think>x</think>y") == (None, "<think>x</think>y")
