"""A DAG pipeline's added latency: the two-model chain pipeline against its two models called one by one.

    .venv/bin/python bench/pipeline_bench.py [--requests 2000] [--rounds 5]

One ovms process serves the demo models and a pipeline `chain` = dummy v1 -> dummy v2 ([1,10] FP32). A tritonclient
gRPC client (one request in flight) alternates rounds of: `chain` once per request; `dummy` v1 then v2 from the
client (the output of the first sent to the second, two round trips). It prints the median per-request latency of
each over the rounds and their ratio; the pipeline saves a round trip, so a ratio under 1 is expected, and the
server-side cost of the pipeline shows as its latency minus one model call (printed too).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.models import write_repository  # noqa: E402
from tests.test_cli import OvmsProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        config_path = write_repository(root / "models")
        config = json.loads(config_path.read_text())
        config["pipeline_config_list"] = [{
            "name": "chain", "inputs": ["b"],
            "nodes": [
                {"name": "first", "model_name": "dummy", "version": 1, "type": "DL model",
                 "inputs": [{"b": {"node_name": "request", "data_item": "b"}}],
                 "outputs": [{"data_item": "a", "alias": "a1"}]},
                {"name": "second", "model_name": "dummy", "version": 2, "type": "DL model",
                 "inputs": [{"b": {"node_name": "first", "data_item": "a1"}}],
                 "outputs": [{"data_item": "a", "alias": "a2"}]}],
            "outputs": [{"result": {"node_name": "second", "data_item": "a2"}}]}]
        config_path.write_text(json.dumps(config))
        server = OvmsProcess(pathlib.Path(tmp), None, "--config_path", str(config_path), "--log_level", "WARNING")
        try:
            server.wait_ready()
            grpc_port = server.grpc_port
            run(grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"), args)
        finally:
            server.stop()


def tensor(array: np.ndarray) -> list:
    inp = grpcclient.InferInput("b", list(array.shape), "FP32")
    inp.set_data_from_numpy(array)
    return [inp]


def run(client, args) -> None:
    b = np.zeros((1, 10), np.float32)

    def pipeline() -> np.ndarray:
        return client.infer("chain", tensor(b)).as_numpy("result")

    def one_by_one() -> np.ndarray:
        a1 = client.infer("dummy", tensor(b), model_version="1").as_numpy("a")
        return client.infer("dummy", tensor(a1), model_version="2").as_numpy("a")

    def one_model() -> np.ndarray:
        return client.infer("dummy", tensor(b), model_version="1").as_numpy("a")

    assert np.array_equal(pipeline(), one_by_one())
    results: dict[str, list[float]] = {"pipeline": [], "one_by_one": [], "one_model": []}
    calls = {"pipeline": pipeline, "one_by_one": one_by_one, "one_model": one_model}
    for call in calls.values():  # warm-up
        for _ in range(200):
            call()
    for round_ in range(args.rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(args.requests):
                call()
            results[name].append((time.perf_counter() - started) / args.requests * 1e6)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.0f} us" for k, v in results.items()),
              file=sys.stderr)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"chain pipeline (1 request, 2 models):     {median['pipeline']:.0f} us per request")
    print(f"dummy v1 then v2 from the client (2 calls): {median['one_by_one']:.0f} us per pair")
    print(f"one dummy call:                             {median['one_model']:.0f} us")
    print(f"ratio pipeline / one by one: {median['pipeline'] / median['one_by_one']:.2f}")
    print(f"pipeline cost over one model call: {median['pipeline'] - median['one_model']:.0f} us "
          f"(a second model call from the client costs {median['one_by_one'] - median['one_model']:.0f} us)")


if __name__ == "__main__":
    main()
