"""``--model_path DIR --task image_generation`` with the task flags, as OVMS builds the graph in memory."""
from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
SD_DIR = ROOT / "tests" / "fixtures" / "genai" / "tiny-sd"


def _post(url: str, document: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_task_flags_become_the_graph_limits(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ovms", "--model_path", str(SD_DIR), "--model_name", "sd",
                                 "--task", "image_generation", "--max_num_inference_steps", "4",
                                 "--max_resolution", "64x64", "--rest_port", str(port),
                                 "--rest_bind_address", "127.0.0.1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(f"{base}/v2/models/sd/ready", timeout=5):
                        break
                except OSError:  # not listening yet, not ready (404), or a probe timed out on a loaded machine
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.2)
            url = f"{base}/v3/images/generations"
            steps = _post(url, {"model": "sd", "prompt": "a cat", "num_inference_steps": 5})
            size = _post(url, {"model": "sd", "prompt": "a cat", "size": "64x128", "num_inference_steps": 1})
            ok = _post(url, {"model": "sd", "prompt": "a cat", "num_inference_steps": 4})
        finally:
            proc.terminate()
            proc.wait(20)
    assert steps[0] == 400 and "num_inference_steps is greater than maxNumInferenceSteps: 4" in json.dumps(steps[1])
    assert size[0] == 400 and "resolution 64x128 is greater than maxResolution: 64x64" in json.dumps(size[1])
    assert ok[0] == 200 and len(ok[1]["data"]) == 1


def test_task_with_local_source_loras(tmp_path):
    """--model_path DIR --task image_generation --source_loras alias=/path: the adapters in the graph built in
    memory; a hub source needs a pull and is refused with the reason."""
    import pytest

    from ovms.cli import build_parser, single_model
    from ovms.graph import read_graph_text
    from tests.fixtures.genai.lora import write_lora

    lora = write_lora(tmp_path / "ink.safetensors")
    args = build_parser().parse_args(["--model_path", str(SD_DIR), "--model_name", "sd", "--task", "image_generation",
                                      "--source_loras", f"ink={lora}:0.7,mix=@ink:0.2"])
    config = single_model(args)
    limits = read_graph_text(config.graph_text, SD_DIR).image
    assert [(a.alias, a.path, a.alpha) for a in limits.lora_adapters] == [("ink", lora, 0.7)]
    assert limits.composite_lora_adapters == {"mix": [("ink", 0.2)]}
    args = build_parser().parse_args(["--model_path", str(SD_DIR), "--model_name", "sd", "--task", "image_generation",
                                      "--source_loras", "ink=org/ink-lora"])
    with pytest.raises(ValueError, match="a Hugging Face repository adapter is downloaded by a pull"):
        single_model(args)
