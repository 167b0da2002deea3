"""Settings operators type, through `python -m ovms`: metrics flags and config.json's `monitoring` section,
`--file_system_poll_wait_seconds`, `--log_path` (STATE CHANGED lines, an invalid config file), and metrics per
process with `--grpc_workers 2`. Real clients: tritonclient, urllib, prometheus_client's parser."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import urllib.error
import urllib.request

import numpy as np
import openvino as ov
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.fixtures.models import dummy
from tests.test_cli import serve, stop, wait_ready
from tests.test_reload import wait_for


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def states(port: int) -> dict[str, dict[str, str]]:
    """GET /v1/config as {model: {version: state}}."""
    status, body = get(port, "/v1/config")
    assert status == 200, body
    return {name: {v["version"]: v["state"] for v in model["model_version_status"]}
            for name, model in json.loads(body).items()}


def samples(port: int) -> dict[tuple, float]:
    status, body = get(port, "/metrics")
    assert status == 200, body
    # keyed by family: the parser names a counter's samples *_total, OVMS's text does not
    return {(family.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def families(port: int) -> set[str]:
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {f.name for f in text_string_to_metric_families(body.decode())}


def infer_dummy(grpc_port: int, version: str = "") -> float:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        inp = grpcclient.InferInput("b", [1, 10], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 10), np.float32))
        return float(client.infer("dummy", [inp], model_version=version).as_numpy("a")[0, 0])


def add_version(model_dir: pathlib.Path, version: int) -> None:
    """Written beside, then renamed in: the poller never sees a half-written version."""
    staging = model_dir.parent / f".staging-{model_dir.name}-{version}"
    ov.save_model(dummy(float(version)), str(staging / "model.xml"))
    os.rename(staging, model_dir / str(version))


def dummy_config(tmp_path: pathlib.Path, model_repo: pathlib.Path, **extra) -> pathlib.Path:
    shutil.copytree(model_repo / "dummy", tmp_path / "dummy")
    entry = {"name": "dummy", "base_path": str(tmp_path / "dummy"), "model_version_policy": {"all": {}}}
    (tmp_path / "config.json").write_text(json.dumps({"model_config_list": [{"config": entry}], **extra}))
    return tmp_path / "config.json"


# --- metrics ---------------------------------------------------------------------------------------------------

DEFAULTS = {"ovms_requests_success", "ovms_requests_fail", "ovms_request_time_us", "ovms_inference_time_us",
            "ovms_wait_for_infer_req_time_us", "ovms_streams"}
OPTIONAL = {"ovms_infer_req_queue_size", "ovms_infer_req_active", "ovms_current_requests"}


@pytest.mark.parametrize("how", ["--metrics_enable", "--metrics_list", "monitoring section", "monitoring list",
                                 "off"])
def test_metrics_from_flags_and_config_file(model_repo, tmp_path, how):
    monitoring = {"monitoring section": {"metrics": {"enable": True}},
                  "monitoring list": {"metrics": {"enable": True, "metrics_list": ["ovms_requests_success",
                                                                                   "ovms_current_requests"]}}}
    config = dummy_config(tmp_path, model_repo, **({"monitoring": monitoring[how]} if how in monitoring else {}))
    flags = {"--metrics_enable": ["--metrics_enable"],
             "--metrics_list": ["--metrics_enable", "--metrics_list",
                                "ovms_requests_success,ovms_infer_req_queue_size,ovms_infer_req_active"]}
    process, grpc_port, rest_port = serve("--config_path", str(config), *flags.get(how, []),
                                          log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process)
        assert infer_dummy(grpc_port) == 2.0
        if how == "off":
            status, body = get(rest_port, "/metrics")
            assert status == 400 and b"Invalid request URL" in body
            return
        want = {"--metrics_enable": DEFAULTS, "monitoring section": DEFAULTS,
                "--metrics_list": {"ovms_requests_success", "ovms_infer_req_queue_size", "ovms_infer_req_active"},
                "monitoring list": {"ovms_requests_success", "ovms_current_requests"}}[how]
        got = families(rest_port)
        assert want <= got and not (DEFAULTS | OPTIONAL) - want & got, got
        success = (("api", "KServe"), ("interface", "gRPC"), ("method", "ModelInfer"), ("name", "dummy"),
                   ("version", "2"))
        assert samples(rest_port)[("ovms_requests_success", success)] == 1.0
    finally:
        stop(process)


# --- --file_system_poll_wait_seconds ---------------------------------------------------------------------------

def test_poll_default_picks_up_versions_and_zero_disables_it(model_repo, tmp_path):
    """Two servers on one repository: the default (1 s) is the control. Once it has picked up two versions added
    one after the other (two polls after the first was added), the server started with 0 has still seen neither,
    until POST /v1/config/reload."""
    config = dummy_config(tmp_path, model_repo)
    polling, grpc_a, rest_a = serve("--config_path", str(config), log_path=tmp_path / "a.log")
    still, grpc_b, rest_b = serve("--config_path", str(config), "--file_system_poll_wait_seconds", "0",
                                  log_path=tmp_path / "b.log")
    try:
        wait_ready(rest_a, polling)
        wait_ready(rest_b, still)
        assert states(rest_a) == states(rest_b) == {"dummy": {"1": "AVAILABLE", "2": "AVAILABLE"}}
        add_version(tmp_path / "dummy", 3)
        wait_for(lambda: states(rest_a)["dummy"].get("3") == "AVAILABLE", 15, "the default poll to load version 3")
        add_version(tmp_path / "dummy", 4)
        wait_for(lambda: states(rest_a)["dummy"].get("4") == "AVAILABLE", 15, "the default poll to load version 4")
        assert infer_dummy(grpc_a) == 4.0
        assert states(rest_b) == {"dummy": {"1": "AVAILABLE", "2": "AVAILABLE"}}
        assert infer_dummy(grpc_b) == 2.0
        with pytest.raises(InferenceServerException, match="Model with requested version is not found"):
            infer_dummy(grpc_b, "3")
        status, _ = get(rest_b, "/v1/config/reload", method="POST")
        assert status == 201
        assert states(rest_b) == {"dummy": {str(v): "AVAILABLE" for v in (1, 2, 3, 4)}}
        assert infer_dummy(grpc_b) == 4.0
        assert get(rest_b, "/v1/config/reload", method="POST")[0] == 200  # nothing left to change
    finally:
        stop(polling)
        stop(still)


# --- --log_path: STATE CHANGED, an invalid config file ---------------------------------------------------------

def log_lines(path: pathlib.Path, text: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if text in line] if path.exists() else []


def test_state_changes_and_an_invalid_config_in_the_log(model_repo, tmp_path):
    shutil.copytree(model_repo / "dummy", tmp_path / "dummy")
    config = tmp_path / "config.json"
    valid = {"model_config_list": [{"config": {"name": "dummy", "base_path": str(tmp_path / "dummy")}}]}
    config.write_text(json.dumps(valid))
    log = tmp_path / "ovms.log"
    process, grpc_port, rest_port = serve("--config_path", str(config), log_path=log)
    try:
        wait_ready(rest_port, process)
        assert states(rest_port) == {"dummy": {"2": "AVAILABLE"}}  # latest: 1
        assert [line.split("] ", 1)[1] for line in log_lines(log, "STATE CHANGED")] == [
            "STATE CHANGED: model dummy version 2 -> LOADING", "STATE CHANGED: model dummy version 2 -> AVAILABLE"]
        assert all("[ovms.registry][INFO]" in line for line in log_lines(log, "STATE CHANGED"))
        add_version(tmp_path / "dummy", 3)
        wait_for(lambda: states(rest_port)["dummy"] == {"2": "END", "3": "AVAILABLE"}, 30, "version 3 to replace 2")
        changes = [line.split("STATE CHANGED: ", 1)[1] for line in log_lines(log, "STATE CHANGED")]
        assert changes[2:] == ["model dummy version 3 -> LOADING", "model dummy version 3 -> AVAILABLE",
                               "model dummy version 2 -> UNLOADING", "model dummy version 2 -> END"]
        # an invalid file: the poll logs why, once, and nothing changes
        before = get(rest_port, "/v1/config")[1]
        config.write_text(json.dumps({"model_config_list": [{"config": {"name": "dummy", "base_path": str(
            tmp_path / "dummy"), "oops": 1}}]}))
        error = wait_for(lambda: log_lines(log, "configuration not applied"), 30, "the poll to log the invalid file")
        assert len(error) == 1 and "[ERROR]" in error[0]
        assert "configuration not applied, the previous one stays in force: " in error[0]
        assert "unknown field(s) 'oops'" in error[0]
        assert get(rest_port, "/v1/config")[1] == before
        assert infer_dummy(grpc_port) == 3.0
        # the file stays invalid while a version is added: polls go on, and change nothing
        add_version(tmp_path / "dummy", 4)
        valid["model_config_list"][0]["config"]["nireq"] = 2  # a valid file again, with a change
        config.write_text(json.dumps(valid))
        wait_for(lambda: log_lines(log, "configuration is valid again"), 30, "the poll to take the valid file")
        wait_for(lambda: states(rest_port)["dummy"].get("4") == "AVAILABLE", 30, "version 4 after the fix")
        assert len(log_lines(log, "configuration not applied")) == 1  # logged once, not at every poll
        assert infer_dummy(grpc_port) == 4.0
    finally:
        stop(process)


# --- --grpc_workers 2: each process counts its own metrics -----------------------------------------------------

def test_grpc_workers_count_their_own_metrics(model_repo, tmp_path):
    """README: with --grpc_workers each process counts its own metrics, and /metrics (served by worker 0) shows
    worker 0's. Each request goes on a new connection (the kernel picks the worker); /metrics before and after
    tells whether worker 0 served it, and Triton's statistics asked on the same connection give the count of
    the worker that did. Requests served by worker 1 are missing from /metrics; the two counts add up."""
    log = tmp_path / "ovms.log"
    process, grpc_port, rest_port = serve("--config_path", str(model_repo / "config.json"), "--grpc_workers", "2",
                                          "--metrics_enable", log_path=log)
    label = (("api", "KServe"), ("interface", "gRPC"), ("method", "ModelInfer"), ("name", "simple"),
             ("version", "1"))
    try:
        wait_ready(rest_port, process)
        wait_for(lambda: len({line.split("][")[1] for line in log_lines(log, "Server ready")}) == 2, 30,
                 "both workers ready")
        a = np.ones((1, 16), np.int32)
        on_worker0 = on_worker1 = 0
        for _ in range(24):
            before = samples(rest_port).get(("ovms_requests_success", label), 0)
            with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for i in inputs:
                    i.set_data_from_numpy(a)
                assert client.infer("simple", inputs).as_numpy("OUTPUT0")[0, 0] == 2
                stats = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
                served_here = int(stats["inference_stats"]["success"].get("count", 0))
            after = samples(rest_port).get(("ovms_requests_success", label), 0)
            if after == before + 1:
                on_worker0 += 1
                assert served_here == on_worker0
            else:
                assert after == before, "worker 0's /metrics moved by more than its own request"
                on_worker1 += 1
                assert served_here == on_worker1  # worker 1's own count: none of worker 0's requests
        assert on_worker0 and on_worker1, "the kernel sent every connection to one worker"
        assert samples(rest_port)[("ovms_requests_success", label)] == on_worker0
        assert on_worker0 + on_worker1 == 24
    finally:
        stop(process)
