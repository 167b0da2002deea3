"""Jobs across kills, cancels and time: SIGKILL mid-download then restart resumes with Range requests (bytes on disk
not fetched again); DELETE stops the transfer and leaves nothing; progress as server-sent events; the global bound
on parallel downloads."""
from __future__ import annotations

import json
import time

import requests

from download_helpers import Faults, assert_no_partials, content, service_env

REPO = "OpenVINO/slow-int8-ov"
SIZE = 8 << 20


def slow_repo(hub, repo: str = REPO, *, bps: int = 384 << 10, size: int = SIZE) -> bytes:
    data = content(repo, size)
    hub.add_repo(repo, {"config.json": b'{"architectures": ["Qwen2ForCausalLM"]}', "openvino_model.xml": b"<xml/>",
                        "openvino_model.bin": data})
    hub.set_faults(repo, "openvino_model.bin", Faults(throttle_bps=bps, times=10_000))
    return data


def wait_progress(service, job_id: str, fraction: float, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = service.job(job_id)
        if job["progress"]["total"] and job["progress"]["current"] >= fraction * job["progress"]["total"]:
            return job
        assert job["status"] in ("queued", "downloading"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def requested_bytes(requests_seen: list[dict], size: int) -> int:
    total = 0
    for r in requests_seen:
        if r["method"] != "GET":
            continue
        if not r["range"]:
            total += size
            continue
        a, _, b = r["range"].removeprefix("bytes=").partition("-")
        total += (int(b) + 1 if b else size) - int(a)
    return total


def test_sigkill_mid_download_resumes_on_restart_without_refetching(hub, service_factory):
    data = slow_repo(hub)
    env = service_env(hub)
    first = service_factory(env)
    job_id = first.download([{"name": REPO, "hub": "huggingface"}]).json()["job_ids"][0]
    at_kill = wait_progress(first, job_id, 0.45)
    time.sleep(1.2)  # the progress reached the store, and the sidecars hold what is on disk
    first.kill()
    sha = hub.repos[REPO].files["openvino_model.bin"].sha256
    seen = len(hub.requests)
    second = service_factory(env)  # same models directory, same job store
    job = second.job(job_id)
    assert job["status"] in ("queued", "downloading", "completed")
    job = second.wait(job_id)
    assert job["status"] == "completed", (job, second.log())
    model = second.models_dir / "models" / "huggingface" / "OpenVINO_slow-int8-ov"
    assert (model / "openvino_model.bin").read_bytes() == data
    after = [r for r in hub.requests[seen:] if r["path"] == f"/cdn/{sha}"]
    assert after and all(r["range"] for r in after), after
    fetched_again = requested_bytes(after, SIZE)
    assert fetched_again <= SIZE - at_kill["progress"]["current"] * 0.8, (fetched_again, at_kill)
    assert "Resuming 1 unfinished job(s)" in second.log()
    assert_no_partials(second.models_dir)


def test_cancel_stops_the_transfer_and_leaves_nothing(hub, service):
    slow_repo(hub)
    job_id = service.download([{"name": REPO, "hub": "huggingface", "is_ovms": True}]).json()["job_ids"][0]
    wait_progress(service, job_id, 0.1)
    r = service.delete(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "canceled" and r.json()["error"] == "Canceled by request."
    assert service.job(job_id)["status"] == "canceled"
    final = service.models_dir / "models" / "OpenVINO" / "slow-int8-ov"
    assert not final.exists()
    assert not any((service.models_dir / ".ovms_download" / "staging").glob("*"))
    assert_no_partials(service.models_dir)
    count = len(hub.requests)
    time.sleep(1.0)
    assert len(hub.requests) == count, "no transfer after the cancel"
    r = service.delete(f"/jobs/{job_id}")
    assert r.status_code == 409 and "canceled" in r.json()["detail"]
    # The same request again is a new job (a canceled one is not reused).
    again = service.download([{"name": REPO, "hub": "huggingface", "is_ovms": True}]).json()["job_ids"][0]
    assert again != job_id


def test_bound_on_parallel_downloads_and_cancel_of_a_queued_job(hub, service_factory):
    slow_repo(hub, "OpenVINO/a-ov", size=2 << 20)
    slow_repo(hub, "OpenVINO/b-ov", size=2 << 20)
    service = service_factory(service_env(hub), "--max_parallel_downloads", "1")
    ids = service.download([{"name": "OpenVINO/a-ov", "hub": "huggingface"},
                            {"name": "OpenVINO/b-ov", "hub": "huggingface"}], parallel_downloads=True).json()["job_ids"]
    wait_progress(service, ids[0], 0.05)
    assert service.job(ids[1])["status"] == "queued"
    r = service.delete(f"/jobs/{ids[1]}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert service.wait(ids[0])["status"] == "completed"
    assert service.job(ids[1])["status"] == "canceled"
    assert not any(r["path"].startswith("/OpenVINO/b-ov/resolve") for r in hub.requests)


def test_progress_as_server_sent_events(hub, service):
    slow_repo(hub, size=3 << 20, bps=1 << 20)
    job_id = service.download([{"name": REPO, "hub": "huggingface"}]).json()["job_ids"][0]
    events = []
    with requests.get(f"{service.url}/jobs/{job_id}/events", stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "end":
                    break
    assert events[-1] == ("end", {"status": "completed"})
    progress = [e["progress"] for name, e in events if name == "progress"]
    middle = [p for p in progress if 0 < p["current"] < p["total"]]
    assert len(middle) >= 3, progress
    currents = [p["current"] for p in progress]
    assert currents == sorted(currents)
    assert progress[-1]["percentage"] == 100.0
    # A finished job's stream is its record, then the end.
    with requests.get(f"{service.url}/jobs/{job_id}/events", timeout=10) as r:
        assert r.text.count("event: progress") == 1 and r.text.rstrip().endswith('data: {"status": "completed"}')


def test_parallel_downloads_false_runs_the_request_in_order(hub, service):
    slow_repo(hub, "OpenVINO/first-ov", size=2 << 20)
    slow_repo(hub, "OpenVINO/second-ov", size=1 << 20)
    ids = service.download([{"name": "OpenVINO/first-ov", "hub": "huggingface"},
                            {"name": "OpenVINO/second-ov", "hub": "huggingface"}]).json()["job_ids"]
    wait_progress(service, ids[0], 0.05)
    assert service.job(ids[1])["status"] == "queued"
    first, second = service.wait(ids[0]), service.wait(ids[1])
    assert first["status"] == second["status"] == "completed"
    first_done = max(i for i, r in enumerate(hub.requests) if "/cdn/" in r["path"] and r["path"].endswith(
        hub.repos["OpenVINO/first-ov"].files["openvino_model.bin"].sha256))
    second_start = min(i for i, r in enumerate(hub.requests) if "second-ov" in r["path"])
    assert second_start > first_done, "the second model was not asked for before the first one's bytes"


def test_jobs_share_one_bound_on_connections(hub, service_factory):
    """Three models at once, every file in 1 MiB ranges: with --max_connections 2 no more than two requests are
    ever answered at once across the jobs (each job alone would open up to OVMS_PULL_CONNECTIONS=4)."""
    names = [f"OpenVINO/shared{i}-ov" for i in range(3)]
    data = {n: slow_repo(hub, n, size=3 << 20, bps=3 << 20) for n in names}
    service = service_factory(service_env(hub), "--max_connections", "2")
    ids = service.download([{"name": n, "hub": "huggingface"} for n in names], parallel_downloads=True).json()[
        "job_ids"]
    for job_id, name in zip(ids, names):
        job = service.wait(job_id)
        assert job["status"] == "completed", (job, service.log())
        assert (service.models_dir / "models" / "huggingface" / name.replace("/", "_") / "openvino_model.bin"
                ).read_bytes() == data[name]
    # The job is complete once the client has every byte; the imitation records a request's end just after it
    # has sent the last one, so wait for those records.
    deadline = time.monotonic() + 10
    while any(r["ended"] is None for r in hub.requests if r["origin"] == "cdn") and time.monotonic() < deadline:
        time.sleep(0.02)
    cdn = sorted([(r["started"], 1) for r in hub.requests if r["origin"] == "cdn"] +
                 [(r["ended"], -1) for r in hub.requests if r["origin"] == "cdn"])
    most = now = 0
    for _, step in cdn:
        now += step
        most = max(most, now)
    assert most == 2, most
    assert "sharing at most 2 connections" in service.log()
