"""README: "Messages up to 1 GiB". A tensor over 100 MB both ways, over gRPC and over REST with the binary
extension, on a `python -m ovms` process, checked value for value."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.test_cli import serve, stop, wait_ready

# [1, 26.5 M] FP32 = 106 MB: above gRPC's default 4 MB limit by 25x, and above aiohttp's 1 MB default body.
ELEMENTS = 26_500_000


@pytest.fixture(scope="module")
def dynamic_server(model_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("large") / "ovms.log"
    process, grpc_port, rest_port = serve("--model_name", "dynamic", "--model_path", str(model_repo / "dynamic"),
                                          log_path=log)
    try:
        wait_ready(rest_port, process)
        yield grpc_port, rest_port
    finally:
        stop(process)


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    x = np.random.default_rng(17).standard_normal((1, ELEMENTS), dtype=np.float32)
    assert x.nbytes > 100 * 10**6
    return x


def test_100_mb_tensor_round_trip_over_grpc(dynamic_server, big):
    grpc_port, _ = dynamic_server
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        inp = grpcclient.InferInput("x", list(big.shape), "FP32")
        inp.set_data_from_numpy(big)
        y = client.infer("dynamic", [inp], client_timeout=60).as_numpy("y")
    assert y.shape == big.shape and y.nbytes > 100 * 10**6
    assert np.array_equal(y, big * 2)


def test_100_mb_tensor_round_trip_over_rest_binary(dynamic_server, big):
    _, rest_port = dynamic_server
    client = httpclient.InferenceServerClient(f"127.0.0.1:{rest_port}", network_timeout=60, connection_timeout=60)
    try:
        inp = httpclient.InferInput("x", list(big.shape), "FP32")
        inp.set_data_from_numpy(big, binary_data=True)
        out = httpclient.InferRequestedOutput("y", binary_data=True)
        y = client.infer("dynamic", [inp], outputs=[out]).as_numpy("y")
    finally:
        client.close()
    assert y.shape == big.shape and y.nbytes > 100 * 10**6
    assert np.array_equal(y, big * 2)
