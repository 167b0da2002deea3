"""Binary image input's cost: the same model fed JPEGs (decoded by ovms) and fed the decoded pixels as raw tensors.

    .venv/bin/python bench/image_bench.py [--seconds 10] [--rounds 2] [--concurrency 4]

One ovms process serves `image`: the demo repository's identity model FP32 [1,3,224,224] with --layout NHWC:NCHW
(OVMS's binary input wants NHWC), so requests are [1,224,224,3]. Clients are tritonclient gRPC, one per thread,
`--concurrency` threads; each round runs, for `--seconds` each, alternating:
  raw       FP32 [1,224,224,3] tensor in raw_input_contents (602 KB), the pixels of the JPEG below, decoded here;
  jpeg      a 224x224 JPEG (quality 90, a smooth synthetic picture) as BYTES [1]: decoded, converted to FP32;
  jpeg-big  a 640x480 JPEG of the same picture: decoded and bilinear-resized to 224x224 too.
It prints requests/s (median over rounds), each image variant's ratio to raw, and ovms's decode time per image
measured in-process (ovms.image_input, one thread). Everything runs on this machine:
the clients' CPU competes with the server's, as it does for every bench here.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.models import write_repository  # noqa: E402
from tests.test_cli import free_port  # noqa: E402


def picture(width: int, height: int) -> np.ndarray:
    """A smooth BGR picture (gradients and discs) that compresses as photos do, not as noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * x / width, 255 * y / height, 128 + 127 * np.sin(x / 23 + y / 31)], axis=-1)
    for cx, cy, r, colour in ((0.3, 0.4, 0.15, (20, 200, 40)), (0.7, 0.6, 0.2, (230, 30, 90))):
        mask = (x - cx * width) ** 2 + (y - cy * height) ** 2 < (r * min(width, height)) ** 2
        img[mask] = colour
    return img.clip(0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def drive(url: str, make_inputs, seconds: float, concurrency: int) -> float:
    """Requests per second over `seconds` with `concurrency` threads, each with its own client."""
    counts = [0] * concurrency
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            with grpcclient.InferenceServerClient(url) as client:
                inputs = make_inputs()
                while time.monotonic() < stop:
                    client.infer("image", inputs)
                    counts[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    if errors:
        raise errors[0]
    return sum(counts) / (time.monotonic() - started)


def decode_cost(data: bytes, repeat: int = 300) -> float:
    """Median microseconds of ovms's own decode (ovms.image_input) of one image to the model's input, in-process."""
    from ovms.image_input import ImageBatch
    from ovms.types import Tensor, TensorSpec

    spec = TensorSpec("INPUT0", "FP32", (1, 224, 224, 3), "NHWC")
    batch = ImageBatch.from_tensor(Tensor("INPUT0", "BYTES", (1,), array=np.array([data], dtype=object)), spec)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        batch.decode()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    small, big = jpeg(picture(224, 224)), jpeg(picture(640, 480))
    pixels = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)[None]

    def raw_inputs():
        tensor = grpcclient.InferInput("INPUT0", [1, 224, 224, 3], "FP32")
        tensor.set_data_from_numpy(pixels)
        return [tensor]

    def image_inputs(data: bytes):
        def make():
            tensor = grpcclient.InferInput("INPUT0", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=object))
            return [tensor]
        return make

    variants = {"raw": raw_inputs, "jpeg": image_inputs(small), "jpeg-big": image_inputs(big)}
    with tempfile.TemporaryDirectory() as tmp:
        config_path = write_repository(pathlib.Path(tmp) / "models")
        config = json.loads(config_path.read_text())
        for entry in config["model_config_list"]:
            if entry["config"]["name"] == "image":
                entry["config"]["layout"] = "NHWC:NCHW"
        config_path.write_text(json.dumps(config))
        grpc_port, rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "ovms", "--config_path", str(config_path), "--port", str(grpc_port),
                   "--rest_port", str(rest_port), "--grpc_bind_address", "127.0.0.1", "--rest_bind_address",
                   "127.0.0.1", "--log_level", "WARNING"]
        process = subprocess.Popen(command, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/models/image/ready", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit("ovms did not become ready")
                    time.sleep(0.2)
            url = f"127.0.0.1:{grpc_port}"
            with grpcclient.InferenceServerClient(url) as client:  # same answer for the JPEG and its pixels
                raw = client.infer("image", raw_inputs()).as_numpy("OUTPUT0")
                decoded = client.infer("image", image_inputs(small)()).as_numpy("OUTPUT0")
                assert np.array_equal(raw, decoded), "the JPEG and its decoded pixels must give the same answer"
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for round_index in range(args.rounds):
                order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
                for name in order:
                    rates[name].append(drive(url, variants[name], args.seconds, args.concurrency))
                    print(f"round {round_index + 1} {name}: {rates[name][-1]:,.0f} req/s", flush=True)
        finally:
            process.terminate()
            process.wait(30)
    decode_us = {name: decode_cost(data) for name, data in (("jpeg", small), ("jpeg-big", big))}
    raw_rate = statistics.median(rates["raw"])
    print(f"\nimage [1,224,224,3] FP32, concurrency {args.concurrency}, {args.seconds:g} s x {args.rounds} rounds")
    print(f"JPEG sizes: 224x224 {len(small):,} B, 640x480 {len(big):,} B; raw tensor {pixels.nbytes:,} B")
    print("| request | req/s (median) | ratio to raw | decode in-process (one thread) |\n|---|---|---|---|")
    for name in variants:
        rate = statistics.median(rates[name])
        cost = f"{decode_us[name]:,.0f} us" if name in decode_us else "-"
        print(f"| {name} | {rate:,.0f} | {rate / raw_rate:.2f} | {cost} |")


if __name__ == "__main__":
    main()
