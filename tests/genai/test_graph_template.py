"""graph.pbtxt options, chat template sources and sandbox, and --task serving without a graph."""
from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from ovms.genai import chat_template
from ovms.config import graph_config
from ovms.errors import ConfigError, ServingError
from ovms.graph import parse_text_proto, read_graph
from tests.conftest import ThreadedServer
from tests.fixtures.genai.dialogues import HELLO_ANSWER
from tests.genai.conftest import EMBEDDINGS_GRAPH, LLM_DIR

OVMS_LLM_GRAPH = """
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node: {
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  node_options: {
      [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {
          models_path: "./model",
          plugin_config: '{ "KV_CACHE_PRECISION": "u8" }',
          enable_prefix_caching: true,
          cache_size: 4,
          max_num_seqs: 64,
          max_num_batched_tokens: 2048,
          dynamic_split_fuse: false,
          pipeline_type: LM_CB,
          device: "CPU",
          tool_parser: "llama3",
          reasoning_parser: "qwen3",
      }
  }
  input_stream_handler {
    input_stream_handler: "SyncSetInputStreamHandler",
    options {
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {
        sync_set { tag_index: "LOOPBACK:0" }   # a comment
      }
    }
  }
}
"""


def test_llm_graph_options(tmp_path):
    (tmp_path / "graph.pbtxt").write_text(OVMS_LLM_GRAPH)
    options = read_graph(tmp_path / "graph.pbtxt")
    assert options.task == "text_generation"
    assert options.models_path == tmp_path / "model"
    assert options.plugin_config == {"KV_CACHE_PRECISION": "u8"}
    assert (options.cache_size, options.max_num_seqs, options.max_num_batched_tokens) == (4, 64, 2048)
    assert options.enable_prefix_caching is True and options.dynamic_split_fuse is False
    assert (options.pipeline_type, options.tool_parser, options.reasoning_parser) == ("LM_CB", "llama3", "qwen3")


def test_embeddings_graph_options(tmp_path):
    (tmp_path / "graph.pbtxt").write_text(EMBEDDINGS_GRAPH.format(path="/models/e5"))
    options = read_graph(tmp_path / "graph.pbtxt")
    assert (options.task, options.pooling, options.normalize_embeddings) == ("embeddings", "MEAN", True)
    assert options.models_path == pathlib.Path("/models/e5")


def test_graph_errors_are_clear(tmp_path):
    (tmp_path / "graph.pbtxt").write_text('node { calculator: "SomethingElse" }')
    with pytest.raises(ConfigError, match="no text generation, embeddings, rerank or image generation node"):
        read_graph(tmp_path / "graph.pbtxt")
    with pytest.raises(ConfigError, match="unbalanced"):
        parse_text_proto("node { calculator: 'x'")


def test_template_sources_in_ovms_order(tmp_path):
    assert chat_template.find_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from-config"}))
    assert chat_template.find_template(tmp_path) == "from-config"
    (tmp_path / "chat_template.jinja").write_text("from-jinja")
    assert chat_template.find_template(tmp_path) == "from-jinja"


def test_template_errors_and_sandbox():
    with pytest.raises(ServingError, match="chat template: roles must alternate"):
        chat_template.render("{{ raise_exception('roles must alternate') }}", [])
    with pytest.raises(ServingError, match="could not be applied"):
        chat_template.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    assert chat_template.render("{{ messages[0] | tojson }}", [{"role": "user", "content": "é<"}]) == \
        '{"role": "user", "content": "é<"}'


def test_task_without_graph_uses_the_template_in_the_tokenizer_ir(tmp_path):
    """--model_path DIR --task text_generation: no graph.pbtxt, no chat_template.jinja nor tokenizer_config."""
    model = tmp_path / "llm"
    shutil.copytree(LLM_DIR, model)
    (model / "chat_template.jinja").unlink()
    (model / "tokenizer_config.json").unlink()
    config = graph_config("cli-llm", model, task="text_generation", where="command line")
    with ThreadedServer(models=[config]) as running:
        import openai

        with openai.OpenAI(base_url=f"http://{running.rest_url}/v3", api_key="x", max_retries=0) as client:
            response = client.chat.completions.create(model="cli-llm", max_tokens=30,
                                                      messages=[{"role": "user", "content": "Hello"}])
        assert response.choices[0].message.content == HELLO_ANSWER


def test_pipeline_type_lm_serves_on_llmpipeline(tmp_path):
    from tests.genai.conftest import LLM_GRAPH

    graph_dir = tmp_path / "lm"
    graph_dir.mkdir()
    (graph_dir / "graph.pbtxt").write_text(LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=4).replace(
        'device: "CPU",', 'device: "CPU", pipeline_type: LM,'))
    config = graph_config("lm", graph_dir, where="test")
    with ThreadedServer(models=[config]) as running:
        import openai

        servable = running.server.registry.resolve("lm")
        assert type(servable._pipe).__name__ == "LLMPipeline"
        with openai.OpenAI(base_url=f"http://{running.rest_url}/v3", api_key="x", max_retries=0) as client:
            hello = [{"role": "user", "content": "Hello"}]
            assert client.chat.completions.create(model="lm", messages=hello).choices[0].message.content == \
                HELLO_ANSWER
            chunks = list(client.chat.completions.create(model="lm", messages=hello, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == HELLO_ANSWER
            assert chunks[-1].choices[0].finish_reason == "stop"
            short = client.chat.completions.create(model="lm", messages=hello, max_tokens=2)
            assert short.choices[0].finish_reason == "length"


def test_chat_template_kwargs_reach_the_template():
    source = "{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}{{ messages[0].content }}"
    assert chat_template.render(source, [{"role": "user", "content": "hi"}],
                                template_kwargs={"enable_thinking": False}) == "/no_think hi"
