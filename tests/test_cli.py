"""The command line as OVMS users know it: messages, exit code 64, and serving from a subprocess."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_ovms(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovms", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    ([], "Use config_path or model_path with model_name"),
    (["--model_name", "m"], "Use config_path or model_path with model_name"),
    (["--config_path", "c.json", "--model_name", "m"], "Use either config_path or model_path with model_name"),
    (["--model_name", "m", "--model_path", "/x"], "port and rest_port cannot have the same values"),
    (["--model_name", "m", "--model_path", "/x", "--port", "9000", "--rest_port", "9000"],
     "port and rest_port cannot have the same values"),
    (["--config_path", "c.json", "--port", "1", "--nireq", "2"],
     "Model parameters in CLI are exclusive with the config file"),
    (["--model_name", "m", "--model_path", "/x", "--port", "70000"], "port number out of range from 0 to 65535"),
    (["--model_name", "m", "--model_path", "/x", "--port", "1", "--log_level", "LOUD"],
     "log_level should be one of: TRACE, DEBUG, INFO, WARNING, ERROR"),
    (["--model_name", "m", "--model_path", "/x", "--port", "1", "--grpc_workers", "0"],
     "grpc_workers count should be from 1 to CPU core count"),
    (["--model_name", "m", "--model_path", "/x", "--port", "1", "--metrics_enable"],
     "rest_port setting is missing, metrics are enabled on rest port"),
    (["--no_such_flag"], "error parsing options: unrecognized arguments: --no_such_flag"),
    (["--model_name", "m", "--model_path", "/x", "--port", "1", "--grpc_channel_arguments", "max_streams=2"],
     "grpc_channel_arguments: 'max_streams=2' is not name=value with a grpc.* name"),
    (["--model_name", "m", "--model_path", "/x", "--port", "1", "--drain_timeout_seconds", "-1"],
     "drain_timeout_seconds should be from 0 to 86400"),
])
def test_usage_errors_exit_64(args, message):
    result = run_ovms(*args)
    assert result.returncode == 64, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_version():
    result = run_ovms("--help")
    assert result.returncode == 0
    for flag in ("--port", "--rest_port", "--model_name", "--model_path", "--config_path", "--target_device",
                 "--nireq", "--plugin_config", "--batch_size", "--shape", "--layout", "--model_version_policy",
                 "--log_level", "--log_path", "--grpc_workers", "--rest_workers", "--grpc_bind_address",
                 "--rest_bind_address", "--pull", "--source_model"):
        assert flag in result.stdout
    version = run_ovms("--version")
    assert version.returncode == 0 and version.stdout.startswith("OpenVINO Model Server")
    assert "OpenVINO backend 20" in version.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports() -> tuple[int, int]:
    """Two different free ports: both sockets stay bound while the second is chosen (two free_port() calls in a row
    once got the same port, and the server refused to start: "port and rest_port cannot have the same values")."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        # TimeoutError: a model loading in openvino_genai holds the GIL (the speech pipelines' constructors, 3-4 s
        # on a loaded machine), so the server answers late while it loads
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def serve(*args: str, log_path: pathlib.Path, cwd: pathlib.Path = ROOT) -> tuple[subprocess.Popen, int, int]:
    grpc_port, rest_port = free_ports()
    process = subprocess.Popen([sys.executable, "-m", "ovms", "--port", str(grpc_port), "--rest_port",
                                str(rest_port), "--grpc_bind_address", "127.0.0.1", "--rest_bind_address",
                                "127.0.0.1", "--log_path", str(log_path), *args], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, grpc_port, rest_port


class OvmsProcess:
    """`python -m ovms` in a subprocess on free loopback ports, logging to ``tmp_path/ovms.log``, with the
    given environment added (credentials, endpoints)."""

    def __init__(self, tmp_path: pathlib.Path, env: dict | None, *args: str) -> None:
        self.grpc_port, self.rest_port = free_ports()
        self.log = tmp_path / "ovms.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ovms", "--port", str(self.grpc_port), "--rest_port", str(self.rest_port),
             "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1", "--log_path", str(self.log),
             *args], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        wait_ready(self.rest_port, self.process, timeout=120)

    def wait_log(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log.read_text() if self.log.exists() else ""
            if text in log:
                return log
            assert self.process.poll() is None, self.process.communicate()
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    if process.returncode != 0:
        # A grandchild may still hold the pipes (OpenVINO's telemetry forks one that can hang on DNS with no
        # network): read what is there for at most 10 s instead of waiting for it forever.
        try:
            output = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            output = "(the server's output pipes are still held by a child process)"
        raise AssertionError(f"ovms exited with {process.returncode}: {output}")


def test_single_model_mode_with_cli_options(model_repo, tmp_path):
    process, grpc_port, rest_port = serve("--model_name", "resnetish", "--model_path", str(model_repo / "dynamic"),
                                          "--shape", "(2,3)", "--nireq", "2", "--log_level", "DEBUG",
                                          log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            meta = client.get_model_metadata("resnetish", as_json=True)
            assert meta["inputs"][0]["shape"] == ["2", "3"]  # --shape reshaped the dynamic model
            x = np.ones((2, 3), np.float32)
            inp = grpcclient.InferInput("x", [2, 3], "FP32")
            inp.set_data_from_numpy(x)
            assert np.array_equal(client.infer("resnetish", [inp]).as_numpy("y"), x * 2)
    finally:
        stop(process)
    log = (tmp_path / "ovms.log").read_text()
    assert "model resnetish version 1 loaded" in log and "with 2 infer requests" in log


def test_broken_model_does_not_stop_others(model_repo, tmp_path):
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.xml").write_text("<net>not really</net>")
    (broken / "model.bin").write_bytes(b"")
    (tmp_path / "noversions").mkdir()
    config = {"model_config_list": [
        {"config": {"name": "simple", "base_path": str(model_repo / "simple")}},
        {"config": {"name": "broken", "base_path": str(tmp_path / "broken")}},
        {"config": {"name": "empty", "base_path": str(tmp_path / "noversions")}},
    ]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    process, grpc_port, rest_port = serve("--config_path", str(tmp_path / "config.json"),
                                          log_path=tmp_path / "ovms.log")
    try:
        log = tmp_path / "ovms.log"
        deadline = time.monotonic() + 60
        while not (log.exists() and "Server ready" in log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.is_model_ready("simple")
            assert not client.is_model_ready("broken")
            assert not client.is_server_ready()  # not every model is available
    finally:
        stop(process)
    log = (tmp_path / "ovms.log").read_text()
    assert "model broken version 1 failed to load" in log and "Error while loading a network" in log
    assert "Not a single model version directory has valid numeric name" in log


def test_invalid_config_is_reported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_config_list": [{"config": {"name": "a", "base_path": "/m", '
                                          '"bogus_field": 1}}]}')
    result = run_ovms("--config_path", str(tmp_path / "config.json"), "--port", "1")
    assert result.returncode == 1
    assert "model_config_list[0].config: unknown field(s) 'bogus_field'" in result.stderr
    assert "Traceback" not in result.stderr


def test_grpc_workers_share_the_port_and_stop_together(model_repo, tmp_path):
    process, grpc_port, rest_port = serve("--config_path", str(model_repo / "config.json"), "--grpc_workers", "2",
                                          log_path=tmp_path / "ovms.log")
    log = tmp_path / "ovms.log"
    try:
        wait_ready(rest_port, process)
        deadline = time.monotonic() + 30
        while True:  # both processes log their own "Server ready" line with their pid
            pids = {line.split("][")[1] for line in log.read_text().splitlines() if "Server ready" in line}
            if len(pids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pids) == 2 and str(process.pid) in pids
        a = np.ones((1, 16), np.int32)
        for _ in range(10):  # new connections each time: the kernel spreads them over both workers
            with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for i in inputs:
                    i.set_data_from_numpy(a)
                assert client.infer("simple", inputs).as_numpy("OUTPUT0")[0, 0] == 2
    finally:
        stop(process)
    for pid in pids:
        assert not pathlib.Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the server"


def test_debug_log_names_refused_requests_with_an_id(model_repo, tmp_path):
    process, grpc_port, rest_port = serve("--model_name", "dummy", "--model_path", str(model_repo / "dummy"),
                                          "--log_level", "DEBUG", log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process)
        request = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v2/models/dummy/infer", method="POST",
                                         data=b'{"inputs":[{"name":"b","datatype":"FP32","shape":[1,9],'
                                              b'"data":[1,2,3,4,5,6,7,8,9]}]}')
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
    finally:
        stop(process)
    lines = [line for line in (tmp_path / "ovms.log").read_text().splitlines() if "refused" in line]
    assert len(lines) == 1 and "[DEBUG]" in lines[0]
    assert "request " in lines[0] and "POST /v2/models/dummy/infer refused: Invalid input shape" in lines[0]


def test_task_flags_shape_the_servable_as_the_graph_pull_would_write():
    """--model_path DIR --task T with no graph.pbtxt: the task flags apply, as OVMS builds that graph in memory."""
    from ovms.backends.genai import load_graph_servable
    from ovms.cli import build_parser, single_model

    fixtures = pathlib.Path(__file__).resolve().parent / "fixtures" / "genai"
    args = build_parser().parse_args(["--model_name", "v", "--model_path", str(fixtures / "tiny-vlm"), "--task",
                                      "text_generation", "--pipeline_type", "VLM", "--max_num_seqs", "3",
                                      "--tool_parser", "llama3"])
    servable = load_graph_servable(single_model(args))
    try:
        assert servable.options.pipeline_type == "VLM" and servable._worker is None  # VLMPipeline, in a thread
        assert servable.info.max_num_seqs == 3 and servable.info.tool_parser == "llama3" and servable.info.vision
    finally:
        servable.close()
    for pooling in ("MEAN", None):
        flags = ["--pooling", pooling] if pooling else []
        args = build_parser().parse_args(["--model_name", "e", "--model_path", str(fixtures / "tiny-embedder"),
                                          "--task", "embeddings", *flags])
        servable = load_graph_servable(single_model(args))
        try:
            assert servable.options.pooling == (pooling or "CLS")  # OVMS's default for a task without a graph
        finally:
            servable.close()


def test_relative_config_path_serves_models_and_graphs(model_repo, tmp_path):
    """`--config_path js/config.json` from the directory above, every path in it relative: a model, a graph
    directory (mediapipe_config_list) whose graph names its model relatively, and a model entry with graph_path."""
    from tests.genai.conftest import EMBEDDER_DIR, EMBEDDINGS_GRAPH

    js = tmp_path / "js"
    shutil.copytree(model_repo / "dummy", js / "models" / "dummy")
    for name in ("emb", "emb-entry"):
        shutil.copytree(EMBEDDER_DIR, js / name / "model")
        graph = EMBEDDINGS_GRAPH.format(path="model")  # models_path relative to the graph's directory
        (js / name / ("graph.pbtxt" if name == "emb" else "embeddings.pbtxt")).write_text(graph)
    (js / "config.json").write_text(json.dumps({
        "model_config_list": [{"config": {"name": "dummy", "base_path": "models/dummy"}},
                              {"config": {"name": "emb-entry", "base_path": "emb-entry",
                                          "graph_path": "embeddings.pbtxt"}}],
        "mediapipe_config_list": [{"name": "emb", "base_path": "emb"}]}))
    process, grpc_port, rest_port = serve("--config_path", "js/config.json", log_path=tmp_path / "ovms.log",
                                          cwd=tmp_path)
    try:
        wait_ready(rest_port, process)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            inp = grpcclient.InferInput("b", [1, 10], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 10), np.float32))
            assert client.infer("dummy", [inp]).as_numpy("a")[0, 0] == 2.0
        for name in ("emb", "emb-entry"):
            request = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v3/embeddings", method="POST",
                                             data=json.dumps({"model": name, "input": "hello"}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert len(json.loads(response.read())["data"][0]["embedding"]) > 8
    finally:
        stop(process)


def test_rest_workers_is_accepted_and_says_it_is_not_used(model_repo, tmp_path):
    process, grpc_port, rest_port = serve("--model_name", "dummy", "--model_path", str(model_repo / "dummy"),
                                          "--rest_workers", "4", log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process)
    finally:
        stop(process)
    assert "--rest_workers 4 is accepted as OVMS has it and not used" in (tmp_path / "ovms.log").read_text()
