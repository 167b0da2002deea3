"""``geti``: a model trained on an Intel Geti server, through Geti's REST API (no SDK), as the microservice does.

The microservice's Geti plugin (edge-ai-libraries, ``model-download/src/plugins/geti_plugin.py``) speaks the REST
API with a personal access token in ``x-api-key``, under
``{GETI_HOST}/api/{GETI_SERVER_API_VERSION}/organizations/{GETI_ORGANIZATION_ID}/workspaces/{GETI_WORKSPACE_ID}``:

- ``GET .../projects/{project_id}/model_groups/{model_group_id}``: the group with its ``models`` ({id, name, ...});
  a model given by name is looked up there
- ``GET .../model_groups/{g}/models/{model_id}/export``: the base model as a zip
- ``GET .../models/{model_id}/optimized_models/{optimized_model_id}/export?model_only=true``: an optimized
  (OpenVINO) model as a zip

Request: ``{"name": <model name>, "hub": "geti", "config": {"project_id", "model_group_id", "model_id"?,
"export_type": "base"|"optimized", "optimized_model_id"?, "model_only"?}}``; ``override_credentials.GETI_TOKEN``
replaces GETI_TOKEN for one request. The zip is streamed to the job's staging directory, every member's CRC is
checked and no member may leave the directory, then it is extracted and published in one rename to
``<download_path>/geti/<export_type>_<model_id>`` (the microservice's layout). Geti states no digest or size for an
export (it is made on request), so a dropped transfer starts again from byte 0.

Without GETI_HOST, GETI_ORGANIZATION_ID, GETI_WORKSPACE_ID and GETI_TOKEN the hub is unavailable and says which
are missing.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import time
import urllib.parse
import zipfile

import pycurl

from ovms.download.hubs.base import BadName, FetchTask, Plugin, Refused, publish
from ovms.pull.errors import InterruptedPull, NetworkError, PullError
from ovms.pull.hub import USER_AGENT, curl_error_text
from ovms.pull.settings import from_environment

log = logging.getLogger("ovms.download")

REQUIRED_ENV = ("GETI_HOST", "GETI_ORGANIZATION_ID", "GETI_WORKSPACE_ID", "GETI_TOKEN")
CONFIG_KEYS = ("project_id", "model_group_id", "model_id", "export_type", "optimized_model_id", "model_only")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
CREDENTIAL_KEYS = ("GETI_TOKEN", "geti_token", "token")


class GetiPlugin(Plugin):
    def __init__(self, env: dict | None = None) -> None:
        super().__init__("geti", description="Models trained on an Intel Geti server, through its REST API "
                         "(GETI_HOST, GETI_ORGANIZATION_ID, GETI_WORKSPACE_ID, GETI_TOKEN)")
        self.env = os.environ if env is None else env
        self.cannot_list_reason = ("listing a Geti server's projects is not implemented by this service; give "
                                   "config.project_id and config.model_group_id from the project's page")
        missing = [k for k in REQUIRED_ENV if not self.env.get(k)]
        self.available = not missing
        self.unavailable_reason = None if not missing else (
            f"{', '.join(missing)} not set: the service needs the Geti server's address, organization, workspace "
            "and a personal access token in its environment")

    def api_base(self) -> str:
        host = self.env["GETI_HOST"].rstrip("/")
        if not host.startswith(("http://", "https://")):
            host = "https://" + host
        version = self.env.get("GETI_SERVER_API_VERSION") or "v1"
        return (f"{host}/api/{version}/organizations/{urllib.parse.quote(self.env['GETI_ORGANIZATION_ID'])}"
                f"/workspaces/{urllib.parse.quote(self.env['GETI_WORKSPACE_ID'])}")

    def check(self, request: dict) -> None:
        if "/" in request["name"] or request["name"] in (".", ".."):
            raise BadName(f"{request['name']!r} is not a Geti model name")
        super().check(request)
        for key in (request.get("override_credentials") or {}):
            if key not in CREDENTIAL_KEYS:
                raise Refused(f"override_credentials.{key} is not used by hub 'geti'; it takes GETI_TOKEN.")
        if request.get("is_ovms") or request.get("revision"):
            raise Refused("is_ovms and revision are not used by hub 'geti' (the model is exported as Geti has it).")
        config = request.get("config") or {}
        extra = sorted(k for k, v in config.items() if k not in CONFIG_KEYS and v is not None)
        if extra:
            raise Refused(f"config.{extra[0]} is not used by hub 'geti' (it takes {', '.join(CONFIG_KEYS)}).")
        for key in ("project_id", "model_group_id"):
            if not config.get(key):
                raise Refused(f"config.{key} is required for hub 'geti' (the ids are in the project's URL on the "
                              "Geti server).")
        for key in ("project_id", "model_group_id", "model_id", "optimized_model_id"):
            if config.get(key) is not None and not (isinstance(config[key], str) and _ID.match(config[key])):
                raise Refused(f"config.{key} {config[key]!r} is not a Geti id (letters, digits, - and _).")
        export_type = (config.get("export_type") or "base").lower()
        if export_type not in ("base", "optimized"):
            raise Refused(f"config.export_type {config['export_type']!r}: it is 'base' or 'optimized'.")
        if export_type == "optimized" and not config.get("optimized_model_id"):
            raise Refused("config.optimized_model_id is required with export_type 'optimized'.")

    def revision(self, request: dict) -> str:
        config = request.get("config") or {}
        return "/".join(str(config.get(k) or "") for k in CONFIG_KEYS)

    def output_dir(self, base: pathlib.Path, request: dict) -> pathlib.Path:
        config = request.get("config") or {}
        export_type = (config.get("export_type") or "base").lower()
        # The model id may only be known once the group is asked (a model given by name): the place is then the
        # name's, and the result states the id.
        return base / "geti" / f"{export_type}_{config.get('model_id') or request['name']}"

    def fetch(self, task: FetchTask) -> dict:
        config = task.request.get("config") or {}
        token = next((task.credentials[k] for k in CREDENTIAL_KEYS if k in task.credentials), None) \
            or self.env["GETI_TOKEN"]
        client = GetiClient(self.api_base(), token, verify=(self.env.get("GETI_SERVER_SSL_VERIFY") or "true").lower()
                            not in ("0", "false", "no", "off"))
        project, group = config["project_id"], config["model_group_id"]
        group_url = f"{client.base}/projects/{project}/model_groups/{group}"
        model_id = config.get("model_id")
        if not model_id:
            body = client.get_json(group_url, what=f"model group {group} of project {project}")
            models = body.get("models") if isinstance(body, dict) else None
            found = [m for m in models or [] if isinstance(m, dict) and m.get("name") == task.request["name"]]
            if not found:
                names = ", ".join(sorted({str(m.get("name")) for m in models or [] if isinstance(m, dict)}))
                raise PullError(f"Geti has no model named {task.request['name']!r} in model group {group} of "
                                f"project {project} (models there: {names or 'none'}).",
                                remedy="Give the model's name as Geti shows it, or config.model_id.")
            model_id = str(found[-1]["id"])  # the newest version last, as Geti lists them
        export_type = (config.get("export_type") or "base").lower()
        if export_type == "optimized":
            model_only = str(config.get("model_only", True)).lower() not in ("false", "0")
            url = (f"{group_url}/models/{model_id}/optimized_models/{config['optimized_model_id']}/export"
                   f"?model_only={str(model_only).lower()}")
        else:
            url = f"{group_url}/models/{model_id}/export"
        archive = task.staging / "export.zip"
        size = client.download(url, archive, what=f"model {model_id}", on_progress=task.on_progress,
                               stop_requested=task.stop_requested)
        model = task.staging / "model"
        members = extract_checked(archive, model)
        (model / ".ovms_download.json").write_text(json.dumps({"url": url, "model_id": model_id, "size": size}))
        archive.unlink()
        publish(model, task.final)
        return {"model_path": str(task.final), "is_ovms": False, "model_id": model_id, "model_group_id": group,
                "project_id": project, "export_type": export_type, "files": members, "size": size,
                "from_cache": False}


def extract_checked(archive: pathlib.Path, target: pathlib.Path) -> int:
    """Extract ``archive`` into ``target`` after checking every member's CRC and that none leaves ``target``."""
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad is not None:
                raise PullError(f"The Geti export is corrupt: {bad} fails its CRC check.",
                                remedy="Request the download again.")
            root = target.resolve()
            for info in z.infolist():
                dest = (target / info.filename).resolve()
                if dest != root and root not in dest.parents:
                    raise PullError(f"The Geti export has a member outside its directory ({info.filename!r}).",
                                    remedy="Check GETI_HOST points to a Geti server.")
            target.mkdir(parents=True, exist_ok=True)
            z.extractall(target)
            return sum(1 for i in z.infolist() if not i.is_dir())
    except zipfile.BadZipFile as exc:
        raise PullError(f"The Geti export is not a zip archive ({exc}).",
                        remedy="Check GETI_HOST and the ids; request the download again.") from None


