"""/v3/images/generations and /v3/images/edits on a real ovms serving the tiny Stable Diffusion, driven by the
openai client; every image is compared pixel for pixel with what the same openvino_genai pipeline returns
in-process with the same inputs and seed."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import pathlib
import time
import urllib.request

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
import pytest
from PIL import Image

from tests.conftest import ThreadedServer

SD_DIR = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "genai" / "tiny-sd"

# Limits small enough to cross in a test; default steps 2 to show the graph's default is applied.
GRAPH = """
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node: {{
  name: "ImageGenExecutor"
  calculator: "ImageGenCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {{
      [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {{
          models_path: "{path}"
          device: "CPU"
          max_resolution: "128x128"
          max_num_images_per_prompt: 3
          default_num_inference_steps: 2
          max_num_inference_steps: 5
      }}
  }}
}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ovms.metrics import DEFAULT_FAMILIES

    root = tmp_path_factory.mktemp("images")
    (root / "tiny-sd").mkdir()
    (root / "tiny-sd" / "graph.pbtxt").write_text(GRAPH.format(path=SD_DIR))
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [],
                                  "mediapipe_config_list": [{"name": "tiny-sd", "base_path": str(root / "tiny-sd")}]}))
    with ThreadedServer(config_path=config, metrics_families=frozenset(DEFAULT_FAMILIES)) as running:
        yield running


@pytest.fixture
def client(server):
    import openai

    with openai.OpenAI(base_url=f"http://{server.rest_url}/v3", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def pipelines():
    """The reference pipelines, loaded as a user would load them (each from the directory)."""
    return {"text2image": ov_genai.Text2ImagePipeline(str(SD_DIR), "CPU"),
            "image2image": ov_genai.Image2ImagePipeline(str(SD_DIR), "CPU"),
            "inpainting": ov_genai.InpaintingPipeline(str(SD_DIR), "CPU")}


def decoded(response) -> np.ndarray:
    """The answer's images as one uint8 [N, H, W, 3] array."""
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json)))) for item in response.data])


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def source_image() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)


def square_mask() -> np.ndarray:
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[16:48, 16:48] = 255
    return mask


def test_generate_equals_the_pipeline(client, pipelines):
    response = client.images.generate(model="tiny-sd", prompt="a red square on a blue background", size="64x64", n=2,
                                      response_format="b64_json",
                                      extra_body={"num_inference_steps": 3, "rng_seed": 7, "guidance_scale": 5.0,
                                                  "negative_prompt": "blurry, low quality"})
    expected = pipelines["text2image"].generate("a red square on a blue background", width=64, height=64,
                                                num_images_per_prompt=2, num_inference_steps=3, rng_seed=7,
                                                guidance_scale=5.0, negative_prompt="blurry, low quality")
    images = decoded(response)
    assert images.shape == (2, 64, 64, 3)
    assert np.array_equal(images, expected.data)
    assert not np.array_equal(images[0], images[1])  # two images, not one twice
    assert response.created > 0


def test_generate_takes_the_graph_default_steps(client, pipelines):
    """No num_inference_steps: the graph's default_num_inference_steps (2), not the pipeline's 50."""
    response = client.images.generate(model="tiny-sd", prompt="a cat sitting on a mat", extra_body={"rng_seed": 3})
    expected = pipelines["text2image"].generate("a cat sitting on a mat", num_inference_steps=2, rng_seed=3)
    assert np.array_equal(decoded(response), expected.data)


def test_edit_without_mask_is_image_to_image(client, pipelines):
    image = source_image()
    response = client.images.edit(model="tiny-sd", image=("in.png", png_bytes(image), "image/png"),
                                  prompt="a watercolor painting of a city",
                                  extra_body={"num_inference_steps": 4, "rng_seed": 5, "strength": 0.75})
    expected = pipelines["image2image"].generate("a watercolor painting of a city", ov.Tensor(image[np.newaxis]),
                                                 num_inference_steps=4, rng_seed=5, strength=0.75)
    assert np.array_equal(decoded(response), expected.data)


def test_edit_with_mask_is_inpainting(client, pipelines):
    image, mask = source_image(), square_mask()
    response = client.images.edit(model="tiny-sd", image=("in.png", png_bytes(image), "image/png"),
                                  mask=("mask.png", png_bytes(mask), "image/png"), prompt="a green circle",
                                  extra_body={"num_inference_steps": 3, "rng_seed": 9})
    expected = pipelines["inpainting"].generate("a green circle", ov.Tensor(image[np.newaxis]),
                                                ov.Tensor(mask[np.newaxis]), num_inference_steps=3, rng_seed=9)
    images = decoded(response)
    assert np.array_equal(images, expected.data)
    without_mask = client.images.edit(model="tiny-sd", image=("in.png", png_bytes(image), "image/png"),
                                      prompt="a green circle", extra_body={"num_inference_steps": 3, "rng_seed": 9})
    assert not np.array_equal(decoded(without_mask), images)  # the mask chose the inpainting pipeline


@pytest.mark.parametrize("call, message", [
    (dict(size="256x256"), "resolution 256x256 is greater than maxResolution: 128x128"),
    (dict(n=4), "num_images_per_prompt/n is greater than maxNumImagesPerPrompt: 3"),
    (dict(extra_body={"num_inference_steps": 6}), "num_inference_steps is greater than maxNumInferenceSteps: 5"),
    (dict(extra_body={"num_inference_steps": 0}), "num_inference_steps must be higher than 0"),
    (dict(size="64by64"), "size field is not in correct format - WxH"),
    (dict(response_format="url"), "Unsupported response_format: url. Only b64_json is supported."),
    (dict(quality="hd"), "Unhandled parameter: quality"),
    (dict(extra_body={"strength": 0.5}), "'Strength' generation parameter must be 1.0f for Text 2 image pipeline"),
], ids=["resolution", "images", "steps", "zero-steps", "size-format", "url", "quality", "strength"])
def test_generation_refusals(client, call, message):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="tiny-sd", prompt="a cat", **call)
    assert caught.value.status_code == 400
    assert message in json.dumps(caught.value.body)
    assert len(client.images.generate(model="tiny-sd", prompt="a cat", size="64x64").data) == 1  # still serving


