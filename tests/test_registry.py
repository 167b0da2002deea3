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
