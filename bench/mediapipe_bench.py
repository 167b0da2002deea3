"""MediaPipe graphs with Python nodes: latency against the model they wrap, and a generator's streaming rate.

    .venv/bin/python bench/mediapipe_bench.py [--requests 500] [--rounds 3] [--words 200]

One ovms process serves tests/mediapipe/graphs.py's repository (the invalid graphs left out): `dummy` ([1,10] FP32,
b + 1), `python_model` (OVMS's quickstart: one Python node upper-casing a text), `mixed` (Python pre-processing ->
converter -> `dummy` through a model node -> converter -> Python post-processing with two outputs) and `stream` (a
generator node yielding one response per word). A tritonclient gRPC client with one request in flight alternates
rounds of each unary servable and prints the median latency per request, and `mixed` over `dummy` (what two Python
nodes, two converters and a model node add to the model call). Then one ModelStreamInfer request of `--words` words:
responses per second and the time to the first response.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import queue
import statistics
import sys
import tempfile
import time

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mediapipe.graphs import INVALID, write_graph_repository  # noqa: E402
from tests.test_cli import OvmsProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--words", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config_path = write_graph_repository(pathlib.Path(tmp))
        config = json.loads(config_path.read_text())
        config["mediapipe_config_list"] = [g for g in config["mediapipe_config_list"] if g["name"] not in INVALID]
        config_path.write_text(json.dumps(config))
        server = OvmsProcess(pathlib.Path(tmp), None, "--config_path", str(config_path), "--log_level", "WARNING")
        try:
            server.wait_ready()
            grpc_port = server.grpc_port
            url = f"127.0.0.1:{grpc_port}"
            unary(grpcclient.InferenceServerClient(url), args)
            streaming(url, args.words)
        finally:
            server.stop()


def _input(name: str, array: np.ndarray, datatype: str):
    infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def _text(data: bytes):
    infer_input = grpcclient.InferInput("text", [len(data)], "BYTES")
    infer_input._raw_content = data
    return infer_input


def unary(client, args) -> None:
    calls = {
        "dummy (model)": ("dummy", [_input("b", np.ones((1, 10), np.float32), "FP32")]),
        "python_model (1 Python node)": ("python_model", [_text(b"Make this text uppercase.")]),
        "mixed (2 Python nodes + model)": ("mixed", [_input("numbers", np.ones(10, np.float32), "FP32")]),
    }
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for name, (model, inputs) in calls.items():  # warm-up
        for _ in range(50):
            client.infer(model, inputs)
    for _ in range(args.rounds):
        for name, (model, inputs) in calls.items():
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                client.infer(model, inputs)
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    for name, values in medians.items():
        print(f"{name:34s} median {statistics.median(values) * 1e6:8.0f} us per request")
    ratio = statistics.median(medians["mixed (2 Python nodes + model)"]) / statistics.median(medians["dummy (model)"])
    print(f"mixed / dummy: {ratio:.2f}x")


def streaming(url: str, words: int) -> None:
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: received.put((time.perf_counter(), result, error)))
    try:
        start = time.perf_counter()
        client.async_stream_infer("stream", [_text(b" ".join([b"w"] * words))])
        stamps = []
        for _ in range(words):
            stamp, result, error = received.get(timeout=60)
            if error is not None:
                raise SystemExit(f"stream failed: {error}")
            stamps.append(stamp)
    finally:
        client.stop_stream()
    total = stamps[-1] - start
    print(f"stream: {words} responses in {total * 1000:.1f} ms ({words / total:.0f} responses/s), first after "
          f"{(stamps[0] - start) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
