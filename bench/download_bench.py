"""4 models downloaded at once by the download service, next to the same 4 fetched one after another.

The Hub imitation (tests/pull/hub_imitation.py) runs in this process and throttles every connection (a CDN's
per-connection cap is what makes parallel transfers pay); `python -m ovms.download` runs as a real process.

    .venv/bin/python bench/download_bench.py [--models 4] [--mib 16] [--throttle_mib 2] [--connections 2]
                                             [--max_connections 8]

Each pass starts a fresh service on a fresh models directory and times POST -> every job completed. Both passes
run the same service: every job's transfers share one engine bounded by --max_connections; a model's weights
file is planned in --connections ranges (OVMS_PULL_CONNECTIONS, OVMS_PULL_SEGMENT_BYTES), so one model alone
keeps that many connections busy until the engine is saturated and starts cutting ranges.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the imitations import tests.pull.hub_imitation
sys.path.insert(0, str(ROOT / "tests" / "pull"))
sys.path.insert(0, str(ROOT / "tests" / "download"))

from hub_imitation import Faults, HubImitation  # noqa: E402
from download_helpers import free_port  # noqa: E402


def payload(path: pathlib.Path, seed: str, size: int) -> pathlib.Path:
    with open(path, "wb") as f:
        block = hashlib.sha256(seed.encode()).digest() * (1 << 15)  # 1 MiB
        for i in range(size // len(block)):
            f.write(block[:-8] + i.to_bytes(8, "little"))
    return path


def start_service(models: pathlib.Path, env: dict, parallel: int, max_connections: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ovms.download", "--port", str(port), "--models_dir", str(models),
                             "--max_parallel_downloads", str(parallel), "--max_connections", str(max_connections),
                             "--log_level", "WARNING"],
                            env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/api/v1"
    for _ in range(300):
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("service did not start")


def wait_all(url: str, ids: list[str]) -> None:
    while True:
        states = [requests.get(f"{url}/jobs/{i}", timeout=10).json()["status"] for i in ids]
        if any(s in ("failed", "canceled") for s in states):
            raise RuntimeError(states)
        if all(s == "completed" for s in states):
            return
        time.sleep(0.05)


def run_pass(repos: list[str], env: dict, *, parallel: bool, max_connections: int) -> float:
    with tempfile.TemporaryDirectory(prefix="dlbench-") as tmp:
        proc, url = start_service(pathlib.Path(tmp), env, len(repos), max_connections)
        try:
            t0 = time.perf_counter()
            if parallel:
                ids = requests.post(url + "/models/download", params={"download_path": "m"}, timeout=30, json={
                    "models": [{"name": r, "hub": "huggingface"} for r in repos],
                    "parallel_downloads": True}).json()["job_ids"]
                wait_all(url, ids)
            else:
                for r in repos:
                    ids = requests.post(url + "/models/download", params={"download_path": "m"}, timeout=30,
                                        json={"models": [{"name": r, "hub": "huggingface"}]}).json()["job_ids"]
                    wait_all(url, ids)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16, help="size of each model's weights file")
    parser.add_argument("--throttle_mib", type=float, default=2.0, help="MiB/s per connection")
    parser.add_argument("--connections", type=int, default=2, help="ranges a model's weights file is planned in "
                        "(OVMS_PULL_CONNECTIONS)")
    parser.add_argument("--max_connections", type=int, default=None, help="the service's bound on transfers in "
                        "flight across all jobs (default models x connections)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    hub = HubImitation()
    with tempfile.TemporaryDirectory(prefix="dlbench-blobs-") as blobs:
        repos = []
        for i in range(args.models):
            repo = f"OpenVINO/bench-{i}-ov"
            big = payload(pathlib.Path(blobs) / f"{i}.bin", repo, args.mib << 20)
            hub.add_repo(repo, {"config.json": b'{"architectures": ["Qwen2ForCausalLM"]}',
                                "openvino_model.xml": b"<net/>", "openvino_model.bin": big})
            hub.set_faults(repo, "openvino_model.bin", Faults(throttle_bps=int(args.throttle_mib * 2**20),
                                                              times=10**9))
            repos.append(repo)
        hub.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OVMS_PULL_"))}
        env.update(HF_ENDPOINT=hub.hub_url, OVMS_PULL_CONNECTIONS=str(args.connections),
                   OVMS_PULL_SEGMENT_BYTES=str(max(1, args.mib // args.connections) << 20), OVMS_PULL_SYNC="0")
        total = args.models * args.mib
        bound = args.max_connections or args.models * args.connections
        print(f"{args.models} models x {args.mib} MiB, {args.throttle_mib:g} MiB/s per connection, "
              f"{args.connections} range(s) per weights file, at most {bound} connections across all jobs")
        results = {"one after another": [], "4 at once" if args.models == 4 else "all at once": []}
        for _ in range(args.repeat):
            results[list(results)[0]].append(run_pass(repos, env, parallel=False, max_connections=bound))
            results[list(results)[1]].append(run_pass(repos, env, parallel=True, max_connections=bound))
        for name, times in results.items():
            best = min(times)
            print(f"{name:>18}: {best:6.2f} s best of {len(times)} ({total / best:6.1f} MiB/s)  "
                  f"all: {', '.join(f'{t:.2f}' for t in times)}")
        hub.stop()


if __name__ == "__main__":
    main()
