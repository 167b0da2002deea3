"""A local imitation of the Ollama registry (the OCI distribution API subset ``ollama pull`` uses), with faults.

- ``GET /v2/{namespace}/{model}/manifests/{tag}``: the manifest (``application/vnd.docker.distribution.manifest.v2
  +json``) listing the config blob and the layers (model, template, license, params), each ``{mediaType, digest,
  size}``; 404 ``{"errors": [{"code": "MANIFEST_UNKNOWN"}]}`` for an unknown model or tag
- ``GET /v2/{namespace}/{model}/blobs/{digest}``: 307 to ``/cdn/{digest}`` on a second origin (as
  registry.ollama.ai redirects to its CDN), which serves the bytes honouring one ``Range``

Faults per digest (``BlobFaults``): drop the connection after N bytes, serve wrong bytes (a digest mismatch),
ignore Range, throttle; each for the first ``times`` responses.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time

from aiohttp import web

from tests.pull.hub_imitation import BackgroundApps

CHUNK = 64 * 1024
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"


@dataclasses.dataclass
class BlobFaults:
    drop_after: int | None = None
    wrong_bytes: bool = False
    ignore_range: bool = False
    throttle_bps: int | None = None
    times: int = 1
    used: int = 0


class OllamaImitation(BackgroundApps):
    thread_name = "ollama imitation"

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[tuple[str, str, str], bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults: dict[str, BlobFaults] = {}
        self.requests: list[dict] = []
        self.url = ""
        self.cdn_url = ""

    def add_model(self, name: str, tag: str, layers: dict[str, bytes]) -> dict:
        """Publish ``[namespace/]name:tag`` with ``layers`` {media type suffix or full type: bytes}; returns the
        manifest as JSON."""
        namespace, _, model = name.rpartition("/")
        namespace = namespace or "library"

        def blob(data: bytes) -> str:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            self.blobs[digest] = data
            return digest

        config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_K_M"}).encode()
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": blob(config), "size": len(config)},
                    "layers": [{"mediaType": kind if "/" in kind else f"application/vnd.ollama.image.{kind}",
                                "digest": blob(data), "size": len(data)} for kind, data in layers.items()]}
        self.manifests[(namespace, model, tag)] = json.dumps(manifest, indent=2).encode()
        return manifest

    def blob_requests(self, digest: str) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith(digest) and r["origin"] == "cdn"]

    # ---- HTTP --------------------------------------------------------------------------------------------------
    def _record(self, origin: str, request: web.Request) -> None:
        self.requests.append({"origin": origin, "method": request.method, "path": request.path,
                              "range": request.headers.get("Range"), "accept": request.headers.get("Accept")})

    async def _manifest(self, request: web.Request) -> web.Response:
        self._record("registry", request)
        key = (request.match_info["ns"], request.match_info["model"], request.match_info["tag"])
        body = self.manifests.get(key)
        if body is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                     status=404)
        return web.Response(body=body, content_type=MANIFEST_TYPE,
                            headers={"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})

    async def _blob(self, request: web.Request) -> web.Response:
        self._record("registry", request)
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(status=307, headers={"Location": f"{self.cdn_url}/cdn/{digest}?expires={time.time():.0f}"})

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self._record("cdn", request)
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.Response(status=404)
        faults = self.faults.get(digest)
        active = faults is not None and faults.used < faults.times
        if active:
            faults.used += 1
        if active and faults.wrong_bytes:
            data = bytes(b ^ 0x5A for b in data)  # same length, another digest
        start, end, status, headers = 0, len(data), 200, {"Accept-Ranges": "bytes"}
        rng = request.headers.get("Range")
        if rng and not (active and faults.ignore_range):
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end = int(a), min(len(data), int(b) + 1) if b else len(data)
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        try:
            await resp.prepare(request)
            sent, t0 = 0, time.monotonic()
            for pos in range(start, end, CHUNK):
                chunk = data[pos:min(end, pos + CHUNK)]
                if active and faults.drop_after is not None and sent + len(chunk) > faults.drop_after:
                    await resp.write(chunk[:faults.drop_after - sent])
                    request.transport.close()
                    return resp
                await resp.write(chunk)
                sent += len(chunk)
                if active and faults.throttle_bps:
                    ahead = sent / faults.throttle_bps - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    def _apps(self) -> list[web.Application]:
        registry = web.Application()
        registry.router.add_get("/v2/{ns}/{model}/manifests/{tag}", self._manifest)
        registry.router.add_get("/v2/{ns}/{model}/blobs/{digest}", self._blob)
        cdn = web.Application()
        cdn.router.add_get("/cdn/{digest}", self._cdn)
        return [registry, cdn]

    def _listening(self, ports: list[int]) -> None:
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.cdn_url = f"http://localhost:{ports[1]}"
