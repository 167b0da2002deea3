"""The REST routes under ``/api/v1``: decode, call the service, encode. Errors map in one decorator.

The same routes serve the standalone service (``python -m ovms.download``) and a serving instance started with
``--model_download_api`` (``add_routes`` on its aiohttp application).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import uuid

from aiohttp import web

from ovms.download import schema
from ovms.download.hubs.base import ListingError, Refused
from ovms.download.jobs import ACTIVE
from ovms.download.service import Conflict, DownloadService, JobNotFound

log = logging.getLogger("ovms.download")

PREFIX = "/api/v1"
SERVICE = web.AppKey("download_service", DownloadService)
SSE_KEEPALIVE_SECONDS = 15.0


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def answers(handler):
    """Service errors -> HTTP: 422 validation (FastAPI's body), 400 refused, 404 unknown, 409 conflict, and a
    listing's own (501 cannot list, 401 credentials refused, 502 the hub failed)."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except schema.ValidationFailed as exc:
            return _json(exc.body(), 422)
        except Refused as exc:
            return _json({"detail": str(exc)}, 400)
        except JobNotFound as exc:
            return _json({"detail": str(exc)}, 404)
        except Conflict as exc:
            return _json({"detail": str(exc)}, 409)
        except ListingError as exc:
            return _json({"detail": str(exc)}, exc.status)
        except web.HTTPException:
            raise
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("Internal error in %s %s (request %s)", request.method, request.path, request_id)
            return _json({"detail": f"Internal error (request {request_id}); see the service log."}, 500)
    return wrapped


def _service(request: web.Request) -> DownloadService:
    return request.app[SERVICE]


@answers
async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


@answers
async def download(request: web.Request) -> web.Response:
    body = await request.read()
    return _json(_service(request).submit(body, request.query.get("download_path")))


@answers
async def list_jobs(request: web.Request) -> web.Response:
    return _json({"jobs": [j.as_json() for j in _service(request).jobs.values()]})


@answers
async def get_job(request: web.Request) -> web.Response:
    return _json(_service(request).job(request.match_info["job_id"]).as_json())


@answers
async def cancel_job(request: web.Request) -> web.Response:
    job = await _service(request).cancel(request.match_info["job_id"])
    return _json(job.as_json())


@answers
async def model_jobs(request: web.Request) -> web.Response:
    name = request.query.get("model_name")
    if not name:
        raise schema.ValidationFailed([schema.Problem(("query", "model_name"), "Field required", "missing")])
    return _json({"jobs": [j.as_json() for j in _service(request).jobs_of_model(name)]})


@answers
async def results(request: web.Request) -> web.Response:
    return _json({"results": _service(request).results()})


@answers
async def plugins(request: web.Request) -> web.Response:
    return _json(_service(request).plugins_answer())


@answers
async def list_models(request: web.Request) -> web.Response:
    return _json(await _service(request).list_models(await request.read()))


@answers
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``progress`` event per change of the job, ``end`` when it is finished."""
    service = _service(request)
    job = service.job(request.match_info["job_id"])
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    seen = -1
    while True:
        if job.version != seen:
            seen = job.version
            await resp.write(f"event: progress\nid: {seen}\ndata: {json.dumps(job.as_json())}\n\n".encode())
        if job.status not in ACTIVE:
            await resp.write(f"event: end\ndata: {json.dumps({'status': job.status})}\n\n".encode())
            break
        before = job.version
        await service.wait_change(SSE_KEEPALIVE_SECONDS)
        if job.version == before and job.status in ACTIVE:
            await resp.write(b": keep-alive\n\n")
    await resp.write_eof()
    return resp


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ovms Model Download API</title>
<link rel="stylesheet" href="{prefix}/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{prefix}/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "{prefix}/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>
"""
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "application/javascript"}


async def docs(request: web.Request) -> web.Response:
    """Swagger UI on the OpenAPI document; its assets come from the swagger-ui-bundle package (no CDN)."""
    return web.Response(text=DOCS_PAGE.format(prefix=PREFIX), content_type="text/html")


async def docs_asset(request: web.Request) -> web.StreamResponse:
    import swagger_ui_bundle

    name = request.match_info["name"]
    if name not in DOCS_ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(pathlib.Path(swagger_ui_bundle.swagger_ui_path) / name,
                            headers={"Content-Type": DOCS_ASSETS[name]})


async def openapi(request: web.Request) -> web.Response:
    from ovms.download.openapi import document
    return _json(document())


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str  # under PREFIX
    handler: object
    summary: str
    body: schema.Schema | None = None
    query: tuple[tuple[str, bool, str], ...] = ()  # (name, required, description)
    answer: str = "object"  # a schema name, or "object"
    errors: tuple[int, ...] = ()


ROUTES = (
    Route("GET", "/health", health, "Liveness: {\"status\": \"ok\"}."),
    Route("POST", "/models/download", download, "Download models; answers the job ids at once.",
          body=schema.DownloadRequest, query=(("download_path", True, "Directory under the models directory."),),
          answer="DownloadAnswer", errors=(400, 422)),
    Route("GET", "/jobs", list_jobs, "All jobs: {\"jobs\": [Job]}."),
    Route("GET", "/jobs/{job_id}", get_job, "One job.", answer="Job", errors=(404,)),
    Route("DELETE", "/jobs/{job_id}", cancel_job, "Cancel a queued or running job: stops its transfer and "
          "removes its partial files; answers the canceled job.", answer="Job", errors=(404, 409)),
    Route("GET", "/jobs/{job_id}/events", job_events, "Server-sent events: `progress` (the job) on every change, "
          "then `end`.", answer="text/event-stream", errors=(404,)),
    Route("GET", "/models/jobs", model_jobs, "Jobs of one model: {\"jobs\": [Job]}.",
          query=(("model_name", True, "The name given in the download request."),), errors=(404, 422)),
    Route("GET", "/models/results", results, "Completed downloads: {\"results\": [...]}."),
    Route("GET", "/plugins", plugins, "Hubs and converters, each with available and unavailable_reason."),
    Route("POST", "/models/list", list_models, "One window (limit, offset) of a hub's models; hubs that cannot "
          "list answer 501 with the reason.", body=schema.ListRequest, answer="ListAnswer",
          errors=(400, 401, 422, 501, 502)),
    Route("GET", "/openapi.json", openapi, "This document."),
    Route("GET", "/docs", docs, "Swagger UI on this document (assets served from the swagger-ui-bundle package).",
          answer="text/html"),
    Route("GET", "/docs/static/{name}", docs_asset, "The Swagger UI's stylesheet and script.",
          answer="application/octet-stream", errors=(404,)),
)


def add_routes(app: web.Application, service: DownloadService) -> None:
    """Mount the API on ``app``; the service starts and stops with the application."""
    app[SERVICE] = service
    for route in ROUTES:
        app.router.add_route(route.method, PREFIX + route.path, route.handler)

    async def lifetime(app: web.Application):
        await service.start()
        yield
        await service.close()

    app.cleanup_ctx.append(lifetime)


def create_app(service: DownloadService) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    add_routes(app, service)
    return app
