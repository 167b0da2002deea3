"""Image endpoints: ovms over HTTP (the openai client) vs the same openvino_genai pipelines called in-process.

    .venv/bin/python bench/images_bench.py [--size 64x64] [--steps 4] [--rounds 7]

Both sides use the fixture Stable Diffusion (tests/fixtures/genai/tiny-sd) on CPU with the same prompt, size
(given to every endpoint: the inpainting pipeline otherwise works at the model's default 64x64), steps and seed.
Per endpoint (generations; edits without a mask = image to image; edits with a mask = inpainting), each round
times, back to back: one in-process call, one ovms request, four in-process calls one after another (one pipeline
runs one call at a time, as in ovms), and four concurrent ovms requests (the wall time of all four). The
in-process side is ``pipeline.generate`` alone; the ovms side is the whole request: multipart or JSON upload, image
decoding, generation, PNG encoding, base64 and the JSON answer. ovms runs as its own process
(python -m ovms --task image_generation) so the client does not share its GIL. This VM's speed drifts from round
to round, so the ratio reported is the median of per-round ratios (each in-process timing against the ovms one
right after it), with the medians of the times. Results also go to bench/results/images.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SD_DIR = ROOT / "tests" / "fixtures" / "genai" / "tiny-sd"
PROMPT = "a watercolor painting of a city"


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _start_server(size: str) -> tuple[subprocess.Popen, int, pathlib.Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = pathlib.Path(tempfile.mkdtemp()) / "ovms.log"
    proc = subprocess.Popen([sys.executable, "-m", "ovms", "--model_path", str(SD_DIR), "--model_name", "sd",
                             "--task", "image_generation", "--max_resolution", size, "--rest_port", str(port),
                             "--rest_bind_address", "127.0.0.1"], cwd=ROOT, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"ovms exited: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/sd/ready", timeout=2):
                return proc, port, log_path
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"ovms not ready after 120 s: {log_path.read_text()}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import openai
    import openvino as ov
    import openvino_genai as ov_genai

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros_like(image)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    image_png, mask_png = _png(image), _png(mask)
    options = {"num_inference_steps": args.steps, "rng_seed": 42}
    t2i = ov_genai.Text2ImagePipeline(str(SD_DIR), "CPU")
    i2i = ov_genai.Image2ImagePipeline(str(SD_DIR), "CPU")
    inpaint = ov_genai.InpaintingPipeline(str(SD_DIR), "CPU")
    image_tensor, mask_tensor = ov.Tensor(image[np.newaxis]), ov.Tensor(mask[np.newaxis])
    local = {
        "generations": lambda: t2i.generate(PROMPT, width=width, height=height, **options),
        "edits": lambda: i2i.generate(PROMPT, image_tensor, width=width, height=height, **options),
        "edits+mask": lambda: inpaint.generate(PROMPT, image_tensor, mask_tensor, width=width, height=height,
                                               **options),
    }
    proc, port, log_path = _start_server(args.size)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0, timeout=600)
    remote = {
        "generations": lambda: client.images.generate(model="sd", prompt=PROMPT, size=args.size, extra_body=options),
        "edits": lambda: client.images.edit(model="sd", prompt=PROMPT, image=("in.png", image_png, "image/png"),
                                            size=args.size, extra_body=options),
        "edits+mask": lambda: client.images.edit(model="sd", prompt=PROMPT, image=("in.png", image_png, "image/png"),
                                                 mask=("mask.png", mask_png, "image/png"), size=args.size,
                                                 extra_body=options),
    }
    pool = concurrent.futures.ThreadPoolExecutor(4)

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    def four_local(call) -> float:
        return timed(lambda: [call() for _ in range(4)])

    def four_remote(call) -> float:
        return timed(lambda: [f.result() for f in [pool.submit(call) for _ in range(4)]])

    results = {}
    try:
        for name in local:
            local[name](), remote[name]()  # warm-up: first inference compiles kernels on both sides
            rows = {"1": [], "4": []}
            for _ in range(args.rounds):
                rows["1"].append((timed(local[name]), timed(remote[name])))
                rows["4"].append((four_local(local[name]), four_remote(remote[name])))
            results[name] = {
                concurrency: {"in_process_s": statistics.median(a for a, _ in pairs),
                              "ovms_s": statistics.median(b for _, b in pairs),
                              "ratio_median": statistics.median(b / a for a, b in pairs),
                              "ratio_quartiles": statistics.quantiles([b / a for a, b in pairs], n=4)[::2]}
                for concurrency, pairs in rows.items()}
    finally:
        client.close()
        pool.shutdown()
        proc.terminate()
        proc.wait(30)
    print(f"tiny-sd {args.size}, {args.steps} steps, {args.rounds} rounds "
          "(median of per-round ratios ovms / in-process)")
    print(f"{'endpoint':<12} {'requests':>8} {'in-process s':>13} {'ovms s':>9} {'ratio':>7} {'quartiles':>13}")
    for name, by_concurrency in results.items():
        for concurrency, r in by_concurrency.items():
            low, high = r["ratio_quartiles"]
            print(f"{name:<12} {concurrency:>8} {r['in_process_s']:>13.3f} {r['ovms_s']:>9.3f} "
                  f"{r['ratio_median']:>7.3f} {low:>6.3f}-{high:.3f}")
    out = ROOT / "bench" / "results" / "images.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"size": args.size, "steps": args.steps, "rounds": args.rounds, "results": results},
                              indent=2))


if __name__ == "__main__":
    main()
