"""Kill -9 a pull at random points and resume it: every run must finish verified, nothing fetched twice beyond
the ranges in flight at the kill.

    nice -n 10 .venv/bin/python bench/pull_kill_resume.py [--runs 100] [--seed S] [--rate-mib 8] [--out DIR]

The Hub imitation (tests/pull/hub_imitation.py) runs in this process, on a thread, and serves one repository:
four LFS files of 16-60 MiB (sizes not multiples of any block) and 28 small files, every LFS response throttled
to ``--rate-mib`` per connection (a CDN edge's cap) so that a pull lasts a few seconds. Each run:

1. starts ``python -m ovms --pull ...`` into a fresh directory and waits until it holds its ``.lfswip`` marker;
2. SIGKILLs it at a random point: even runs after a random time since the marker (0 .. the clean pull's
   marker-to-exit time, so verification, renames and the graph are hit too), odd runs after a random number of
   bytes written (0 .. the repository's size, read from ``/proc/<pid>/io`` ``wchar``: the part files are
   fallocate'd to their full size at once, so their sizes say nothing);
3. re-runs the same command and checks: exit 0, no traceback, every file byte-identical to the hub's, no
   in-flight state left, graph.pbtxt written;
4. counts bytes: the hub records the body bytes it sent on every request. ``excess`` = bytes sent for the run
   (both processes) - the files' sizes. The bound is the bytes sent on the ranges in flight at the kill. The
   engine (``transfer.py``) splits large files into ranges, runs up to OVMS_PULL_CONNECTIONS (32) at once
   (how many it chooses from the measured throughput), and records the bytes of each on disk in the file's sidecar at every 0.5 s checkpoint (and when the
   file's last range ends): what it received after its last record of a file is lost at a kill. So a request
   is in flight when the hub still served it at the kill, or ended it less than ``SOCKET_SLACK`` before the
   last write of its file's sidecar (the sidecar's mtime: the engine's own clock, so a pull starved of CPU
   is judged by what it did, not by the wall clock). ``excess`` above the bound is a byte fetched twice
   beyond the in-flight ranges: a failure. The resumed run must also fetch exactly what the sidecars left
   after the kill say is missing.

A failure keeps both runs' stdout and stderr, the kill point (seed, mode, time, bytes) and the state on disk
after the kill in ``OUT/failures/run-NNN/`` and prints them; nothing is summarised away. Every wait is bounded;
Ctrl+C (or any error) kills the pull in flight and prints the table so far.
"""
from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pull"))

from hub_imitation import Faults, HubImitation  # noqa: E402

REPO = "OpenVINO/kill-resume-ov"
MIB = 1 << 20
LFS_SIZES = {"openvino_model.bin": 60 * MIB + 99_991, "openvino_tokenizer.bin": 16 * MIB + 12_345,
             "openvino_detokenizer.bin": 24 * MIB + 777, "extra/weights.safetensors": 40 * MIB + 3}
SOCKET_SLACK = 0.1  # a body the hub ended this long before a checkpoint may still be in the pull's socket buffer
MARKER_TIMEOUT = 60.0
RUN_TIMEOUT = 180.0
KILL_WAIT = 10.0
HUB_SETTLE_TIMEOUT = 10.0
POLL_SECONDS = 0.002


def small_files(rng: random.Random) -> dict[str, bytes]:
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}',
             "generation_config.json": b'{"do_sample": false}', "empty.txt": b"",
             "openvino_model.xml": rng.randbytes(300_001), "tokenizer.json": rng.randbytes(900_000),
             "nested/dir/readme.txt": b"nested file\n"}
    for i in range(22):
        files[f"small/file_{i:02d}.json"] = json.dumps({"i": i, "pad": "x" * (97 * i)}).encode()
    return files


def build_repository(work: pathlib.Path, seed: int) -> dict[str, pathlib.Path | bytes]:
    rng = random.Random(seed)
    blobs = work / "blobs"
    blobs.mkdir()
    files: dict[str, pathlib.Path | bytes] = {}
    for name, size in LFS_SIZES.items():
        path = blobs / name.replace("/", "_")
        with open(path, "wb") as f:
            left = size
            while left:
                f.write(rng.randbytes(min(left, 8 * MIB)))
                left -= min(left, 8 * MIB)
        files[name] = path
    files.update(small_files(rng))
    return files


