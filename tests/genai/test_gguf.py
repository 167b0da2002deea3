"""GGUF serving: the tiny LLM written as GGUF (tests/fixtures/genai/build_gguf.py) against the IR it came from.

Both are served by one ovms; the openai client asks both the same things with greedy decoding. What holds:
- every answer of the fixture's dialogues and completions is the same text, token count and finish reason;
- the prompts tokenize the same, except around digits: openvino_genai's GGUF tokenizer splits text with the
  ``qwen2`` pre-tokenizer regex (each digit alone, a space before a digit its own piece), while the fixture's
  tokenizer was trained with GPT-2's (`` ?\\p{N}+``: " 21" one piece, one token). "What is 2+2?" is one token
  longer as GGUF (" 2" -> " ", "2"), the tool answer "sunny, 21 C" two (" 21" -> " ", "2", "1"); the answers
  are still the same.
- numbers: the GGUF holds the IR's matrices rounded to float16 (openvino_genai builds linear layers from F16 and
  quantized GGUF tensors only) and openvino_genai keeps an F16 file's KV cache in f16: the logits differ in the
  last digits, not enough to change a greedy choice on these prompts. The Q8_0 and Q4_0 quantizations of the
  same weights give the same answers too (served on LLMPipeline).
"""
from __future__ import annotations

import json
import pathlib
import shutil
import urllib.request

import pytest

from ovms.backends import gguf_model
from ovms.errors import ModelLoadError
from ovms.graph import GenAINodeOptions
from tests.conftest import ThreadedServer
from tests.fixtures.genai.dialogues import COMPLETIONS, DIALOGUES, HELLO_ANSWER
from tests.genai.conftest import FIXTURES, LLM_DIR, LLM_GRAPH

GGUF_DIR = FIXTURES / "tiny-llm-gguf"
GGUF_FILE = GGUF_DIR / "tiny-llm-F16.gguf"
QUANTIZED = ("Q8_0", "Q4_0")
# Prompt tokens the GGUF tokenizer adds (see the module docstring): the last user turn -> extra tokens
EXTRA_PROMPT_TOKENS = {"What is 2+2?": 1, "sunny, 21 C": 2}


def _graph(path, *, lm: bool = False) -> str:
    text = LLM_GRAPH.format(path=path, max_num_seqs=4)
    return text.replace('device: "CPU",', 'device: "CPU", pipeline_type: LM,') if lm else text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert GGUF_FILE.is_file(), f"{GGUF_FILE} is missing: run tests/fixtures/genai/build_gguf.py (make fixtures-gguf)"
    root = tmp_path_factory.mktemp("gguf")
    graphs = {"ir": _graph(LLM_DIR), "gguf": _graph(GGUF_FILE), "gguf-dir": _graph(GGUF_DIR),
              "gguf-lm": _graph(GGUF_FILE, lm=True)}
    for kind in QUANTIZED:  # on LLMPipeline, in the server's process: two worker processes fewer
        graphs[f"gguf-{kind}"] = _graph(GGUF_DIR / "quantized" / f"tiny-llm-{kind}.gguf", lm=True)
    for name, graph in graphs.items():
        (root / name).mkdir()
        (root / name / "graph.pbtxt").write_text(graph)
    config = {"model_config_list": [], "mediapipe_config_list": [{"name": name, "base_path": str(root / name)}
                                                                 for name in graphs]}
    (root / "config.json").write_text(json.dumps(config))
    with ThreadedServer(config_path=root / "config.json") as running:
        failed = {name: [entry.error for entry in model.versions.values()]
                  for name, model in running.server.registry.models.items() if model.default_version() is None}
        assert not failed, f"graphs not loaded: {failed}"
        yield running


