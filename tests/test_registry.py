"""The registry's state machine: unload waits for in-flight requests; failed loads are LOADING + error."""
from __future__ import annotations

import asyncio
import pathlib

import pytest

from ovms.config import ModelConfig, VersionPolicy
from ovms.errors import ModelLoadError, ServingError
from ovms.registry import Registry, VersionState
from ovms.servable import Servable


class RecordingServable(Servable):
    """Stands in for a compiled model: this test is about the registry's bookkeeping, not inference."""

    def __init__(self, version: int) -> None:
        self.name, self.version, self.closed = "m", version, False

    inputs = outputs = property(lambda self: [])

    def close(self) -> None:
        self.closed = True


def make_repo(tmp_path: pathlib.Path, *versions: int) -> ModelConfig:
    for v in versions:
        (tmp_path / "m" / str(v)).mkdir(parents=True, exist_ok=True)
    return ModelConfig("m", tmp_path / "m", VersionPolicy("all"))


def loader(config, version):
    if version == 13:
        raise ModelLoadError("unlucky version")
    return RecordingServable(version)


def test_unload_waits_for_in_flight_and_failed_load_is_reported(tmp_path):
    async def scenario():
        registry = Registry(loader)
        config = make_repo(tmp_path, 1, 2, 13)
        assert await registry.apply([config])
        model = registry.model("m")
        assert {v: e.state for v, e in model.versions.items()} == \
            {1: VersionState.AVAILABLE, 2: VersionState.AVAILABLE, 13: VersionState.LOADING}
        assert model.versions[13].error == "unlucky version"
        assert registry.version_entry("m").version == 2  # default: highest available
        entry = registry.version_entry("m", 2)
        servable = entry.enter()  # a request in flight on version 2
        (tmp_path / "m" / "2").rmdir()
        apply = asyncio.create_task(registry.apply([config]))
        await asyncio.sleep(0.05)
        assert entry.state is VersionState.UNLOADING and not servable.closed
        assert registry.version_entry("m").version == 1  # new requests already go elsewhere
        entry.leave()
        assert await asyncio.wait_for(apply, 5)
        assert entry.state is VersionState.END and servable.closed
        with pytest.raises(ServingError, match="Model with requested version is retired"):
            registry.version_entry("m", 2)
        assert not await registry.apply([config])  # nothing changed
        await registry.close()
    asyncio.run(scenario())


def test_a_failed_load_is_retried_on_back_off_when_its_files_hold_still(tmp_path, caplog):
    """A load that failed for a reason outside its files (a device busy at the time) is tried again after 1 s,
    then 2 s, ...; a version the policy no longer selects keeps serving until then."""
    attempts = []

    def flaky(config, version):
        attempts.append(version)
        if version == 2 and attempts.count(2) < 3:
            raise ModelLoadError("device busy")
        return RecordingServable(version)

    async def scenario():
        registry = Registry(flaky)
        config = ModelConfig("m", tmp_path / "m", VersionPolicy("latest", 1))
        (tmp_path / "m" / "1").mkdir(parents=True)
        await registry.apply([config])
        (tmp_path / "m" / "2").mkdir()
        started = asyncio.get_running_loop().time()
        while registry.version_entry("m").version != 2:
            assert registry.version_entry("m").version == 1  # never without a default version
            await registry.apply([config])
            await asyncio.sleep(0.05)
            assert asyncio.get_running_loop().time() - started < 10, attempts
        elapsed = asyncio.get_running_loop().time() - started
        model = registry.model("m")
        assert model.versions[1].state is VersionState.END
        return elapsed

    caplog.set_level("INFO", logger="ovms.registry")
    elapsed = asyncio.run(scenario())
    assert attempts == [1, 2, 2, 2]
    assert 2.9 < elapsed  # back-off: 1 s after the first failure, 2 s after the second
    retries = [r.getMessage() for r in caplog.records if "trying to load it again" in r.getMessage()]
    assert retries == ["model m version 2: trying to load it again (back-off)"] * 2


def test_a_version_removed_from_disk_under_a_real_request_answers_it_before_its_end(tmp_path):
    """The same promise on a real server: `python -m ovms` with a real OpenVINO model taking about a second per
    inference; version 1's directory is deleted while two requests on it are in flight (nireq 1: one runs, one
    waits for the infer request). Both answer, from version 1, and only then does version 1 reach END."""
    import concurrent.futures
    import json
    import re
    import shutil
    import urllib.request

    import numpy as np
    import openvino as ov
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from tests.test_cli import serve, stop, wait_ready
    from tests.test_drain import slow_model
    from tests.test_reload import wait_for

    ov.save_model(slow_model(), str(tmp_path / "slow" / "1" / "model.xml"), compress_to_fp16=False)
    shutil.copytree(tmp_path / "slow" / "1", tmp_path / "slow" / "2")
    (tmp_path / "config.json").write_text(json.dumps({"model_config_list": [{"config": {
        "name": "slow", "base_path": str(tmp_path / "slow"), "nireq": 1, "model_version_policy": {"all": {}},
        "plugin_config": {"INFERENCE_PRECISION_HINT": "f32"}}}]}))
    log = tmp_path / "ovms.log"
    process, grpc_port, rest_port = serve("--config_path", str(tmp_path / "config.json"), "--metrics_enable",
                                          "--metrics_list", "ovms_current_requests", log_path=log)

    def http(path: str, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{rest_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()

    def version_states() -> dict[str, str]:
        return {v["version"]: v["state"] for v in json.loads(http("/v1/config")[1])["slow"]["model_version_status"]}

    def in_flight() -> float:
        found = re.findall(r'^ovms_current_requests{[^}]*name="slow"[^}]*} (\S+)$', http("/metrics")[1], re.M)
        return sum(float(f) for f in found)

    def infer(version: str):
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            x = grpcclient.InferInput("x", [1, 1], "FP32")
            x.set_data_from_numpy(np.full((1, 1), 0.5, np.float32))
            result = client.infer("slow", [x], model_version=version, client_timeout=60)
            return result.get_response().model_version, float(result.as_numpy("y")[0, 0])

    try:
        wait_ready(rest_port, process)
        assert version_states() == {"1": "AVAILABLE", "2": "AVAILABLE"}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            requests = [pool.submit(infer, "1") for _ in range(2)]
            wait_for(lambda: in_flight() == 2, 30, "both requests in flight")
            shutil.rmtree(tmp_path / "slow" / "1")
            reload = pool.submit(http, "/v1/config/reload", "POST")  # answers once the change is applied
            wait_for(lambda: version_states()["1"] != "AVAILABLE", 30, "version 1 to leave AVAILABLE")
            assert version_states() == {"1": "UNLOADING", "2": "AVAILABLE"}
            assert not all(r.done() for r in requests), "the requests ended before the removal was seen"
            answers = [r.result(60) for r in requests]
            assert reload.result(60)[0] == 201
        wait_for(lambda: version_states()["1"] == "END", 30, "version 1 to reach END")
        assert answers[0] == answers[1] and answers[0][0] == "1"
        assert infer("2") == ("2", answers[0][1])  # the same model: the right answer
        assert in_flight() == 0
        with pytest.raises(InferenceServerException, match="Model with requested version is retired"):
            infer("1")
    finally:
        stop(process)
    changes = re.findall(r"STATE CHANGED: model slow version 1 -> (\w+)", log.read_text())
    assert changes == ["LOADING", "AVAILABLE", "UNLOADING", "END"]
