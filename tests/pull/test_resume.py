"""Interruptions of a real `python -m ovms --pull`: SIGKILL at random points, SIGINT/SIGTERM, then re-runs."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import ROOT, assert_pulled, content, ovms_command, pull_env, tiny_llm_files
from hub_imitation import Faults

REPO = "OpenVINO/kill-me-ov"


@pytest.fixture
def slow_repo(hub, big_files):
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.bin": big_files["kill24m.bin"],
             "openvino_model.xml": content("kx", 50_000), "tok/vocab.txt": content("vocab", 70_000)}
    hub.add_repo(REPO, files)
    # ~1 MB/s per response: with 6 connections the 24 MiB take about 4 s in total.
    hub.set_faults(REPO, "openvino_model.bin", Faults(throttle_bps=1_000_000, times=10**6))
    return files


def start_pull(hub, models, log_path, **env):
    args = ["--pull", "--source_model", REPO, "--model_repository_path", str(models), "--task", "text_generation"]
    out = open(log_path, "w")
    proc = subprocess.Popen(ovms_command(*args), env=pull_env(hub, **env), cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)
    return proc, out


def wait(proc, timeout=60):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError("the pull did not finish in time")


def wait_for_marker(marker, proc, timeout=30):
    """Until ``proc`` holds the marker (it writes its pid there before it fetches a byte of any file)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads(marker.read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, f"the pull exited ({proc.returncode}) before taking {marker.name}"
        assert time.monotonic() < deadline, f"the pull did not take {marker.name} within {timeout} s"
        time.sleep(0.01)


def bytes_on_disk(sidecar) -> int:
    """What a part's sidecar claims is on disk (0 while it does not exist or is being replaced)."""
    try:
        return sum(d for _, _, d in json.loads(sidecar.read_text())["segments"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_bytes_on_disk(model_dir, name, proc, at_least=1 << 20, timeout=30) -> int:
    """Until the sidecar of ``name`` claims ``at_least`` bytes (the pull records them every checkpoint, 0.5 s):
    a signal sent then interrupts a download with something to resume, however slow the host."""
    sidecar = model_dir / f"{name}.lfs_part.ranges"
    deadline = time.monotonic() + timeout
    while (done := bytes_on_disk(sidecar)) < at_least:
        assert proc.poll() is None, f"the pull exited ({proc.returncode}) before {at_least} bytes of {name}"
        assert time.monotonic() < deadline, f"{name}: {done} bytes on disk after {timeout} s"
        time.sleep(0.01)
    return done


def check_state_is_consistent(model_dir):
    """After a kill: every part of a file over 1 MiB has its sidecar, whose claims fit the file (a smaller part has
    none: it is never trusted, the next run fetches it again whole)."""
    for part in model_dir.rglob("*.lfs_part"):
        sidecar = part.with_name(part.name + ".ranges")
        if part.stat().st_size <= 1 << 20 and not sidecar.exists():
            continue
        assert sidecar.exists(), f"{part} has no sidecar"
        data = json.loads(sidecar.read_text())
        for start, end, done in data["segments"]:
            assert 0 <= done <= end - start


def test_sigkill_at_random_points_then_resume(hub, slow_repo, tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    models = tmp_path / "models"
    model_dir = models / "OpenVINO" / "kill-me-ov"
    marker = model_dir.with_name("kill-me-ov.lfswip")
    resumed = False
    for round_ in range(3):
        log_path = tmp_path / f"run{round_}.log"
        proc, out = start_pull(hub, models, log_path)
        # The random point is counted from the moment the pull takes the marker, not from the process start: on a
        # busy CI host the interpreter's start-up alone took longer than the whole window.
        wait_for_marker(marker, proc)
        time.sleep(rng.uniform(0.3, 1.4))
        proc.kill()  # SIGKILL: no cleanup at all
        wait(proc)
        out.close()
        text = log_path.read_text()
        assert "Traceback" not in text, text
        resumed |= "Resuming openvino_model.bin" in text
        if proc.returncode == 0 or not marker.exists():
            # Finished before the kill, or killed after the download (marker removed) while writing graph.pbtxt
            # or exiting: every file must be complete; the final run below writes the graph again.
            for name, expected in slow_repo.items():
                data = expected if isinstance(expected, bytes) else expected.read_bytes()
                assert (model_dir / name).read_bytes() == data, f"seed {seed}: {name} differs, marker gone"
            break
        assert proc.returncode == -signal.SIGKILL, (seed, text)
        check_state_is_consistent(model_dir)
    proc, out = start_pull(hub, models, tmp_path / "final.log")
    code = wait(proc)
    out.close()
    text = (tmp_path / "final.log").read_text()
    assert code == 0, f"seed {seed}: {text}"
    resumed |= "Resuming openvino_model.bin" in text
    assert resumed, f"seed {seed}: no run resumed the large file from its sidecar"
    assert_pulled(model_dir, slow_repo)
    # Ranges after the first run started mid-segment: bytes on disk were reused, not fetched again.
    starts = [int(r["range"].split("=")[1].split("-")[0]) for r in hub.file_requests("") if
              r["origin"] == "cdn" and r["range"]]
    assert any(s % (1 << 20) for s in starts), f"seed {seed}: no range resumed mid-segment"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_resumes(hub, slow_repo, tmp_path, sig):
    models = tmp_path / "models"
    model_dir = models / "OpenVINO" / "kill-me-ov"
    proc, out = start_pull(hub, models, tmp_path / "a.log")
    wait_for_marker(model_dir.with_name("kill-me-ov.lfswip"), proc)
    before = wait_for_bytes_on_disk(model_dir, "openvino_model.bin", proc)
    proc.send_signal(sig)
    code = wait(proc, 15)
    out.close()
    text = (tmp_path / "a.log").read_text()
    assert code == 1, text
    assert f"Pull of {REPO} stopped by {sig.name}. Partial downloads are kept." in text
    assert "Re-run the same command to resume" in text
    assert "Traceback" not in text
    done = bytes_on_disk(model_dir / "openvino_model.bin.lfs_part.ranges")
    assert before <= done < 24 << 20  # what was recorded stays recorded; the stop came before the end
    proc, out = start_pull(hub, models, tmp_path / "b.log")
    assert wait(proc) == 0
    out.close()
    text = (tmp_path / "b.log").read_text()
    assert f"Resuming openvino_model.bin: {done / 2**20:.1f} of 24.0 MiB already on disk" in text
    assert_pulled(model_dir, slow_repo)


def test_resume_disabled_starts_over(hub, slow_repo, tmp_path):
    models = tmp_path / "models"
    proc, out = start_pull(hub, models, tmp_path / "a.log")
    wait_for_marker(models / "OpenVINO" / "kill-me-ov.lfswip", proc)
    wait_for_bytes_on_disk(models / "OpenVINO" / "kill-me-ov", "openvino_model.bin", proc)
    proc.send_signal(signal.SIGTERM)
    assert wait(proc, 15) == 1
    out.close()
    hub.faults.clear()
    proc, out = start_pull(hub, models, tmp_path / "b.log", GIT_LFS_RESUME_ATTEMPTS="0")
    assert wait(proc) == 0
    out.close()
    text = (tmp_path / "b.log").read_text()
    assert "LFS resume: attempts=0" in text and "Resuming" not in text
    assert_pulled(models / "OpenVINO" / "kill-me-ov", slow_repo)


def test_resumed_single_range_on_a_server_that_ignores_range(hub, big_files, tmp_path):
    """A file fetched as one range, half on disk, and a mirror that answers 200 to Range: start over, intact."""
    files = {"config.json": b"{}", "model.bin": big_files["model8m.bin"]}
    hub.add_repo(REPO, files)
    hub.set_faults(REPO, "model.bin", Faults(throttle_bps=2_000_000, times=1))
    models = tmp_path / "models"
    env = {"OVMS_PULL_SEGMENT_BYTES": str(64 << 20)}  # one range for the whole file
    proc, out = start_pull(hub, models, tmp_path / "a.log", **env)
    wait_for_marker(models / "OpenVINO" / "kill-me-ov.lfswip", proc)
    wait_for_bytes_on_disk(models / "OpenVINO" / "kill-me-ov", "model.bin", proc)
    proc.send_signal(signal.SIGTERM)
    assert wait(proc, 15) == 1
    out.close()
    hub.set_faults(REPO, "model.bin", Faults(ignore_range=True, times=100))
    proc, out = start_pull(hub, models, tmp_path / "b.log", **env)
    assert wait(proc) == 0
    out.close()
    text = (tmp_path / "b.log").read_text()
    assert "Resuming model.bin" in text
    assert "model.bin: the server ignored the Range request (HTTP 200); restarting this file from byte 0" in text
    assert_pulled(models / "OpenVINO" / "kill-me-ov", files)


def test_what_a_kill_mid_write_leaves_is_removed_by_the_rerun(pull, hub, llm_repo, big_files):
    """A SIGKILL between writing a sidecar's (or the record's) temporary copy and renaming it leaves
    ``<name>.tmp<pid>``; one between a file's rename and its sidecar's removal leaves a sidecar without a part.
    bench/pull_kill_resume.py hit the first in 2 of 100 kills: the re-run finished verified but left the file in
    the model directory for good. The state here is what those kills leave, made by hand so that the test is
    deterministic."""
    model_dir = pull.models / "OpenVINO" / "tiny-llm-ov"
    (model_dir / "nested" / "dir").mkdir(parents=True)
    model_dir.with_name("tiny-llm-ov.lfswip").write_text(json.dumps(
        {"source_model": "OpenVINO/tiny-llm-ov", "revision": "main", "pid": 4242}))
    (model_dir / "openvino_model.bin.lfs_part.ranges.tmp4242").write_text('{"digest": ["sha256", "ab')
    (model_dir / "nested" / "dir" / "readme.txt.lfs_part.ranges.tmp4242").write_text("")
    (model_dir / ".ovms_pull.json.tmp4242").write_text("")
    files = tiny_llm_files(big_files)
    (model_dir / "config.json").write_bytes(files["config.json"])  # renamed, verified ...
    (model_dir / "config.json.lfs_part.ranges").write_text("{}")  # ... and its sidecar not yet removed
    run = pull("OpenVINO/tiny-llm-ov", "--task", "text_generation")
    assert run.code == 0, run.output
    assert_pulled(model_dir, files)
