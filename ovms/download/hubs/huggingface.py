"""Hugging Face repositories on the pull engine (``ovms.pull``): verified, resumable, ``HF_ENDPOINT`` / ``HF_TOKEN``.

Layout, as the Model Download microservice writes it: ``<download_path>/huggingface/<ORG>_<NAME>`` (the files as
the hub has them). With ``is_ovms`` (or the ``openvino`` hub) the repository must already be in OpenVINO format;
it lands where ``ovms --pull`` puts it, ``<download_path>/<ORG>/<NAME>``, with the ``graph.pbtxt`` for its type,
and is added to ``<download_path>/config.json`` so ``python -m ovms --config_path`` serves it.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import threading

from ovms.download.hubs.base import BadName, FetchTask, Plugin, Refused, publish
from ovms.pull import config_edit, graph, state, tasks
from ovms.pull.errors import PullError
from ovms.pull.hub import HubClient
from ovms.pull.paths import ModelPaths
from ovms.pull.pull import fetch_small, pull_repository
from ovms.pull.settings import from_environment

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PRECISION_IN_NAME = re.compile(r"-(int4|int8|fp16|fp32)(?:-|$)", re.IGNORECASE)

# ModelRequest.type -> the OVMS task whose graph.pbtxt is written (ovms/pull/graph.py)
TASK_OF_TYPE = {"llm": "text_generation", "vlm": "text_generation", "embeddings": "embeddings",
                "rerank": "rerank", "image_generation": "image_generation"}
CREDENTIAL_KEYS = ("HF_TOKEN", "hf_token", "token")


_CONFIG_LOCK = threading.Lock()  # jobs finishing together in one download_path share its config.json


def add_to_config(config_path: pathlib.Path, name: str, model_dir: pathlib.Path) -> None:
    """Add ``name`` to the OVMS config.json next to the models (kept as it is when already there)."""
    with _CONFIG_LOCK:
        try:
            config_edit.add_model(str(config_path), name, str(model_dir))
        except PullError as exc:
            if "already exists" not in exc.message:
                raise  # "Model with the same name already exists": the entry points to this very directory


class HuggingFacePlugin(Plugin):
    def __init__(self, name: str = "huggingface", *, always_ovms: bool = False) -> None:
        super().__init__(name, description="Hugging Face Hub repositories through the verified, resumable pull "
                         "engine (HF_ENDPOINT, HF_TOKEN)" if not always_ovms else
                         "OpenVINO-organisation repositories on the Hugging Face Hub, laid out for OVMS with "
                         "graph.pbtxt")
        self.always_ovms = always_ovms

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
        extra = sorted(k for k in config if k not in ("precision", "device", "cache_size"))
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
        precision = config.get("precision")
        if precision is not None:
            stated = _PRECISION_IN_NAME.search(repo_id.split("/")[1])
            if stated is None or stated.group(1).lower() != precision:
                raise Refused(f"config.precision {precision!r} needs a conversion with optimum-intel, which is "
                              f"not available in this service; request an OpenVINO repository already in "
                              f"{precision} (e.g. OpenVINO/<model>-{precision}-ov) or omit config.precision.")

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
        settings = self._settings(task)
        record = state.read_record(task.final / ".ovms_pull.json")
        if record is not None and record.get("source_model") == repo_id and record.get("revision") == revision:
            # Already here and verified when it was pulled: answered without a byte fetched.
            return self._result(task, record.get("commit"), len(record.get("files", {})), from_cache=True)
        if task.final.exists():
            raise Refused(f"{task.final} already exists and was not downloaded by this service; remove it or "
                          "choose another download_path.")
        hub = HubClient(settings)
        try:
            task_name = None
            if self.is_ovms(request):
                present, found = fetch_small(hub, settings, repo_id, revision, ["config.json", "model_index.json"])
                classic = tasks.is_classic_layout(present)
                if not classic and not any(re.match(r"(.*/)?openvino_.*\.xml$", p) for p in present):
                    raise Refused(f"{repo_id} is not in OpenVINO format (no openvino_*.xml), and conversion with "
                                  "optimum-intel is not available in this service.")
                if not classic:
                    kind = request.get("type")
                    task_name = TASK_OF_TYPE[kind] if kind else tasks.infer_task(found["config.json"],
                                                                                found["model_index.json"])
            paths = ModelPaths(task.staging, repo_id)
            result = pull_repository(paths, settings, revision=revision, stop_requested=task.stop_requested,
                                     hub=hub, on_progress=task.on_progress,
                                     wanted_in_record=lambda r: r.get("revision") == revision)
        finally:
            hub.close()
        if task_name is not None:
            config = request.get("config") or {}
            options = graph.GraphOptions(model_name=repo_id, target_device=config.get("device") or "CPU",
                                         cache_size=config.get("cache_size") or 10,
                                         pipeline_type="VLM_CB" if request.get("type") == "vlm" else None)
            graph.write_graph(paths.model_dir, task_name, options)
        publish(paths.model_dir, task.final)
        if self.is_ovms(request):
            add_to_config(task.base / "config.json", repo_id, task.final)
        return self._result(task, result.commit, len(result.files), from_cache=False)

    def _result(self, task: FetchTask, commit: str | None, files: int, *, from_cache: bool) -> dict:
        out = {"model_path": str(task.final), "is_ovms": self.is_ovms(task.request), "commit": commit,
               "files": files, "from_cache": from_cache}
        if self.is_ovms(task.request):
            out["config_path"] = str(task.base / "config.json")
            out["servable_name"] = self.repo_id(task.request)
        return out
