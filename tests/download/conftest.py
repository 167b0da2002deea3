"""Fixtures for the download service: the Hub imitation per test, and the service as a real process."""
from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from download_helpers import HubImitation, Service, service_env  # noqa: E402


@pytest.fixture
def hub():
    h = HubImitation().start()
    yield h
    h.stop()


@pytest.fixture
def service_factory(tmp_path):
    started: list[Service] = []

    def make(env: dict[str, str], *args: str, models_dir: pathlib.Path | None = None) -> Service:
        s = Service(models_dir or tmp_path / "models", env, tmp_path / "service.log", *args)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def service(hub, service_factory):
    return service_factory(service_env(hub))


