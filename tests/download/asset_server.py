"""A plain HTTP file server on 127.0.0.1 with a CDN on a second origin, as GitHub's release assets are served.

- ``GET /<path>`` on the server: the file's bytes (honouring one ``Range``), or, for paths published with
  ``redirect=True``, a 302 to ``/cdn/<path>?sig=...`` on the other origin (github.com -> the release-assets host),
  which serves the bytes
- 404 for anything else

Faults per path (``FileFaults``): drop the connection after N bytes, ignore Range, answer without a
Content-Length (chunked), flip one byte; each for the first ``times`` responses other than a size probe
(``Range: bytes=0-0``). Every request is kept in
``requests`` ({"origin", "method", "path", "range"}) so a test can count the body requests.
"""
from __future__ import annotations

import dataclasses

from aiohttp import web

from tests.pull.hub_imitation import BackgroundApps

CHUNK = 64 * 1024


@dataclasses.dataclass
class FileFaults:
    drop_after: int | None = None
    ignore_range: bool = False
    no_length: bool = False
    flip_at: int | None = None
    times: int = 1
    used: int = 0


class AssetServer(BackgroundApps):
    thread_name = "asset server"

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.redirected: set[str] = set()
        self.faults: dict[str, FileFaults] = {}
        self.requests: list[dict] = []
        self.url = ""
        self.cdn_url = ""

    def add(self, path: str, data: bytes, *, redirect: bool = False) -> str:
        """Publish ``data`` at ``/<path>``; returns its URL."""
        path = path.lstrip("/")
        self.files[path] = data
        if redirect:
            self.redirected.add(path)
        return f"{self.url}/{path}"

    def body_requests(self, path: str) -> list[dict]:
        """GETs that could carry the file's bytes (the CDN's, or the server's own for a path not redirected)."""
        path = path.lstrip("/")
        origin = "cdn" if path in self.redirected else "server"
        return [r for r in self.requests if r["path"].endswith("/" + path) and r["origin"] == origin]

    async def _server(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.requests.append({"origin": "server", "method": request.method, "path": request.path,
                              "range": request.headers.get("Range")})
        if path not in self.files:
            return web.Response(status=404, text="Not Found")
        if path in self.redirected:
            return web.Response(status=302, headers={"Location": f"{self.cdn_url}/cdn/{path}?sig=imitation"})
        return await self._serve(request, path)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.requests.append({"origin": "cdn", "method": request.method, "path": request.path,
                              "range": request.headers.get("Range")})
        if path not in self.files or request.query.get("sig") != "imitation":
            return web.Response(status=403, text="AccessDenied")
        return await self._serve(request, path)

    async def _serve(self, request: web.Request, path: str) -> web.StreamResponse:
        data = self.files[path]
        faults = self.faults.get(path)
        # The size probe (Range: bytes=0-0) is never faulted: the faults are for the body's transfers.
        misbehave = faults is not None and faults.used < faults.times and request.headers.get("Range") != "bytes=0-0"
        if faults is not None and faults.no_length:  # a server that never states a size: probe included
            misbehave = True
        if misbehave:
            faults.used += 1
        start, end, status, headers = 0, len(data), 200, {"Accept-Ranges": "bytes"}
        rng = request.headers.get("Range")
        if rng and not (misbehave and (faults.ignore_range or faults.no_length)):
            a, _, b = rng.removeprefix("bytes=").split(",")[0].partition("-")
            start = int(a) if a else max(0, len(data) - int(b))
            end = min(len(data), int(b) + 1) if (a and b) else len(data)
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers={**headers, "Content-Type": "application/octet-stream"})
        if misbehave and faults.no_length:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = end - start
        await resp.prepare(request)
        sent = 0
        for pos in range(start, end, CHUNK):
            chunk = bytearray(data[pos:min(end, pos + CHUNK)])
            if misbehave and faults.flip_at is not None and pos <= faults.flip_at < pos + len(chunk):
                chunk[faults.flip_at - pos] ^= 0xFF
            if misbehave and faults.drop_after is not None and sent + len(chunk) > faults.drop_after:
                await resp.write(bytes(chunk[:faults.drop_after - sent]))
                request.transport.close()
                return resp
            try:
                await resp.write(bytes(chunk))
            except ConnectionError:
                return resp
            sent += len(chunk)
        await resp.write_eof()
        return resp

    def _apps(self) -> tuple[web.Application, web.Application]:
        server = web.Application()
        server.router.add_get("/{path:.+}", self._server)
        cdn = web.Application()
        cdn.router.add_get("/cdn/{path:.+}", self._cdn)
        return server, cdn

    def _listening(self, ports: list[int]) -> None:
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.cdn_url = f"http://localhost:{ports[1]}"
