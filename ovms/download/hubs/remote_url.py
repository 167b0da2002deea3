"""``remote-url``: one plain HTTP(S) file from a URL the operator allow-listed.

The allow-list is the microservice's ``EXTERNAL_SOURCES_URL_ALLOWLIST`` (comma-separated), or
``--remote_url_allowlist`` (which replaces it). Each entry is either a host (``models.example.com``, with
``:port`` to pin one) or a URL prefix (``https://models.example.com/public/``: same scheme and host, and the path
starts with the prefix's path at a ``/`` boundary). With an empty list the hub is unavailable (``GET /plugins``
says why) and every request for it is refused; a URL off the list is refused (HTTP 400) with the URL named.
Only the requested URL is checked: a redirect it answers with (to a CDN, as GitHub release assets do) is followed.

Request: ``{"name": "<url>", "hub": "remote-url", "config": {"sha256": "<64 hex>"}?}``. The file lands at
``<download_path>/remote-url/<host>/<path of the URL>``; with ``config.sha256`` it is verified against it, without
it against the size the server stated, and the job's result gives the sha256 of what arrived either way.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import posixpath
import re
import urllib.parse

from ovms.download.hubs import single_file
from ovms.download.hubs.base import BadName, FetchTask, Plugin, Refused
from ovms.pull.settings import from_environment

ALLOWLIST_ENV = "EXTERNAL_SOURCES_URL_ALLOWLIST"
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?$|^\[[0-9A-Fa-f:.]+\](:\d+)?$")


@dataclasses.dataclass(frozen=True)
class AllowEntry:
    text: str
    scheme: str | None  # None: a bare host, any of http/https
    host: str
    port: int | None
    path: str  # "" for a bare host

    def admits(self, url: urllib.parse.SplitResult) -> bool:
        if self.scheme is not None and url.scheme != self.scheme:
            return False
        if (url.hostname or "").lower() != self.host:
            return False
        port = url.port or (443 if url.scheme == "https" else 80)
        wanted = self.port or (None if self.scheme is None else 443 if self.scheme == "https" else 80)
        if wanted is not None and port != wanted:
            return False
        if not self.path or self.path == "/":
            return True
        prefix = self.path if self.path.endswith("/") else self.path + "/"
        return url.path == self.path or url.path.startswith(prefix)


def parse_allowlist(raw: str | list[str] | None) -> list[AllowEntry]:
    """Entries from a comma-separated string (or a list of them); ValueError names a malformed entry."""
    items = raw if isinstance(raw, list) else [raw or ""]
    entries = []
    for text in (t.strip() for item in items for t in item.split(",")):
        if not text:
            continue
        if "://" in text:
            parts = urllib.parse.urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
                raise ValueError(f"remote-url allow-list entry {text!r} is not an http(s) URL prefix without "
                                 "credentials or query")
            entries.append(AllowEntry(text, parts.scheme, parts.hostname.lower(), parts.port, parts.path))
        elif _HOST.match(text):
            parts = urllib.parse.urlsplit("//" + text)
            entries.append(AllowEntry(text, None, (parts.hostname or "").lower(), parts.port, ""))
        else:
            raise ValueError(f"remote-url allow-list entry {text!r} is neither a host (name[:port]) nor an "
                             "http(s) URL prefix")
    return entries


class RemoteUrlPlugin(Plugin):
    def __init__(self, allowlist: list[AllowEntry] | None = None) -> None:
        if allowlist is None:
            allowlist = parse_allowlist(os.environ.get(ALLOWLIST_ENV))
        super().__init__("remote-url", description="One file from an operator allow-listed HTTP(S) URL, "
                         "resumable, verified against config.sha256 when given (else its size)",
                         available=bool(allowlist),
                         unavailable_reason=None if allowlist else (
                             f"no URL is allow-listed: start the service with --remote_url_allowlist "
                             f"HOST_OR_URL_PREFIX[,...] (or set {ALLOWLIST_ENV})"))
        self.allowlist = allowlist
        self.cannot_list_reason = "a URL names one file, there is nothing to list"

    def url(self, request: dict) -> urllib.parse.SplitResult:
        name = request["name"]
        parts = urllib.parse.urlsplit(name)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadName(f"{name!r} is not an http(s) URL (hub remote-url takes the file's URL as name)")
        if parts.username or parts.password:
            raise BadName(f"{name!r} carries credentials; this service keeps the URL in its job records and "
                          "never stores a credential")
        segments = urllib.parse.unquote(parts.path).split("/")
        if any(s in (".", "..") for s in segments) or "\0" in parts.path:
            raise BadName(f"{name!r}: the URL's path has '.' or '..' segments")
        if not single_file.filename_of(name):
            raise BadName(f"{name!r} names no file (its path ends with '/')")
        return parts

    def check(self, request: dict) -> None:
        parts = self.url(request)
        super().check(request)  # unavailable: 400 with the reason
        if not any(entry.admits(parts) for entry in self.allowlist):
            raise Refused(f"URL {request['name']} is not on the remote-url allow-list "
                          f"({', '.join(e.text for e in self.allowlist)}); the operator adds hosts or URL prefixes "
                          f"with --remote_url_allowlist or {ALLOWLIST_ENV}.")
        for field in ("override_credentials", "revision", "type"):
            if request.get(field):
                raise Refused(f"{field} is not used by hub 'remote-url' (a file is fetched as it is).")
        if request.get("is_ovms"):
            raise Refused("is_ovms is not supported for hub 'remote-url' (a single file is kept as it is).")
        config = request.get("config") or {}
        extra = sorted(k for k, v in config.items() if k != "sha256" and v is not None)
        if extra:
            raise Refused(f"config.{extra[0]} is not used by hub 'remote-url' (it takes config.sha256).")

    def revision(self, request: dict) -> str:
        return ((request.get("config") or {}).get("sha256") or "").lower()

    def output_dir(self, base: pathlib.Path, request: dict) -> pathlib.Path:
        parts = urllib.parse.urlsplit(request["name"])
        host = parts.netloc.replace(":", "_")
        path = posixpath.normpath(urllib.parse.unquote(parts.path)).lstrip("/")
        return base.joinpath("remote-url", host, *path.split("/"))

    def fetch(self, task: FetchTask) -> dict:
        url = task.request["name"]
        wanted = self.revision(task.request) or None
        settings = from_environment()
        probe = single_file.probe(url, settings)
        if task.final.exists():
            if task.final.is_file() and task.final.stat().st_size == probe.size:
                digest = single_file.file_sha256(task.final)
                if wanted is None or digest == wanted:  # the same file, already here: no byte fetched
                    return self._result(task, digest, probe.size, from_cache=True)
            raise Refused(f"{task.final} already exists and differs from {url}; remove it or choose another "
                          "download_path.")
        staged = task.staging / "file" / task.final.name
        digest = single_file.fetch(url, staged, probe.size, wanted, settings, label=url,
                                   on_progress=task.on_progress, stop_requested=task.stop_requested,
                                   engine=task.engine)
        publish_file(staged, task.final)
        return self._result(task, digest, probe.size, from_cache=False)

    def _result(self, task: FetchTask, digest: str, size: int, *, from_cache: bool) -> dict:
        verified = "sha256" if self.revision(task.request) else "size"
        return {"model_path": str(task.final), "is_ovms": False, "files": 1, "size": size, "sha256": digest,
                "verified_by": verified, "from_cache": from_cache}


def publish_file(staged: pathlib.Path, final: pathlib.Path) -> None:
    """Give a verified file its final name in one rename, and make the rename durable."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
