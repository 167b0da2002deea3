"""Ollama models straight from the registry's HTTP API (no ``ollama`` binary), on the pull engine.

The registry speaks the OCI distribution API (as ``ollama pull`` uses it, ollama ``server/images.go``):
``GET {OLLAMA_REGISTRY}/v2/{namespace}/{model}/manifests/{tag}`` gives the config blob and the layers (the GGUF
model is the ``application/vnd.ollama.image.model`` layer), each ``{mediaType, digest, size}``; then
``GET /v2/{namespace}/{model}/blobs/sha256:<hex>`` for each, usually redirected to a CDN. Every blob is fetched
by the pull engine (parallel ranges, resume after a drop or a restart) and checked against its sha256 digest
before it takes its final name.

Layout, as Ollama writes it (``OLLAMA_MODELS=<download_path>/ollama/<name>``), plus two files that make the
model servable by ``ovms`` as it is (Ollama reads only ``manifests/`` and ``blobs/``)::

    manifests/<registry host>/<namespace>/<model>/<tag>   the manifest as the registry sent it
    blobs/sha256-<hex>                                    config and layers
    model.gguf -> blobs/sha256-<hex>                      relative symlink to the model layer (a GGUF)
    graph.pbtxt                                           text generation graph, models_path "./model.gguf"

openvino_genai opens a GGUF only by a name ending in ``.gguf`` (gguf_utils is_gguf_model), which the blob's name
does not have: hence the link. ``python -m ovms --model_path <that directory> --model_name NAME`` serves it
(or a config.json entry with that base_path); the job result names the graph.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import urllib.parse

from ovms.download.hubs.base import BadName, FetchTask, Plugin, Refused, publish
from ovms.pull import graph, state
from ovms.pull.errors import PullError
from ovms.pull.hub import HubClient, RemoteFile
from ovms.pull.progress import Progress
from ovms.pull.pull import check_free_space
from ovms.pull.settings import from_environment
from ovms.pull.transfer import Downloader, FileJob
from ovms.pull.verify import flush_to_disk

DEFAULT_REGISTRY = "https://registry.ollama.ai"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"
GGUF_LINK = "model.gguf"
GRAPH_FILE = "graph.pbtxt"
_NAME = re.compile(r"^(?:(?P<ns>[a-z0-9][a-z0-9._-]*)/)?(?P<model>[a-z0-9][a-z0-9._-]*)(?::(?P<tag>[A-Za-z0-9._-]+))?$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def registry_url() -> str:
    url = (os.environ.get("OLLAMA_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    return url


class OllamaPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__("ollama", description="Ollama models from the registry's HTTP API (OLLAMA_REGISTRY), "
                         "laid out as Ollama does, every blob sha256-verified and resumable")
        # The registry speaks the OCI distribution API, whose catalog (/v2/_catalog) registry.ollama.ai does not
        # serve; the library index is the web page https://ollama.com/library.
        self.cannot_list_reason = ("the Ollama registry has no listing API (its library index is the web page "
                                   "https://ollama.com/library); name the model and tag to download it")

    def parse(self, request: dict) -> tuple[str, str, str]:
        m = _NAME.match(request["name"])
        if m is None or ".." in request["name"]:
            raise BadName(f"{request['name']!r} is not an Ollama model name ([NAMESPACE/]MODEL[:TAG])")
        tag = m.group("tag") or request.get("revision") or "latest"
        if m.group("tag") and request.get("revision") and request["revision"] != m.group("tag"):
            raise Refused(f"The name has tag {m.group('tag')!r} and revision says {request['revision']!r}; give one.")
        return m.group("ns") or "library", m.group("model"), tag

    def check(self, request: dict) -> None:
        self.parse(request)
        for field in ("override_credentials", "config"):
            if request.get(field):
                raise Refused(f"{field} is not used by hub 'ollama'.")
        if request.get("is_ovms"):
            raise Refused("is_ovms is not supported for hub 'ollama' (its models are GGUF files, not OpenVINO IR; "
                          "the download writes graph.pbtxt beside the GGUF and ovms serves it as it is).")

    def revision(self, request: dict) -> str:
        return self.parse(request)[2]

    def output_dir(self, base: pathlib.Path, request: dict) -> pathlib.Path:
        return base / "ollama" / request["name"]

    def fetch(self, task: FetchTask) -> dict:
        namespace, model, tag = self.parse(task.request)
        base = registry_url()
        host = urllib.parse.urlsplit(base).netloc
        manifest_rel = pathlib.Path("manifests", host, namespace, model, tag)
        if (task.final / manifest_rel).is_file():  # pulled before: verified then, answered without a fetch
            manifest = _parse_manifest((task.final / manifest_rel).read_bytes(), task.request["name"])
            blobs = [task.final / "blobs" / _blob_name(b["digest"]) for b in [manifest["config"], *manifest["layers"]]]
            if all(p.is_file() for p in blobs):
                write_serving_files(task.final, manifest, task.request["name"])  # pulled by an older ovms
                return self._result(task, manifest, manifest_rel, from_cache=True)
        if task.final.exists():
            raise Refused(f"{task.final} already exists and was not downloaded by this service; remove it or "
                          "choose another download_path.")
        settings = from_environment()
        settings = dataclasses.replace(settings, endpoint=base, token=None)
        hub = HubClient(settings)
        staging_model = task.staging / "model"
        marker = None
        try:
            body = self._manifest(hub, base, namespace, model, tag)
            manifest = _parse_manifest(body, task.request["name"])
            blobs = {b["digest"]: b for b in [manifest["config"], *manifest["layers"]]}
            files = [RemoteFile(path=f"blobs/{_blob_name(d)}", size=int(b["size"]), blob_sha1="",
                                sha256=_DIGEST.match(d).group(1)) for d, b in blobs.items()]
            staging_model.mkdir(parents=True, exist_ok=True)
            marker = state.hold_marker(task.staging / "ollama.lfswip", task.request["name"], tag)
            check_free_space(staging_model, files)
            progress = Progress(sum(f.size for f in files), task.request["name"], stream=io.StringIO(),
                                listener=task.on_progress)
            task.on_progress(0, progress.total)
            jobs = [FileJob(f, staging_model / f.path, f"{base}/v2/{namespace}/{model}/blobs/sha256:{f.sha256}")
                    for f in files]
            Downloader(settings, hub, f"{namespace}/{model}", tag, tag, progress, task.stop_requested,
                       engine=task.engine).run(jobs)
            if settings.sync:
                flush_to_disk([j.final for j in jobs])
            target = staging_model / manifest_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            write_serving_files(staging_model, manifest, task.request["name"])
        finally:
            hub.close()
            if marker is not None:
                os.close(marker)
        publish(staging_model, task.final)
        return self._result(task, manifest, manifest_rel, from_cache=False)

    @staticmethod
    def _manifest(hub: HubClient, base: str, namespace: str, model: str, tag: str) -> bytes:
        url = f"{base}/v2/{namespace}/{model}/manifests/{tag}"
        resp = hub.get(url, accept=MANIFEST_TYPE)
        if resp.status in (401, 403, 404):
            raise PullError(f"Ollama model {namespace}/{model}:{tag} was not found on {base} (HTTP {resp.status}).",
                            remedy="Check the model name and tag at https://ollama.com/library, and OLLAMA_REGISTRY.")
        if resp.status != 200:
            raise PullError(f"The Ollama registry answered HTTP {resp.status} for {url}.",
                            remedy="Retry later; check OLLAMA_REGISTRY.")
        return resp.body

    def _result(self, task: FetchTask, manifest: dict, manifest_rel: pathlib.Path, *, from_cache: bool) -> dict:
        gguf = _model_layer(manifest)
        graph_path = task.final / GRAPH_FILE
        return {"model_path": str(task.final), "is_ovms": False, "manifest": str(task.final / manifest_rel),
                "gguf_path": str(task.final / "blobs" / _blob_name(gguf["digest"])) if gguf else None,
                "graph_path": str(graph_path) if graph_path.is_file() else None,
                "files": 1 + len(manifest["layers"]), "from_cache": from_cache}


def _model_layer(manifest: dict) -> dict | None:
    return next((layer for layer in manifest["layers"] if layer["mediaType"] == MODEL_LAYER), None)


def write_serving_files(model_dir: pathlib.Path, manifest: dict, name: str) -> None:
    """``model.gguf`` (a relative link to the model layer's blob) and a text generation ``graph.pbtxt`` naming
    it, unless they are there already; nothing for a manifest without a model layer."""
    layer = _model_layer(manifest)
    if layer is None:
        return
    link = model_dir / GGUF_LINK
    target = pathlib.Path("blobs") / _blob_name(layer["digest"])
    if not (link.is_symlink() and os.readlink(link) == str(target)):
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)
    if not (model_dir / GRAPH_FILE).is_file():
        graph.write_graph(model_dir, "text_generation", graph.GraphOptions(model_name=name,
                                                                           models_path=f"./{GGUF_LINK}"))


def _blob_name(digest: str) -> str:
    return digest.replace(":", "-")


def _parse_manifest(body: bytes, name: str) -> dict:
    try:
        manifest = json.loads(body)
        entries = [manifest["config"], *manifest["layers"]]
        for entry in entries:
            if not _DIGEST.match(entry["digest"]) or int(entry["size"]) < 0:
                raise ValueError(entry["digest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PullError(f"The Ollama registry sent an invalid manifest for {name} ({exc}).",
                        remedy="Check OLLAMA_REGISTRY points to an Ollama registry.") from None
    return manifest
