"""ovms pull vs huggingface_hub.snapshot_download on the same Hub imitation and files, on loopback.

    .venv/bin/python bench/pull_bench.py [--large 4] [--large-mib 256] [--small 50] [--rounds 3]
        [--per-connection-mib 0 25] [--clients ovms,huggingface_hub] [--skip-resume] [--baseline DIR]

The imitation runs in its own process (tests/pull/hub_imitation.py, aiohttp with sendfile); each client runs in a
fresh process into a fresh target directory, in an order reversed every round. ovms verifies every file (sha256 /
git blob sha1) before renaming it and, by default, fdatasyncs the files before writing its completion record;
"ovms-nosync" (OVMS_PULL_SYNC=0) skips only that flush, to compare with huggingface_hub, which checks sizes and
never syncs. ``--per-connection-mib`` caps every response (so every connection) of the imitation at that many
MiB/s, as a CDN edge does (0 = no cap, sendfile); several values run as separate imitations in the same rounds,
alternating with the clients. ``--baseline DIR`` adds the client "ovms-base": the same pull run from another
checkout of ovms (e.g. ``git archive main`` with its compiled extensions), so a change and the code before it are
measured in the same rounds. Then a resume measurement: an ovms pull is SIGKILLed halfway and re-run; the overhead is
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


def start_hub(work: pathlib.Path, spec: dict, cap_mib: float = 0) -> tuple[subprocess.Popen, str]:
    spec_path = work / f"spec-{cap_mib:g}.json"
    spec_path.write_text(json.dumps({**spec, "throttle_bps": int(cap_mib * 2**20)} if cap_mib else spec))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "pull" / "hub_imitation.py"), "--spec",
                             str(spec_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the hub imitation did not start")
    return proc, json.loads(line)["endpoint"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ovms(endpoint: str, target: pathlib.Path, env: dict, *, kill_after: float | None = None,
             root: pathlib.Path = ROOT) -> float:
    cmd = [sys.executable, "-m", "ovms", "--pull", "--source_model", REPO, "--model_repository_path", str(target),
           "--task", "text_generation", "--log_level", "WARNING"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env={**env, "HF_ENDPOINT": endpoint, "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL)
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


def settle(seconds: float) -> None:
    """Optionally start each run on a settled machine: the previous run's dirty pages written back (huggingface_hub
    never syncs, so its 512 MiB would otherwise be flushed during whichever run comes next), then ``seconds`` of
    quiet (see --settle for why that is not the default here)."""
    if seconds > 0:
        os.sync()
        time.sleep(seconds)


def cond_name(cap: float) -> str:
    return f"{cap:g} MiB/s per connection" if cap else "unthrottled"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-connection-mib", type=float, nargs="+", default=[0.0],
                        help="cap each connection of the imitation at this many MiB/s (0: no cap); several "
                             "values are measured in the same rounds")
    parser.add_argument("--clients", default="ovms,ovms-nosync,huggingface_hub",
                        help="comma-separated, from ovms, ovms-nosync, huggingface_hub")
    parser.add_argument("--skip-resume", action="store_true", help="no SIGKILL-and-resume measurement")
    parser.add_argument("--baseline", default=None, help="another ovms checkout, measured as client ovms-base")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds of quiet after a sync before each run (default 0: start at once). On this VM "
                             "a wait lets the kernel report the memory freed by the last run's files to the host "
                             "(virtio-balloon free page reporting), and the next run's page cache then faults it "
                             "back in: with 6 s every ovms pull was slow (1.8-2.6 s, 1.4-2.0 s of it in the kernel), "
                             "with none half of them were fast (0.8 s)")
    parser.add_argument("--workdir", default=None, help="where blobs and targets go (default: a temp dir)")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pull_bench_", dir=args.workdir))
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GIT_LFS_", "OVMS_PULL_"))}
    total_mib = args.large * args.large_mib + args.small * 5 / 1024
    spec = make_files(work, args.large, args.large_mib, args.small)
    caps = args.per_connection_mib
    clients = tuple(c.strip() for c in args.clients.split(",") if c.strip())
    if args.baseline:
        clients += ("ovms-base",)
    hubs: dict[float, tuple[subprocess.Popen, str]] = {}
    times: dict[tuple[float, str], list[float]] = {(cap, c): [] for cap in caps for c in clients}
    cpu: dict[tuple[float, str], list[float]] = {(cap, c): [] for cap in caps for c in clients}
    resume_runs: list[tuple[float, float]] = []
    try:
        for cap in caps:
            hubs[cap] = start_hub(work, spec, cap)
        for r in range(args.rounds):
            for cap in caps:
                endpoint = hubs[cap][1]
                order = clients if r % 2 == 0 else clients[::-1]
                for name in order:
                    target = work / f"{name}-{cap:g}-{r}"
                    target.mkdir()
                    settle(args.settle)
                    cpu0 = children_cpu()
                    if name == "huggingface_hub":
                        elapsed = run_hf(endpoint, target / "snapshot", env)
                    elif name == "ovms-base":
                        elapsed = run_ovms(endpoint, target / "models", env,
                                           root=pathlib.Path(args.baseline).resolve())
                    else:
                        elapsed = run_ovms(endpoint, target / "models",
                                           {**env, "OVMS_PULL_SYNC": "0"} if name == "ovms-nosync" else env)
                    times[cap, name].append(elapsed)
                    cpu[cap, name].append(children_cpu() - cpu0)
                    print(f"round {r + 1} {cond_name(cap):26s} {name:16s} {elapsed:7.2f} s  "
                          f"{total_mib / elapsed:8.1f} MiB/s  client CPU {cpu[cap, name][-1]:.2f} s", flush=True)
                    shutil.rmtree(target)
        if not args.skip_resume and "ovms" in clients:
            # Resume: SIGKILL halfway through, re-run the same command; compare with a clean run.
            cap = caps[0]
            ovms_med = statistics.median(times[cap, "ovms"])
            for r in range(args.rounds):
                target = work / f"resume-{r}"
                target.mkdir()
                settle(args.settle)
                killed = run_ovms(hubs[cap][1], target / "models", env, kill_after=ovms_med / 2)
                resumed = run_ovms(hubs[cap][1], target / "models", env)
                resume_runs.append((killed, resumed))
                print(f"resume {r + 1}: killed at {killed:.2f} s, re-run {resumed:.2f} s", flush=True)
                shutil.rmtree(target)
    finally:
        for proc, _ in hubs.values():
            proc.stdin.close()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}; "
          f"load average before: {load_before}")
    print(f"files: {args.large} x {args.large_mib} MiB + {args.small} small ({total_mib:.0f} MiB), loopback, "
          f"{args.rounds} alternating rounds, fresh target each run")
    labels = {"ovms": "ovms --pull (sha256/sha1 verified, fdatasync before the record)",
              "ovms-nosync": "ovms --pull, OVMS_PULL_SYNC=0 (verified, no fdatasync)",
              "huggingface_hub": "huggingface_hub.snapshot_download (size checked, no fsync)",
              "ovms-base": f"ovms --pull from {args.baseline} (baseline, same checks)"}
    for cap in caps:
        print()
        print(f"{cond_name(cap)}:")
        print()
        print("| client | median s | MiB/s | client CPU s (median) | runs (s) |")
        print("|---|---|---|---|---|")
        for key in clients:
            med = statistics.median(times[cap, key])
            print(f"| {labels[key]} | {med:.2f} | {total_mib / med:.0f} | {statistics.median(cpu[cap, key]):.2f} | "
                  f"{', '.join(f'{t:.2f}' for t in times[cap, key])} |")
        if "huggingface_hub" in clients:
            hf_med = statistics.median(times[cap, "huggingface_hub"])
            for key in ("ovms", "ovms-nosync", "ovms-base"):
                if key in clients:
                    print(f"speed-up of {key} over huggingface_hub ({cond_name(cap)}): "
                          f"{hf_med / statistics.median(times[cap, key]):.2f}x")
    if resume_runs:
        killed, resumed = sorted(resume_runs, key=sum)[len(resume_runs) // 2]
        ovms_med = statistics.median(times[caps[0], "ovms"])
        print(f"resume ({cond_name(caps[0])}, median of {len(resume_runs)}): killed at {killed:.2f} s + re-run "
              f"{resumed:.2f} s = {killed + resumed:.2f} s vs clean {ovms_med:.2f} s: overhead "
              f"{killed + resumed - ovms_med:+.2f} s")


if __name__ == "__main__":
    main()
