"""Parsers in the server: a graph naming a parser OVMS does not have fails alone (the others serve), and the
stream carries reasoning_content, content and tool calls as chat chunks."""
from __future__ import annotations

import json
import logging

from ovms.genai_types import TextChunk
from ovms.protocol import openai as codec
from ovms.tool_parsers import OutputParser
from ovms.transport.openai_rest import _parsed_chunks
from tests.conftest import ThreadedServer
from tests.genai.conftest import LLM_DIR, LLM_GRAPH
from tests.test_cli_settings import states


def test_a_graph_with_an_unknown_parser_fails_alone_with_ovms_message(tmp_path, caplog):
    good = LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=2)
    graphs = {"good": good,
              "bad-parser": good.replace('device: "CPU",', 'device: "CPU", tool_parser: "qwen3",'),
              "guided": good.replace('device: "CPU",', 'device: "CPU", enable_tool_guided_generation: true,')}
    for name, text in graphs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph.pbtxt").write_text(text)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mediapipe_config_list": [{"name": n, "base_path": str(tmp_path / n)}
                                                            for n in graphs]}))
    with caplog.at_level(logging.INFO), ThreadedServer(config_path=config) as running:
        port = running.server.rest_port
        got = states(port)
        assert got["good"] == {"1": "AVAILABLE"}, got
        assert got["bad-parser"] == got["guided"] == {"1": "LOADING"}, got  # failed, retried when files change
        import openai

        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="x", max_retries=0, timeout=60) as client:
            answer = client.chat.completions.create(model="good", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=3)
        assert answer.choices[0].finish_reason in ("stop", "length")
    logged = "\n".join(caplog.messages)
    assert ('Unsupported tool_parser "qwen3" specified in graph configuration. Supported tool parsers are: llama3, '
            'hermes3, phi4') in logged
    assert "enable_tool_guided_generation: true is not supported by this server" in logged


def chunks_of(parser: OutputParser, pieces: list[str]) -> list[dict]:
    call = codec.decode_generate({"model": "m", "stream": True, "messages": [{"role": "user", "content": "?"}],
                                  "tools": [{"type": "function", "function": {"name": "get_weather"}}]}, chat=True)
    encoder = codec.ChunkEncoder(call, "chatcmpl-1", 0)
    stream = parser.stream(label="test")
    data = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        data += _parsed_chunks(encoder, stream, TextChunk(0, piece, 1, finish_reason="stop" if last else None))
    events = []
    for item in data:
        assert item.startswith(b"data: ") and item.endswith(b"\n\n")
        events.append(json.loads(item[6:]))
    return [e["choices"][0] for e in events]


def test_sse_chunks_carry_reasoning_content_then_content_then_tool_calls():
    parser = OutputParser("hermes3", "qwen3", tools=[{"type": "function", "function": {"name": "get_weather"}}])
    choices = chunks_of(parser, ["<think>\nWarm", " or cold?\n</think>\n\nLet me check.",
                                 ' <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'])
    deltas = [c["delta"] for c in choices]
    assert deltas[:2] == [{"reasoning_content": "Warm"}, {"reasoning_content": " or cold?"}]
    assert deltas[2] == {"content": "Let me check."}
    first = deltas[3]["tool_calls"][0]
    assert first["index"] == 0 and first["type"] == "function" and first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[4:] if "tool_calls" in d)
    assert arguments == '{"city": "Paris"}'
    assert choices[-1]["finish_reason"] == "tool_calls" and choices[-1]["delta"] == {}


def test_reasoning_chunk_bytes_are_the_chunk_json_bytes():
    call = codec.decode_generate({"model": "m", "messages": [{"role": "user", "content": "?"}]}, chat=True)
    encoder = codec.ChunkEncoder(call, "chatcmpl-1", 7)
    assert encoder.reasoning(1, 'é "x"\n') == codec.sse(codec.chunk_json(call, "chatcmpl-1", 7, 1,
                                                                         reasoning='é "x"\n'))


def test_harmony_answer_streams_reasoning_and_the_final_channel():
    parser = OutputParser("gptoss", "gptoss", tools=None)
    choices = chunks_of(parser, ["<|channel|>analysis<|message|>Short", ".<|end|><|start|>assistant<|channel|>fi",
                                 "nal<|message|>Hello", "!<|return|>"])
    deltas = [c["delta"] for c in choices]
    assert deltas == [{"reasoning_content": "Short"}, {"reasoning_content": "."}, {"content": "Hello"},
                      {"content": "!"}, {}]
    assert choices[-1]["finish_reason"] == "stop"


def test_the_parsers_marker_tokens_decode_to_their_text_and_other_special_tokens_stay_empty():
    from ovms.backends.genai_llm import _keep_marker_tokens

    table = [b"a", b"", b"", b"[ARGS]x"]
    vocab = {"a": 0, "[TOOL_CALLS]": 1, "<|im_end|>": 2, "[ARGS]": 3, "<unused>": 99}
    _keep_marker_tokens(table, vocab, {"[TOOL_CALLS]", "[ARGS]", "<unused>", "<absent>"})
    assert table == [b"a", b"[TOOL_CALLS]", b"", b"[ARGS]x"]  # a token that has bytes keeps them
