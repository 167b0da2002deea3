"""Vision language models: the fixture LLaVA served on continuous batching (VLM_CB) and on VLMPipeline (VLM),
driven by the openai client with images inline, by path and by URL; answers checked against the same pipeline
driven in-process."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import threading

import numpy as np
import pytest
import requests
from aiohttp import web

from tests.conftest import ThreadedServer
from tests.genai.conftest import FIXTURES

VLM_DIR = FIXTURES / "tiny-vlm"
QUESTION = "What is in this picture?"
MAX_TOKENS = 12

VLM_GRAPH = """
node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
      models_path: "{path}",
      cache_size: 1,
      max_num_seqs: 4,
      device: "CPU",
      {extra}
    }}
  }}
}}
"""


def png(seed: int, size=(56, 56), mode="RGB") -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


BIG = png(9, size=(700, 700))  # over 1 MB: many network reads


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def user(text: str, *urls: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}] +
            [{"type": "image_url", "image_url": {"url": u}} for u in urls]}


class _ImageHost:
    """A local HTTP server with one image, standing in for a media host the operator allowed."""

    def __init__(self, body: bytes, big: bytes) -> None:
        self.body = body
        self.big = big
        self.hits = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _image(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=self.body, content_type="image/png")

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=self.big, content_type="image/png")

    async def _moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/cat.png")

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/cat.png", self._image)
        app.router.add_get("/moved.png", self._moved)
        app.router.add_get("/big.png", self._big)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]

    def __enter__(self):
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    (d / "cat.png").write_bytes(png(7))
    (d.parent / "secret.png").write_bytes(png(8))
    (d / "link.png").symlink_to(d.parent / "secret.png")
    os.mkfifo(d / "fifo.png")  # opening it would wait for a writer
    return d


@pytest.fixture(scope="module")
def image_host():
    with _ImageHost(png(7), BIG) as host:
        yield host


@pytest.fixture(scope="module")
def vlm_server(tmp_path_factory, media_dir, image_host):
    import json

    from ovms.transport.openai_rest import OpenAISettings

    root = tmp_path_factory.mktemp("vlm")
    for name, extra in (("vlm-cb", ""), ("vlm-single", "pipeline_type: VLM,")):
        (root / name).mkdir()
        (root / name / "graph.pbtxt").write_text(VLM_GRAPH.format(path=VLM_DIR, extra=extra))
    (root / "config.json").write_text(json.dumps({"mediapipe_config_list": [
        {"name": "vlm-cb", "base_path": str(root / "vlm-cb")},
        {"name": "vlm-single", "base_path": str(root / "vlm-single")}]}))
    settings = OpenAISettings(allowed_local_media_path=str(media_dir), allowed_media_domains=("127.0.0.1",))
    with ThreadedServer(config_path=root / "config.json", openai=settings) as running:
        yield running


@pytest.fixture(scope="module")
def vlm_client(vlm_server):
    import openai

    with openai.OpenAI(base_url=f"http://{vlm_server.rest_url}/v3", api_key="unused", max_retries=0,
                       timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    """The answer of openvino_genai's VLMPipeline driven in-process, for a rendered prompt and images."""
    import openvino as ov
    import openvino_genai as ov_genai

    from ovms.genai.media import decode_image

    pipe = ov_genai.VLMPipeline(str(VLM_DIR), "CPU")

    def answer(prompt: str, images: list[bytes]) -> str:
        config = pipe.get_generation_config()
        config.max_new_tokens = MAX_TOKENS
        config.apply_chat_template = False
        tensors = [ov.Tensor(decode_image(i)) for i in images]
        return pipe.generate(prompt, images=tensors, generation_config=config).texts[0]

    return answer


def turn(content: str) -> str:
    return f"<|im_start|>user\n{content}<|im_end|>\n"


ASSISTANT = "<|im_start|>assistant\n"


def chat(client, model, messages, **kw) -> str:
    result = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                            **kw)
    return result.choices[0].message.content