@pytest.mark.parametrize("upload, message", [
    ({"image": ("notes.txt", b"these are not pixels", "text/plain")}, "Image parsing failed"),
    ({"image": ("in.png", png_bytes(source_image()), "image/png"),
      "mask": ("mask.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")}, "Image parsing failed"),
], ids=["image", "mask"])
def test_a_non_image_upload_is_refused(client, upload, message):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model="tiny-sd", prompt="a cat", **upload)
    assert caught.value.status_code == 400 and message in json.dumps(caught.value.body)
    answer = client.images.edit(model="tiny-sd", prompt="a cat", image=("in.png", png_bytes(source_image()),
                                                                        "image/png"))
    assert decoded(answer).shape == (1, 64, 64, 3)


def test_unknown_model_and_wrong_endpoint_kind(client):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-model", prompt="a cat")


def test_v1_alias_and_metrics(server):
    body = json.dumps({"model": "tiny-sd", "prompt": "a green circle", "num_inference_steps": 1}).encode()
    request = urllib.request.Request(f"http://{server.rest_url}/v1/images/generations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        document = json.loads(r.read())
    assert len(document["data"]) == 1 and document["data"][0]["b64_json"]
    with urllib.request.urlopen(f"http://{server.rest_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    success = [line for line in text.splitlines() if line.startswith("ovms_requests_success{")
               and 'name="tiny-sd"' in line]
    assert success and 'api="V3"' in success[0] and 'method="Unary"' in success[0]
    assert float(success[0].rsplit(" ", 1)[1]) >= 1
    timing = [line for line in text.splitlines() if line.startswith("ovms_request_time_us_count{")
              and 'name="tiny-sd"' in line]
    assert timing and float(timing[0].rsplit(" ", 1)[1]) >= 1


def test_busy_servable_answers_503(server, client, monkeypatch):
    """While the pipeline is taken, requests wait; past MAX_WAITING the next one is refused with 503."""
    import openai

    from ovms.backends import genai_images

    monkeypatch.setattr(genai_images, "MAX_WAITING", 1)
    servable = server.server.registry.version_entry("tiny-sd").servable
    servable._lock.acquire()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            waiting = [pool.submit(client.images.generate, model="tiny-sd", prompt="a cat", size="64x64")
                       for _ in range(2)]
            while servable._waiting < 2:  # both inside the servable: one on the lock, one queued
                assert not any(f.done() for f in waiting), [f.exception() for f in waiting if f.done()]
                time.sleep(0.01)
            with pytest.raises(openai.APIStatusError) as caught:
                client.images.generate(model="tiny-sd", prompt="a cat", size="64x64")
            assert caught.value.status_code == 503
            assert "one runs at a time and 1 may wait" in json.dumps(caught.value.body)
        finally:
            servable._lock.release()
        assert all(len(f.result(60).data) == 1 for f in waiting)


class _CountingPipeline:
    """The servable's pipeline, counting generate calls."""

    def __init__(self, pipe) -> None:
        self.pipe, self.calls = pipe, 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.pipe.generate(*args, **kwargs)


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 30  # a bound against a hang, not a measurement
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_request_whose_client_left_is_not_run(server, client):
    """A generation queued behind a busy pipeline whose client closes the connection is dropped, not generated."""
    import socket

    servable = server.server.registry.version_entry("tiny-sd").servable
    pipe = servable._text2image
    counting = servable._text2image = _CountingPipeline(pipe)
    servable._lock.acquire()
    try:
        body = json.dumps({"model": "tiny-sd", "prompt": "a cat", "num_inference_steps": 2}).encode()
        host, port = server.rest_url.split(":")
        web_server = server.server._runner.server  # aiohttp's; .connections is a list of its handlers, made per call
        before = set(web_server.connections)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST /v3/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            _until(lambda: servable._waiting == 1, "the request did not reach the servable's queue")
            ours = [h for h in web_server.connections if h not in before]
        # what the servable will ask (the request's transport closing), seen by the server's loop before it asks
        _until(lambda: ours and all(h.transport is None or h.transport.is_closing() for h in ours),
               "the server did not see the connection close")
        servable._lock.release()
        _until(lambda: servable._waiting == 0, "the abandoned request did not leave the queue")
        assert counting.calls == 0
        assert len(client.images.generate(model="tiny-sd", prompt="a cat", size="64x64").data) == 1
        assert counting.calls == 1
    finally:
        if servable._lock.locked():
            servable._lock.release()
        servable._text2image = pipe


def test_a_generation_stops_when_its_client_leaves(server):
    """Between denoising steps the servable asks whether the client is still there, and stops when it is not."""
    from ovms.errors import ServingError
    from ovms.genai.types import ImageRequest

    servable = server.server.registry.version_entry("tiny-sd").servable
    asked = []

    def client_gone() -> bool:
        asked.append(True)
        return len(asked) > 2  # there before the start and through the first step, then gone

    with pytest.raises(ServingError) as caught:
        servable._generate(servable._text2image, ImageRequest("tiny-sd", "a cat"), {"num_inference_steps": 5},
                           "Text-to-image", client_gone)
    assert "the client closed the connection before the answer" in caught.value.message
    assert len(asked) == 3  # 1 before starting, then steps 0 and 1 of 5: stopped there