@pytest.fixture(scope="module")
def client(server):
    import openai

    with openai.OpenAI(base_url=f"http://{server.rest_url}/v3", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def _answer(client, model: str, dialogue: dict):
    choice_and_usage = client.chat.completions.create(model=model, messages=dialogue["messages"],
                                                      tools=dialogue.get("tools"), max_tokens=60, temperature=0)
    message = choice_and_usage.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    return (message.content, calls, choice_and_usage.choices[0].finish_reason), choice_and_usage.usage


def _last_user_text(dialogue: dict) -> str:
    return dialogue["messages"][-1]["content"]


@pytest.mark.parametrize("dialogue", DIALOGUES, ids=[_last_user_text(d)[:20] for d in DIALOGUES])
def test_gguf_answers_as_the_ir_it_came_from(client, dialogue):
    ir, ir_usage = _answer(client, "ir", dialogue)
    gguf, gguf_usage = _answer(client, "gguf", dialogue)
    assert gguf == ir
    text, calls, _ = gguf
    if calls:  # the hermes tool parser (detected from the GGUF's chat template) turned the answer into a call
        assert calls == [("get_weather", '{"city": "Paris"}')]
    else:
        assert text == dialogue["answer"]
    assert gguf_usage.completion_tokens == ir_usage.completion_tokens
    extra = EXTRA_PROMPT_TOKENS.get(_last_user_text(dialogue), 0)
    assert gguf_usage.prompt_tokens == ir_usage.prompt_tokens + extra


@pytest.mark.parametrize("kind", QUANTIZED)
def test_quantized_ggufs_answer_as_the_ir(client, kind):
    """Q8_0 and Q4_0 (the matrices quantized in blocks of 32 with a scale each: openvino_genai's int8 / int4
    weight paths) still give every dialogue's answer of the F32 IR."""
    for dialogue in DIALOGUES:
        assert _answer(client, f"gguf-{kind}", dialogue)[0] == _answer(client, "ir", dialogue)[0], dialogue


@pytest.mark.parametrize("prompt,continuation", COMPLETIONS)
def test_gguf_completes_as_the_ir(client, prompt, continuation):
    answers = [client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0)
               for model in ("ir", "gguf")]
    assert answers[1].choices[0].text == answers[0].choices[0].text
    assert answers[1].choices[0].text.startswith(continuation)
    assert answers[1].usage.completion_tokens == answers[0].usage.completion_tokens


def test_gguf_streams_what_it_answers(client):
    """Multi-byte characters split across tokens (Japanese, an emoji) come out whole from the GGUF's byte table.
    (How many chunks arrive depends on timing: the worker sends tokens once per flush interval.)"""
    dialogue = next(d for d in DIALOGUES if _last_user_text(d) == "Say hi in Japanese")
    stream = client.chat.completions.create(model="gguf", messages=dialogue["messages"], max_tokens=60,
                                            temperature=0, stream=True)
    deltas = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(deltas) == dialogue["answer"]
    assert "\ufffd" not in "".join(deltas)


