"""``ultralytics``: YOLO weights from Ultralytics' asset server, exported to OpenVINO IR with the ultralytics package.

As the Model Download microservice does: the ``.pt`` weights come from the GitHub release assets
(``ULTRALYTICS_ASSETS_URL``, default ``DEFAULT_ASSETS``; ``<assets>/<name>.pt``), fetched here by the pull engine
(parallel ranges, resume; the asset server publishes no digest, so the size it states is checked and the
sha256 is reported), then exported once per precision with ultralytics' own command line
(``yolo export model=<name>.pt format=openvino`` with ``half=True`` for FP16, ``int8=True`` for INT8; ultralytics
fetches its INT8 calibration data itself). The export needs the ultralytics package (and torch): without its
``yolo`` command on the service's PATH the hub is unavailable, and ``GET /plugins`` says so.

Layout, the microservice's ``<model>/<PRECISION>/*.xml``::

    <download_path>/ultralytics/<name>/<name>.pt
    <download_path>/ultralytics/<name>/FP32/<name>.xml, <name>.bin, metadata.yaml
    <download_path>/ultralytics/<name>/FP16/...

``config.precision`` picks one (fp32, fp16, int8); without it FP32 and FP16 are made (INT8 is left out by
default: its calibration needs a data set download that a closed network does not allow).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shlex
import shutil

from ovms.download.hubs import single_file
from ovms.download.hubs.base import BadName, FetchTask, Plugin, Refused, publish
from ovms.pull import convert
from ovms.pull.errors import ConversionError, InterruptedPull
from ovms.pull.settings import from_environment

log = logging.getLogger("ovms.download")

ASSETS_ENV = "ULTRALYTICS_ASSETS_URL"
DEFAULT_ASSETS = "https://github.com/ultralytics/assets/releases/download/v8.3.0"
PRECISIONS = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
DEFAULT_PRECISIONS = ("fp32", "fp16")
RECORD = ".ovms_download.json"
INSTALL_HINT = ("pip install ultralytics into the service's Python environment (it brings torch) so that its `yolo` "
                "command is on PATH. To fetch the .pt weights alone, use hub remote-url with the asset URL "
                "allow-listed.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def assets_url() -> str:
    return (os.environ.get(ASSETS_ENV) or DEFAULT_ASSETS).rstrip("/")


def export_command(weights: pathlib.Path, precision: str) -> list[str]:
    cmd = ["yolo", "export", f"model={weights}", "format=openvino"]
    if precision == "fp16":
        cmd.append("half=True")
    elif precision == "int8":
        cmd.append("int8=True")
    return cmd


def exported_dir(weights: pathlib.Path, precision: str) -> pathlib.Path:
    """Where ``yolo export`` writes: ``<stem>_openvino_model`` (``<stem>_int8_openvino_model`` for INT8) next to
    the weights (ultralytics ``engine/exporter.py``, export_openvino)."""
    return weights.with_name(f"{weights.stem}_{'int8_' if precision == 'int8' else ''}openvino_model")


class UltralyticsPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__("ultralytics", description="YOLO weights from Ultralytics' asset server "
                         f"({ASSETS_ENV}), exported to OpenVINO IR with the ultralytics package (yolo export)")
        self.cannot_list_reason = ("the asset server publishes files, not an index; name the YOLO model (e.g. "
                                   "yolo11n, yolov8s-seg)")

    def refresh(self) -> None:
        """Available exactly when ``yolo`` is on the service's PATH (asked each time, as for optimum-cli)."""
        self.available = shutil.which("yolo") is not None
        self.unavailable_reason = None if self.available else (
            "the ultralytics package is not installed (its `yolo` command is not on PATH): " + INSTALL_HINT)

    def describe(self) -> dict:
        self.refresh()
        return super().describe()

    def model_name(self, request: dict) -> str:
        name = request["name"].removesuffix(".pt")
        if not _NAME.match(name) or ".." in name:
            raise BadName(f"{request['name']!r} is not an Ultralytics model name (e.g. yolo11n, yolov8s-seg)")
        return name

    def precisions(self, request: dict) -> tuple[str, ...]:
        precision = (request.get("config") or {}).get("precision")
        if precision is None:
            return DEFAULT_PRECISIONS
        if precision not in PRECISIONS:
            raise Refused(f"config.precision {precision!r}: ultralytics exports {', '.join(PRECISIONS)} only.")
        return (precision,)

    def check(self, request: dict) -> None:
        self.model_name(request)
        self.refresh()
        super().check(request)
        for field in ("override_credentials", "revision"):
            if request.get(field):
                raise Refused(f"{field} is not used by hub 'ultralytics'.")
        config = request.get("config") or {}
        extra = sorted(k for k, v in config.items() if k != "precision" and v is not None)
        if extra:
            raise Refused(f"config.{extra[0]} is not used by hub 'ultralytics' (it takes config.precision).")
        self.precisions(request)

    def revision(self, request: dict) -> str:
        return ",".join(self.precisions(request))

    def output_dir(self, base: pathlib.Path, request: dict) -> pathlib.Path:
        return base / "ultralytics" / self.model_name(request)

    def fetch(self, task: FetchTask) -> dict:
        name = self.model_name(task.request)
        precisions = self.precisions(task.request)
        url = f"{assets_url()}/{name}.pt"
        record = _read_record(task.final)
        ours = record is not None and record.get("url") == url
        if ours and set(precisions) <= set(record.get("precisions", [])):
            return self._result(task, record, from_cache=True)  # exported before: not a byte fetched
        if ours:  # another precision of a model made here: the new directory keeps the ones it had
            precisions = tuple(p for p in PRECISIONS if p in set(precisions) | set(record.get("precisions", [])))
        elif task.final.exists():
            raise Refused(f"{task.final} already exists and was not made by this service for {url}; remove it or "
                          "choose another download_path.")
        settings = from_environment()
        probe = single_file.probe(url, settings)
        model = task.staging / "model"
        weights = model / f"{name}.pt"
        if ours and (task.final / weights.name).is_file() and not weights.exists():
            # The weights are here already: the engine checks the copy (by size) instead of fetching it again.
            weights.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(task.final / weights.name, weights)
        sha256 = single_file.fetch(url, weights, probe.size, None, settings, label=url,
                                   on_progress=task.on_progress, stop_requested=task.stop_requested,
                                   engine=task.engine)
        task.on_status("converting")
        env = {**os.environ, "YOLO_OFFLINE": "1"}  # no update checks or font downloads from the exporter
        for precision in precisions:
            out = exported_dir(weights, precision)
            shutil.rmtree(out, ignore_errors=True)  # what a killed earlier run left
            cmd = export_command(weights, precision)
            log.info("Exporting %s to OpenVINO %s: %s", name, PRECISIONS[precision], shlex.join(cmd))
            returncode = convert.run_tool(cmd, env, task.stop_requested)
            reason = task.stop_requested()
            if reason:
                raise InterruptedPull(f"Export of {name} stopped ({reason}).")
            xml = out / f"{name}.xml"
            if returncode != 0 or not xml.is_file() or not xml.with_suffix(".bin").is_file():
                raise ConversionError(f"yolo export of {name} to OpenVINO {PRECISIONS[precision]} failed (exit "
                                      f"{returncode}{'' if returncode else f', no {xml.name} in {out.name}'}).",
                                      remedy="Read the exporter's output in the service log; check the model name "
                                             "and the ultralytics installation.")
            target = model / PRECISIONS[precision]
            shutil.rmtree(target, ignore_errors=True)
            os.replace(out, target)
        record = {"url": url, "sha256": sha256, "size": probe.size, "precisions": list(precisions)}
        (model / RECORD).write_text(json.dumps(record))
        publish(model, task.final)
        return self._result(task, record, from_cache=False)

    def _result(self, task: FetchTask, record: dict, *, from_cache: bool) -> dict:
        name = self.model_name(task.request)
        return {"model_path": str(task.final), "is_ovms": False, "weights": str(task.final / f"{name}.pt"),
                "sha256": record["sha256"], "verified_by": "size",
                "models": {PRECISIONS[p]: str(task.final / PRECISIONS[p] / f"{name}.xml")
                           for p in record["precisions"]},
                "files": 1 + 3 * len(record["precisions"]), "from_cache": from_cache}


def _read_record(model_dir: pathlib.Path) -> dict | None:
    try:
        data = json.loads((model_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
