"""/v3/responses with the real openai client: answers equal chat/completions on the same messages, the Responses
event sequence when streamed, function calls, and OVMS's refusals."""
from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.fixtures.genai.dialogues import HELLO_ANSWER, TOOLS

FLAT_TOOLS = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
               "parameters": t["function"]["parameters"]} for t in TOOLS]


def chat(client, messages, **extra):
    return client.chat.completions.create(model="tiny-llm", messages=messages, temperature=0, max_tokens=32,
                                          **extra)


def test_a_string_input_answers_as_chat_does(client):
    response = client.responses.create(model="tiny-llm", input="Hello", temperature=0, max_output_tokens=32)
    expected = chat(client, [{"role": "user", "content": "Hello"}])
    assert response.status == "completed" and response.object == "response"
    assert response.output_text == expected.choices[0].message.content == HELLO_ANSWER
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].id == "msg-0" and response.output[0].content[0].type == "output_text"
    assert response.usage.input_tokens == expected.usage.prompt_tokens
    assert response.usage.output_tokens == expected.usage.completion_tokens
    assert response.usage.total_tokens == expected.usage.total_tokens


def test_instructions_and_items_become_chat_messages(client):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]
    response = client.responses.create(model="tiny-llm", input=items, instructions="Be brief.", temperature=0,
                                       max_output_tokens=32)
    expected = chat(client, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert response.output_text == expected.choices[0].message.content
    assert response.instructions == "Be brief."


def test_streamed_events_follow_the_responses_sequence(client):
    unary = client.responses.create(model="tiny-llm", input="Hello", temperature=0, max_output_tokens=32)
    events = list(client.responses.create(model="tiny-llm", input="Hello", temperature=0, max_output_tokens=32,
                                          stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == unary.output_text == events[-4].text
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == text
    assert completed.usage.output_tokens == unary.usage.output_tokens


def test_max_output_tokens_makes_an_incomplete_response(client):
    response = client.responses.create(model="tiny-llm", input="Hello", temperature=0, max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_tokens"
    assert response.usage.output_tokens == 3
    events = list(client.responses.create(model="tiny-llm", input="Hello", temperature=0, max_output_tokens=3,
                                          stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"


@pytest.mark.parametrize("tools", [FLAT_TOOLS, TOOLS], ids=["flat", "nested"])
def test_function_calls_unary_and_streamed(client, tools):
    question = "What is the weather in Paris?"
    response = client.responses.create(model="tiny-llm", input=question, tools=tools, temperature=0,
                                       max_output_tokens=64)
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"} and calls[0].call_id == calls[0].id
    events = list(client.responses.create(model="tiny-llm", input=question, tools=tools, temperature=0,
                                          max_output_tokens=64, stream=True))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert len(added) == 1 and added[0].item.name == "get_weather"
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == arguments and json.loads(arguments) == {"city": "Paris"}
    # The call and its output go back as input items; the model answers the tool's result as chat would.
    follow_up = [{"role": "user", "content": question},
                 {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                  "arguments": calls[0].arguments},
                 {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}]
    second = client.responses.create(model="tiny-llm", input=follow_up, tools=tools, temperature=0,
                                     max_output_tokens=32)
    expected = chat(client, [{"role": "user", "content": question},
                             {"role": "assistant", "content": "", "tool_calls": [
                                 {"id": calls[0].call_id, "type": "function",
                                  "function": {"name": "get_weather", "arguments": calls[0].arguments}}]},
                             {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 21 C"}],
                    tools=TOOLS)
    assert second.output_text == expected.choices[0].message.content


@pytest.mark.parametrize("body, message", [
    ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tool type 'web_search' is not supported"),
    ({"input": "Hi", "previous_response_id": "resp-1"}, "previous_response_id is not supported"),
    ({"input": "Hi", "stream": True, "stream_options": {"include_usage": True}},
     "stream_options is not supported in Responses API."),
    ({"input": []}, "input array must not be empty"),
    ({}, "input missing in request"),
    ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens value should be greater than 0"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "unsupported input content item type: input_file"),
    ({"input": "Hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort must be one of: low, medium, high"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema"}}}, "text.format.schema is missing"),
])
def test_refusals_name_the_field_and_the_server_keeps_serving(base_url, client, body, message):
    response = requests.post(f"{base_url}/responses", json={"model": "tiny-llm", **body}, timeout=30)
    assert response.status_code == 400 and message in response.text, response.text
    assert client.responses.create(model="tiny-llm", input="Hello", temperature=0,
                                   max_output_tokens=32).output_text == HELLO_ANSWER


def test_text_format_json_schema_constrains_the_answer(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Rome"]}},
              "required": ["city"], "additionalProperties": False}
    response = client.responses.create(model="tiny-llm", input="Hello", temperature=0, max_output_tokens=32,
                                       text={"format": {"type": "json_schema", "name": "city", "schema": schema}})
    # the tiny model pads with whitespace until max tokens once the object is open: the constraint shows in the
    # prefix, and in being what chat/completions answers with the same schema as response_format
    assert response.output_text.startswith('{"city": "Rome"')
    expected = chat(client, [{"role": "user", "content": "Hello"}],
                    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert response.output_text == expected.choices[0].message.content
    assert response.text.format.type == "json_schema"


def test_builder_streams_reasoning_then_message_then_a_call_as_items_in_order():
    """The event sequence for an answer that reasons, says something and calls a tool (pieces as the output parser
    settles them), and the final response listing the three items in that order."""
    from ovms.genai import protocol as codec
    from ovms.genai.types import ToolCallDelta, Usage

    call = codec.decode_responses({"model": "m", "input": "?", "stream": True, "tools": FLAT_TOOLS})
    builder = codec.ResponseBuilder(call, "m")
    events = builder.start() + builder.reasoning("Warm") + builder.reasoning(" or cold?") + builder.text("\n\n")
    events += builder.text("Let me check.") + builder.tool_call(ToolCallDelta(0, "", id="call_1", name="get_weather"))
    events += builder.tool_call(ToolCallDelta(0, '{"city": ')) + builder.tool_call(ToolCallDelta(0, '"Paris"}'))
    events += builder.finish("tool_calls", Usage(5, 20))
    kinds = [(e["type"], e.get("output_index")) for e in events]
    assert kinds == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.reasoning_summary_part.added", 0),
        ("response.reasoning_summary_text.delta", 0), ("response.reasoning_summary_text.delta", 0),
        ("response.reasoning_summary_text.done", 0), ("response.reasoning_summary_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.content_part.added", 1), ("response.output_text.delta", 1),
        ("response.output_text.done", 1), ("response.content_part.done", 1), ("response.output_item.done", 1),
        ("response.output_item.added", 2), ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.delta", 2), ("response.function_call_arguments.done", 2),
        ("response.output_item.done", 2), ("response.completed", None)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [(i["type"], i["id"]) for i in final["output"]] == [("reasoning", "rs-0"), ("message", "msg-0"),
                                                               ("function_call", "call_1")]
    assert final["output"][0]["summary"][0]["text"] == "Warm or cold?"
    assert final["output"][1]["content"][0]["text"] == "Let me check."  # the whitespace before it is no item
    assert final["output"][2]["arguments"] == '{"city": "Paris"}'
    assert final["usage"]["total_tokens"] == 25 and final["tools"] == FLAT_TOOLS
