"""One plain HTTP(S) file on the pull engine: its size asked first, then parallel ranges, resume, a check.

Used by the ``remote-url`` hub and by ``ultralytics`` (YOLO weights from the asset server). A plain web server
publishes no digest: the file is checked against ``sha256`` when the request gives one, else against the size
the server stated before the download began (``verify.check_file`` with "size"); the sha256 of what arrived is
computed either way and returned, so the job's result states it.

The size comes from a GET for ``Range: bytes=0-0`` (``Content-Range: bytes 0-0/<size>``), or the
``Content-Length`` of a server that ignores Range; a HEAD would not do: pre-signed CDN URLs (GitHub's release
assets redirect to one) are signed for GET only.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
import re
import time
import urllib.parse

import pycurl

from ovms.pull import state
from ovms.pull.errors import InterruptedPull, NetworkError, PullError
from ovms.pull.hub import USER_AGENT, HubClient, RemoteFile, curl_error_text
from ovms.pull.progress import Progress
from ovms.pull.pull import check_free_space
from ovms.pull.settings import PullSettings
from ovms.pull.transfer import Downloader, FileJob
from ovms.pull.verify import digest_file, flush_to_disk

log = logging.getLogger("ovms.download")

MAX_REDIRECTS = 10
# The pull engine sends the hub's token to the endpoint's origin only and reads 401/403/404 from it as Hugging
# Face errors. A plain file has no hub: this endpoint is an origin no URL has (RFC 6761 reserves .invalid).
NO_HUB = "http://no-hub.invalid"
_CONTENT_RANGE = re.compile(r"bytes\s+\d+-\d+/(\d+)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class PlainFile(RemoteFile):
    """A file whose server publishes no digest: checked by the sha256 the request gives, else by its size."""

    @property
    def expected_digest(self) -> tuple[str, str]:
        return ("sha256", self.sha256) if self.sha256 else ("size", "")


@dataclasses.dataclass(frozen=True)
class Probe:
    size: int
    status: int  # of the last response (206: the server honours Range)
    url: str  # after redirects


def _probe_once(url: str, settings: PullSettings) -> tuple[int, dict[str, str], str]:
    curl = pycurl.Curl()
    headers: dict[str, str] = {}

    def on_header(line: bytes) -> None:
        text = line.decode("iso-8859-1").strip()
        if text.upper().startswith("HTTP/"):
            headers.clear()  # a redirect's headers are not the file's
        elif ":" in text:
            k, v = text.split(":", 1)
            headers[k.strip().lower()] = v.strip()

    try:
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, ["Accept-Encoding: identity"])
        curl.setopt(pycurl.RANGE, "0-0")
        curl.setopt(pycurl.FOLLOWLOCATION, 1)
        curl.setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.USERAGENT, USER_AGENT)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(settings.connect_timeout * 1000))
        curl.setopt(pycurl.TIMEOUT_MS, int(max(settings.stall_seconds, 5.0) * 1000))
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.HEADERFUNCTION, on_header)
        curl.setopt(pycurl.WRITEFUNCTION, lambda data: 0)  # the headers are all we want: stop at the body
        if settings.proxy:
            curl.setopt(pycurl.PROXY, settings.proxy)
        try:
            curl.perform()
        except pycurl.error as exc:
            if exc.args[0] != pycurl.E_WRITE_ERROR:  # our own stop at the first body byte
                raise
        return curl.getinfo(pycurl.RESPONSE_CODE), headers, curl.getinfo(pycurl.EFFECTIVE_URL)
    finally:
        curl.close()


def probe(url: str, settings: PullSettings) -> Probe:
    """The size of the file at ``url`` (redirects followed), with retries on network errors and 5xx."""
    attempts = max(1, settings.resume_attempts + 1)
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(settings.resume_interval)
        try:
            status, headers, final_url = _probe_once(url, settings)
        except pycurl.error as exc:
            last = curl_error_text(exc.args[0], exc.args[1] if len(exc.args) > 1 else "")
            continue
        if status >= 500 or status == 429:
            last = f"HTTP {status}"
            continue
        if status >= 400:
            raise PullError(f"{url} answered HTTP {status}.",
                            remedy="Check the URL; the file must be downloadable without credentials.")
        match = _CONTENT_RANGE.match(headers.get("content-range", "")) if status == 206 else None
        length = headers.get("content-length", "")
        if match is not None:
            size = int(match.group(1))
        elif status == 200 and length.isdigit():
            size = int(length)
        else:
            raise PullError(f"{url} did not state the file's size (HTTP {status}, no Content-Range or "
                            "Content-Length).", remedy="This service downloads files of a known size only; "
                            "serve the file with a Content-Length.")
        return Probe(size, status, final_url)
    raise NetworkError(f"Could not reach {url} ({last}).",
                       remedy="Check the network and https_proxy; then request the download again (bytes already "
                              "on disk are kept).")


def fetch(url: str, target: pathlib.Path, size: int, sha256: str | None, settings: PullSettings, *, label: str,
          on_progress, stop_requested, engine=None) -> str:
    """Bring ``url`` to ``target`` (parallel ranges, resumable from the bytes on disk, checked); returns its
    sha256. ``target``'s directory is a staging directory: nothing is written elsewhere."""
    settings = dataclasses.replace(settings, endpoint=NO_HUB, token=None)
    target.parent.mkdir(parents=True, exist_ok=True)
    remote = PlainFile(path=target.name, size=size, blob_sha1="", sha256=sha256)
    check_free_space(target.parent, [remote])
    marker = state.hold_marker(target.parent / (target.name + ".lfswip"), url, sha256 or str(size))
    hub = HubClient(settings)
    try:
        progress = Progress(size, label, stream=io.StringIO(), listener=on_progress)
        on_progress(0, size)
        job = FileJob(remote, target, url)
        Downloader(settings, hub, label, "", sha256 or "", progress, stop_requested, engine=engine).run([job])
        if settings.sync:
            flush_to_disk([target])
    finally:
        hub.close()
        os.close(marker)
    (target.parent / (target.name + ".lfswip")).unlink(missing_ok=True)
    reason = stop_requested()
    if reason:
        raise InterruptedPull(f"Download of {url} stopped ({reason}).")
    return sha256 or digest_file(target, "sha256", size)


def file_sha256(path: pathlib.Path) -> str:
    return digest_file(path, "sha256", path.stat().st_size)


def filename_of(url: str) -> str:
    """The last path segment of ``url``, unquoted ('' when the path ends with '/')."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])