class GetiClient:
    """Blocking requests to Geti with ``x-api-key``; network errors and 5xx retried as the pull engine does."""

    def __init__(self, base: str, token: str, *, verify: bool = True) -> None:
        self.base = base
        self.token = token
        self.verify = verify
        self.settings = from_environment()

    def _perform(self, url: str, sink, on_progress=None, stop_requested=None) -> int:
        curl = pycurl.Curl()
        try:
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.HTTPHEADER, [f"x-api-key: {self.token}", "Accept-Encoding: identity"])
            curl.setopt(pycurl.USERAGENT, USER_AGENT)
            curl.setopt(pycurl.FOLLOWLOCATION, 0)  # the token is for the Geti server only
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(self.settings.connect_timeout * 1000))
            curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
            curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self.settings.stall_seconds)))
            curl.setopt(pycurl.NOSIGNAL, 1)
            curl.setopt(pycurl.WRITEFUNCTION, sink)
            if not self.verify:
                curl.setopt(pycurl.SSL_VERIFYPEER, 0)
                curl.setopt(pycurl.SSL_VERIFYHOST, 0)
            if self.settings.proxy:
                curl.setopt(pycurl.PROXY, self.settings.proxy)
            if on_progress is not None or stop_requested is not None:
                def xfer(dl_total, dl_now, ul_total, ul_now):
                    if stop_requested is not None and stop_requested():
                        return 1  # aborts the transfer (E_ABORTED_BY_CALLBACK)
                    if on_progress is not None and dl_now:
                        on_progress(dl_now, max(dl_total, dl_now))
                    return 0
                curl.setopt(pycurl.NOPROGRESS, 0)
                curl.setopt(pycurl.XFERINFOFUNCTION, xfer)
            curl.perform()
            return curl.getinfo(pycurl.RESPONSE_CODE)
        finally:
            curl.close()

    def _request(self, url: str, open_sink, what: str, on_progress=None, stop_requested=None) -> tuple[int, bytes]:
        attempts = max(1, self.settings.resume_attempts + 1)
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.settings.resume_interval)
            sink, read_back = open_sink()
            try:
                status = self._perform(url, sink, on_progress, stop_requested)
            except pycurl.error as exc:
                if exc.args[0] == pycurl.E_ABORTED_BY_CALLBACK and stop_requested and stop_requested():
                    raise InterruptedPull(f"Download of {what} from Geti stopped ({stop_requested()}).") from None
                last = curl_error_text(exc.args[0], exc.args[1] if len(exc.args) > 1 else "")
                continue
            if status >= 500 or status == 429:
                last = f"HTTP {status}"
                continue
            if status in (401, 403):
                raise PullError(f"The Geti server refused the token for {what} (HTTP {status}).",
                                remedy="Check GETI_TOKEN (a personal access token with access to the project) or "
                                       "override_credentials.GETI_TOKEN.")
            if status == 404:
                raise PullError(f"Geti has no {what} ({url} answered HTTP 404).",
                                remedy="Check config.project_id, model_group_id, model_id and optimized_model_id, "
                                       "and GETI_ORGANIZATION_ID / GETI_WORKSPACE_ID.")
            if status != 200:
                raise PullError(f"The Geti server answered HTTP {status} for {what} ({url}).",
                                remedy="Check GETI_HOST and GETI_SERVER_API_VERSION.")
            return status, read_back()
        raise NetworkError(f"Could not reach the Geti server for {what} ({last}).",
                           remedy="Check GETI_HOST, the network and https_proxy; then request the download again.")

    def get_json(self, url: str, *, what: str):
        def open_sink():
            chunks: list[bytes] = []
            return chunks.append, lambda: b"".join(chunks)
        _, body = self._request(url, open_sink, what)
        try:
            return json.loads(body)
        except ValueError:
            raise PullError(f"The Geti server's answer for {what} is not JSON.",
                            remedy="Check GETI_HOST points to a Geti server.") from None

    def download(self, url: str, target: pathlib.Path, *, what: str, on_progress, stop_requested) -> int:
        """Stream ``url`` to ``target`` (from byte 0 on every attempt); returns its size."""
        target.parent.mkdir(parents=True, exist_ok=True)
        files: list = []

        def open_sink():
            for f in files:
                f.close()
            f = open(target, "wb")
            files.append(f)
            return f.write, lambda: b""
        try:
            self._request(url, open_sink, what, on_progress, stop_requested)
        finally:
            for f in files:
                f.close()
        size = target.stat().st_size
        on_progress(size, size)
        return size
