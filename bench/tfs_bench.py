"""TFS gRPC Predict (tensor_content) against KServe ModelInfer (raw_input_contents) on the same ovms server and
model ([1,3,224,224] FP32 `image`), driven by h2load replaying one pre-encoded request of each kind.

Issue 3's target: Predict within 10% of ModelInfer. Usage: .venv/bin/python bench/tfs_bench.py [--seconds 8]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ovms._proto.messages import kserve  # noqa: E402
from ovms._proto.messages import tf_types as types_pb2  # noqa: E402
from ovms._proto.messages import tfs_predict as predict_pb2  # noqa: E402


def frame(message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


def frames(shape=(1, 3, 224, 224)) -> dict[str, tuple[str, bytes]]:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    infer = kserve.ModelInferRequest(model_name="image")
    infer.inputs.add(name="INPUT0", datatype="FP32", shape=shape)
    infer.raw_input_contents.append(x.tobytes())
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "image"
    tensor = predict.inputs["INPUT0"]
    tensor.dtype = types_pb2.DT_FLOAT
    for d in shape:
        tensor.tensor_shape.dim.add(size=d)
    tensor.tensor_content = x.tobytes()
    return {"KServe ModelInfer": ("/inference.GRPCInferenceService/ModelInfer", frame(infer)),
            "TFS Predict": ("/tensorflow.serving.PredictionService/Predict", frame(predict))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def h2load(port: int, path: str, body: pathlib.Path, concurrency: int, seconds: int) -> float:
    cmd = ["h2load", "-D", str(seconds), "--warm-up-time", "1", "-c", str(concurrency), "-m", "1",
           "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    if not done or not rate or done.group(1) != done.group(2):
        raise RuntimeError(f"h2load failed:\n{out[-800:]}")
    return float(rate.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ovms-tfs-bench-"))
    subprocess.run([sys.executable, str(ROOT / "tests/fixtures/models.py"), str(work / "models")], check=True,
                   capture_output=True, timeout=120)
    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "ovms", "--config_path", str(work / "models/config.json"),
                               "--port", str(grpc_port), "--rest_port", str(rest_port), "--grpc_bind_address",
                               "127.0.0.1", "--rest_bind_address", "127.0.0.1", "--log_path", str(work / "ovms.log")],
                              cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"ovms did not become ready; see {work / 'ovms.log'}")
            time.sleep(0.3)
        bodies = {}
        for name, (path, data) in frames().items():
            bodies[name] = (path, work / f"{name.split()[0]}.bin")
            bodies[name][1].write_bytes(data)
        results: dict[tuple[str, int], list[float]] = {}
        for concurrency in map(int, args.concurrency.split(",")):
            for index in range(args.passes):
                order = list(bodies) if index % 2 == 0 else list(reversed(bodies))
                for name in order:
                    path, body = bodies[name]
                    results.setdefault((name, concurrency), []).append(
                        h2load(grpc_port, path, body, concurrency, args.seconds))
        print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, [1,3,224,224] FP32, h2load, "
              f"{args.passes} alternating passes of {args.seconds} s (median)\n")
        print("| c | KServe ModelInfer infer/s | TFS Predict infer/s | Predict / ModelInfer |")
        print("|---|---|---|---|")
        for concurrency in map(int, args.concurrency.split(",")):
            infer = statistics.median(results[("KServe ModelInfer", concurrency)])
            predict = statistics.median(results[("TFS Predict", concurrency)])
            print(f"| {concurrency} | {infer:.0f} | {predict:.0f} | {predict / infer:.2f}x |")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
