"""OpenAI codec units: the streaming fast path encodes exactly as the general one; request decoding."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovms.errors import ServingError
from ovms.genai.types import SamplingParams, ToolCallDelta
from ovms.genai import protocol as codec


@pytest.mark.parametrize("chat", [True, False])
@given(text=st.text(max_size=20), index=st.integers(0, 3), finish=st.sampled_from([None, "stop", "length"]),
       model=st.text(min_size=1, max_size=8))
def test_chunk_encoder_equals_chunk_json(chat, text, index, finish, model):
    call = codec.GenerateCall(model=model, params=SamplingParams(), chat=chat)
    fast = codec.ChunkEncoder(call, "chatcmpl-1", 7).text(index, text, finish)
    assert fast == codec.sse(codec.chunk_json(call, "chatcmpl-1", 7, index, text=text, finish_reason=finish))


tool_call_deltas = st.builds(ToolCallDelta, index=st.integers(0, 3), arguments=st.text(max_size=20)) | st.builds(
    ToolCallDelta, index=st.integers(0, 3), arguments=st.just(""), id=st.just("call_1"), name=st.text(max_size=8))


@given(delta=tool_call_deltas, index=st.integers(0, 3), model=st.text(min_size=1, max_size=8))
def test_chunk_encoder_tool_call_equals_chunk_json(delta, index, model):
    call = codec.GenerateCall(model=model, params=SamplingParams(), chat=True)
    fast = codec.ChunkEncoder(call, "chatcmpl-1", 7).tool_call(index, delta)
    assert fast == codec.sse(codec.chunk_json(call, "chatcmpl-1", 7, index, tool_calls=[delta]))


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("finish", [None, "stop", "tool_calls", "length"])
def test_chunk_encoder_finish_equals_chunk_json(chat, finish):
    call = codec.GenerateCall(model="m", params=SamplingParams(), chat=chat)
    fast = codec.ChunkEncoder(call, "chatcmpl-1", 7).finish(2, finish)
    assert fast == codec.sse(codec.chunk_json(call, "chatcmpl-1", 7, 2, finish_reason=finish))


def test_tool_call_delta_json_is_openai_shaped():
    first = codec.tool_call_delta_json(ToolCallDelta(1, "", id="call_x", name="f"))
    assert first == {"index": 1, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert codec.tool_call_delta_json(ToolCallDelta(1, '{"a"')) == {"index": 1, "function": {"arguments": '{"a"'}}


def test_decode_generate_defaults_and_fields():
    call = codec.decode_generate({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_completion_tokens": 5, "stop": "x",
        "temperature": 0, "top_k": -1, "n": 2, "seed": 1}, chat=True)
    assert call.messages[0].content == "ab"
    p = call.params
    assert (p.max_new_tokens, p.stop, p.temperature, p.top_k, p.n, p.seed) == (5, ("x",), 0.0, None, 2, 1)
    completion = codec.decode_generate({"model": "m", "prompt": ["one"], "echo": True}, chat=False)
    assert completion.prompt == "one" and completion.echo


def test_response_format_and_tool_choice():
    call = codec.decode_generate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "response_format": {"type": "json_object"}}, chat=True)
    assert call.params.json_schema == '{"type": "object"}'
    tools = [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]
    chosen = codec.decode_generate({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
                                    "tool_choice": {"type": "function", "function": {"name": "g"}}}, chat=True)
    assert [t["function"]["name"] for t in chosen.tools] == ["g"]
    with pytest.raises(ServingError, match="tool_choice names a function that is not in tools"):
        codec.decode_generate({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
                               "tool_choice": {"type": "function", "function": {"name": "h"}}}, chat=True)


def test_embeddings_inputs_and_base64():
    assert codec.decode_embeddings({"model": "m", "input": [1, 2, 3]}).inputs == [[1, 2, 3]]
    call = codec.decode_embeddings({"model": "m", "input": "a", "encoding_format": "base64"})
    body = codec.embeddings_json(call, [[1.0, -2.0]], 3)
    import base64
    import struct

    assert struct.unpack("<2f", base64.b64decode(body["data"][0]["embedding"])) == (1.0, -2.0)
