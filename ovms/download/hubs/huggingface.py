"""Hugging Face repositories on the pull engine (``ovms.pull``): verified, resumable, ``HF_ENDPOINT`` / ``HF_TOKEN``.

Layout, as the Model Download microservice writes it: ``<download_path>/huggingface/<ORG>_<NAME>`` (the files as
the hub has them). With ``is_ovms`` (or the ``openvino`` hub) the model lands where ``ovms --pull`` puts it,
``<download_path>/<ORG>/<NAME>``, with the ``graph.pbtxt`` for its type, and is added to
``<download_path>/config.json`` so ``python -m ovms --config_path`` serves it. A repository already in OpenVINO
format is laid out as it is (``config.precision`` must then match the precision its name states); a
transformers-format one is downloaded into the job's staging directory and converted there with optimum-intel's
``optimum-cli export openvino`` (ovms/pull/convert.py; weight format from ``config.precision``, default int8 as
``ovms --pull``; NPU forces int4 with ``--sym --ratio 1.0 --group-size -1``), then published in one rename. The
conversion's record (``.ovms_download.json``) answers a repeated identical request without a fetch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import threading

from ovms.download.hubs import listing
from ovms.download.hubs.base import BadName, FetchTask, Plugin, Refused, publish
from ovms.pull import config_edit, convert, graph, state, tasks
from ovms.pull.errors import ConversionError, InterruptedPull, PullError
from ovms.pull.hub import HubClient
from ovms.pull.paths import ModelPaths
from ovms.pull.pull import fetch_small, pull_repository
from ovms.pull.settings import from_environment

log = logging.getLogger("ovms.download")

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PRECISION_IN_NAME = re.compile(r"-(int4|int8|fp16|fp32)(?:-|$)", re.IGNORECASE)

# ModelRequest.type -> the OVMS task whose graph.pbtxt is written (ovms/pull/graph.py)
TASK_OF_TYPE = {"llm": "text_generation", "vlm": "text_generation", "embeddings": "embeddings",
                "rerank": "rerank", "image_generation": "image_generation"}
CREDENTIAL_KEYS = ("HF_TOKEN", "hf_token", "token")
# optimum-cli cannot infer the task of a local directory; ModelRequest.type "vlm" is image-text-to-text
OPTIMUM_TASK_OF_TYPE = {"vlm": "image-text-to-text"}
DEFAULT_WEIGHT_FORMAT = "int8"  # ovms --pull's default --weight-format
CONVERSION_RECORD = ".ovms_download.json"
EXPORT_DIR = ".export"  # under the job's staging directory; no repository id starts with "."


def weight_format(config: dict) -> tuple[str, str | None]:
    """(--weight-format, extra quantization parameters) for a request's config, NPU forcing int4 as OVMS does."""
    if (config.get("device") or "").upper() == "NPU":
        return "int4", convert.NPU_QUANTIZATION
    return (config.get("precision") or DEFAULT_WEIGHT_FORMAT).lower(), None


_CONFIG_LOCK = threading.Lock()  # jobs finishing together in one download_path share its config.json


def add_to_config(config_path: pathlib.Path, name: str, model_dir: pathlib.Path) -> None:
    """Add ``name`` to the OVMS config.json next to the models (kept as it is when already there)."""
    with _CONFIG_LOCK:
        try:
            config_edit.add_model(str(config_path), name, str(model_dir))
        except PullError as exc:
            if "already exists" not in exc.message:
                raise  # "Model with the same name already exists": the entry points to this very directory


