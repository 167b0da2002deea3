"""A real ovms serving the fixture LLM, embedder and reranker (config.json with graphs), for the openai client."""
from __future__ import annotations

import json
import pathlib

import pytest

from tests.conftest import ThreadedServer

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "genai"
LLM_DIR = FIXTURES / "tiny-llm"
EMBEDDER_DIR = FIXTURES / "tiny-embedder"
RERANKER_DIR = FIXTURES / "tiny-reranker"

LLM_GRAPH = """
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
      models_path: "{path}",
      plugin_config: '{{ }}',
      enable_prefix_caching: false,
      cache_size: 1,
      max_num_seqs: {max_num_seqs},
      device: "CPU",
    }}
  }}
}}
"""

EMBEDDINGS_GRAPH = """
input_stream: "REQUEST_PAYLOAD:input"
output_stream: "RESPONSE_PAYLOAD:output"
node {{
  name: "EmbeddingsExecutor"
  calculator: "EmbeddingsCalculatorOV"
  input_side_packet: "EMBEDDINGS_NODE_RESOURCES:embeddings_servable"
  node_options: {{
    [type.googleapis.com / mediapipe.EmbeddingsCalculatorOVOptions]: {{
      models_path: "{path}",
      normalize_embeddings: true,
      pooling: MEAN,
      target_device: "CPU"
    }}
  }}
}}
"""

RERANK_GRAPH = """
node {{
  calculator: "RerankCalculatorOV"
  node_options: {{
    [type.googleapis.com / mediapipe.RerankCalculatorOVOptions]: {{ models_path: "{path}", target_device: "CPU" }}
  }}
}}
"""


def llm_graph(max_num_seqs: int = 4, **options) -> str:
    """The fixture LLM's graph with node options added (values as graph.pbtxt text: '"path"', 4, "{ ... }")."""
    text = LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=max_num_seqs)
    added = "".join(f"      {key}: {value},\n" for key, value in options.items())
    return text.replace('      device: "CPU",\n', '      device: "CPU",\n' + added)


def write_graphs(root: pathlib.Path, graphs: dict[str, str]) -> pathlib.Path:
    """Each graph in a directory of its name under ``root``, and a config.json serving them all."""
    for name, text in graphs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "graph.pbtxt").write_text(text)
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": n, "base_path": str(root / n)}}
                                                        for n in graphs]}))
    return config


# The torch references (reference.json) are fp32. OpenVINO's CPU plugin infers in bf16 where the CPU has it
# (INFERENCE_PRECISION_HINT defaults to bf16 on AVX512-BF16/AMX): 5e-5 off in the reranker's sigmoid, which is
# more than the gaps between its documents' scores, so the ranking differed from torch's. The served fixtures
# pin f32; the tests then hold them to fp32 tolerances.
F32_PLUGIN_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
F32 = f"plugin_config: '{json.dumps(F32_PLUGIN_CONFIG)}', "


def write_config(root: pathlib.Path, *, max_num_seqs: int = 8, minilm: pathlib.Path | None = None) -> pathlib.Path:
    """config.json with the graphs, each named as OVMS allows: model entry, mediapipe entry."""
    embedder = EMBEDDINGS_GRAPH.format(path=EMBEDDER_DIR).replace('target_device: "CPU"', F32 + 'target_device: "CPU"')
    graphs = {"tiny-llm": LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=max_num_seqs),
              "tiny-embedder": embedder,
              "tiny-embedder-cls": embedder.replace("pooling: MEAN", "pooling: CLS"),
              "tiny-reranker": RERANK_GRAPH.format(path=RERANKER_DIR).replace('target_device: "CPU"',
                                                                              F32 + 'target_device: "CPU"')}
    if minilm is not None:
        graphs["minilm"] = EMBEDDINGS_GRAPH.format(path=minilm)
    for name, graph in graphs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "graph.pbtxt").write_text(graph)
    config = {"model_config_list": [{"config": {"name": "tiny-llm", "base_path": str(root / "tiny-llm")}}],
              "mediapipe_config_list": [{"name": "tiny-embedder", "base_path": str(root / "tiny-embedder")},
                                        {"name": "tiny-embedder-cls", "base_path": str(root / "tiny-embedder-cls")},
                                        {"name": "tiny-reranker", "base_path": str(root / "tiny-reranker")}]}
    if minilm is not None:
        config["mediapipe_config_list"].append({"name": "minilm", "base_path": str(root / "minilm")})
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def genai_server(tmp_path_factory):
    from tests.genai.minilm import write_minilm_ir

    root = tmp_path_factory.mktemp("genai")
    minilm = write_minilm_ir(root / "minilm-ir")
    with ThreadedServer(config_path=write_config(root, minilm=minilm)) as running:
        yield running


@pytest.fixture(scope="session")
def base_url(genai_server) -> str:
    return f"http://{genai_server.rest_url}/v3"


@pytest.fixture
def client(base_url):
    import openai

    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c