def file_size(content) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def pull_env(endpoint: str) -> dict[str, str]:
    """The user's environment with the pull's knobs at their defaults, pointed at the imitation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GIT_LFS_", "OVMS_PULL_"))}
    env.update(HF_ENDPOINT=endpoint, PYTHONUNBUFFERED="1")
    return env


class Pull:
    """One ``python -m ovms --pull`` process, its output in files (never a pipe that could fill and block it)."""

    def __init__(self, models: pathlib.Path, logs: pathlib.Path, name: str, env: dict[str, str]) -> None:
        self.stdout_path = logs / f"{name}.stdout"
        self.stderr_path = logs / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovms", "--pull", "--source_model", REPO, "--model_repository_path", str(models),
             "--task", "text_generation"], cwd=ROOT, env=env, stdout=self._out, stderr=self._err,
            stdin=subprocess.DEVNULL)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None after killing it when it did not end within ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            if self.proc.returncode is not None:
                self._out.close()
                self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(KILL_WAIT)
            except subprocess.TimeoutExpired:
                pass
        self._out.close()
        self._err.close()

    def written(self) -> int | None:
        """Bytes the process passed to write/pwrite so far (``wchar``), None once it is gone."""
        try:
            for line in pathlib.Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def output(self) -> tuple[str, str]:
        return (self.stdout_path.read_text(errors="replace"), self.stderr_path.read_text(errors="replace"))


def wait_for_marker(marker: pathlib.Path, pull: Pull) -> float | None:
    """time.monotonic() when ``pull`` holds the marker (its pid written there), None if it exited first."""
    deadline = time.monotonic() + MARKER_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if json.loads(marker.read_text() or "{}").get("pid") == pull.proc.pid:
                return time.monotonic()
        except (OSError, ValueError):
            pass
        if pull.proc.poll() is not None:
            return None
        time.sleep(0.005)
    return None


def disk_state(model_dir: pathlib.Path, files: dict) -> dict[str, dict]:
    """After a kill, per file: final file present, or the bytes its sidecar claims (0 without a usable one)."""
    out = {}
    for name in files:
        final = model_dir / name
        sidecar = final.with_name(final.name + ".lfs_part.ranges")
        part = final.with_name(final.name + ".lfs_part")
        entry: dict = {"final": final.exists(), "part": part.exists(), "claimed": 0, "recorded_at": None}
        try:
            data = json.loads(sidecar.read_text())
            entry["segments"] = data["segments"]
            entry["claimed"] = sum(d for _, _, d in data["segments"])
            entry["recorded_at"] = sidecar.stat().st_mtime  # wall clock
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out[name] = entry
    return out


class Accounting:
    """Maps the hub's request records to files: body bytes sent per file, per request."""

    def __init__(self, hub: HubImitation, files: dict) -> None:
        repo = hub.repos[REPO]
        self.by_path = {f"/cdn/{f.sha256}": name for name, f in repo.files.items() if f.lfs}
        self.by_path.update({f"/{REPO}/resolve/{repo.sha}/{name}": name for name, f in repo.files.items()})
        self.hub = hub

    def bodies(self, first: int, last: int) -> list[tuple[str, dict]]:
        out = []
        for record in self.hub.requests[first:last]:
            name = self.by_path.get(record["path"])
            if name is not None and record["method"] == "GET" and record["offset"] is not None:
                out.append((name, record))
        return out

    def settle(self, first: int) -> bool:
        """Wait until every body from ``first`` on has ended (a killed client's are noticed at the next write)."""
        deadline = time.monotonic() + HUB_SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            if all(r["ended"] is not None for r in self.hub.requests[first:] if r["offset"] is not None):
                return True
            time.sleep(0.01)
        return False


def check_result(model_dir: pathlib.Path, files: dict) -> list[str]:
    problems = []
    for name, content in files.items():
        got = model_dir / name
        if not got.is_file():
            problems.append(f"{name}: missing")
        elif isinstance(content, bytes):
            if got.read_bytes() != content:
                problems.append(f"{name}: differs from the hub's {len(content)} bytes")
        elif not filecmp.cmp(got, content, shallow=False):
            problems.append(f"{name}: differs from the hub's {content.stat().st_size} bytes")
    leftovers = [str(p.relative_to(model_dir)) for p in model_dir.rglob("*")
                 if p.name.endswith((".lfs_part", ".ranges")) or ".tmp" in p.name]
    if leftovers:
        problems.append(f"in-flight state left behind: {leftovers}")
    if model_dir.with_name(model_dir.name + ".lfswip").exists():
        problems.append("the .lfswip marker is still there")
    if not (model_dir / "graph.pbtxt").is_file():
        problems.append("graph.pbtxt missing")
    return problems


