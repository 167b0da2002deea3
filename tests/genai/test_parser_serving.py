"""Parsers in the server: a graph naming a parser OVMS does not have fails alone (the others serve), and the
stream carries reasoning_content, content and tool calls as chat chunks."""
from __future__ import annotations

import json
import logging

from ovms.genai.types import TextChunk
from ovms.genai import protocol as codec
from ovms.genai.parsers import OutputParser
from ovms.transport.openai_rest import _parsed_chunks
from tests.conftest import ThreadedServer
from tests.fixtures.genai.dialogues import TOOLS
from tests.genai.conftest import LLM_DIR, LLM_GRAPH
from tests.test_cli_settings import states


ROME_ONLY = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Rome"]}}, "required": ["city"]}}}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]  # with TOOLS: get_weather(Paris)
STORY = [{"role": "user", "content": "Tell me a story"}]  # a prompt the fixture was not trained on


def test_unknown_parsers_fail_their_graph_alone_and_tool_calls_follow_the_schema_when_guided(tmp_path, caplog):
    good = LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=2)
    graphs = {"good": good,
              "guided": good.replace('device: "CPU",', 'device: "CPU", enable_tool_guided_generation: true,'),
              "bad-parser": good.replace('device: "CPU",', 'device: "CPU", tool_parser: "qwen3",'),
              "guided-no-builder": good.replace('device: "CPU",', 'device: "CPU", tool_parser: "qwen3coder", '
                                                                  'enable_tool_guided_generation: true,')}
    for name, text in graphs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph.pbtxt").write_text(text)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mediapipe_config_list": [{"name": n, "base_path": str(tmp_path / n)}
                                                            for n in graphs]}))
    with caplog.at_level(logging.INFO), ThreadedServer(config_path=config) as running:
        port = running.server.rest_port
        got = states(port)
        assert got["good"] == got["guided"] == {"1": "AVAILABLE"}, got
        assert got["bad-parser"] == got["guided-no-builder"] == {"1": "LOADING"}, got  # retried when files change
        import openai

        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="x", max_retries=0, timeout=60) as client:
            def ask(model, messages, tools, **kwargs):
                choice = client.chat.completions.create(model=model, messages=messages, tools=tools,
                                                        max_tokens=40, **kwargs).choices[0]
                calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
                return choice.message.content or "", calls, choice.finish_reason

            forced = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"'
            # The schema allows Rome only. Unguided, the fixture model writes Paris anyway; guided, what follows
            # <tool_call> is held to the schema. (The tiny model then pads the object with spaces up to max_tokens,
            # so the call is cut short and stays content.)
            content, calls, _ = ask("good", WEATHER, ROME_ONLY)
            assert "Paris" in content and not calls
            content, calls, finish = ask("guided", WEATHER, ROME_ONLY)
            assert content.startswith(forced) and "Paris" not in content and finish == "length"
            # Where the model calls within the schema, guided generation changes nothing.
            assert ask("guided", WEATHER, TOOLS) == ("", [("get_weather", {"city": "Paris"})], "tool_calls")
            # tool_choice "required" constrains an unguided graph too, and makes at least one call.
            assert ask("good", WEATHER, TOOLS, tool_choice="required")[1:] == ([("get_weather", {"city": "Paris"})],
                                                                                "tool_calls")
            content, calls, _ = ask("good", STORY, TOOLS)
            assert '{"name": "get_weather"' not in content
            content, calls, _ = ask("good", STORY, ROME_ONLY, tool_choice="required")
            assert content.startswith(forced)
    logged = "\n".join(caplog.messages)
    assert ('Unsupported tool_parser "qwen3" specified in graph configuration. Supported tool parsers are: llama3, '
            'hermes3, phi4') in logged
    assert ("guided-no-builder: enable_tool_guided_generation: true needs tool_parser hermes3, llama3, phi4, "
            "devstral (OVMS builds the tool-call constraint for those only); this model's tool_parser is "
            "qwen3coder") in logged


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
    vocab = {b"a": 0, b"[TOOL_CALLS]": 1, b"<|im_end|>": 2, b"[ARGS]": 3, b"<unused>": 99}
    _keep_marker_tokens(table, vocab, {"[TOOL_CALLS]", "[ARGS]", "<unused>", "<absent>"})
    assert table == [b"a", b"[TOOL_CALLS]", b"", b"[ARGS]x"]  # a token that has bytes keeps them


def test_a_special_token_of_the_fixture_tokenizer_is_restored_in_the_decoding_table():
    """On the real tokenizer: special tokens decode to b"" (the detokenizer skips them) and get_vocab() has bytes
    keys; a marker a parser reads comes back, the others stay skipped."""
    import openvino_genai

    from ovms.backends.genai_llm import _keep_marker_tokens, token_byte_table

    vocab = openvino_genai.Tokenizer(str(LLM_DIR)).get_vocab()
    table = token_byte_table(LLM_DIR, len(vocab))
    end, start = vocab[b"<|im_end|>"], vocab[b"<|im_start|>"]
    assert table[end] == table[start] == b""
    _keep_marker_tokens(table, vocab, {"<|im_end|>"})
    assert (table[end], table[start]) == (b"<|im_end|>", b"")


def test_a_template_that_opens_the_reasoning_gets_the_answer_as_reasoning_content(tmp_path):
    """The fixture model behind a copy of its chat template that ends the prompt with <think>, as Qwen3's does with
    thinking on: the reasoning parser is detected from the template, and the answer (no </think> in it) is
    all reasoning, unary and streamed; with reasoning_parser "none" the same answer is the content."""
    model = tmp_path / "thinking-llm"
    model.mkdir()
    for item in LLM_DIR.iterdir():
        (model / item.name).symlink_to(item)
    (model / "chat_template.jinja").unlink()
    template = (LLM_DIR / "chat_template.jinja").read_text()
    assert "<think>" not in template and template.rstrip().endswith("{% endif %}")
    (model / "chat_template.jinja").write_text(template.rstrip()[:-len("{% endif %}")] + "<think>\n{% endif %}")
    thinking = LLM_GRAPH.format(path=model, max_num_seqs=2)
    graphs = {"thinking": thinking,
              "raw": thinking.replace('device: "CPU",', 'device: "CPU", reasoning_parser: "none",')}
    for name, text in graphs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph.pbtxt").write_text(text)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mediapipe_config_list": [{"name": n, "base_path": str(tmp_path / n)}
                                                            for n in graphs]}))
    with ThreadedServer(config_path=config) as running:
        import openai

        url = f"http://127.0.0.1:{running.server.rest_port}/v3"
        with openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60) as client:
            request = dict(messages=[{"role": "user", "content": "Hello"}], max_tokens=12)
            raw = client.chat.completions.create(model="raw", **request).choices[0].message
            assert raw.content.strip() and "</think>" not in raw.content
            assert getattr(raw, "reasoning_content", None) is None
            unary = client.chat.completions.create(model="thinking", **request).choices[0].message
            assert (unary.content or "", unary.reasoning_content) == ("", raw.content.strip())
            reasoning, content = "", ""
            for chunk in client.chat.completions.create(model="thinking", stream=True, **request):
                if chunk.choices:
                    delta = chunk.choices[0].delta
                    reasoning += getattr(delta, "reasoning_content", None) or ""
                    content += delta.content or ""
            assert (reasoning, content) == (raw.content.strip(), "")
