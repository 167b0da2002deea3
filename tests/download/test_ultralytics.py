"""Hub ultralytics: unavailable (400 with the reason, GET /plugins says why) without the ultralytics package's
``yolo`` command; with one on PATH (a stand-in that writes what ``yolo export`` writes and logs its command line),
YOLO weights come from an asset-server imitation through a redirect, resumed after a drop, and are exported once
per precision into the microservice's <model>/<PRECISION>/ layout; a second precision reuses the weights on disk."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys

import pytest

from asset_server import AssetServer, FileFaults
from download_helpers import assert_no_partials, content, service_env

WEIGHTS = b"PK\x03\x04yolo" + content("yolo11n", (2 << 20) + 777)
ASSET_PATH = "ultralytics/assets/releases/download/v8.3.0/yolo11n.pt"

# What `yolo export model=<dir>/<stem>.pt format=openvino [half=True|int8=True]` leaves (ultralytics
# engine/exporter.py): <dir>/<stem>[_int8]_openvino_model/{<stem>.xml, <stem>.bin, metadata.yaml}.
FAKE_YOLO = """#!{python}
import hashlib, json, os, pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[2:])
with open(os.environ["FAKE_YOLO_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_YOLO_FAIL"):
    print("ultralytics: export failed (imitation)", file=sys.stderr)
    sys.exit(3)
weights = pathlib.Path(args["model"])
int8 = args.get("int8") == "True"
out = weights.with_name(weights.stem + ("_int8" if int8 else "") + "_openvino_model")
out.mkdir()
precision = "INT8" if int8 else "FP16" if args.get("half") == "True" else "FP32"
digest = hashlib.sha256(weights.read_bytes()).hexdigest()
(out / (weights.stem + ".xml")).write_text(f"<net precision='{{precision}}' weights='{{digest}}'/>")
(out / (weights.stem + ".bin")).write_bytes(precision.encode() * 100)
(out / "metadata.yaml").write_text("task: detect\\n")
"""


@pytest.fixture
def assets():
    a = AssetServer().start()
    yield a
    a.stop()


def plain_path() -> str:
    """A PATH with this Python and the system's tools only (no ultralytics installed anywhere on it)."""
    path = os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"])
    assert shutil.which("yolo", path=path) is None, "a real yolo is on PATH: this test needs it absent"
    return path


@pytest.fixture
def fake_yolo(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "yolo"
    script.write_text(FAKE_YOLO.format(python=sys.executable))
    script.chmod(0o755)
    return bin_dir, tmp_path / "yolo.log"


def commands(log: pathlib.Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_unavailable_without_the_ultralytics_package(assets, service_factory):
    service = service_factory(service_env(PATH=plain_path(), ULTRALYTICS_ASSETS_URL=assets.url))
    plugin = next(p for p in service.get("/plugins").json()["available_plugins"]["downloader"]
                  if p["name"] == "ultralytics")
    assert plugin["available"] is False
    assert "the ultralytics package is not installed" in plugin["unavailable_reason"]
    assert "pip install ultralytics" in plugin["unavailable_reason"]
    r = service.download([{"name": "yolo11n", "hub": "ultralytics"}])
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("Hub 'ultralytics' is not available: the ultralytics package is not "
                                         "installed")
    assert assets.requests == [] and service.get("/jobs").json() == {"jobs": []}


def test_weights_downloaded_and_exported_per_precision(assets, fake_yolo, service_factory):
    bin_dir, log = fake_yolo
    assets.add(ASSET_PATH, WEIGHTS, redirect=True)  # github.com answers 302 to its release-assets host
    assets.faults[ASSET_PATH] = FileFaults(drop_after=600_000)
    service = service_factory(service_env(
        PATH=os.pathsep.join([str(bin_dir), plain_path()]), FAKE_YOLO_LOG=str(log),
        ULTRALYTICS_ASSETS_URL=f"{assets.url}/ultralytics/assets/releases/download/v8.3.0"))
    plugin = next(p for p in service.get("/plugins").json()["available_plugins"]["downloader"]
                  if p["name"] == "ultralytics")
    assert plugin["available"] is True and plugin["unavailable_reason"] is None
    job = service.wait(service.download([{"name": "yolo11n", "hub": "ultralytics", "type": "vision"}],
                                        download_path="cv").json()["job_ids"][0])
    assert job["status"] == "completed", (job, service.log())
    root = service.models_dir / "cv" / "ultralytics" / "yolo11n"
    assert (root / "yolo11n.pt").read_bytes() == WEIGHTS
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    for precision in ("FP32", "FP16"):
        assert (root / precision / "yolo11n.xml").read_text() == f"<net precision='{precision}' weights='{digest}'/>"
        assert (root / precision / "yolo11n.bin").is_file() and (root / precision / "metadata.yaml").is_file()
    assert not (root / "INT8").exists()
    assert job["result"]["models"] == {"FP32": str(root / "FP32" / "yolo11n.xml"),
                                       "FP16": str(root / "FP16" / "yolo11n.xml")}
    assert job["result"]["sha256"] == digest
    ran = commands(log)
    assert [c[2:] for c in ran] == [["format=openvino"], ["format=openvino", "half=True"]]
    assert all(c[0] == "export" and c[1].startswith("model=") and c[1].endswith("/yolo11n.pt") for c in ran)
    body = [r for r in assets.body_requests(ASSET_PATH) if r["range"] != "bytes=0-0"]
    assert any(r["range"] and not r["range"].startswith("bytes=0-") for r in body), \
        f"resumed with a Range after the drop: {body}"
    assert_no_partials(service.models_dir)

    # INT8 as well: the weights on disk are reused (no body request), the directory keeps FP32 and FP16.
    before = len(assets.body_requests(ASSET_PATH))
    job2 = service.wait(service.download([{"name": "yolo11n", "hub": "ultralytics", "config": {"precision": "int8"}}],
                                         download_path="cv").json()["job_ids"][0])
    assert job2["status"] == "completed", (job2, service.log())
    assert set(job2["result"]["models"]) == {"FP32", "FP16", "INT8"}
    assert (root / "INT8" / "yolo11n.xml").read_text().startswith("<net precision='INT8'")
    assert commands(log)[-1][2:] == ["format=openvino", "int8=True"]
    assert [r for r in assets.body_requests(ASSET_PATH)[before:] if r["range"] != "bytes=0-0"] == []
    # The first request again: the same job, nothing fetched or exported.
    exports = len(commands(log))
    again = service.download([{"name": "yolo11n", "hub": "ultralytics", "type": "vision"}], download_path="cv")
    assert again.json()["job_ids"] == [job["id"]] and len(commands(log)) == exports


def test_a_failed_export_fails_the_job_and_leaves_nothing(assets, fake_yolo, service_factory):
    bin_dir, log = fake_yolo
    assets.add("a/yolov8n.pt", WEIGHTS)
    service = service_factory(service_env(PATH=os.pathsep.join([str(bin_dir), plain_path()]),
                                          FAKE_YOLO_LOG=str(log), FAKE_YOLO_FAIL="1",
                                          ULTRALYTICS_ASSETS_URL=f"{assets.url}/a"))
    job = service.wait(service.download([{"name": "yolov8n", "hub": "ultralytics"}]).json()["job_ids"][0])
    assert job["status"] == "failed"
    assert "yolo export of yolov8n to OpenVINO FP32 failed (exit 3)" in job["error"], job["error"]
    assert not (service.models_dir / "models" / "ultralytics" / "yolov8n").exists()
    r = service.download([{"name": "yolov8n", "hub": "ultralytics", "config": {"precision": "int4"}}])
    assert r.status_code == 400 and "ultralytics exports fp32, fp16, int8 only" in r.json()["detail"]
    r = service.download([{"name": "../etc", "hub": "ultralytics"}])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "models", 0, "name"]