def one_run(index: int, mode: str, point: float, hub: HubImitation, accounting: Accounting, files: dict,
            env: dict, work: pathlib.Path) -> dict:
    run_dir = work / f"run-{index:03d}"
    models = run_dir / "models"
    run_dir.mkdir()
    model_dir = models.joinpath(*REPO.split("/"))
    marker = model_dir.with_name(model_dir.name + ".lfswip")
    result: dict = {"run": index, "mode": mode, "point": point, "problems": []}
    first = len(hub.requests)
    t_start = time.monotonic()
    t_kill = None
    wall_minus_mono = time.time() - time.monotonic()
    killed = Pull(models, run_dir, "killed", env)
    try:
        t_marker = wait_for_marker(marker, killed)
        if t_marker is None:
            result["problems"].append("the pull exited or hung before taking the .lfswip marker")
        else:
            w0 = killed.written() or 0
            deadline = t_marker + RUN_TIMEOUT
            while killed.proc.poll() is None and time.monotonic() < deadline:
                if mode == "time":
                    if time.monotonic() - t_marker >= point:
                        break
                    time.sleep(min(POLL_SECONDS, max(0.0, point - (time.monotonic() - t_marker))))
                else:
                    w = killed.written()
                    if w is not None and w - w0 >= point:
                        break
                    time.sleep(POLL_SECONDS)
            w = killed.written()
            if killed.proc.poll() is None:
                killed.proc.send_signal(signal.SIGKILL)
            t_kill = time.monotonic()
            wall_minus_mono = time.time() - t_kill
            result.update(kill_after_s=round(t_kill - t_marker, 4), kill_written=(w - w0) if w is not None else None)
        code = killed.wait(KILL_WAIT)
    finally:
        killed.kill()
    t_kill = t_kill or time.monotonic()
    result["killed_code"] = code
    result["finished_before_kill"] = code == 0
    if code not in (0, -signal.SIGKILL):
        result["problems"].append(f"the first run ended with code {code} before the kill")
    if not accounting.settle(first):
        result["problems"].append(f"the hub still served the killed pull {HUB_SETTLE_TIMEOUT} s after the kill")
    state = disk_state(model_dir, files)
    result["disk_after_kill"] = state
    result["marker_after_kill"] = marker.exists()
    second = len(hub.requests)

    resumed = Pull(models, run_dir, "resumed", env)
    try:
        code2 = resumed.wait(RUN_TIMEOUT)
    finally:
        resumed.kill()
    result["resumed_code"] = code2
    result["seconds"] = round(time.monotonic() - t_start, 2)
    if code2 is None:
        result["problems"].append(f"the resumed run did not finish within {RUN_TIMEOUT:g} s (killed)")
    elif code2 != 0:
        result["problems"].append(f"the resumed run exited with code {code2}")
    outputs = {"killed": killed.output(), "resumed": resumed.output()}
    for which, (out, err) in outputs.items():
        if "Traceback" in out + err:
            result["problems"].append(f"a traceback in the {which} run's output")
    if code2 == 0:
        result["problems"] += check_result(model_dir, files)
    accounting.settle(second)

    # Bytes: what each run was sent per file, and the ranges in flight at the kill.
    sizes = {name: file_size(c) for name, c in files.items()}
    sent1: dict[str, int] = dict.fromkeys(files, 0)
    sent2: dict[str, int] = dict.fromkeys(files, 0)
    in_flight_bytes, in_flight_ranges, unknown = 0, 0, 0
    requests = []
    for name, r in accounting.bodies(first, second):
        if r["sent"] is None:
            unknown += 1
            continue
        sent1[name] += r["sent"]
        s = state[name]
        ended = r["ended"] if r["ended"] is not None else float("inf")
        recorded = None if s["recorded_at"] is None else s["recorded_at"] - wall_minus_mono
        if s["final"]:
            in_flight = False  # verified and renamed: none of its bytes may be fetched again
        elif recorded is None:
            in_flight = True  # no sidecar: nothing recorded, all of it may be fetched again
        else:
            in_flight = ended >= t_kill or ended > recorded - SOCKET_SLACK
        if in_flight:
            in_flight_bytes += r["sent"]
            in_flight_ranges += 1
        requests.append({"file": name, "offset": r["offset"], "sent": r["sent"], "in_flight": in_flight,
                         "started": round(r["started"] - t_kill, 4), "ended": round(ended - t_kill, 4),
                         "file_recorded": None if recorded is None else round(recorded - t_kill, 4)})
    result["requests_killed_run"] = requests
    recorded_times = [st["recorded_at"] for st in state.values() if st["recorded_at"] is not None]
    # How long before the kill the engine last wrote a sidecar: a long pause is a pull starved of CPU.
    result["last_record_before_kill"] = (round(t_kill + wall_minus_mono - max(recorded_times), 3)
                                         if recorded_times else None)
    for name, r in accounting.bodies(second, len(hub.requests)):
        if r["sent"] is None:
            unknown += 1
            continue
        sent2[name] += r["sent"]
    if unknown:
        result["problems"].append(f"{unknown} responses were sent with sendfile, uncounted")
    excess = sum(sent1.values()) + sum(sent2.values()) - sum(sizes.values())
    result.update(excess=excess, bound=in_flight_bytes, in_flight_ranges=in_flight_ranges,
                  beyond_in_flight=max(0, excess - in_flight_bytes))
    if excess > in_flight_bytes:
        result["problems"].append(f"fetched {excess} bytes twice, {excess - in_flight_bytes} beyond the "
                                  f"{in_flight_bytes} bytes of the {in_flight_ranges} ranges in flight at the kill")
    # The resumed run fetches exactly what the state on disk says is missing.
    refetched = {}
    for name, s in state.items():
        missing = 0 if s["final"] else sizes[name] - s["claimed"]
        if sent2[name] != missing:
            refetched[name] = {"sent": sent2[name], "missing_after_kill": missing}
    if refetched and code2 == 0:
        result["problems"].append(f"the resumed run fetched other than what the sidecars left missing: {refetched}")
    result["lost_in_flight"] = sum(sent1[n] - (sizes[n] if s["final"] else s["claimed"]) for n, s in state.items())
    result["outputs"] = outputs
    return result


