"""Pull, then serve, a diffusers repository: the task is inferred from model_index.json, the graph written is
OVMS's image generation graph, and the server answers /v3/images/generations with no extra step."""
from __future__ import annotations

import base64
import io
import pathlib
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, ovms_command, pull_env
from test_pull_and_serve import free_port, stop


def wait_ready(proc, url: str, log_path) -> None:
    """Until the model is ready; a probe that times out (a loaded machine) is tried again, up to 120 s in all."""
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:  # URLError, ConnectionError, TimeoutError
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)

SD_DIR = ROOT / "tests" / "fixtures" / "genai" / "tiny-sd"


def test_pull_then_serve_an_image_generation_model(hub, tmp_path):
    import openai
    import openvino_genai as ov_genai
    from PIL import Image

    repo = "OpenVINO/tiny-sd-ov"
    hub.add_repo(repo, {p.relative_to(SD_DIR).as_posix(): p for p in sorted(SD_DIR.rglob("*")) if p.is_file()})
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ovms_command("--source_model", repo,
                                             "--model_repository_path", str(tmp_path / "models"),
                                             "--model_name", "sd", "--rest_port", str(port),
                                             "--rest_bind_address", "127.0.0.1", "--max_num_images_per_prompt", "2",
                                             "--default_num_inference_steps", "3"),
                                env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/sd/ready", log_path)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                               timeout=60) as client:
                answer = client.images.generate(model="sd", prompt="a bowl of fruit", n=2, extra_body={"rng_seed": 4})
                try:
                    client.images.generate(model="sd", prompt="a bowl of fruit", n=3)
                    refusal = None
                except openai.BadRequestError as exc:
                    refusal = exc
        finally:
            stop(proc)
    images = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in answer.data])
    expected = ov_genai.Text2ImagePipeline(str(SD_DIR), "CPU").generate("a bowl of fruit", num_images_per_prompt=2,
                                                                        num_inference_steps=3, rng_seed=4)
    assert np.array_equal(images, expected.data)  # the pulled copy, with the graph's default steps (3)
    assert refusal is not None and "maxNumImagesPerPrompt: 2" in str(refusal.body)
    model_dir = tmp_path / "models" / "OpenVINO" / "tiny-sd-ov"
    graph = (model_dir / "graph.pbtxt").read_text()
    for line in ('calculator: "ImageGenCalculator"', 'input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"',
                 "[type.googleapis.com / mediapipe.ImageGenCalculatorOptions]", 'models_path: "./"',
                 "max_num_images_per_prompt: 2", "default_num_inference_steps: 3"):
        assert line in graph
    unet = pathlib.Path("unet", "openvino_model.bin")
    assert (model_dir / unet).read_bytes() == (SD_DIR / unet).read_bytes()
    text = log_path.read_text()
    assert f"Inferred --task image_generation for {repo}" in text and "Traceback" not in text


def test_pull_with_source_loras_then_serve_the_adapters(hub, tmp_path):
    """--source_loras: a hub repository's adapter (its one .safetensors file found), another named with @file, and
    a composite; pulled into loras/<org>/<repo>/, written into the graph as OVMS writes them, served by name."""
    import openai
    import openvino_genai as ov_genai
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.genai.lora import write_lora

    hub.add_repo("OpenVINO/tiny-sd-ov",
                 {p.relative_to(SD_DIR).as_posix(): p for p in sorted(SD_DIR.rglob("*")) if p.is_file()})
    ink = write_lora(tmp_path / "src" / "ink.safetensors", seed=1)
    dots = write_lora(tmp_path / "src" / "dots.safetensors", seed=2)
    hub.add_repo("someone/ink-lora", {"ink.safetensors": ink, "README.md": b"an ink style"})
    hub.add_repo("someone/many-loras", {"dots.safetensors": dots, "other.safetensors": ink})
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ovms_command("--source_model", "OpenVINO/tiny-sd-ov",
                                             "--model_repository_path", str(tmp_path / "models"),
                                             "--model_name", "sd", "--rest_port", str(port),
                                             "--rest_bind_address", "127.0.0.1", "--default_num_inference_steps", "3",
                                             "--source_loras", "ink=someone/ink-lora:0.8,"
                                             "dots=someone/many-loras@dots.safetensors,mix=@ink:0.5+@dots"),
                                env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/sd/ready", log_path)
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                               timeout=60) as client:
                answers = {model: client.images.generate(model=model, prompt="a cat", extra_body={"rng_seed": 2})
                           for model in ("ink", "mix")}
        finally:
            stop(proc)
    model_dir = tmp_path / "models" / "OpenVINO" / "tiny-sd-ov"
    assert (model_dir / "loras" / "someone" / "ink-lora" / "ink.safetensors").read_bytes() == ink.read_bytes()
    assert (model_dir / "loras" / "someone" / "many-loras" / "dots.safetensors").read_bytes() == dots.read_bytes()
    assert not (model_dir / "loras" / "someone" / "many-loras" / "other.safetensors").exists()
    graph = (model_dir / "graph.pbtxt").read_text()
    assert ('lora_adapters { alias: "ink" path: "loras/someone/ink-lora/ink.safetensors" alpha: 0.8 mode: DYNAMIC }'
            in graph)
    assert 'lora_adapters { alias: "dots" path: "loras/someone/many-loras/dots.safetensors" mode: DYNAMIC }' in graph
    assert 'components { adapter_alias: "ink" alpha: 0.5 }' in graph and 'components { adapter_alias: "dots" }' in graph
    adapters = [ov_genai.Adapter(str(ink)), ov_genai.Adapter(str(dots))]
    pipeline = ov_genai.Text2ImagePipeline(str(SD_DIR), "CPU", adapters=ov_genai.AdapterConfig(adapters))
    for model, config in (("ink", [(adapters[0], 0.8)]), ("mix", [(adapters[0], 0.5), (adapters[1], 1.0)])):
        expected = pipeline.generate("a cat", num_inference_steps=3, rng_seed=2,
                                     adapters=ov_genai.AdapterConfig(config)).data
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answers[model].data[0].b64_json))))
        assert np.array_equal(served[np.newaxis], expected), model


def test_source_loras_refusals(pull, hub, tmp_path):
    """OVMS's checks of --source_loras, before anything is downloaded; a repository with several adapters needs
    @file."""
    hub.add_repo("OpenVINO/tiny-sd-ov", {"model_index.json": (SD_DIR / "model_index.json").read_bytes()})
    hub.add_repo("someone/many-loras", {"a.safetensors": b"x" * 16, "b.safetensors": b"y" * 16})
    cases = [("ink", "Missing alias in --source_loras entry: 'ink'. Expected format: alias=source"),
             ("ink=https://example.com/ink.bin", "URL must point to a .safetensors file"),
             ("ink=/no/such/file.safetensors", "Local LoRA file does not exist: '/no/such/file.safetensors'"),
             ("mix=@nothing", "Composite LoRA references unknown adapter 'nothing'"),
             ("ink=someone/many-loras", "the repository has 2 .safetensors files (a.safetensors, b.safetensors)")]
    for value, message in cases:
        run = pull("OpenVINO/tiny-sd-ov", "--source_loras", value)
        assert run.code == 64 and message in run.output, (value, run.output)
