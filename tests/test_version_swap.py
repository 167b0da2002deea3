"""Version swaps as users make them: a new version directory copied in file by file, byte range by byte range,
while a client calls the model's default version. The model must never be without an available version."""
from __future__ import annotations

import json
import logging
import pathlib
import threading
import time

import numpy as np
import openvino as ov
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ThreadedServer
from tests.fixtures.models import dummy
from tests.test_reload import rest, wait_for


class DefaultVersionClient:
    """Calls `dummy` (default version) from a thread until stopped (at most 30,000 calls); keeps every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        inp = grpcclient.InferInput("b", [1, 10], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 10), np.float32))
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self._stop.is_set() and len(self.answers) + len(self.failures) < 30_000:
                try:
                    self.answers.append(float(client.infer("dummy", [inp]).as_numpy("a")[0, 0]))
                except InferenceServerException as exc:
                    self.failures.append(exc.message())

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: len(self.answers) > 10, what="the first answers")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(30)


def copy_slowly(source: pathlib.Path, target: pathlib.Path, order: list[str], *, ranges: int = 4,
                pause: float = 0.15) -> None:
    """Write `order`'s files of `source` into `target` one after another, each in `ranges` byte ranges, with a
    pause after every range (long enough for the server's 0.1 s poll to see every partial state)."""
    target.mkdir()
    time.sleep(pause)
    for name in order:
        data = (source / name).read_bytes()
        step = max(1, -(-len(data) // ranges))
        with open(target / name, "wb") as out:
            for start in range(0, len(data), step):
                out.write(data[start:start + step])
                out.flush()
                time.sleep(pause)


@pytest.fixture()
def one_version_repo(tmp_path):
    ov.save_model(dummy(1.0), str(tmp_path / "dummy" / "1" / "model.xml"))
    ov.save_model(dummy(2.0), str(tmp_path / "staging" / "model.xml"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "dummy", "base_path": "dummy"}}]}))
    return tmp_path


def states(server) -> dict[str, str]:
    return {v["version"]: v["state"] for v in rest(server.rest_url, "GET", "/v1/config")[1]["dummy"]
            ["model_version_status"]}


@pytest.mark.parametrize("order", [["model.xml", "model.bin"], ["model.bin", "model.xml"]])
def test_version_copied_in_piece_by_piece_never_fails_a_request(one_version_repo, order, caplog):
    caplog.set_level(logging.INFO, logger="ovms.registry")
    with ThreadedServer(config_path=one_version_repo / "config.json", poll_seconds=0.1) as server, \
            DefaultVersionClient(server.grpc_url) as client:
        copy_slowly(one_version_repo / "staging", one_version_repo / "dummy" / "2", order)
        wait_for(lambda: states(server) == {"1": "END", "2": "AVAILABLE"}, what="version 2 served, version 1 END")
        served_before = len(client.answers)
        wait_for(lambda: len(client.answers) > served_before + 10, what="answers from version 2")
    assert client.failures == [], client.failures[:5]
    # Version 1 answered until version 2 took over, and never again after.
    first_v2 = client.answers.index(2.0)
    assert first_v2 > 0 and set(client.answers[:first_v2]) == {1.0} and set(client.answers[first_v2:]) == {2.0}
    log = [r.getMessage() for r in caplog.records]
    # The half-written directory was really seen: version 2 failed at least once while version 1 served on.
    assert any("model dummy version 2 failed to load" in m and "Version 1 keeps serving" in m for m in log), log
    assert "model dummy version 1 keeps serving until version 2 is available" in log
    assert any("model dummy version 2: trying to load it again (its files changed)" in m for m in log), log
    retire = log.index("model dummy version 1 is no longer served (replaced, per the version policy): unloading")
    assert log.index("STATE CHANGED: model dummy version 2 -> AVAILABLE") < retire


def test_failed_version_without_a_predecessor_loads_once_its_files_are_complete(tmp_path):
    """The reported outage: a model whose only new version failed to load stayed down until a restart."""
    (tmp_path / "dummy").mkdir()
    ov.save_model(dummy(5.0), str(tmp_path / "staging" / "model.xml"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_config_list": [{"config": {"name": "dummy", "base_path": "dummy"}}]}))
    (tmp_path / "dummy" / "1").mkdir()
    (tmp_path / "dummy" / "1" / "model.xml").write_bytes((tmp_path / "staging" / "model.xml").read_bytes())
    with ThreadedServer(config_path=tmp_path / "config.json", poll_seconds=0.1) as server:
        assert states(server) == {"1": "LOADING"}
        body = rest(server.rest_url, "GET", "/v1/config")[1]["dummy"]["model_version_status"][0]
        assert body["status"]["error_code"] == "UNKNOWN"
        (tmp_path / "dummy" / "1" / "model.bin").write_bytes((tmp_path / "staging" / "model.bin").read_bytes())
        wait_for(lambda: states(server) == {"1": "AVAILABLE"}, what="version 1 loaded after its files completed")
        inp = grpcclient.InferInput("b", [1, 10], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 10), np.float32))
        with grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
            assert grpc_client.infer("dummy", [inp]).as_numpy("a")[0, 0] == 5.0


def test_config_change_serves_current_versions_until_the_new_ones_load(one_version_repo):
    config_path = one_version_repo / "config.json"
    with ThreadedServer(config_path=config_path, poll_seconds=0.1) as server, \
            DefaultVersionClient(server.grpc_url) as client:
        for nireq in (2, 3, 1):
            config_path.write_text(json.dumps({"model_config_list": [
                {"config": {"name": "dummy", "base_path": "dummy", "nireq": nireq}}]}))
            wait_for(lambda: server.server.registry.models["dummy"].config.nireq == nireq, what=f"nireq {nireq}")
            served = len(client.answers)
            wait_for(lambda: len(client.answers) > served + 10, what="answers after the reload")
    assert client.failures == [], client.failures[:5]
    assert set(client.answers) == {1.0}