def _tokenize(server, model: str, text: str) -> list[int]:
    request = urllib.request.Request(f"http://{server.rest_url}/v3/tokenize",
                                     data=json.dumps({"model": model, "text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["tokens"]


def test_gguf_tokenizer_differs_only_around_digits(server):
    vocab = json.loads((LLM_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    space, space_two, two = vocab["\u0120"], vocab["\u01202"], vocab["2"]  # byte-level: U+0120 is the space
    ir = _tokenize(server, "ir", "What is 2+2?")
    gguf = _tokenize(server, "gguf", "What is 2+2?")
    at = ir.index(space_two)
    assert gguf == ir[:at] + [space, two] + ir[at + 1:]
    text = "Hello! How can I help you? (konnichiwa)"
    assert _tokenize(server, "gguf", text) == _tokenize(server, "ir", text)


@pytest.mark.parametrize("model", ["gguf-dir", "gguf-lm"])
def test_a_directory_with_one_gguf_and_the_lm_pipeline_serve_it(client, model):
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=32, temperature=0)
    assert answer.choices[0].message.content == HELLO_ANSWER
    assert answer.choices[0].finish_reason == "stop"


# ---- load errors, with the messages a user sees --------------------------------------------------------------

def _load(path: pathlib.Path, **options):
    from ovms.backends.genai_llm import LLMServable

    return LLMServable("m", GenAINodeOptions(task="text_generation", models_path=path, **options))


def test_a_missing_models_path_fails_with_ovms_message(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path / "nothing.gguf")
    assert str(info.value) == f"The LLM Node workspace path does not exist: models_path {tmp_path / 'nothing.gguf'}"


def test_a_file_that_is_not_gguf_fails_with_ovms_message(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path / "model.bin")
    assert str(info.value).startswith("The LLM Node workspace path does not exist and not gguf model file: "
                                      f"models_path {tmp_path / 'model.bin'} is a file without the .gguf extension")


def test_a_gguf_asked_to_serve_as_a_vlm_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="pipeline_type VLM_CB, but models_path is the GGUF text model"):
        _load(GGUF_FILE, pipeline_type="VLM_CB")


def _hello(servable) -> str:
    import asyncio

    from ovms.genai.types import ChatMessage, GenerationRequest, SamplingParams

    async def ask() -> str:
        prompt = servable.apply_chat_template([ChatMessage(role="user", content="Hello")])
        stream = await servable.generate(GenerationRequest(model_name="g", prompt=prompt, params=SamplingParams(
            max_new_tokens=32, temperature=0.0)))
        return "".join([chunk.text async for chunk in stream])

    return asyncio.run(ask())


def test_a_gguf_model_with_an_ir_draft_model():
    """Speculative decoding: the GGUF main model, its IR as the draft (same vocabulary): the greedy answer."""
    servable = _load(GGUF_FILE, draft_models_path=LLM_DIR, pipeline_type="LM")
    try:
        assert servable.options.decoding == "speculative" and _hello(servable) == HELLO_ANSWER
    finally:
        servable.close()


def test_a_gguf_draft_model_is_refused_with_the_reason():
    """openvino_genai 2026.4's draft_model reads <path>/openvino_model.xml (measured: "Could not open the file:
    .../tiny-llm-Q4_0.gguf/openvino_model.xml"); the load says so instead."""
    with pytest.raises(ModelLoadError, match="draft_models_path .*tiny-llm-Q4_0.gguf is a GGUF file; openvino_genai "
                                             "2026.4 loads a draft model from an OpenVINO IR directory only"):
        _load(LLM_DIR, draft_models_path=GGUF_DIR / "quantized" / "tiny-llm-Q4_0.gguf")


def test_a_directory_with_two_gguf_models_is_refused(tmp_path):
    for name in ("a-Q4_K_M.gguf", "a-Q8_0.gguf"):
        shutil.copy(GGUF_FILE, tmp_path / name)
    with pytest.raises(ModelLoadError) as info:
        gguf_model.resolve(tmp_path)
    assert str(info.value) == (f"{tmp_path} holds 2 GGUF models (a-Q4_K_M.gguf, a-Q8_0.gguf); point models_path "
                               "at one .gguf file")


def test_model_path_naming_a_gguf_file_with_the_task_flags():
    """--model_path FILE.gguf --task text_generation: the file's directory is the graph's, the file its
    models_path (here the first part of a split model), and the task flags apply as for a directory."""
    from ovms.backends.genai import load_graph_servable
    from ovms.cli import build_parser, single_model

    first = GGUF_DIR / "split" / "tiny-llm-F16-00001-of-00002.gguf"
    args = build_parser().parse_args(["--model_name", "g", "--model_path", str(first), "--task", "text_generation",
                                      "--pipeline_type", "LM", "--max_num_seqs", "3"])
    config = single_model(args)
    assert config.base_path == first.parent and 'models_path: "./tiny-llm-F16-00001-of-00002.gguf"' in \
        config.graph_text
    servable = load_graph_servable(config)
    try:
        assert servable.model_path == first and servable.info.max_num_seqs == 3
        assert servable.context_length == 512  # qwen2.context_length
        assert _hello(servable) == HELLO_ANSWER
    finally:
        servable.close()
