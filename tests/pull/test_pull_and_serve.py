"""Pull-and-serve: without --pull, `python -m ovms --source_model ...` pulls, then serves the model."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from conftest import ROOT, ovms_command, pull_env

REPO = "OpenVINO/tiny-relu"


def tiny_relu_model(directory) -> dict:
    x = ops.parameter([1, 4], np.float32, name="x")
    x.output(0).set_names({"x"})
    y = ops.relu(x)
    y.output(0).set_names({"y"})
    model = ov.Model([y], [x], "tiny_relu")
    ov.save_model(model, directory / "model.xml", compress_to_fp16=False)
    return {"1/model.xml": directory / "model.xml", "1/model.bin": directory / "model.bin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pull_then_serve_a_classic_model(hub, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    hub.add_repo(REPO, tiny_relu_model(src), lfs=lambda path, size: path.endswith(".bin"))
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(ovms_command("--source_model", REPO, "--model_repository_path", str(tmp_path / "models"),
                                         "--model_name", "relu", "--rest_port", str(port),
                                         "--rest_bind_address", "127.0.0.1"),
                            env=pull_env(hub), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v2/models/relu"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "data": [-1.0, 2.0, -3.0, 4.0]}]}).encode()
        req = urllib.request.Request(f"{base}/infer", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())
        assert out["outputs"][0]["data"] == [0.0, 2.0, 0.0, 4.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert f"Model: {REPO} downloaded to: {tmp_path / 'models' / 'OpenVINO' / 'tiny-relu'}" in text
    assert "classic model" in text and not (tmp_path / "models" / "OpenVINO" / "tiny-relu" / "graph.pbtxt").exists()
