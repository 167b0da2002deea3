"""Load clients no one here wrote: perf_analyzer (gRPC, HTTP binary), h2load (gRPC), wrk (HTTP JSON).

Each run returns a Result (infer/s or None, with a note) and leaves its command line and output in the work dir.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import statistics
import struct
import subprocess

import numpy as np

from bench_servers import HOST, PEERS, PEERS_PYTHON, Server

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def model_infer_frame(model: str, data: np.ndarray) -> bytes:
    """A gRPC frame (flag 0, big-endian length) holding inference.ModelInferRequest with raw_input_contents.

    Field numbers from the KServe v2 grpc_predict_v2.proto: ModelInferRequest model_name=1, inputs=5,
    raw_input_contents=7; InferInputTensor name=1, datatype=2, shape=3 (packed int64)."""
    shape = b"".join(_varint(d) for d in data.shape)
    tensor = _field(1, b"INPUT0") + _field(2, b"FP32") + _field(3, shape)
    msg = _field(1, model.encode()) + _field(5, tensor) + _field(7, data.astype("<f4").tobytes())
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def json_body(data: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(data.shape),
                                   "data": [round(float(v), 3) for v in data.ravel()]}]}).encode()


def binary_body(data: np.ndarray) -> tuple[bytes, int]:
    """A KServe REST body with the binary-data extension (JSON header, then the raw tensor; output binary too),
    and the header's length for Inference-Header-Content-Length."""
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(data.shape),
                                     "parameters": {"binary_data_size": data.nbytes}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    return header + data.astype("<f4").tobytes(), len(header)


def sample(shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)  # non-negative: ovms' model is Relu


def check_grpc_frame(port: int, frame: bytes, expect_bytes: int) -> None:
    """Send the frame once through grpcio so h2load never measures error replies (gRPC errors are HTTP 200)."""
    import grpc
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        reply = call(frame[5:], timeout=30)  # no serializers: bytes in, bytes out
    if len(reply) < expect_bytes:
        raise RuntimeError(f"gRPC ModelInfer reply of {len(reply)} bytes, expected >= {expect_bytes}")


# ------------------------------------------------------------------------------------------------------ clients

def perf_analyzer_binary() -> tuple[pathlib.Path, dict]:
    # The tritonclient 2.51.0 wheel installs the binary as a script into the venv's bin/.
    binary = PEERS / "bin" / "perf_analyzer"
    if not binary.exists():
        raise SystemExit(f"{binary} missing: run bench/setup_peers.sh first")
    cudart = subprocess.run([str(PEERS_PYTHON), "-c", "import nvidia.cuda_runtime, os; "
                             "print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], 'lib'))"],
                            check=True, timeout=60, capture_output=True, text=True).stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{cudart}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    return pathlib.Path(binary), env


class Result:
    """One measurement: infer/s (None when it failed), a note (unstable, errors), the server's CPU in cores."""

    def __init__(self, value: float | None, note: str = ""):
        self.value, self.note, self.server_cpu = value, note, 0.0


def run_perf_analyzer(pa, server: Server, model: str, protocol: str, concurrency: int, *,
                      interval_ms: int, workdir: pathlib.Path) -> Result:
    binary, env = pa
    port = server.grpc_port if protocol == "grpc" else server.http_port
    csv_path = workdir / f"pa-{server.name}-{model}-{protocol}-{concurrency}.csv"
    # -x 1: without a version perf_analyzer 2.51 picks the one whose ModelStatistics counters grew during the
    # window and fails "failed to find the requested model version" on a server that reports none (ovms today).
    cmd = [str(binary), "-m", model, "-x", "1", "-u", f"{HOST}:{port}", "-i", protocol,
           "--concurrency-range", f"{concurrency}:{concurrency}", "-s", "50", "--max-trials", "3",
           "-p", str(interval_ms), "-f", str(csv_path), "-v"]  # -v prints each pass: the unstable fallback
    timeout = 4 * 3 * interval_ms / 1000 + 60
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(None, f"perf_analyzer timed out after {timeout:.0f}s")
    (workdir / (csv_path.stem + ".log")).write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if csv_path.exists():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        if rows and rows[0].get("Inferences/Second"):
            return Result(float(rows[0]["Inferences/Second"]))
    # No stable measurement within --max-trials: report the median of the passes, marked unstable.
    passes = [float(x) for x in re.findall(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec", proc.stdout)]
    if passes:
        return Result(statistics.median(passes), "unstable")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return Result(None, "perf_analyzer: " + (lines[-1] if lines else f"exit {proc.returncode}"))


def run_h2load(server: Server, model: str, frame_file: pathlib.Path, concurrency: int, *,
               seconds: int, workdir: pathlib.Path) -> Result:
    url = f"http://{HOST}:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
    cmd = ["h2load", "-c", str(concurrency), "-m", "1", "-t", "1", "-D", str(seconds), "--warm-up-time", "1",
           "-d", str(frame_file), "-H", "content-type: application/grpc", "-H", "te: trailers", url]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return Result(None, "h2load timed out")
    (workdir / f"h2load-{server.name}-{model}-{concurrency}.log").write_text(" ".join(cmd) + "\n" + proc.stdout)
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", proc.stdout)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                   proc.stdout)
    if not m or not ok:
        return Result(None, "h2load: " + (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    if int(ok.group(2)) or int(ok.group(3)):
        return Result(float(m.group(1)), f"{ok.group(2)} failed, {ok.group(3)} errored")
    return Result(float(m.group(1)))


WRK_LUA = '''\
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}'''


def run_wrk(server: Server, model: str, body_file: pathlib.Path, concurrency: int, *,
            seconds: int, workdir: pathlib.Path, header_length: int | None = None) -> Result:
    """wrk posting ``body_file``: KServe JSON, or with ``header_length`` the binary-data extension."""
    headers = {"Content-Type": "application/json"} if header_length is None else {
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
    script = workdir / f"post_body_{model}_{'bin' if header_length is not None else 'json'}.lua"
    script.write_text(WRK_LUA.format(body=body_file, headers="".join(
        f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())))
    url = f"{server.http_url}/v2/models/{model}/infer"
    cmd = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s", "--latency",
           "-s", str(script), url]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return Result(None, "wrk timed out")
    (workdir / f"wrk-{server.name}-{model}-{concurrency}.log").write_text(" ".join(cmd) + "\n" + proc.stdout)
    m = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    if not m:
        return Result(None, "wrk: " + (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    notes = []
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", proc.stdout):
        notes.append(f"{bad.group(1)} non-2xx")
    if sock := re.search(r"Socket errors: (.*)", proc.stdout):  # connect/read/write/timeout counts
        notes.append("socket errors: " + sock.group(1).strip())
    return Result(float(m.group(1)), "; ".join(notes))
