"""Every transport test runs against both gRPC implementations (``--grpc_server grpcio`` and ``native``): the
same clients, calls and messages must work on either."""
from __future__ import annotations

import pytest

from tests.conftest import ThreadedServer


@pytest.fixture(scope="session", params=["grpcio", "native"])
def server(request, model_repo):
    with ThreadedServer(config_path=model_repo / "config.json", grpc_server=request.param) as running:
        yield running
