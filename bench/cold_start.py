"""Cold start with and without --cache_dir: process start to /v2/health/ready 200.

    .venv/bin/python bench/cold_start.py [--runs 5]

Two repositories: the demo models (tests/fixtures/models.py) and the tiny LLM fixture as a graph. Each is started
`runs` times without a cache, then once into an empty cache ("cache cold", which also writes it), then `runs`
times from the written cache ("cache warm"). Medians are printed; a figure per run goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_to_ready(config: pathlib.Path, cache: pathlib.Path | None) -> float:
    rest = free_port()
    args = [sys.executable, "-m", "ovms", "--config_path", str(config), "--port", str(free_port()),
            "--rest_port", str(rest), "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
            "--log_level", "WARNING"] + (["--cache_dir", str(cache)] if cache else [])
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{config} not ready in 120 s")
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    from tests.fixtures.models import write_repository
    from tests.genai.conftest import LLM_DIR, LLM_GRAPH

    work = pathlib.Path(tempfile.mkdtemp(prefix="ovms-cold-start-"))
    demo = write_repository(work / "demo")
    (work / "llm" / "tiny").mkdir(parents=True)
    (work / "llm" / "tiny" / "graph.pbtxt").write_text(LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=8))
    llm = work / "llm" / "config.json"
    llm.write_text(json.dumps({"mediapipe_config_list": [{"name": "tiny", "base_path": "tiny"}]}))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {runs} runs each, medians in seconds")
    print("| repository | no cache | cache cold (writes it) | cache warm |")
    print("|---|---|---|---|")
    for name, config in (("demo models (7 models, 8 versions)", demo), ("tiny LLM graph", llm)):
        cache = work / f"cache-{config.parent.name}"
        plain = [start_to_ready(config, None) for _ in range(runs)]
        cold = start_to_ready(config, cache)
        warm = [start_to_ready(config, cache) for _ in range(runs)]
        print(f"  {name}: plain {plain}, cold {cold}, warm {warm}", file=sys.stderr)
        print(f"| {name} | {statistics.median(plain):.2f} | {cold:.2f} | {statistics.median(warm):.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
