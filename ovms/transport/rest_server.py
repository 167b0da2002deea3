"""REST transport: KServe v2 over aiohttp on the same data plane as gRPC.

Unknown URLs answer 400 "Invalid request URL" and known URLs with the wrong method 406 "Unsupported method",
as OVMS's REST handler does; every error body is ``{"error": "<OVMS message>"}``.
"""
from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web

from ovms.dataplane import DataPlane, parse_version
from ovms.errors import Kind, ServingError
from ovms.protocol import kserve_rest as codec
from ovms.protocol import tfs
from ovms.transport import openai_rest

log = logging.getLogger("ovms.rest")

DATAPLANE = web.AppKey("dataplane", DataPlane)
# Route sets the composition root adds to the REST application (ovms/cli.py: the model download API with
# --model_download_api); each is called with the app once it has the serving routes.
EXTRA_ROUTES: list = []
HEADER_LENGTH = codec.HEADER_LENGTH
MAX_BODY_BYTES = 1 << 30


# Answered while the server drains (probes, metrics, status); every other request is refused then.
STATUS_PATHS = ("/v2/health/", "/metrics", "/v1/config")


def _error_response(error: ServingError) -> web.Response:
    return web.json_response({"error": error.message}, status=error.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """OVMS's error bodies for every failure; and the drain: requests other than probes, metrics and status are
    counted until answered (an SSE stream until its last event) and refused while the server drains."""
    try:
        if request.path.startswith(STATUS_PATHS):
            return await handler(request)
        drain = request.app[DATAPLANE].drain
        drain.enter()
        try:
            return await handler(request)
        finally:
            drain.leave()
    except ServingError as exc:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s: %s %s refused: %s", uuid.uuid4().hex[:12], request.method, request.path,
                      exc.message)
        return _error_response(exc)
    except web.HTTPMethodNotAllowed:
        return _error_response(ServingError(Kind.REST_UNSUPPORTED_METHOD))
    except web.HTTPNotFound:
        return _error_response(ServingError(Kind.REST_INVALID_URL))
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": f"request body larger than {MAX_BODY_BYTES} bytes"}, status=413)
    except web.HTTPException:
        raise
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("request %s: %s %s failed unexpectedly", request_id, request.method, request.path)
        return _error_response(ServingError(Kind.INTERNAL_ERROR, f"request id {request_id}; see the server log"))


def _version(request: web.Request) -> int | None:
    return parse_version(request.match_info.get("version"))


def _json(data: dict) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), content_type="application/json")


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[DATAPLANE].live() else 503)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[DATAPLANE].ready() else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return _json(codec.server_metadata_json(request.app[DATAPLANE].server_metadata()))


async def model_metadata(request: web.Request) -> web.Response:
    dp, name, version = request.app[DATAPLANE], request.match_info["model"], _version(request)
    meta = dp.counted("KServe", "REST", "ModelMetadata", name, version, lambda: dp.model_metadata(name, version))
    return _json(codec.model_metadata_json(meta))


async def model_ready(request: web.Request) -> web.Response:
    dp, name, version = request.app[DATAPLANE], request.match_info["model"], _version(request)
    is_ready = dp.counted("KServe", "REST", "ModelReady", name, None, lambda: dp.model_ready(name, version))
    return web.Response(status=200 if is_ready else 503)


async def model_config(request: web.Request) -> web.Response:
    meta = request.app[DATAPLANE].model_metadata(request.match_info["model"], _version(request))
    return _json(codec.model_config_json(meta))


async def model_statistics(request: web.Request) -> web.Response:
    rows = request.app[DATAPLANE].statistics(request.match_info.get("model", ""), _version(request))
    return _json(codec.statistics_json(rows))


async def infer(request: web.Request) -> web.Response:
    header_length = codec.header_length(request.headers.get(HEADER_LENGTH))
    model, version = request.match_info["model"], _version(request)
    request.app[DATAPLANE].servable(model, version)  # an unknown model is 404 whatever the body (as OVMS)
    body = await request.read()
    infer_request, binary = codec.decode_infer_request(body, header_length, model, version)
    dp = request.app[DATAPLANE]
    # A model fast enough for the event loop answers in place; others go to their worker threads.
    response = dp.infer_now(infer_request, interface="REST") or await dp.infer(infer_request, interface="REST")
    payload, json_length = codec.encode_infer_response(response, binary)
    if json_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(body=payload, content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})


# ---- TensorFlow Serving REST and OVMS's config endpoints ----------------------------------------------------

async def tfs_status(request: web.Request) -> web.Response:
    dp, name, version = request.app[DATAPLANE], request.match_info["model"], _version(request)
    statuses = dp.counted("TensorFlowServing", "REST", "GetModelStatus", name, None,
                          lambda: dp.model_status(name, version))
    return _json(tfs.status_json(statuses))


async def tfs_metadata(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    name, version = request.match_info["model"], _version(request)
    served = dp.servable(name, version).version
    meta = dp.counted("TensorFlowServing", "REST", "GetModelMetadata", name, version,
                      lambda: dp.model_metadata(name, version))
    return _json(tfs.metadata_json(meta, served))


async def tfs_predict(request: web.Request) -> web.Response:
    dp = request.app[DATAPLANE]
    name, version = request.match_info["model"], _version(request)
    servable = dp.servable(name, version)
    document = codec.parse_json(await request.read())
    infer_request, form = tfs.decode_rest_predict(document, name, version, servable.inputs)
    response = dp.infer_now(infer_request, api="TensorFlowServing", interface="REST", method="Predict") or \
        await dp.infer(infer_request, api="TensorFlowServing", interface="REST", method="Predict")
    return _json(tfs.encode_rest_predict(response, form))


def _config_json(dp: DataPlane) -> dict:
    return {name: tfs.status_json(statuses) for name, statuses in dp.all_status().items()}


async def config_status(request: web.Request) -> web.Response:
    return _json(_config_json(request.app[DATAPLANE]))


async def config_reload(request: web.Request) -> web.Response:
    """OVMS: 201 when the reload changed something, 200 when not; the body is the new status."""
    dp = request.app[DATAPLANE]
    result = await dp.reload_config()
    if result.error is not None:
        raise ServingError(Kind.CONFIG_RELOAD_FAILED, result.error)
    return web.Response(body=json.dumps(_config_json(dp)).encode(), content_type="application/json",
                        status=201 if result.changed else 200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DATAPLANE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(dataplane: DataPlane) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[DATAPLANE] = dataplane
    add = app.router.add_route
    add("GET", "/v2/health/live", live)
    add("GET", "/v2/health/ready", ready)
    add("GET", "/v2", server_metadata)
    add("GET", "/v2/models/stats", model_statistics)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add("GET", base, model_metadata)
        add("GET", base + "/ready", model_ready)
        add("GET", base + "/config", model_config)
        add("GET", base + "/stats", model_statistics)
        add("POST", base + "/infer", infer)
    if dataplane.metrics is not None:
        add("GET", "/metrics", metrics)
    add("GET", "/v1/config", config_status)
    add("POST", "/v1/config/reload", config_reload)
    for base in ("/v1/models/{model:[^/:]+}", "/v1/models/{model:[^/:]+}/versions/{version:[^/:]+}"):
        add("GET", base, tfs_status)
        add("GET", base + "/metadata", tfs_metadata)
        add("POST", base + ":predict", tfs_predict)
    openai_rest.add_routes(app, dataplane)
    for mount in EXTRA_ROUTES:
        mount(app)
    return app