def record_failure(out: pathlib.Path, result: dict, seed: int) -> pathlib.Path:
    where = out / "failures" / f"run-{result['run']:03d}"
    where.mkdir(parents=True, exist_ok=True)
    for which, (stdout, stderr) in result["outputs"].items():
        (where / f"{which}.stdout").write_text(stdout)
        (where / f"{which}.stderr").write_text(stderr)
    (where / "kill.json").write_text(json.dumps({"seed": seed, **{k: v for k, v in result.items()
                                                                  if k != "outputs"}}, indent=1))
    return where


def print_failure(result: dict, seed: int, where: pathlib.Path) -> None:
    print(f"\nFAILED run {result['run']} (seed {seed}, kill by {result['mode']} at {result['point']:.3f}, "
          f"after {result.get('kill_after_s')} s, {result.get('kill_written')} bytes written; "
          f"codes {result['killed_code']} -> {result['resumed_code']}):", flush=True)
    for p in result["problems"]:
        print(f"  - {p}")
    for which, (stdout, stderr) in result["outputs"].items():
        print(f"  --- {which} run stdout ---\n{stdout.rstrip()}\n  --- {which} run stderr ---\n{stderr.rstrip()}")
    print(f"  (kept in {where})\n", flush=True)


def mib(n: float) -> str:
    return f"{n / MIB:.2f} MiB"


def report(results: list[dict], args, seed: int, clean: dict, started: str, elapsed: float) -> None:
    failed = [r for r in results if r["problems"]]
    verified = [r for r in results if r["resumed_code"] == 0 and not r["problems"]]
    beyond = [r["beyond_in_flight"] for r in results]
    lost = [r["lost_in_flight"] for r in results]
    bounds = [r["bound"] for r in results]
    by_mode = {m: sum(1 for r in results if r["mode"] == m) for m in ("time", "bytes")}
    early = sum(1 for r in results if r["finished_before_kill"])
    print(f"\n## pull kill -9 and resume, {started}\n")
    print(f"`nice -n 10 .venv/bin/python bench/pull_kill_resume.py --runs {args.runs} --seed {seed} "
          f"--rate-mib {args.rate_mib:g}`; repository {mib(clean['total'])} ({len(LFS_SIZES)} LFS files, "
          f"{clean['files'] - len(LFS_SIZES)} small), clean pull {clean['seconds']:.2f} s "
          f"(marker to exit), {elapsed / 60:.1f} min in all\n")
    print("| runs | killed by time / bytes | exited before the kill | finished verified | refetched beyond "
          "in-flight max / median | refetched within in-flight max / median (bound max) | failures |")
    print("|---|---|---|---|---|---|---|")
    if results:
        print(f"| {len(results)} | {by_mode['time']} / {by_mode['bytes']} | {early} | {len(verified)} | "
              f"{max(beyond)} B / {statistics.median(beyond):.0f} B | {mib(max(lost))} / "
              f"{mib(statistics.median(lost))} ({mib(max(bounds))}) | {len(failed)} |")
    if failed:
        print("\nFailures (full output in OUT/failures/run-NNN/):")
        for r in failed:
            print(f"- run {r['run']}: kill by {r['mode']} at {r['point']:.3f}: " + "; ".join(r["problems"]))
    status = "PASS" if results and not failed and len(results) == args.runs else "FAIL"
    print(f"\n{status}: {len(verified)} of {len(results)} runs finished verified after kill -9 (seed {seed}), "
          f"{len(failed)} failures, refetched beyond in-flight max {max(beyond, default=0)} B, "
          f"within in-flight max {mib(max(lost, default=0))}.", flush=True)


