"""A local imitation of the few Azure Blob Storage REST calls that ovms makes through azure-storage-blob.

No Azure Storage emulator installs from PyPI: Azurite is an npm package, and the Python packages that call
themselves Azure emulators either mock in-process (useless for a server in a subprocess) or do not speak the
Blob REST protocol. So this aiohttp server speaks exactly what ``ContainerClient.list_blobs(name_starts_with=...)``
and ``ContainerClient.download_blob(...).readinto/readall`` send, after the REST reference
(https://learn.microsoft.com/rest/api/storageservices/blob-service-rest-api):

- List Blobs: ``GET /{account}/{container}?restype=container&comp=list&prefix=...&marker=...`` answered with
  ``EnumerationResults`` XML, ``page_size`` blobs per page (2 by default, so the client must follow
  ``NextMarker``; Azure too may return fewer than ``maxresults`` with a marker).
- Get Blob: ``GET /{account}/{container}/{blob}`` with ``x-ms-range`` or ``Range`` (the SDK asks for the first
  32 MiB, then 4 MiB chunks): 206 with ``Content-Range``, 416 ``InvalidRange`` past the end of the blob (an
  empty blob; the SDK then asks again without a range), 200 without a range; ``ETag``, ``Last-Modified``,
  ``x-ms-blob-type`` and the other headers Azure sends.
- Shared Key authorization (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key): the
  signature over the canonicalized request is checked with the account key; a wrong one is answered 403
  ``AuthenticationFailed`` with Azure's XML error body and ``x-ms-error-code``, no header at all 403
  ``NoAuthenticationInformation``. Missing containers and blobs are 404 ``ContainerNotFound`` / ``BlobNotFound``.

Anything else (another ``comp``, a ``delimiter``, a write) is answered 400 ``UnsupportedQueryParameter`` or 405,
so a change in what the SDK sends fails the tests instead of passing by accident. Tests write with
:meth:`AzureBlobImitation.put_blob` and :meth:`AzureBlobImitation.delete_blob`.
"""
from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import hmac
import pathlib
import threading
import time
import uuid
from xml.sax.saxutils import escape

from aiohttp import web

from tests.pull.hub_imitation import BackgroundApps

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, in Microsoft's documentation).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SIGNED_HEADERS = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
                  "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


@dataclasses.dataclass
class Blob:
    data: bytes
    etag: str
    last_modified: float


def _http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


