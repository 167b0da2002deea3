"""Live model management: config.json edits and version directories added or removed while clients send
requests, against a real server polling every 0.2 s."""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openvino as ov
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ThreadedServer
from tests.fixtures.models import dummy, write_repository


def rest(url, method, path, body=None):
    request = urllib.request.Request(f"http://{url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(predicate, timeout=20.0, what=""):
    """Poll ``predicate`` until it is truthy and return that value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except InferenceServerException:  # e.g. the model does not exist yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class LogWatch(logging.Handler):
    """Set when a record of ``logger`` contains ``text`` (from any thread: the server's loop runs in one)."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__()
        self.logger, self.text, self.seen = logging.getLogger(logger), text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def wait(self, timeout: float) -> bool:
        return self.seen.wait(timeout)

    def __enter__(self) -> "LogWatch":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


class Load:
    """Sends `simple` requests from a thread until stopped (at most 20,000); records every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        a = np.ones((1, 16), np.int32)
        with grpcclient.InferenceServerClient(self.url) as client:
            inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
                      grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
            for i in inputs:
                i.set_data_from_numpy(a)
            while not self._stop.is_set() and self.sent < 20_000:
                try:
                    result = client.infer("simple", inputs)
                    if result.as_numpy("OUTPUT0")[0, 0] != 2:
                        self.failures.append("wrong result")
                except InferenceServerException as exc:
                    self.failures.append(str(exc))
                self.sent += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(30)


@pytest.fixture()
def live_repo(tmp_path):
    config = write_repository(tmp_path / "models")
    return config.parent


def infer_dummy(client, version: str = ""):
    inp = grpcclient.InferInput("b", [1, 10], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 10), np.float32))
    return client.infer("dummy", [inp], model_version=version).as_numpy("a")[0, 0]


def test_versions_and_config_change_under_load(live_repo):
    config_path = live_repo / "config.json"
    with ThreadedServer(config_path=config_path, poll_seconds=0.2) as server, Load(server.grpc_url) as load:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert infer_dummy(client) == 2.0
        # a new, higher version becomes the default
        ov.save_model(dummy(3.0), str(live_repo / "dummy" / "3" / "model.xml"))
        wait_for(lambda: client.get_model_metadata("dummy", as_json=True)["versions"] == ["1", "2", "3"],
                 what="version 3")
        assert infer_dummy(client) == 3.0
        # a removed version is retired with OVMS's message
        shutil.rmtree(live_repo / "dummy" / "1")
        wait_for(lambda: rest(server.rest_url, "GET", "/v1/models/dummy/versions/1")[1]
                 ["model_version_status"][0]["state"] == "END", what="version 1 END")
        with pytest.raises(InferenceServerException) as info:
            infer_dummy(client, "1")
        assert info.value.message() == "Model with requested version is retired"
        # config.json edits: one model removed, one added, one changed (nireq) -> reloaded
        config = json.loads(config_path.read_text())
        entries = [e for e in config["model_config_list"] if e["config"]["name"] != "passthrough"]
        entries.append({"config": {"name": "dummy_copy", "base_path": "dummy"}})
        for e in entries:
            if e["config"]["name"] == "dynamic":
                e["config"]["nireq"] = 3
        config_path.write_text(json.dumps({"model_config_list": entries}))
        wait_for(lambda: client.is_model_ready("dummy_copy"), what="dummy_copy")
        wait_for(lambda: rest(server.rest_url, "GET", "/v1/models/passthrough")[1]
                 ["model_version_status"][0]["state"] == "END", what="passthrough END")
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("passthrough")
        assert info.value.message() == "Model with requested name is not found"
        # an invalid file changes nothing and the reload endpoint says why (once the reloads above settled)
        def settled():
            states = {v["state"] for m in rest(server.rest_url, "GET", "/v1/config")[1].values()
                      for v in m["model_version_status"]}
            return states <= {"AVAILABLE", "END"}
        wait_for(settled, what="reloads to settle")
        before = rest(server.rest_url, "GET", "/v1/config")[1]
        config_path.write_text('{"model_config_list": [{"config": {"name": "x", "base_path": "x", "oops": 1}}]}')
        status, body = rest(server.rest_url, "POST", "/v1/config/reload")
        assert status == 400
        assert body["error"].startswith("Reloading config file failed. Check server logs for more info. - ")
        assert "unknown field(s) 'oops'" in body["error"]
        # Another invalid file, with another error: the poller logs it (an error is logged when it changes), so
        # once that line is there, a poll has read an invalid file and applied nothing.
        with LogWatch("ovms.management", "unknown field(s) 'oops_again'") as polled:
            config_path.write_text('{"model_config_list": [{"config": {"name": "x", "base_path": "x", '
                                   '"oops_again": 1}}]}')
            assert polled.wait(20), "no poll logged the invalid file"
        assert rest(server.rest_url, "GET", "/v1/config")[1] == before
        # a valid file again: the reload endpoint reports the change with 201
        config_path.write_text(json.dumps({"model_config_list": entries + [
            {"config": {"name": "passthrough", "base_path": "passthrough"}}]}))
        status, body = rest(server.rest_url, "POST", "/v1/config/reload")
        assert status in (200, 201)  # the poller may have applied it first
        wait_for(lambda: client.is_model_ready("passthrough"), what="passthrough back")
        assert rest(server.rest_url, "POST", "/v1/config/reload")[0] == 200  # nothing left to change
    assert load.sent > 50, "the load thread barely ran"
    assert load.failures == [], load.failures[:5]


def test_heap_is_frozen_after_loads_and_an_unloaded_servable_is_still_freed(live_repo):
    """ovms/heap.py: full collections skip the loaded models (frozen), yet an unloaded model's cycles go away."""
    import gc
    import weakref

    from ovms import heap

    config_path = live_repo / "config.json"
    with ThreadedServer(config_path=config_path, poll_seconds=0.2) as server:
        assert gc.get_freeze_count() > 1000  # the loaded servables and everything else alive at start-up
        servable = server.server.registry.models["passthrough"].versions[1].servable
        servable._test_cycle = [servable]  # only the cycle collector can free it now
        gone = weakref.ref(servable)
        del servable
        heap.settle()  # as after a load: the cycle is in the permanent generation now
        gc.collect()
        assert gone() is not None  # frozen: an ordinary full collection does not free it
        config = json.loads(config_path.read_text())
        config["model_config_list"] = [e for e in config["model_config_list"]
                                       if e["config"]["name"] != "passthrough"]
        config_path.write_text(json.dumps(config))
        wait_for(lambda: rest(server.rest_url, "GET", "/v1/models/passthrough")[1]
                 ["model_version_status"][0]["state"] == "END", what="passthrough END")
        wait_for(lambda: gone() is None, timeout=5, what="the unloaded servable to be freed")
