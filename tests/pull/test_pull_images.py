"""Pull, then serve, a diffusers repository: the task is inferred from model_index.json, the graph written is
OVMS's image generation graph, and the server answers /v3/images/generations with no extra step."""
from __future__ import annotations

import base64
import io
import pathlib
import subprocess

import numpy as np

from conftest import ROOT, ovms_command, pull_env
from test_pull_and_serve import free_port, stop, wait_ready

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
