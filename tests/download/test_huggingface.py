"""huggingface and openvino hubs on the pull engine, against the Hub imitation: files verified and identical, the
OVMS layout with graph.pbtxt, identical requests sharing a job, a completed one answered without a fetch,
credentials used and never stored, hub errors in the job. Conversion of transformers-format repositories
(is_ovms: true) is in test_conversion.py."""
from __future__ import annotations

import base64
import concurrent.futures
import json
import sqlite3

from download_helpers import Faults, assert_no_partials, service_env, tiny_repo_files

REPO = "OpenVINO/tiny-int4-ov"


def test_plain_download_lands_verified_where_the_microservice_puts_it(hub, service):
    files = tiny_repo_files()
    hub.add_repo(REPO, files)
    hub.set_faults(REPO, "openvino_model.bin", Faults(drop_after=300_000))  # dropped once, resumed with Range
    r = service.download([{"name": REPO, "hub": "huggingface"}], download_path="dl")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "processing" and body["message"] == "Started processing 1 model(s)"
    job = service.wait(body["job_ids"][0])
    assert job["status"] == "completed", job
    model_dir = service.models_dir / "dl" / "huggingface" / "OpenVINO_tiny-int4-ov"
    for name, data in files.items():
        assert (model_dir / name).read_bytes() == data, name
    assert not (model_dir / "graph.pbtxt").exists()
    assert_no_partials(service.models_dir)
    assert set(job) >= {"id", "operation_type", "model_name", "hub", "output_dir", "status", "start_time",
                        "plugin_name", "model_type", "progress", "plugin", "completion_time", "result", "error"}
    assert job["operation_type"] == "download" and job["model_name"] == REPO and job["hub"] == "huggingface"
    assert job["output_dir"] == str(model_dir) and job["error"] is None and job["completion_time"]
    total = sum(len(d) for d in files.values())
    assert job["progress"] == {"current": total, "total": total, "percentage": 100.0}
    assert job["result"]["model_path"] == str(model_dir) and job["result"]["is_ovms"] is False
    ranged = [r for r in hub.file_requests("/cdn/" + hub.repos[REPO].files["openvino_model.bin"].sha256)
              if r["range"]]
    assert ranged, "the dropped transfer was resumed with a Range request"
    results = service.get("/models/results").json()["results"]
    assert results == [{"job_id": job["id"], "model_name": REPO, "hub": "huggingface", "operation_type": "download",
                        "status": "success", "model_path": str(model_dir), "is_ovms": False,
                        "completion_time": job["completion_time"]}]
    assert [j["id"] for j in service.get("/models/jobs", params={"model_name": REPO}).json()["jobs"]] == [job["id"]]
    assert service.get("/jobs").json()["jobs"][0]["id"] == job["id"]


def test_is_ovms_writes_the_ovms_layout_and_config(hub, service):
    hub.add_repo(REPO, tiny_repo_files())
    r = service.download([{"name": REPO, "hub": "huggingface", "type": "llm", "is_ovms": True,
                           "config": {"precision": "int4", "device": "CPU", "cache_size": 2}}], download_path="ovms")
    job = service.wait(r.json()["job_ids"][0])
    assert job["status"] == "completed", job
    model_dir = service.models_dir / "ovms" / "OpenVINO" / "tiny-int4-ov"
    graph = (model_dir / "graph.pbtxt").read_text()
    assert 'calculator: "HttpLLMCalculator"' in graph and "cache_size: 2," in graph and 'device: "CPU"' in graph
    config = json.loads((service.models_dir / "ovms" / "config.json").read_text())
    assert config["model_config_list"] == [{"config": {"name": REPO, "base_path": str(model_dir)}}]
    assert job["result"]["is_ovms"] is True and job["result"]["config_path"].endswith("ovms/config.json")


def test_openvino_hub_and_task_inferred_from_config_json(hub, service):
    hub.add_repo(REPO, tiny_repo_files())
    job = service.wait(service.download([{"name": "tiny-int4-ov", "hub": "openvino"}]).json()["job_ids"][0])
    assert job["status"] == "completed", job
    assert "HttpLLMCalculator" in (service.models_dir / "models" / "OpenVINO" / "tiny-int4-ov" / "graph.pbtxt").read_text()