@pytest.mark.parametrize("model", ["vlm-cb", "vlm-single"])
def test_image_answers_match_the_pipeline_in_process(vlm_client, reference, model):
    a, b = png(1), png(2)
    got_a = chat(vlm_client, model, [user(QUESTION, data_url(a))])
    got_b = chat(vlm_client, model, [user(QUESTION, data_url(b))])
    want_a = reference(turn(f"<ov_genai_image_0>{QUESTION}") + ASSISTANT, [a])
    want_b = reference(turn(f"<ov_genai_image_0>{QUESTION}") + ASSISTANT, [b])
    assert got_a == want_a and got_b == want_b
    assert want_a != want_b, "the fixture's answer does not depend on the image: the check above proves nothing"
    # images in two messages, numbered across the conversation
    messages = [user("first", data_url(a)), {"role": "assistant", "content": "ok"}, user(QUESTION, data_url(b),
                                                                                           data_url(a))]
    prompt = (turn("<ov_genai_image_0>first") + "<|im_start|>assistant\nok<|im_end|>\n"
              + turn(f"<ov_genai_image_1><ov_genai_image_2>{QUESTION}") + ASSISTANT)
    assert chat(vlm_client, model, messages) == reference(prompt, [a, b, a])
    assert reference(prompt, [a, b, a]) != reference(prompt, [b, a, a]), "order of the images would go unnoticed"


