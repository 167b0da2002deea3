"""A local imitation of the Hugging Face Hub HTTP API with a CDN on a second origin, and fault knobs.

The hub listens on ``http://127.0.0.1:<port>`` and redirects LFS downloads to the CDN at
``http://localhost:<port2>`` (another origin, as huggingface.co -> cdn-lfs.hf.co), so tests can check that the
``Authorization`` header never leaves the hub. It speaks what both ``ovms --pull`` and
``huggingface_hub.snapshot_download`` use:

- ``GET /api/models?search=&author=&filter=&limit=``: the model search, paginated with ``Link`` (a cursor)
- ``GET /api/models/{repo}/revision/{rev}``: ``{"id", "sha", "siblings", ...}``
- ``GET /api/models/{repo}/tree/{rev}?recursive=true``: entries with ``oid`` (git blob sha1), ``size`` and
  ``lfs.oid`` (sha256), paginated with ``Link: <...>; rel="next"``
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: regular files served directly (``ETag`` = blob sha1), LFS files
  redirected (302) to the CDN with ``X-Linked-Etag`` / ``X-Linked-Size``; ``X-Repo-Commit`` always
- ``GET /cdn/{sha256}``: the bytes, honouring one ``Range``

Errors carry ``X-Error-Code`` like the real hub (``RepoNotFound`` 401, ``GatedRepo`` 401/403,
``RevisionNotFound``/``EntryNotFound`` 404). Faults are set per file path with :class:`Faults`. Every request
is kept in ``requests`` with the body bytes it was sent and when it started and ended
(``bench/pull_kill_resume.py`` counts from them what a killed and resumed pull fetched twice).

Run standalone (for the benchmark) with ``python -m tests.pull.hub_imitation --spec spec.json``: it prints one
JSON line ``{"endpoint": ...}`` when ready and serves until stdin closes.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import pathlib
import signal
import sys
import threading
import time
import urllib.parse
from typing import Callable, Sequence

from aiohttp import web

CHUNK = 256 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: sha1 over ``b"blob <size>\\0" + data``."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that the git repository holds in place of a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclasses.dataclass
class Faults:
    """Misbehaviour of one file's body. ``times`` bounds how many responses misbehave (then it serves well).

    drop_after: close the connection after sending this many body bytes.
    ignore_range: answer 200 with the whole file to ranged requests.
    fail_first: answer 503 to the first ``fail_first`` requests for the body.
    stall_after / stall_seconds: stop sending after this many bytes, for that long, without closing.
    throttle_bps: send at most this many bytes per second.
    flip_at: send the byte at this file offset inverted.
    truncate_to: the server's copy is this many bytes long (Content-Length and body agree with it).
    gather: hold each misbehaving response until this many are waiting (or 3 s), then answer them all at once.
    freeze_client: with ``gather``, returns the pid of the client, which is stopped (SIGSTOP) while the gathered
        responses are written and continued (SIGCONT) 0.3 s later: it then finds all of them at once.
    """

    drop_after: int | None = None
    ignore_range: bool = False
    fail_first: int = 0
    stall_after: int | None = None
    stall_seconds: float = 30.0
    throttle_bps: int | None = None
    flip_at: int | None = None
    truncate_to: int | None = None
    gather: int = 0
    freeze_client: Callable[[], int] | None = None
    times: int = 1
    used: int = 0
    _gathered: list = dataclasses.field(default_factory=list, repr=False)

    def active(self) -> bool:
        return self.used < self.times

    def applies(self, start: int, end: int) -> bool:
        """Whether a response for bytes [start, end) misbehaves (a byte flip only counts where it lands)."""
        if not self.active():
            return False
        others = (self.drop_after, self.stall_after, self.throttle_bps, self.truncate_to)
        if self.flip_at is not None and all(o is None for o in others) and not self.ignore_range:
            return start <= self.flip_at < end
        return True


@dataclasses.dataclass
class HubFile:
    path: str
    size: int
    lfs: bool
    sha256: str
    blob_sha1: str  # of the content for regular files, of the LFS pointer for LFS files
    data: bytes | None = None  # small files in memory
    disk_path: pathlib.Path | None = None  # large files on disk (served with sendfile when no fault is set)

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.disk_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclasses.dataclass
class HubRepo:
    repo_id: str
    sha: str
    files: dict[str, HubFile]
    branches: dict[str, str]
    gated: bool = False
    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    downloads: int = 0


class BackgroundApps:
    """aiohttp applications served on 127.0.0.1 (free ports) by a thread with its own event loop.

    Subclasses give ``_apps()`` (the applications) and ``_listening(ports)`` (told the ports, in the same
    order); the Hub, Ollama registry and Azure Blob imitations share this.
    """

    thread_name = "imitation"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    def _apps(self) -> Sequence[web.Application]:
        raise NotImplementedError

    def _listening(self, ports: list[int]) -> None:
        raise NotImplementedError

    async def _start_async(self) -> None:
        ports = []
        for app in self._apps():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            ports.append(runner.addresses[0][1])
        self._listening(ports)

    def start(self):
        """Serve in a background thread with its own event loop; returns once every application listens."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start_async())
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(30) or errors:
            raise RuntimeError(f"{self.thread_name} did not start: {errors}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop = None
        self._runners = []


class HubImitation(BackgroundApps):
    """Repositories, fault knobs and request records; ``start()`` serves them on two loopback origins."""

    thread_name = "hub imitation"

    def __init__(self, *, token: str = "hf_test_token", tree_page_size: int = 1000) -> None:
        super().__init__()
        self.repos: dict[str, HubRepo] = {}
        self.faults: dict[tuple[str, str], Faults] = {}
        self.token = token
        self.tree_page_size = tree_page_size
        self.search_page_size = 1000  # the model search's largest page (the Hub's is 1000)
        self.requests: list[dict] = []  # {"origin": "hub"|"cdn", "method", "path", "range", "auth"}
        self.blobs: dict[str, HubFile] = {}
        self.hub_url = ""
        self.cdn_url = ""

    # ---- content ---------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes | pathlib.Path], *, lfs: Callable[[str, int], bool] | None
                 = None, gated: bool = False, branches: tuple[str, ...] = ("main",), tags: tuple[str, ...] = (),
                 pipeline_tag: str | None = None, downloads: int = 0) -> HubRepo:
        """Publish ``repo_id`` with ``files`` (bytes, or a path to a file on disk for big ones); ``tags``,
        ``pipeline_tag`` and ``downloads`` are what the model search (``/api/models``) shows."""
        entries: dict[str, HubFile] = {}
        is_lfs = lfs or (lambda p, n: n >= 1024 * 1024 or p.endswith((".bin", ".safetensors", ".gguf", ".onnx")))
        commit = hashlib.sha1()
        for path, content in sorted(files.items()):
            if isinstance(content, (bytes, bytearray)):
                data, disk_path = bytes(content), None
                size = len(data)
                sha256 = hashlib.sha256(data).hexdigest()
                blob = git_blob_sha1(data)
            else:
                data, disk_path = None, pathlib.Path(content)
                size = disk_path.stat().st_size
                h = hashlib.sha256()
                with open(disk_path, "rb") as f:
                    while chunk := f.read(8 << 20):
                        h.update(chunk)
                sha256 = h.hexdigest()
                blob = ""
            large = is_lfs(path, size)
            if large:
                blob = git_blob_sha1(lfs_pointer(sha256, size))
            elif data is None:
                data = disk_path.read_bytes()
                disk_path = None
                blob = git_blob_sha1(data)
            entry = HubFile(path, size, large, sha256, blob, data, disk_path)
            entries[path] = entry
            self.blobs[sha256] = entry
            commit.update(f"{path}:{blob}\n".encode())
        sha = commit.hexdigest()
        repo = HubRepo(repo_id, sha, entries, {b: sha for b in branches}, gated, tuple(tags), pipeline_tag, downloads)
        self.repos[repo_id] = repo
        return repo

    def set_faults(self, repo_id: str, path: str, faults: Faults) -> Faults:
        self.faults[(repo_id, path)] = faults
        return faults

    def file_requests(self, path_suffix: str) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith(path_suffix)]

    # ---- HTTP ------------------------------------------------------------------------------------------
    def _record(self, origin: str, request: web.Request) -> dict:
        # "sent": body bytes handed to the transport so far (None when aiohttp sends the file with sendfile, the
        # unthrottled fast path); "offset": where the body starts in the file; "started"/"ended": time.monotonic()
        # when the request arrived and when its handler returned (None while it runs).
        record = {"origin": origin, "method": request.method, "path": request.path,
                  "range": request.headers.get("Range"), "auth": request.headers.get("Authorization"),
                  "sent": 0, "offset": None, "started": time.monotonic(), "ended": None}
        self.requests.append(record)
        return record

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status, headers={"X-Error-Code": code})

    def _find(self, request: web.Request) -> tuple[HubRepo | None, web.Response | None]:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, self._error(401, "RepoNotFound", "Repository not found")
        return repo, None

    def _resolve_rev(self, repo: HubRepo, rev: str) -> str | None:
        if rev in repo.branches:
            return repo.branches[rev]
        if rev == repo.sha:
            return rev
        return None

    async def _revision(self, request: web.Request) -> web.Response:
        self._record("hub", request)
        repo, err = self._find(request)
        if err:
            return err
        sha = self._resolve_rev(repo, request.match_info["rev"])
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {request.match_info['rev']}")
        return web.json_response({
            "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": sha, "private": False,
            "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "siblings": [{"rfilename": p} for p in repo.files],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
        })

    async def _tree(self, request: web.Request) -> web.Response:
        self._record("hub", request)
        repo, err = self._find(request)
        if err:
            return err
        if self._resolve_rev(repo, request.match_info["rev"]) is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {request.match_info['rev']}")
        entries: list[dict] = []
        dirs: set[str] = set()
        for f in repo.files.values():
            parts = f.path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
        for f in repo.files.values():
            entry = {"type": "file", "oid": f.blob_sha1, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            entries.append(entry)
        start = int(request.query.get("cursor", "0"))
        page = entries[start:start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(entries):
            nxt = (f"{self.hub_url}{request.path}?recursive={request.query.get('recursive', 'false')}"
                   f"&expand=false&cursor={start + self.tree_page_size}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _search(self, request: web.Request) -> web.Response:
        """``GET /api/models?search=&author=&filter=&pipeline_tag=&limit=``: repositories in the order they were
        added, paginated with ``Link: <...&cursor=N>; rel="next"`` as the Hub does; a wrong token is 401."""
        self._record("hub", request)
        if request.headers.get("Authorization") and not self._authorized(request):
            return self._error(401, "", "Invalid credentials in Authorization header")
        q = request.query
        found = [r for r in self.repos.values()
                 if (q.get("search", "").lower() in r.repo_id.lower())
                 and (not q.get("author") or r.repo_id.split("/")[0] == q["author"])
                 and all(t in r.tags for t in q.getall("filter", []))
                 and (not q.get("pipeline_tag") or r.pipeline_tag == q["pipeline_tag"])]
        limit = min(int(q.get("limit", "1000")), self.search_page_size)
        start = int(q.get("cursor", "0"))
        page = found[start:start + limit]
        headers = {}
        if start + limit < len(found):
            rest = urllib.parse.urlencode([(k, v) for k, v in q.items() if k != "cursor"])
            headers["Link"] = f'<{self.hub_url}/api/models?{rest}&cursor={start + limit}>; rel="next"'
        return web.json_response([{"_id": r.sha[:24], "id": r.repo_id, "modelId": r.repo_id, "private": False,
                                   "downloads": r.downloads, "likes": 0, "tags": list(r.tags),
                                   "pipeline_tag": r.pipeline_tag, "library_name": "openvino" if "openvino" in
                                   r.tags else "transformers", "createdAt": "2026-01-01T00:00:00.000Z"}
                                  for r in page], headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        record = self._record("hub", request)
        repo, err = self._find(request)
        if err:
            return err
        sha = self._resolve_rev(repo, request.match_info["rev"])
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {request.match_info['rev']}")
        if repo.gated and not self._authorized(request):
            status = 403 if request.headers.get("Authorization") else 401
            return self._error(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have "
                               "access to it and be authenticated to access it. Please log in.")
        f = repo.files.get(request.match_info["path"])
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            location = f"{self.cdn_url}/cdn/{f.sha256}?sig=imitation&expires={int(time.time()) + 3600}"
            return web.Response(status=302, headers={**common, "Location": location, "ETag": f'"{f.blob_sha1}"',
                                                     "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                                                     "Content-Length": "0"})
        return await self._serve(request, repo.repo_id, f, {**common, "ETag": f'"{f.blob_sha1}"'}, record)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        record = self._record("cdn", request)
        f = self.blobs.get(request.match_info["oid"])
        if f is None:
            return web.Response(status=404, text="NoSuchKey")
        repo_id = next((r.repo_id for r in self.repos.values() if r.files.get(f.path) is f), "")
        return await self._serve(request, repo_id, f, {"ETag": f'"{f.sha256}"'}, record)

    async def _serve(self, request: web.Request, repo_id: str, f: HubFile, headers: dict,
                     record: dict) -> web.StreamResponse:
        try:
            return await self._serve_body(request, repo_id, f, headers, record)
        except ConnectionError:  # the client went away (a killed pull): nothing to answer
            return web.Response(status=499)
        finally:
            record["ended"] = time.monotonic()

    async def _serve_body(self, request: web.Request, repo_id: str, f: HubFile, headers: dict, record: dict
                          ) -> web.StreamResponse:
        faults = self.faults.get((repo_id, f.path))
        if faults is not None and faults.fail_first > 0:
            faults.fail_first -= 1
            return web.Response(status=503, text="Service Unavailable (imitation fault)")
        size = f.size
        if faults is not None and faults.truncate_to is not None and faults.active():
            size = faults.truncate_to
        start, end, status = 0, size, 200
        rng = request.headers.get("Range")
        if rng and not (faults is not None and faults.ignore_range and faults.active()):
            spec = rng.removeprefix("bytes=").split(",")[0]
            a, _, b = spec.partition("-")
            start = int(a) if a else max(0, size - int(b))
            end = min(size, int(b) + 1) if (a and b) else size
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(size)})
        misbehave = faults is not None and faults.applies(start, end)
        record["offset"] = start
        if not misbehave and f.disk_path is not None:
            record["sent"] = None
            # The fast path: let aiohttp (sendfile) handle the file and its Range header.
            return web.FileResponse(f.disk_path, headers={k: v for k, v in headers.items()
                                                          if k != "Content-Range"})
        if faults is not None and misbehave:
            faults.used += 1
            if faults.gather:
                await self._gather(faults)
        resp = web.StreamResponse(status=status, headers={**headers, "Content-Type": "application/octet-stream"})
        resp.content_length = end - start
        await resp.prepare(request)
        pos, sent, t0 = start, 0, time.monotonic()
        while pos < end:
            n = min(CHUNK, end - pos)
            if misbehave and faults.throttle_bps:
                n = min(n, max(1024, faults.throttle_bps // 20))
            if misbehave and faults.drop_after is not None and sent + n > faults.drop_after:
                n = faults.drop_after - sent
                if n > 0:
                    await resp.write(f.read(pos, pos + n))
                    record["sent"] += n
                request.transport.close()  # drop mid-body: the client sees a short read
                return resp
            if misbehave and faults.stall_after is not None and sent + n > faults.stall_after:
                n = max(0, faults.stall_after - sent)
                if n:
                    await resp.write(f.read(pos, pos + n))
                    record["sent"] += n
                await asyncio.sleep(faults.stall_seconds)
                request.transport.close()
                return resp
            chunk = f.read(pos, pos + n)
            if misbehave and faults.flip_at is not None and pos <= faults.flip_at < pos + n:
                buf = bytearray(chunk)
                buf[faults.flip_at - pos] ^= 0xFF
                chunk = bytes(buf)
            await resp.write(chunk)
            record["sent"] += n
            pos += n
            sent += n
            if misbehave and faults.throttle_bps:
                ahead = sent / faults.throttle_bps - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await resp.write_eof()
        return resp

    @staticmethod
    async def _gather(faults: Faults) -> None:
        """Wait until ``faults.gather`` responses wait here (3 s at most), then let them all go together."""
        if not faults._gathered or faults._gathered[-1][0].is_set():
            faults._gathered.append((asyncio.Event(), [0]))
        event, waiting = faults._gathered[-1]
        waiting[0] += 1
        if waiting[0] < faults.gather:
            try:
                await asyncio.wait_for(event.wait(), 3.0)
            except asyncio.TimeoutError:
                event.set()
            return
        if faults.freeze_client is None:
            event.set()
            return
        pid = faults.freeze_client()
        os.kill(pid, signal.SIGSTOP)
        try:
            event.set()
            await asyncio.sleep(0.3)  # the others write their responses meanwhile
        finally:
            os.kill(pid, signal.SIGCONT)

    def _apps(self) -> tuple[web.Application, web.Application]:
        hub = web.Application()
        hub.router.add_get("/api/models", self._search)
        hub.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._revision)
        hub.router.add_get("/api/models/{org}/{name}/tree/{rev}", self._tree)
        hub.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        cdn = web.Application()
        cdn.router.add_get("/cdn/{oid}", self._cdn)
        return hub, cdn

    def _listening(self, ports: list[int]) -> None:
        self.hub_url = f"http://127.0.0.1:{ports[0]}"
        self.cdn_url = f"http://localhost:{ports[1]}"  # another origin than the hub, as a real CDN

def _main() -> None:
    parser = argparse.ArgumentParser(description="Serve a Hub imitation until stdin closes.")
    parser.add_argument("--spec", required=True,
                        help='JSON: {"repos": {"org/name": {"path": "/file/on/disk" or {"text": "..."}}}, '
                             '"throttle_bps": optional cap per response}')
    args = parser.parse_args()
    spec = json.loads(pathlib.Path(args.spec).read_text())
    hub = HubImitation()
    for repo_id, files in spec["repos"].items():
        content = {p: (v["text"].encode() if isinstance(v, dict) else pathlib.Path(v)) for p, v in files.items()}
        hub.add_repo(repo_id, content)
        if spec.get("throttle_bps"):  # every response (so every connection) capped, as a CDN edge does
            for path in content:
                hub.set_faults(repo_id, path, Faults(throttle_bps=int(spec["throttle_bps"]), times=1 << 62))
    hub.start()
    print(json.dumps({"endpoint": hub.hub_url, "cdn": hub.cdn_url}), flush=True)
    sys.stdin.read()
    hub.stop()
    os._exit(0)


if __name__ == "__main__":
    _main()