def read_conversion_record(model_dir: pathlib.Path) -> dict | None:
    try:
        data = json.loads((model_dir / CONVERSION_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("source_model"), str) else None


class HuggingFacePlugin(Plugin):
    def __init__(self, name: str = "huggingface", *, always_ovms: bool = False) -> None:
        super().__init__(name, description="Hugging Face Hub repositories through the verified, resumable pull "
                         "engine (HF_ENDPOINT, HF_TOKEN)" if not always_ovms else
                         "OpenVINO-organisation repositories on the Hugging Face Hub, laid out for OVMS with "
                         "graph.pbtxt")
        self.always_ovms = always_ovms
        self.supports_listing = True
        self.listing_filter_fields = listing.HF_FILTERS

    def list_models(self, filters: dict, limit: int, offset: int, credentials: dict[str, str]) -> dict:
        """The Hub's model search (``/api/models``); the openvino hub lists the OpenVINO organisation's."""
        token = next((credentials[k] for k in CREDENTIAL_KEYS if k in credentials), None)
        return listing.huggingface(filters, limit, offset, token, hub=self.name,
                                   author="OpenVINO" if self.always_ovms else None)

    def repo_id(self, request: dict) -> str:
        name = request["name"]
        if self.always_ovms and "/" not in name:
            name = f"OpenVINO/{name}"
        return name

    def is_ovms(self, request: dict) -> bool:
        return self.always_ovms or bool(request.get("is_ovms"))

    def check(self, request: dict) -> None:
        repo_id = self.repo_id(request)
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            raise BadName(f"{request['name']!r} is not a Hugging Face repository id (ORG/NAME)")
        for key in (request.get("override_credentials") or {}):
            if key not in CREDENTIAL_KEYS:
                raise Refused(f"override_credentials.{key} is not used by hub {self.name!r}; it takes HF_TOKEN.")
        config = request.get("config") or {}
        extra = sorted(k for k, v in config.items()
                       if k not in ("precision", "device", "cache_size") and v is not None)
        if extra:
            raise Refused(f"config.{extra[0]} is not supported by hub {self.name!r} in this service.")
        if not self.is_ovms(request):
            given = [k for k in ("precision", "device", "cache_size") if config.get(k) is not None]
            if given:
                raise Refused(f"config.{given[0]} only applies with is_ovms: true (a plain download keeps the "
                              "repository as it is).")
            return
        kind = request.get("type")
        if kind is not None and kind not in TASK_OF_TYPE:
            raise Refused(f"type {kind!r}: this service writes no OVMS graph for it (it does for "
                          f"{', '.join(TASK_OF_TYPE)}).")
        if self.always_ovms:
            # OpenVINO-organisation repositories are converted already: a precision their name does not state
            # cannot be had. On the huggingface hub the format is known at fetch time (_check_precision there).
            self._check_precision(repo_id, config.get("precision"))

    def _check_precision(self, repo_id: str, precision: str | None) -> None:
        """For a repository already in OpenVINO format: the requested precision must be the one its name states."""
        if precision is None:
            return
        stated = _PRECISION_IN_NAME.search(repo_id.split("/")[1])
        if stated is None or stated.group(1).lower() != precision.lower():
            raise Refused(f"config.precision {precision!r}: {repo_id} is already in OpenVINO format "
                          f"({'in ' + stated.group(1).lower() if stated else 'its name states no precision'}) "
                          f"and is not converted again; request an OpenVINO repository in {precision} (e.g. "
                          f"OpenVINO/<model>-{precision}-ov), the transformers-format original (converted with "
                          f"optimum-intel), or omit config.precision.")

    def revision(self, request: dict) -> str:
        return request.get("revision") or "main"

    def output_dir(self, base: pathlib.Path, request: dict) -> pathlib.Path:
        repo_id = self.repo_id(request)
        if self.is_ovms(request):
            return base.joinpath(*repo_id.split("/"))
        return base / "huggingface" / repo_id.replace("/", "_")

    def _settings(self, task: FetchTask):
        settings = from_environment()
        token = next((task.credentials[k] for k in CREDENTIAL_KEYS if k in task.credentials), None)
        return dataclasses.replace(settings, token=token) if token else settings

    def fetch(self, task: FetchTask) -> dict:
        request = task.request
        repo_id = self.repo_id(request)
        revision = self.revision(request)
        config = request.get("config") or {}
        settings = self._settings(task)
        wanted = self._conversion_wanted(request)
        converted = read_conversion_record(task.final)
        if converted is not None and converted.get("source_model") == repo_id and wanted is not None and all(
                converted.get(k) == v for k, v in wanted.items()):
            # Converted by this service from the same repository, revision and weight format: no byte fetched.
            return self._result(task, converted.get("commit"), converted.get("files", 0), from_cache=True,
                                conversion=converted)
        record = state.read_record(task.final / ".ovms_pull.json")
        if record is not None and record.get("source_model") == repo_id and record.get("revision") == revision:
            # Already here and verified when it was pulled: answered without a byte fetched.
            if self.is_ovms(request):
                self._check_precision(repo_id, config.get("precision"))
            return self._result(task, record.get("commit"), len(record.get("files", {})), from_cache=True)
        if task.final.exists() and not (converted is not None and converted.get("source_model") == repo_id):
            raise Refused(f"{task.final} already exists and was not downloaded by this service; remove it or "
                          "choose another download_path.")
        hub = HubClient(settings)
        needs_conversion = False
        try:
            task_name = None
            if self.is_ovms(request):
                present, found = fetch_small(hub, settings, repo_id, revision, ["config.json", "model_index.json"])
                classic = tasks.is_classic_layout(present)
                needs_conversion = not classic and not any(re.match(r"(.*/)?openvino_.*\.xml$", p) for p in present)
                if not classic:
                    kind = request.get("type")
                    task_name = TASK_OF_TYPE[kind] if kind else tasks.infer_task(found["config.json"],
                                                                                found["model_index.json"])
                if not needs_conversion:
                    self._check_precision(repo_id, config.get("precision"))
                elif not convert.optimum_available():
                    raise ConversionError(f"{repo_id} is not in OpenVINO format (no openvino_*.xml) and needs a "
                                          "conversion with optimum-intel, but optimum-cli is not on the service's "
                                          "PATH.", remedy=convert.INSTALL_HINT)
            paths = ModelPaths(task.staging, repo_id)
            result = pull_repository(paths, settings, revision=revision, stop_requested=task.stop_requested,
                                     hub=hub, on_progress=task.on_progress, engine=task.engine,
                                     wanted_in_record=lambda r: r.get("revision") == revision)
        finally:
            hub.close()
        model_dir, conversion, files = paths.model_dir, None, len(result.files)
        if needs_conversion:
            model_dir, conversion = self._convert(task, paths.model_dir, repo_id, task_name, result.commit)
            files = conversion["files"]
        if task_name is not None:
            options = graph.GraphOptions(model_name=repo_id, target_device=config.get("device") or "CPU",
                                         cache_size=config.get("cache_size") or 10,
                                         pipeline_type="VLM_CB" if request.get("type") == "vlm" else None)
            graph.write_graph(model_dir, task_name, options)
        publish(model_dir, task.final)
        if self.is_ovms(request):
            add_to_config(task.base / "config.json", repo_id, task.final)
        return self._result(task, result.commit, files, from_cache=False, conversion=conversion)

    def _conversion_wanted(self, request: dict) -> dict | None:
        """What a conversion record must say for this request to be answered by it (None: no conversion asked)."""
        if not self.is_ovms(request) or self.always_ovms:
            return None
        fmt, extra = weight_format(request.get("config") or {})
        return {"revision": self.revision(request), "weight_format": fmt, "extra_quantization_params": extra,
                "type": request.get("type")}

    def _convert(self, task: FetchTask, source: pathlib.Path, repo_id: str, task_name: str,
                 commit: str | None) -> tuple[pathlib.Path, dict]:
        """optimum-cli export of the downloaded ``source`` into the staging directory; killed on cancel."""
        task.on_status("converting")
        target = task.staging / EXPORT_DIR
        shutil.rmtree(target, ignore_errors=True)  # what a killed earlier run left
        fmt, extra = weight_format(task.request.get("config") or {})
        optimum_task = OPTIMUM_TASK_OF_TYPE.get(task.request.get("type")) or convert.LOCAL_TASK.get(task_name)
        # The source is on disk; optimum-cli has no reason to ask any hub.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        log.info("Converting %s: %s", repo_id, " ".join(convert.export_command(
            str(source), target, task_name, fmt, extra, optimum_task=optimum_task)))
        convert.convert(str(source), target, task_name, fmt, extra, env=env, optimum_task=optimum_task,
                        stop_requested=task.stop_requested)
        reason = task.stop_requested()
        if reason:
            raise InterruptedPull(f"Conversion of {repo_id} stopped ({reason}).")
        record = {"source_model": repo_id, **self._conversion_wanted(task.request), "commit": commit,
                  "task": task_name, "files": sum(1 for p in target.rglob("*") if p.is_file()) + 1}
        state.write_json_atomic(target / CONVERSION_RECORD, record, durable=True)
        return target, record

    def _result(self, task: FetchTask, commit: str | None, files: int, *, from_cache: bool,
                conversion: dict | None = None) -> dict:
        out = {"model_path": str(task.final), "is_ovms": self.is_ovms(task.request), "commit": commit,
               "files": files, "from_cache": from_cache, "converted": conversion is not None}
        if conversion is not None:
            out["weight_format"] = conversion["weight_format"]
        if self.is_ovms(task.request):
            out["config_path"] = str(task.base / "config.json")
            out["servable_name"] = self.repo_id(task.request)
        return out