class AzureBlobImitation(BackgroundApps):
    """Containers of blobs in memory; ``start()`` serves them on 127.0.0.1 as the Blob endpoint of ``account``."""

    thread_name = "Azure Blob imitation"

    def __init__(self, *, account: str = ACCOUNT, key: str = ACCOUNT_KEY, page_size: int = 2) -> None:
        super().__init__()
        self.account, self.key, self.page_size = account, base64.b64decode(key), page_size
        self.containers: dict[str, dict[str, Blob]] = {}
        self.requests: list[dict] = []  # method, path, query, range, status of every request
        self.endpoint = ""
        self._lock = threading.Lock()
        self._generation = 0

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={key};"
                f"BlobEndpoint={self.endpoint};")

    # What the tests use to change the store.
    def create_container(self, name: str) -> None:
        with self._lock:
            self.containers.setdefault(name, {})

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        with self._lock:
            self._generation += 1
            self.containers[container][name] = Blob(data, f"0x8DC{self._generation:013X}", time.time())

    def delete_blob(self, container: str, name: str) -> None:
        with self._lock:
            del self.containers[container][name]

    def put_tree(self, container: str, local: pathlib.Path, prefix: str) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.put_blob(container, f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())

    # The protocol.
    def _error(self, status: int, code: str, message: str, **details: str) -> web.Response:
        request_id = str(uuid.uuid4())
        now = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
        extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in details.items())
        body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{escape(message)}\n'
                f"RequestId:{request_id}\nTime:{now}</Message>{extra}</Error>")
        return web.Response(status=status, body=body.encode(), content_type="application/xml",
                            headers={"x-ms-error-code": code, "x-ms-request-id": request_id,
                                     "x-ms-version": "2025-11-05"})

    def _string_to_sign(self, request: web.Request) -> str:
        headers = {k.lower(): v for k, v in request.headers.items() if v}
        if headers.get("content-length") == "0":
            headers.pop("content-length")
        lines = [request.method] + [headers.get(h, "") for h in SIGNED_HEADERS]
        canonical_headers = "".join(f"{k}:{v.strip()}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
        resource = f"/{self.account}{request.rel_url.raw_path}"
        for name in sorted({k.lower() for k in request.query}):
            values = [v for k, v in request.query.items() if k.lower() == name]
            resource += f"\n{name}:{','.join(sorted(values))}"
        return "\n".join(lines) + "\n" + canonical_headers + resource

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            return self._error(403, "NoAuthenticationInformation",
                               "Server failed to authenticate the request. Please refer to the information in the "
                               "www-authenticate header.")
        if "x-ms-version" not in request.headers or not ({"x-ms-date", "date"} & {h.lower() for h in request.headers}):
            return self._error(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is "
                               "not specified.")
        string_to_sign = self._string_to_sign(request)
        signature = base64.b64encode(hmac.new(self.key, string_to_sign.encode(), hashlib.sha256).digest()).decode()
        if authorization != f"SharedKey {self.account}:{signature}":
            return self._error(
                403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the value of "
                "Authorization header is formed correctly including the signature.",
                AuthenticationErrorDetail=f"The MAC signature found in the HTTP request '{authorization[-44:]}' is "
                f"not the same as any computed signature. Server used following string to sign: "
                f"'{string_to_sign}'.")
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "range": request.headers.get("x-ms-range") or request.headers.get("Range"),
                              "status": response.status})
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["account"] != self.account:
            return self._error(400, "InvalidUri", "The requested URI does not represent any resource on the server.")
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="this imitation only reads")
        with self._lock:
            container = self.containers.get(request.match_info["container"])
            if container is None:
                return self._error(404, "ContainerNotFound", "The specified container does not exist.")
            name = request.match_info.get("blob")
            if name is None:
                return self._list(request, dict(container))
            blob = container.get(name)
        if blob is None:
            return self._error(404, "BlobNotFound", "The specified blob does not exist.")
        return self._get(request, blob)

    def _list(self, request: web.Request, container: dict[str, Blob]) -> web.Response:
        query = request.query
        unsupported = set(query) - {"restype", "comp", "prefix", "marker", "maxresults", "timeout"}
        if query.get("restype") != "container" or query.get("comp") != "list" or unsupported:
            return self._error(400, "UnsupportedQueryParameter",
                               f"this imitation lists blobs only, without {sorted(unsupported) or query}")
        prefix, marker = query.get("prefix", ""), query.get("marker", "")
        start = base64.urlsafe_b64decode(marker).decode() if marker else ""
        names = sorted(n for n in container if n.startswith(prefix) and n >= start)
        size = min(self.page_size, int(query.get("maxresults", 5000)))
        page, rest = names[:size], names[size:]
        blobs = "".join(
            f"<Blob><Name>{escape(n)}</Name><Properties><Creation-Time>{_http_date(container[n].last_modified)}"
            f"</Creation-Time><Last-Modified>{_http_date(container[n].last_modified)}</Last-Modified>"
            f"<Etag>{container[n].etag}</Etag><Content-Length>{len(container[n].data)}</Content-Length>"
            "<Content-Type>application/octet-stream</Content-Type><Content-Encoding /><Content-Language />"
            "<Content-MD5 /><Cache-Control /><BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier>"
            "<AccessTierInferred>true</AccessTierInferred><LeaseStatus>unlocked</LeaseStatus>"
            "<LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted></Properties></Blob>"
            for n in page)
        next_marker = base64.urlsafe_b64encode(rest[0].encode()).decode() if rest else ""
        body = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="{self.endpoint}/" '
                f'ContainerName="{escape(request.match_info["container"])}"><Prefix>{escape(prefix)}</Prefix>'
                f"<Marker>{marker}</Marker><MaxResults>{size}</MaxResults><Blobs>{blobs}</Blobs>"
                f"<NextMarker>{next_marker}</NextMarker></EnumerationResults>")
        return web.Response(body=body.encode(), content_type="application/xml",
                            headers={"x-ms-request-id": str(uuid.uuid4()), "x-ms-version": "2025-11-05"})

    def _get(self, request: web.Request, blob: Blob) -> web.Response:
        headers = {"ETag": f'"{blob.etag}"', "Last-Modified": _http_date(blob.last_modified),
                   "x-ms-creation-time": _http_date(blob.last_modified), "x-ms-blob-type": "BlockBlob",
                   "x-ms-lease-status": "unlocked", "x-ms-lease-state": "available", "x-ms-server-encrypted": "true",
                   "x-ms-request-id": str(uuid.uuid4()), "x-ms-version": "2025-11-05", "Accept-Ranges": "bytes"}
        wanted = request.headers.get("x-ms-range") or request.headers.get("Range")
        size = len(blob.data)
        if not wanted:
            return web.Response(body=blob.data, content_type="application/octet-stream", headers=headers)
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
        if start >= size:
            response = self._error(416, "InvalidRange", "The range specified is invalid for the current size of "
                                   "the resource.")
            response.headers["Content-Range"] = f"bytes */{size}"
            return response
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return web.Response(status=206, body=blob.data[start:end + 1], content_type="application/octet-stream",
                            headers=headers)

    # Serving.
    def _apps(self) -> list[web.Application]:
        app = web.Application()
        app.router.add_route("*", "/{account}/{container}", self._handle)
        app.router.add_route("*", "/{account}/{container}/{blob:.+}", self._handle)
        return [app]

    def _listening(self, ports: list[int]) -> None:
        self.endpoint = f"http://127.0.0.1:{ports[0]}/{self.account}"
