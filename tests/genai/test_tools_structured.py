"""Tool calls (hermes3 parser detected from the chat template) and structured output through the openai client."""
from __future__ import annotations

import json

import pydantic
import pytest

from ovms.genai.parsers import parse_tool_calls
from tests.conftest import ThreadedServer
from tests.fixtures.genai.dialogues import DIALOGUES, TOOLS
from tests.genai.conftest import LLM_DIR, LLM_GRAPH

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


def accumulate(stream) -> tuple[dict[int, dict], list[str], str, str | None]:
    """Tool calls by index, argument fragments, content and finish reason of a stream, the way openai users
    accumulate ``delta.tool_calls``."""
    calls: dict[int, dict] = {}
    fragments, content, finish = [], "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
            fragments.append(piece.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    return calls, fragments, content, finish


def test_tool_call_streamed(client):
    calls, fragments, content, finish = accumulate(
        client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, stream=True))
    assert list(calls) == [0] and calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    assert fragments[0] == "", "the first delta names the call, with empty arguments"
    whole = client.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS).choices[0].message
    assert calls[0]["arguments"] == whole.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert content == "" and finish == "tool_calls"


# A call long enough to stream in pieces, from real parts: the fixture model behind a graph that sets the llama3
# parser, forced by a JSON schema to write a bare {"name", "parameters"} object with a long argument. (The hermes
# call above is six tokens; the worker sends the tokens of each flush interval in one frame, so they may arrive
# together. This server flushes every millisecond, so a 40-token argument cannot come in one frame.)
LONG_CALL_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "parameters"], "properties": {
    "name": {"const": "get_weather"},
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "minLength": 120, "maxLength": 160}}}}}
LONG_CALL = {"model": "tiny-llm-llama3", "messages": WEATHER, "tools": TOOLS, "max_tokens": 400,
             "response_format": {"type": "json_schema", "json_schema": {"name": "call", "schema": LONG_CALL_SCHEMA}}}


@pytest.fixture(scope="module")
def llama3_client(tmp_path_factory):
    import openai

    root = tmp_path_factory.mktemp("llama3")
    graph = LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=2).replace('device: "CPU",',
                                                                   'device: "CPU",\n      tool_parser: "llama3",')
    (root / "tiny-llm-llama3").mkdir()
    (root / "tiny-llm-llama3" / "graph.pbtxt").write_text(graph)
    (root / "config.json").write_text(json.dumps({"model_config_list": [
        {"config": {"name": "tiny-llm-llama3", "base_path": str(root / "tiny-llm-llama3")}}]}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OVMS_GENAI_FLUSH_MS", "1")  # read when the servable starts its generation worker
        with ThreadedServer(config_path=root / "config.json") as running:
            with openai.OpenAI(base_url=f"http://{running.rest_url}/v3", api_key="unused", max_retries=0,
                               timeout=60) as client:
                yield client


def test_long_tool_call_arguments_stream_in_pieces(llama3_client):
    calls, fragments, content, finish = accumulate(llama3_client.chat.completions.create(**LONG_CALL, stream=True))
    (call,) = calls.values()
    whole = llama3_client.chat.completions.create(**LONG_CALL).choices[0].message.tool_calls[0]
    assert call["name"] == whole.function.name == "get_weather"
    assert call["arguments"] == whole.function.arguments  # the fragments add up to the non-streamed string
    assert len(json.loads(call["arguments"])["city"]) >= 120
    partial = [f for f in fragments if f and f != call["arguments"]]
    assert len(partial) >= 2, f"the arguments did not arrive in pieces: {fragments}"
    assert content == "" and finish == "tool_calls"


def test_tool_call_stream_helper_of_the_openai_client(client):
    with client.chat.completions.stream(model=MODEL, messages=WEATHER, tools=TOOLS) as stream:
        completion = stream.get_final_completion()
    (call,) = completion.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"


def test_tools_offered_but_not_called_stream_as_content(client):
    """Untrained with tools, the model babbles markup ('</tool_call>\n<tool_call>\n<tool_call>\nIt is sunny...'):
    no valid call, so streamed or not, every character is content."""
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "tools": TOOLS, "max_tokens": 30}
    calls, _, content, finish = accumulate(client.chat.completions.create(**request, stream=True))
    whole = client.chat.completions.create(**request).choices[0]
    assert "<tool_call>" in content and calls == {} and whole.message.tool_calls is None
    assert (content, finish) == (whole.message.content, whole.finish_reason)


def test_tool_result_round_trip(client):
    dialogue = DIALOGUES[-1]
    response = client.chat.completions.create(model=MODEL, messages=dialogue["messages"], tools=TOOLS,
                                              max_tokens=60)
    assert response.choices[0].message.content == dialogue["answer"]
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_tool_choice_none_gives_plain_text(client, stream):
    """The prompt the fixture model answers with a tool call under tool_choice="auto" (shown first, so the test
    cannot pass by ignoring tool_choice) is answered without one under "none"."""
    def ask(tool_choice):
        request = dict(model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice=tool_choice, max_tokens=60)
        if stream:
            calls, _, content, finish = accumulate(client.chat.completions.create(**request, stream=True))
            return [c["name"] for c in calls.values()], content, finish
        choice = client.chat.completions.create(**request).choices[0]
        return [c.function.name for c in choice.message.tool_calls or []], choice.message.content, choice.finish_reason

    names, content, finish = ask("auto")
    assert (names, content or "", finish) == (["get_weather"], "", "tool_calls")
    names, content, finish = ask("none")
    assert (names, finish) == ([], "stop")
    assert content.strip() and "<tool_call>" not in content and "get_weather" not in content


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
    from ovms.genai.parsers import split_reasoning

    assert split_reasoning("qwen3", "<think>\nhmm\n</think>\n\nAnswer") == ("hmm", "Answer")
    assert split_reasoning("qwen3", "hmm</think>Answer") == ("hmm", "Answer")
    assert split_reasoning(None, "<think>x</think>y") == (None, "<think>x</think>y")
