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
