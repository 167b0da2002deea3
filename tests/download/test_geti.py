"""Hub geti against a Geti REST API imitation: unavailable (400 naming the missing settings) without GETI_HOST and
friends; a base export found by model name (x-api-key on every request, a dropped transfer fetched again); an
optimized export by id with model_only; a corrupt zip and a refused token failing with the reason and leaving
nothing; a token override never stored."""
from __future__ import annotations

import base64

import pytest

from download_helpers import service_env
from geti_imitation import GetiImitation, GetiModel

XML = b"<net name='detector'/>" * 40
BIN = bytes(range(256)) * 400


@pytest.fixture
def geti():
    g = GetiImitation().start()
    g.add_model("p1", "g1", GetiModel("m-old", "YOLOX", {"model/model.xml": b"<old/>", "model/model.bin": b"0"}))
    g.add_model("p1", "g1", GetiModel("m42", "YOLOX", {"model/model.xml": XML, "model/model.bin": BIN,
                                                       "model/config.json": b"{}"},
                                      optimized={"o7": {"model.xml": XML, "model.bin": BIN[:1000]}}))
    yield g
    g.stop()


@pytest.fixture
def geti_service(geti, service_factory):
    return service_factory(service_env(**geti.env()))


def test_unavailable_without_the_geti_settings(service):
    plugin = next(p for p in service.get("/plugins").json()["available_plugins"]["downloader"]
                  if p["name"] == "geti")
    assert plugin["available"] is False
    assert plugin["unavailable_reason"].startswith("GETI_HOST, GETI_ORGANIZATION_ID, GETI_WORKSPACE_ID, GETI_TOKEN "
                                                   "not set")
    r = service.download([{"name": "YOLOX", "hub": "geti", "config": {"project_id": "p1", "model_group_id": "g1"}}])
    assert r.status_code == 400
    assert r.json()["detail"].startswith("Hub 'geti' is not available: GETI_HOST, GETI_ORGANIZATION_ID")


def test_base_export_found_by_name(geti, geti_service):
    geti.drop_next = 1  # the first export response is cut in the middle: fetched again from byte 0
    r = geti_service.download([{"name": "YOLOX", "hub": "geti",
                                "config": {"project_id": "p1", "model_group_id": "g1"}}], download_path="geti-models")
    assert r.status_code == 200, r.text
    job = geti_service.wait(r.json()["job_ids"][0])
    assert job["status"] == "completed", (job, geti_service.log())
    root = geti_service.models_dir / "geti-models" / "geti" / "base_YOLOX"
    assert (root / "model" / "model.xml").read_bytes() == XML and (root / "model" / "model.bin").read_bytes() == BIN
    assert job["result"]["model_id"] == "m42" and job["result"]["files"] == 3  # the newest model of that name
    assert all(req["key"] == geti.token for req in geti.requests)
    exports = [req for req in geti.requests if req["path"].endswith("/export")]
    assert [req["path"].split("/models/")[1] for req in exports] == ["m42/export", "m42/export"]
    assert not list(geti_service.models_dir.rglob("export.zip"))


def test_optimized_export_by_id(geti, geti_service):
    config = {"project_id": "p1", "model_group_id": "g1", "model_id": "m42", "export_type": "optimized",
              "optimized_model_id": "o7"}
    job = geti_service.wait(geti_service.download([{"name": "YOLOX", "hub": "geti", "config": config}])
                            .json()["job_ids"][0])
    assert job["status"] == "completed", (job, geti_service.log())
    root = geti_service.models_dir / "models" / "geti" / "optimized_m42"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["model.bin", "model.xml"]
    assert [req["query"] for req in geti.requests if req["path"].endswith("/export")] == [{"model_only": "true"}]
    assert not any("/model_groups/g1" == req["path"][-15:] for req in geti.requests), "no lookup with an id"


def test_failures_say_why_and_leave_nothing(geti, geti_service):
    geti.corrupt_next = 1
    base = {"name": "YOLOX", "hub": "geti", "config": {"project_id": "p1", "model_group_id": "g1"}}
    job = geti_service.wait(geti_service.download([base]).json()["job_ids"][0])
    assert job["status"] == "failed" and "fails its CRC check" in job["error"], job
    wrong = base64.b64encode(b"not-the-token").decode()
    job = geti_service.wait(geti_service.download([{**base, "override_credentials": {"GETI_TOKEN": wrong}}],
                                                  download_path="other").json()["job_ids"][0])
    assert job["status"] == "failed"
    assert "The Geti server refused the token for model group g1 of project p1 (HTTP 401)" in job["error"]
    assert "not-the-token" not in str(geti_service.get("/jobs").json()) and wrong not in str(
        geti_service.get("/jobs").json())
    job = geti_service.wait(geti_service.download([{**base, "name": "SSD"}]).json()["job_ids"][0])
    assert job["status"] == "failed" and "no model named 'SSD'" in job["error"] and "YOLOX" in job["error"]
    assert not (geti_service.models_dir / "models" / "geti").exists()
    assert not (geti_service.models_dir / "other" / "geti").exists()
    r = geti_service.download([{"name": "YOLOX", "hub": "geti", "config": {"project_id": "p1"}}])
    assert r.status_code == 400 and "config.model_group_id is required for hub 'geti'" in r.json()["detail"]
    r = geti_service.download([{**base, "config": {**base["config"], "export_type": "optimized"}}])
    assert r.status_code == 400 and "config.optimized_model_id is required" in r.json()["detail"]