@pytest.mark.parametrize("model", ["vlm-cb", "vlm-single"])
def test_streamed_image_answer_and_text_only_requests(vlm_client, reference, model):
    image = png(3)
    whole = chat(vlm_client, model, [user(QUESTION, data_url(image))])
    stream = vlm_client.chat.completions.create(model=model, messages=[user(QUESTION, data_url(image))],
                                                max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0
    text_only = chat(vlm_client, model, [{"role": "user", "content": QUESTION}])
    assert text_only == reference(turn(QUESTION) + ASSISTANT, [])


def test_images_by_path_and_by_url_as_the_operator_allows(vlm_client, vlm_server, media_dir, image_host):
    inline = chat(vlm_client, "vlm-cb", [user(QUESTION, data_url(png(7)))])
    assert chat(vlm_client, "vlm-cb", [user(QUESTION, str(media_dir / "cat.png"))]) == inline
    assert chat(vlm_client, "vlm-cb", [user(QUESTION, "cat.png")]) == inline  # relative to the allowed directory
    assert chat(vlm_client, "vlm-cb", [user(QUESTION, (media_dir / "cat.png").as_uri())]) == inline
    assert chat(vlm_client, "vlm-cb", [user(QUESTION, f"http://127.0.0.1:{image_host.port}/cat.png")]) == inline
    assert len(BIG) > 1 << 20
    assert chat(vlm_client, "vlm-cb", [user(QUESTION, f"http://127.0.0.1:{image_host.port}/big.png")]) == chat(
        vlm_client, "vlm-cb", [user(QUESTION, data_url(BIG))])
    url = f"http://{vlm_server.rest_url}/v3/chat/completions"

    def refused(image_url: str) -> str:
        r = requests.post(url, json={"model": "vlm-cb", "max_tokens": 4, "messages": [user(QUESTION, image_url)]},
                          timeout=30)
        assert r.status_code == 400, r.text
        return r.json()["error"]

    assert "not subpath of allowed_local_media_path" in refused(str(media_dir / ".." / "secret.png"))
    assert "not subpath of allowed_local_media_path" in refused(str(media_dir / "link.png"))  # symlink out
    assert "not subpath of allowed_local_media_path" in refused("/etc/no-such-file")  # no probing outside
    assert "does not exist" in refused(str(media_dir / "missing.png"))
    assert "not a regular file" in refused(str(media_dir / "fifo.png"))
    assert "NUL" in refused(str(media_dir / "cat.png") + "\0x")
    assert "allowed_media_domains" in refused("http://example.invalid/cat.png")
    for host in ("1.127.0.0.1", "127.0.0.1.evil.org", "evil.org%00.127.0.0.1"):  # exact host names only
        assert "allowed_media_domains" in refused(f"http://{host}:{image_host.port}/cat.png"), host
    hits = image_host.hits
    assert "Downloading image failed" in refused(f"http://evil.org\\@127.0.0.1:{image_host.port}/cat.png")
    assert image_host.hits == hits  # two URL parsers disagreeing on the host: refused before any connection
    assert "HTTP 302" in refused(f"http://127.0.0.1:{image_host.port}/moved.png")  # no redirects followed
    assert "HTTP 404" in refused(f"http://127.0.0.1:{image_host.port}/nothing.png")


@pytest.mark.parametrize("content, message", [
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], "Invalid base64 string in request"),
    ([{"type": "image_url", "image_url": {"url": data_url(b"not an image")}}], "Image parsing failed"),
    ([{"type": "image_url", "image_url": {}}], "image_url does not have url field"),
    ([{"type": "image_url"}], "content image_url missing"),
    ([{"type": "input_audio", "input_audio": {}}], "Unsupported content type 'input_audio'"),
    ([{"type": "image_url", "image_url": {"url": "ftp://host/x.png"}}], "base64 encoded string followed by"),
    ([{"type": "image_url", "image_url": {"url": "http://[::1/x.png"}}], "base64 encoded string followed by"),
    ([{"type": "image_url", "image_url": {"url": data_url(png(1)[:60] + b"\0" + png(1)[61:])}}],
     "Image parsing failed"),  # a PNG with a broken chunk
    ([{"type": "image_url", "image_url": {"url": data_url(png(1))}}] * 17, "at most 16 images"),
])
def test_bad_images_are_400_and_the_server_goes_on(vlm_server, vlm_client, content, message):
    url = f"http://{vlm_server.rest_url}/v3/chat/completions"
    r = requests.post(url, json={"model": "vlm-cb", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": content}]}, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert chat(vlm_client, "vlm-cb", [user(QUESTION, data_url(png(1)))])


def test_vlm_in_model_listing_and_completions(vlm_client):
    assert {"vlm-cb", "vlm-single"} <= {m.id for m in vlm_client.models.list()}
    result = vlm_client.completions.create(model="vlm-cb", prompt="Describe", max_tokens=4, temperature=0)
    assert result.usage.completion_tokens > 0


def test_decode_image_modes():
    from ovms.genai.media import decode_image

    for mode in ("RGB", "RGBA", "L", "P"):
        pixels = decode_image(png(4, size=(30, 20), mode=mode))
        assert pixels.shape == (1, 20, 30, 3) and pixels.dtype == np.uint8, mode
    rgb = decode_image(png(4))
    from PIL import Image

    assert np.array_equal(rgb[0], np.asarray(Image.open(io.BytesIO(png(4)))))


def test_pixel_limits_are_checked_from_the_header():
    from PIL import Image

    from ovms.errors import ServingError
    from ovms.genai.media import MAX_IMAGE_PIXELS, decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (4097, 4096)).save(buffer, format="PNG")  # solid: small encoded, 50 MB decoded
    with pytest.raises(ServingError, match=f"4097x4096 pixels; the limit is {MAX_IMAGE_PIXELS} pixels per image"):
        decode_image(buffer.getvalue())
    with pytest.raises(ServingError, match="pixels together"):
        decode_image(png(4, size=(100, 100)), budget=9_999)
    assert decode_image(png(4, size=(100, 100)), budget=10_000).shape == (1, 100, 100, 3)


def test_pipeline_type_must_fit_the_model(tmp_path):
    from ovms.backends.genai_llm import LLMServable
    from ovms.errors import ModelLoadError
    from ovms.graph import node_options_from

    for kind in ("LM", "LM_CB"):
        options = node_options_from("text_generation", {"pipeline_type": [kind]}, VLM_DIR)
        options.models_path = VLM_DIR
        with pytest.raises(ModelLoadError, match="holds a vision language model; use VLM or VLM_CB"):
            LLMServable("v", options)
    options = node_options_from("text_generation", {"pipeline_type": ["VLM"]}, FIXTURES / "tiny-llm")
    options.models_path = FIXTURES / "tiny-llm"
    with pytest.raises(ModelLoadError, match="not a VLM export"):
        LLMServable("t", options)