def clean_pull(hub: HubImitation, accounting: Accounting, files: dict, env: dict, work: pathlib.Path) -> dict:
    """One uninterrupted pull: its marker-to-exit time sets the range of kill times; it must fetch each byte once."""
    models = work / "clean" / "models"
    models.mkdir(parents=True)
    model_dir = models.joinpath(*REPO.split("/"))
    first = len(hub.requests)
    pull = Pull(models, work / "clean", "clean", env)
    try:
        t_marker = wait_for_marker(model_dir.with_name(model_dir.name + ".lfswip"), pull)
        code = pull.wait(RUN_TIMEOUT)
    finally:
        pull.kill()
    t_end = time.monotonic()
    stdout, stderr = pull.output()
    problems = check_result(model_dir, files) if code == 0 else [f"exit code {code}"]
    accounting.settle(first)
    sent = sum(r["sent"] or 0 for _, r in accounting.bodies(first, len(hub.requests)))
    total = sum(file_size(c) for c in files.values())
    if sent != total:
        problems.append(f"sent {sent} bytes for {total} bytes of files")
    if problems or t_marker is None:
        raise SystemExit(f"the clean pull failed: {problems}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
    shutil.rmtree(work / "clean")
    return {"seconds": t_end - t_marker, "total": total, "files": len(files)}


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl+C and SIGTERM both end in the cleanup below (a background job of a script starts with SIGINT ignored).
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, help="kill points and file contents (default: random, printed)")
    parser.add_argument("--rate-mib", type=float, default=8.0, help="per-connection cap of the hub, MiB/s")
    parser.add_argument("--out", type=pathlib.Path, help="where runs and failures go (default: a temp dir; kept "
                                                         "when a run fails)")
    parser.add_argument("--json", type=pathlib.Path, help="write every run's figures here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="pull-kill-resume-"))
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"seed {seed}, runs {args.runs}, output in {out}, load average {os.getloadavg()[0]:.2f}", flush=True)

    files = build_repository(out, seed)
    hub = HubImitation().start()
    results: list[dict] = []
    t0 = time.monotonic()
    clean = None
    try:
        hub.add_repo(REPO, files)
        for name in LFS_SIZES:
            hub.set_faults(REPO, name, Faults(throttle_bps=int(args.rate_mib * MIB), times=1 << 62))
        accounting = Accounting(hub, files)
        env = pull_env(hub.hub_url)
        clean = clean_pull(hub, accounting, files, env, out)
        print(f"clean pull: {clean['seconds']:.2f} s from marker to exit, {mib(clean['total'])}", flush=True)
        for index in range(args.runs):
            mode = "time" if index % 2 == 0 else "bytes"
            point = rng.uniform(0, clean["seconds"]) if mode == "time" else float(rng.randrange(clean["total"]))
            result = one_run(index, mode, point, hub, accounting, files, env, out)
            results.append(result)
            if result["problems"]:
                print_failure(result, seed, record_failure(out, result, seed))
            else:
                shutil.rmtree(out / f"run-{index:03d}", ignore_errors=True)
            print(f"run {index:3d} {mode:5s} kill at {result.get('kill_after_s')} s / "
                  f"{mib(result.get('kill_written') or 0)}: {'FAILED' if result['problems'] else 'ok'}, "
                  f"lost in flight {mib(result['lost_in_flight'])} of {result['in_flight_ranges']} ranges, "
                  f"beyond {result['beyond_in_flight']} B, last record {result['last_record_before_kill']} s "
                  f"before the kill, {result['seconds']} s", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the pull in flight was killed; figures so far:", flush=True)
    finally:
        hub.stop()
        if args.json:
            args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "outputs"} for r in results],
                                            indent=1))
        if clean is not None:
            report(results, args, seed, clean, started, time.monotonic() - t0)
        if not any(r["problems"] for r in results) and args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        else:
            shutil.rmtree(out / "blobs", ignore_errors=True)
    return 0 if results and len(results) == args.runs and not any(r["problems"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