def test_identical_concurrent_requests_share_one_job_and_a_completed_one_is_not_fetched_again(hub, service):
    hub.add_repo(REPO, tiny_repo_files(big=4 << 20))
    hub.set_faults(REPO, "openvino_model.bin", Faults(throttle_bps=2 << 20, times=100))
    model = {"name": REPO, "hub": "huggingface"}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: service.download([model]), range(6)))
    ids = {a.json()["job_ids"][0] for a in answers}
    assert len(ids) == 1, [a.text for a in answers]
    job = service.wait(ids.pop())
    assert job["status"] == "completed"
    sha = hub.repos[REPO].files["openvino_model.bin"].sha256
    fetched = len(hub.file_requests("/cdn/" + sha))
    before = len(hub.requests)
    again = service.download([model]).json()
    assert again["job_ids"] == [job["id"]]
    assert len(hub.requests) == before, "a completed model is answered without asking the hub"
    assert fetched >= 1 and len(service.get("/jobs").json()["jobs"]) == 1
    # A different revision or layout is another job.
    other = service.download([{**model, "is_ovms": True}]).json()["job_ids"][0]
    assert other != job["id"]


def test_download_already_on_disk_completes_without_fetching(hub, service_factory, tmp_path):
    """The job store lost (a new service on the same directory with its database removed): the model on disk,
    with its pull record, is recognised and not fetched again."""
    hub.add_repo(REPO, tiny_repo_files())
    env = service_env(hub)
    first = service_factory(env)
    assert first.wait(first.download([{"name": REPO, "hub": "huggingface"}]).json()["job_ids"][0])["status"] == \
        "completed"
    first.stop()
    (first.models_dir / ".ovms_download" / "jobs.sqlite3").unlink()
    for extra in ("jobs.sqlite3-wal", "jobs.sqlite3-shm"):
        (first.models_dir / ".ovms_download" / extra).unlink(missing_ok=True)
    second = service_factory(env)
    before = len(hub.requests)
    job = second.wait(second.download([{"name": REPO, "hub": "huggingface"}]).json()["job_ids"][0])
    assert job["status"] == "completed" and job["result"]["from_cache"] is True
    assert len(hub.requests) == before


def test_gated_repository_with_override_credentials_and_no_credential_stored(hub, service):
    hub.add_repo("meta/gated-ov", tiny_repo_files(), gated=True)
    denied = service.wait(service.download([{"name": "meta/gated-ov", "hub": "huggingface"}],
                                           download_path="a").json()["job_ids"][0])
    assert denied["status"] == "failed" and "gated" in denied["error"] and "HF_TOKEN" in denied["error"]
    token = base64.b64encode(hub.token.encode()).decode()
    ok = service.wait(service.download([{"name": "meta/gated-ov", "hub": "huggingface",
                                         "override_credentials": {"HF_TOKEN": token}}],
                                       download_path="b").json()["job_ids"][0])
    assert ok["status"] == "completed", ok
    assert any(r["auth"] == f"Bearer {hub.token}" for r in hub.requests if r["origin"] == "hub")
    assert not any(r["auth"] for r in hub.requests if r["origin"] == "cdn"), "the token never leaves the hub"
    everything = json.dumps(service.get("/jobs").json())
    db = sqlite3.connect(service.models_dir / ".ovms_download" / "jobs.sqlite3")
    stored = json.dumps(db.execute("SELECT * FROM jobs").fetchall())
    db.close()
    for text in (everything, stored):
        assert hub.token not in text and token not in text and "override_credentials" not in text


def test_unknown_repository_fails_with_the_hubs_error(hub, service):
    job = service.wait(service.download([{"name": "nobody/nothing", "hub": "huggingface"}]).json()["job_ids"][0])
    assert job["status"] == "failed" and "nobody/nothing was not found" in job["error"]
