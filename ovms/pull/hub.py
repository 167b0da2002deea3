"""The Hugging Face Hub HTTP API, as far as pull mode needs it (no git, no huggingface_hub).

- ``GET /api/models/{repo}/revision/{rev}`` -> the commit sha a branch or tag points to
- ``GET /api/models/{repo}/tree/{sha}?recursive=true`` -> every file with its size, git blob sha1 (``oid``) and,
  for LFS files, ``lfs.oid`` (sha256); paginated with ``Link: <...>; rel="next"`` (RFC 8288)
- ``GET /{repo}/resolve/{sha}/{path}`` -> the bytes, or a redirect to the CDN (see ``transfer``)

The hub's ``X-Error-Code`` header names the failure (``RepoNotFound``, ``GatedRepo``, ``RevisionNotFound``,
``EntryNotFound``), as ``huggingface_hub.utils._http.hf_raise_for_status`` reads it.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
import urllib.parse

import pycurl

from ovms.pull.errors import (GatedRepoError, NetworkError, PullError, RepoNotFoundError,
                              RevisionNotFoundError)
from ovms.pull.settings import PullSettings

log = logging.getLogger("ovms.pull")

USER_AGENT = "ovms-pull/0.1 (+pycurl)"
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a repository at a commit, as the tree API lists it."""

    path: str
    size: int
    blob_sha1: str  # git object id; for LFS files, of the pointer file
    sha256: str | None = None  # LFS files only: sha256 of the content

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def expected_digest(self) -> tuple[str, str]:
        """(algorithm, hex digest) the downloaded content must match."""
        return ("sha256", self.sha256) if self.sha256 else ("git-blob-sha1", self.blob_sha1)


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``: the unit a bearer token is scoped to (RFC 6454)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def quote_path(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def curl_error_text(code: int, message: str) -> str:
    return f"curl error {code}: {message}" if message else f"curl error {code}"


def describe_network_failure(url: str, detail: str, settings: PullSettings) -> NetworkError:
    return NetworkError(f"Could not reach {url} ({detail}).",
                        remedy=f"Check the network connection, HF_ENDPOINT (now {settings.endpoint})"
                               f"{' and https_proxy' if settings.proxy else ''}; then re-run the same command "
                               "to resume.")


_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_tree_page(body: bytes, url: str) -> list[RemoteFile]:
    """The files of one page of the hub's tree listing; anything malformed is a PullError naming the entry.

    The listing decides which files are written and which digests are trusted, so every field is checked
    before use (sizes are integers, object ids are hex of the right length; paths.safe_join checks where a
    path may be written).
    """
    remedy = "Check that HF_ENDPOINT points to a Hugging Face Hub or a mirror of it."
    try:
        entries = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PullError(f"The hub's file listing at {url} is not JSON.", remedy=remedy) from None
    if not isinstance(entries, list):
        raise PullError(f"The hub's file listing at {url} is not a JSON list.", remedy=remedy)
    files = []
    for index, e in enumerate(entries):
        if not isinstance(e, dict):
            raise PullError(f"Entry {index} of the hub's file listing at {url} is not an object.", remedy=remedy)
        if e.get("type") != "file":
            continue
        path, size, oid, lfs = e.get("path"), e.get("size"), e.get("oid"), e.get("lfs") or None
        lfs_oid = lfs.get("oid") if isinstance(lfs, dict) else lfs
        if not isinstance(path, str) or not path or "\0" in path:  # where it may go: paths.safe_join
            raise PullError(f"The hub's file listing at {url} has an empty or invalid path {path!r}.", remedy=remedy)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PullError(f"The hub's file listing at {url} gives {path} the size {size!r}.", remedy=remedy)
        if not isinstance(oid, str) or not _SHA1.fullmatch(oid):
            raise PullError(f"The hub's file listing at {url} gives {path} the object id {oid!r}.", remedy=remedy)
        if lfs is not None and (not isinstance(lfs_oid, str) or not _SHA256.fullmatch(lfs_oid)):
            raise PullError(f"The hub's file listing at {url} gives {path} the LFS id {lfs_oid!r}.", remedy=remedy)
        files.append(RemoteFile(path=path, size=size, blob_sha1=oid, sha256=lfs_oid if lfs else None))
    return files


def raise_for_hub_error(resp: Response, repo_id: str, revision: str, settings: PullSettings) -> None:
    """Turn a hub error response into the PullError a person can act on."""
    if resp.status < 400:
        return
    code = resp.headers.get("x-error-code", "")
    try:
        detail = json.loads(resp.body.decode("utf-8", "replace")).get("error", "")
    except (ValueError, AttributeError):
        detail = resp.body[:200].decode("utf-8", "replace")
    page = f"{settings.endpoint}/{repo_id}"
    if code == "GatedRepo" or (resp.status == 403 and "gated" in str(detail).lower()):
        raise GatedRepoError(
            f"Model {repo_id} is gated: the hub refused the download (HTTP {resp.status}).",
            remedy=f"Accept the licence on the hub at {page} with your account, create a read token, "
                   "set HF_TOKEN to it" + (" (the HF_TOKEN set now has no access)" if settings.token else "")
                   + ", then re-run the same command.")
    if code == "RevisionNotFound":
        raise RevisionNotFoundError(
            f"Revision {revision!r} does not exist in model {repo_id} on {settings.endpoint}.",
            remedy="Check the branch, tag or commit name (the default is 'main').")
    if code in ("RepoNotFound",) or resp.status in (401, 404) and code != "EntryNotFound":
        raise RepoNotFoundError(
            f"Model {repo_id} was not found on {settings.endpoint}, or it is private (HTTP {resp.status}).",
            remedy=f"Check the --source_model spelling at {page}; for a private model set HF_TOKEN to a token "
                   "with read access" + (" (the HF_TOKEN set now has none)" if settings.token else "") + ".")
    if code == "EntryNotFound":
        raise RepoNotFoundError(f"A file listed by the hub is missing from {repo_id} ({resp.url}).",
                                remedy="The repository changed while pulling: re-run the same command.")
    if resp.status == 403:
        raise RepoNotFoundError(f"The hub refused access to model {repo_id} (HTTP 403: {detail}).",
                                remedy="Set HF_TOKEN to a token with read access to it, then re-run.")
    raise PullError(f"The hub answered HTTP {resp.status} for {resp.url}: {detail or 'no detail'}.",
                    remedy="Re-run the same command later; if it persists, check HF_ENDPOINT.")


class HubClient:
    """Blocking JSON requests to the hub, with the same retry budget as file transfers."""

    def __init__(self, settings: PullSettings) -> None:
        self.settings = settings
        self._curl = pycurl.Curl()

    def close(self) -> None:
        self._curl.close()

    def auth_headers(self, url: str) -> list[str]:
        """``Authorization`` only for the hub's own origin: never for the CDN or any other host."""
        if self.settings.token and origin(url) == origin(self.settings.endpoint):
            return [f"Authorization: Bearer {self.settings.token}"]
        return []

    def get(self, url: str, *, accept: str = "application/json") -> Response:
        """One GET with retries on network errors and 5xx; 4xx responses are returned to the caller."""
        attempts = max(1, self.settings.resume_attempts + 1)
        last = ""
        for attempt in range(attempts):
            if attempt:
                log.warning("Retrying %s in %g s (%s; attempt %d of %d)", url, self.settings.resume_interval,
                            last, attempt + 1, attempts)
                time.sleep(self.settings.resume_interval)
            try:
                resp = self._get_once(url, accept)
            except pycurl.error as exc:
                code, message = exc.args[0], exc.args[1] if len(exc.args) > 1 else ""
                last = curl_error_text(code, message)
                continue
            if resp.status >= 500 or resp.status == 429:
                last = f"HTTP {resp.status}"
                continue
            return resp
        raise describe_network_failure(url, last, self.settings)

    def _get_once(self, url: str, accept: str = "application/json") -> Response:
        c = self._curl
        c.reset()
        body = io.BytesIO()
        headers: dict[str, str] = {}

        def on_header(line: bytes) -> None:
            text = line.decode("iso-8859-1").strip()
            if text.upper().startswith("HTTP/"):
                headers.clear()
            elif ":" in text:
                k, v = text.split(":", 1)
                headers[k.strip().lower()] = v.strip()

        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.HTTPHEADER, [f"Accept: {accept}", "Accept-Encoding: identity",
                                     *self.auth_headers(url)])
        c.setopt(pycurl.USERAGENT, USER_AGENT)
        c.setopt(pycurl.FOLLOWLOCATION, 0)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, int(self.settings.connect_timeout * 1000))
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self.settings.stall_seconds)))
        c.setopt(pycurl.WRITEDATA, body)
        c.setopt(pycurl.HEADERFUNCTION, on_header)
        c.setopt(pycurl.NOSIGNAL, 1)
        if self.settings.proxy:
            c.setopt(pycurl.PROXY, self.settings.proxy)
        c.perform()
        return Response(c.getinfo(pycurl.RESPONSE_CODE), headers, body.getvalue(), url)

    # ---- the API calls --------------------------------------------------------------------------------
    def commit_sha(self, repo_id: str, revision: str) -> str:
        """The commit ``revision`` (branch, tag or sha) of ``repo_id`` points to."""
        url = (f"{self.settings.endpoint}/api/models/{repo_id}/revision/"
               f"{urllib.parse.quote(revision, safe='')}")
        resp = self.get(url)
        raise_for_hub_error(resp, repo_id, revision, self.settings)
        try:
            sha = json.loads(resp.body)["sha"]
        except (ValueError, KeyError, TypeError):
            raise PullError(f"The hub's answer for {url} has no commit sha.",
                            remedy="Check that HF_ENDPOINT points to a Hugging Face Hub or a mirror of it.") from None
        if not re.fullmatch(r"[0-9a-f]{40}", str(sha)):
            raise PullError(f"The hub returned an invalid commit sha {sha!r} for {repo_id}@{revision}.",
                            remedy="Check that HF_ENDPOINT points to a Hugging Face Hub or a mirror of it.")
        return sha

    def list_files(self, repo_id: str, sha: str) -> list[RemoteFile]:
        """Every file of ``repo_id`` at commit ``sha`` (follows pagination)."""
        url: str | None = f"{self.settings.endpoint}/api/models/{repo_id}/tree/{sha}?recursive=true"
        files: list[RemoteFile] = []
        pages = 0
        while url:
            pages += 1
            if pages > 10_000:  # a hub that links pages in a loop; never spin forever
                raise PullError(f"The file listing of {repo_id} did not end after 10000 pages.",
                                remedy="Check HF_ENDPOINT; report the mirror's pagination bug.")
            resp = self.get(url)
            raise_for_hub_error(resp, repo_id, sha, self.settings)
            files += parse_tree_page(resp.body, url)
            match = _LINK_NEXT.search(resp.headers.get("link", ""))
            url = urllib.parse.urljoin(url, match.group(1)) if match else None
        return files

    def resolve_url(self, repo_id: str, sha: str, path: str) -> str:
        return f"{self.settings.endpoint}/{repo_id}/resolve/{sha}/{quote_path(path)}"
