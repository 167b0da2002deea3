"""ovms pull vs huggingface_hub.snapshot_download on the same Hub imitation and files, on loopback.

    .venv/bin/python bench/pull_bench.py [--large 4] [--large-mib 256] [--small 50] [--rounds 3]

The imitation runs in its own process (tests/pull/hub_imitation.py, aiohttp with sendfile); each client runs in a
fresh process into a fresh target directory, in an order reversed every round. ovms verifies every file (sha256 /
git blob sha1) before renaming it and, by default, fdatasyncs the files before writing its completion record;
"ovms-nosync" (OVMS_PULL_SYNC=0) skips only that flush, to compare with huggingface_hub, which checks sizes and
never syncs. Then a resume measurement: an ovms pull is SIGKILLed halfway and re-run; the overhead is
(killed run + resumed run) - median clean run.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPO = "bench/model-ov"
HF_SCRIPT = ("import sys; from huggingface_hub import snapshot_download; "
             "snapshot_download(sys.argv[1], endpoint=sys.argv[2], local_dir=sys.argv[3])")


def make_files(work: pathlib.Path, large: int, large_mib: int, small: int) -> dict:
    blobs = work / "blobs"
    blobs.mkdir()
    spec: dict = {}
    chunk = os.urandom(8 << 20)
    for i in range(large):
        p = blobs / f"model-{i}.bin"
        with open(p, "wb") as f:
            for j in range(large_mib // 8):
                f.write(bytes([i, j & 255]) + chunk[2:])  # distinct content per file and block
            f.write(chunk[: (large_mib % 8) << 20])
        spec[f"openvino_model_{i}.bin"] = str(p)
    for i in range(small):
        spec[f"small/file_{i:02d}.json"] = {"text": json.dumps({"i": i, "pad": "x" * (200 * (i + 1))})}
    spec["config.json"] = {"text": '{"architectures": ["LlamaForCausalLM"]}'}
    return {"repos": {REPO: spec}}


def start_hub(work: pathlib.Path, spec: dict) -> tuple[subprocess.Popen, str]:
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "pull" / "hub_imitation.py"), "--spec",
                             str(spec_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the hub imitation did not start")
    return proc, json.loads(line)["endpoint"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ovms(endpoint: str, target: pathlib.Path, env: dict, *, kill_after: float | None = None) -> float:
    cmd = [sys.executable, "-m", "ovms", "--pull", "--source_model", REPO, "--model_repository_path", str(target),
           "--task", "text_generation", "--log_level", "WARNING"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "HF_ENDPOINT": endpoint}, stdout=subprocess.DEVNULL)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        return time.perf_counter() - t0
    if proc.wait(1800) != 0:
        raise SystemExit(f"ovms pull failed: exit {proc.returncode}")
    return time.perf_counter() - t0


def run_hf(endpoint: str, target: pathlib.Path, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", HF_SCRIPT, REPO, endpoint, str(target)], check=True,
                   env={**env, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(target.parent / "hf_home"),
                        "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, timeout=1800)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where blobs and targets go (default: a temp dir)")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pull_bench_", dir=args.workdir))
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GIT_LFS_", "OVMS_PULL_"))}
    total_mib = args.large * args.large_mib + args.small * 5 / 1024
    hub, endpoint = start_hub(work, make_files(work, args.large, args.large_mib, args.small))
    try:
        clients = ("ovms", "ovms-nosync", "huggingface_hub")
        times: dict[str, list[float]] = {c: [] for c in clients}
        cpu: dict[str, list[float]] = {c: [] for c in clients}
        for r in range(args.rounds):
            order = clients if r % 2 == 0 else clients[::-1]
            for name in order:
                target = work / f"{name}-{r}"
                target.mkdir()
                cpu0 = children_cpu()
                if name == "huggingface_hub":
                    elapsed = run_hf(endpoint, target / "snapshot", env)
                else:
                    elapsed = run_ovms(endpoint, target / "models",
                                       {**env, "OVMS_PULL_SYNC": "0"} if name == "ovms-nosync" else env)
                times[name].append(elapsed)
                cpu[name].append(children_cpu() - cpu0)
                print(f"round {r + 1} {name:16s} {elapsed:7.2f} s  {total_mib / elapsed:8.1f} MiB/s  "
                      f"client CPU {cpu[name][-1]:.2f} s", flush=True)
                shutil.rmtree(target)
        ovms_med = statistics.median(times["ovms"])
        hf_med = statistics.median(times["huggingface_hub"])
        # Resume: SIGKILL halfway through, re-run the same command; compare with a clean run.
        resume_runs = []
        for r in range(args.rounds):
            target = work / f"resume-{r}"
            target.mkdir()
            killed = run_ovms(endpoint, target / "models", env, kill_after=ovms_med / 2)
            resumed = run_ovms(endpoint, target / "models", env)
            resume_runs.append((killed, resumed))
            print(f"resume {r + 1}: killed at {killed:.2f} s, re-run {resumed:.2f} s", flush=True)
            shutil.rmtree(target)
        killed, resumed = sorted(resume_runs, key=sum)[len(resume_runs) // 2]
    finally:
        hub.stdin.close()
        hub.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}; "
          f"load average before: {load_before}")
    print(f"files: {args.large} x {args.large_mib} MiB + {args.small} small ({total_mib:.0f} MiB), loopback, "
          f"{args.rounds} alternating rounds, fresh target each run")
    print()
    print("| client | median s | MiB/s | client CPU s (median) | runs (s) |")
    print("|---|---|---|---|---|")
    labels = {"ovms": "ovms --pull (sha256/sha1 verified, fdatasync before the record)",
              "ovms-nosync": "ovms --pull, OVMS_PULL_SYNC=0 (verified, no fdatasync)",
              "huggingface_hub": "huggingface_hub.snapshot_download (size checked, no fsync)"}
    for key, name in labels.items():
        med = statistics.median(times[key])
        print(f"| {name} | {med:.2f} | {total_mib / med:.0f} | {statistics.median(cpu[key]):.2f} | "
              f"{', '.join(f'{t:.2f}' for t in times[key])} |")
    print()
    print(f"speed-up of ovms over huggingface_hub: {hf_med / ovms_med:.2f}x (without fdatasync, like "
          f"huggingface_hub: {hf_med / statistics.median(times['ovms-nosync']):.2f}x)")
    print(f"resume (median of {len(resume_runs)}): killed at {killed:.2f} s + re-run {resumed:.2f} s = "
          f"{killed + resumed:.2f} s vs clean {ovms_med:.2f} s: overhead {killed + resumed - ovms_med:+.2f} s")


if __name__ == "__main__":
    main()
