"""LoRA adapters of an image generation graph (lora_adapters, composite_lora_adapters), selected per request by
the model name as OVMS routes them, with lora_alphas overriding the weights; images equal the in-process
pipeline's with the same adapter and alpha."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import openvino_genai as ov_genai
import pytest
from PIL import Image

from tests.conftest import ThreadedServer
from tests.fixtures.genai.lora import write_lora
from tests.genai.test_images import SD_DIR

GRAPH = """node {{ calculator: "ImageGenCalculator" node_options: {{
  [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {{
    models_path: "{path}" default_num_inference_steps: 3
    lora_adapters {{ alias: "ink" path: "{lora}" alpha: 0.8 mode: DYNAMIC }}
    lora_adapters {{ alias: "ink2" path: "{lora2}" }}
    composite_lora_adapters {{ alias: "mix" components {{ adapter_alias: "ink" alpha: 0.4 }}
                                            components {{ adapter_alias: "ink2" }} }}
  }} }} }}"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import openai

    root = tmp_path_factory.mktemp("lora")
    lora, lora2 = write_lora(root / "ink.safetensors", seed=1), write_lora(root / "ink2.safetensors", seed=2)
    (root / "sd").mkdir()
    (root / "sd" / "graph.pbtxt").write_text(GRAPH.format(path=SD_DIR, lora=lora, lora2=lora2))
    config = root / "config.json"
    config.write_text(json.dumps({"mediapipe_config_list": [{"name": "sd", "base_path": str(root / "sd")}]}))
    adapters = {"ink": ov_genai.Adapter(str(lora)), "ink2": ov_genai.Adapter(str(lora2))}
    pipeline = ov_genai.Text2ImagePipeline(str(SD_DIR), "CPU",
                                           adapters=ov_genai.AdapterConfig(list(adapters.values())))
    with ThreadedServer(config_path=config) as server:
        with openai.OpenAI(base_url=f"http://{server.rest_url}/v3", api_key="unused", max_retries=0,
                           timeout=60) as client:
            yield client, pipeline, adapters


def reference(pipeline, adapters, alphas: dict[str, float]) -> np.ndarray:
    """As OVMS builds the request's AdapterConfig: the routed adapters with their alphas, or every adapter at 0."""
    config = ov_genai.AdapterConfig()
    for alias, adapter in adapters.items():
        if alias in alphas or not alphas:
            config.add(adapter, alphas.get(alias, 0.0))
    return pipeline.generate("a cat", num_inference_steps=3, rng_seed=6, adapters=config).data.copy()


def served(client, model: str, **extra) -> np.ndarray:
    answer = client.images.generate(model=model, prompt="a cat", extra_body={"rng_seed": 6, **extra})
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in answer.data])


@pytest.mark.parametrize("model, extra, alphas", [
    ("sd", {}, {}),  # the base model: every adapter off
    ("ink", {}, {"ink": 0.8}),  # the adapter's alpha from the graph
    ("ink", {"lora_alphas": {"ink": 0.3}}, {"ink": 0.3}),
    ("mix", {}, {"ink": 0.4, "ink2": 1.0}),  # the composite's alpha, else the adapter's
    ("mix", {"lora_alphas": {"ink2": 0.5}}, {"ink": 0.4, "ink2": 0.5}),
], ids=["base", "adapter", "adapter-alpha", "composite", "composite-alpha"])
def test_adapter_routing_equals_the_pipeline(setup, model, extra, alphas):
    client, pipeline, adapters = setup
    assert np.array_equal(served(client, model, **extra), reference(pipeline, adapters, alphas))


def test_adapters_change_the_image(setup):
    client, _, _ = setup
    assert not np.array_equal(served(client, "ink"), served(client, "sd"))


def test_lora_alphas_outside_the_route_are_refused(setup):
    import openai

    client, _, _ = setup
    with pytest.raises(openai.BadRequestError) as caught:
        served(client, "ink", lora_alphas={"ink2": 0.5})
    assert "lora_alphas key 'ink2' not allowed when targeting 'ink'" in json.dumps(caught.value.body)
