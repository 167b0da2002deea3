"""gRPC transport: KServe v2 GRPCInferenceService on grpc.aio, plus health checking and reflection."""
from __future__ import annotations

import asyncio
import functools
import logging
import uuid

import grpc
from google.protobuf.message import DecodeError

from ovms._proto.messages import kserve as pb
from ovms._proto.messages import (tfs_get_model_metadata, tfs_get_model_status, tfs_model_management,
                                  tfs_model_service, tfs_predict, tfs_prediction_service)
from ovms.dataplane import DataPlane, parse_version
from ovms.errors import Kind, ServingError
from ovms.protocol import kserve_grpc as codec
from ovms.protocol import tfs
from ovms.transport.grpc_health import HealthService, ReflectionService
from ovms.types import StreamContext

log = logging.getLogger("ovms.grpc")

MAX_MESSAGE_BYTES = 1 << 30  # 1 GiB, as OVMS allows by default
KSERVE_SERVICE = "inference.GRPCInferenceService"
TFS_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
TFS_MODEL_SERVICE = "tensorflow.serving.ModelService"
STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream in flight at once
MAX_CONCURRENT_STREAMS = 256  # calls in flight per client connection (grpc.max_concurrent_streams)
# Answered while the server drains (probes and status); every other call is refused then, and counted until done.
STATUS_METHODS = {"ServerLive", "ServerReady", "ModelReady", "GetModelStatus"}
_END = object()  # the last item of one stream request's responses


def _unexpected(exc: BaseException, method: str) -> ServingError:
    request_id = uuid.uuid4().hex[:12]
    log.error("request %s: %s failed unexpectedly", request_id, method, exc_info=exc)
    return ServingError(Kind.INTERNAL_ERROR, f"request id {request_id}; see the server log")


# A ModelInferRequest this big that arrives in a writable buffer (the native server's) has its raw inputs taken as
# views of that buffer: OpenVINO then reads the tensors where they arrived (shared, not copied twice).
SPLIT_BYTES = 64 << 10


def _writable(data) -> bool:
    return isinstance(data, memoryview) and not data.readonly


def _parse(message_type, data: bytes):
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise ServingError(Kind.INVALID_MESSAGE_STRUCTURE, f"the request is not a valid {message_type.DESCRIPTOR.name}"
                                                           " protobuf message") from None


def mapped_errors(method, message_module=pb):
    """Parse the request and turn ServingError (and anything unexpected) into a gRPC status with OVMS's message.

    Requests arrive as bytes (see ``_handlers``) so a corrupt message gets INVALID_ARGUMENT with a readable
    message instead of grpc's UNKNOWN with a Python exception name.
    """
    name = {"HandleReloadConfigRequest": "ReloadConfig"}.get(method.__name__, method.__name__)
    message_type = getattr(message_module, name + "Request")
    counted = method.__name__ not in STATUS_METHODS  # others are refused while draining, and counted

    @functools.wraps(method)
    async def wrapper(self, request, context):
        drain = self.dp.drain
        try:
            if counted:
                drain.enter()
                try:
                    return await method(self, _parse(message_type, request), context)
                finally:
                    drain.leave()
            return await method(self, _parse(message_type, request), context)
        except ServingError as exc:
            error = exc
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s: %s refused: %s", uuid.uuid4().hex[:12], method.__name__, exc.message)
        except Exception as exc:
            error = _unexpected(exc, method.__name__)
        await context.abort(grpc.StatusCode[error.grpc_code], error.message)
    return wrapper


class InferenceServicer:
    """KServe v2 over gRPC on the shared data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    @mapped_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dp.live())

    @mapped_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dp.ready())

    @mapped_errors
    async def ServerMetadata(self, request, context):
        return codec.encode_server_metadata(self.dp.server_metadata())

    @mapped_errors
    async def ModelReady(self, request, context):
        version = parse_version(request.version)
        ready = self.dp.counted("KServe", "gRPC", "ModelReady", request.name, None,
                                lambda: self.dp.model_ready(request.name, version))
        return pb.ModelReadyResponse(ready=ready)

    @mapped_errors
    async def ModelMetadata(self, request, context):
        version = parse_version(request.version)
        meta = self.dp.counted("KServe", "gRPC", "ModelMetadata", request.name, version,
                               lambda: self.dp.model_metadata(request.name, version))
        return codec.encode_model_metadata(meta)

    @mapped_errors
    async def ModelConfig(self, request, context):
        return codec.encode_model_config(self.dp.model_metadata(request.name, parse_version(request.version)))

    @mapped_errors
    async def ModelStatistics(self, request, context):
        return codec.encode_statistics(self.dp.statistics(request.name, parse_version(request.version)))

    @mapped_errors
    async def ModelInfer(self, request, context):
        response = await self.dp.infer(codec.decode_infer_request(request))
        return codec.encode_infer_response(response)

    def infer_now(self, data: bytes):
        """ModelInfer for the native server: the serialized response (a list of byte strings to write in order)
        when the model answered in place (fast enough for the event loop), else a function that makes the
        coroutine answering it. Errors raise ServingError."""
        drain = self.dp.drain
        drain.enter()
        try:
            split = codec.split_raw_inputs(data) if len(data) >= SPLIT_BYTES and _writable(data) else None
            if split is not None:
                request = codec.decode_infer_request(_parse(pb.ModelInferRequest, split[0]), split[1] or None)
            else:
                request = codec.decode_infer_request(_parse(pb.ModelInferRequest, data))
            response = self.dp.infer_now(request)
        except ServingError:
            drain.leave()
            raise
        except Exception as exc:
            drain.leave()
            raise _unexpected(exc, "ModelInfer") from None
        drain.leave()  # answered, or the coroutine counts itself once it runs
        if response is not None:
            return codec.encode_infer_response_parts(response)
        return functools.partial(self._infer_later, request)

    async def _infer_later(self, request):
        """Counted in the drain from its first step on: a task cancelled before it (the client left at once)
        must not leave the drain waiting for it."""
        drain = self.dp.drain
        drain.enter()
        try:
            return codec.encode_infer_response_parts(await self.dp.infer(request))
        except ServingError:
            raise
        except Exception as exc:
            raise _unexpected(exc, "ModelInfer") from None
        finally:
            drain.leave()

    async def _stream_one(self, data: bytes, out: asyncio.Queue, stream: StreamContext) -> None:
        """Answer one request of a stream into ``out`` (several responses from a graph that streams), then END."""
        request = pb.ModelInferRequest()
        try:
            request = _parse(pb.ModelInferRequest, data)
            async for response in self.dp.infer_stream(codec.decode_infer_request(request), stream=stream):
                out.put_nowait(pb.ModelStreamInferResponse(infer_response=codec.encode_infer_response(response)))
            out.put_nowait(_END)
            return
        except ServingError as exc:
            error = exc
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s (id %r): ModelStreamInfer refused: %s", uuid.uuid4().hex[:12], request.id,
                          exc.message)
        except Exception as exc:
            error = _unexpected(exc, "ModelStreamInfer")
        out.put_nowait(pb.ModelStreamInferResponse(
            error_message=error.message,
            infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                                 id=request.id)))
        out.put_nowait(_END)

    @staticmethod
    async def _answers(item):
        """The responses of one request in order, until its END; leaving early (client gone) cancels the request."""
        task, out = item
        try:
            while (response := await out.get()) is not _END:
                yield response
        finally:
            task.cancel()

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests of one stream run concurrently (up to STREAM_WINDOW); responses keep request order.

        An error answers its own request with ``error_message`` and the stream goes on, as Triton does. When the
        server starts draining, the stream takes no new requests: those already read are answered, then the
        stream ends with UNAVAILABLE so the client sends the rest to another replica.
        """
        drain = self.dp.drain
        try:
            drain.enter()
        except ServingError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
        pending: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)
        done = object()
        stream = StreamContext()

        async def read() -> None:
            try:
                async for data in request_iterator:
                    out: asyncio.Queue = asyncio.Queue()
                    await pending.put((asyncio.ensure_future(self._stream_one(data, out, stream)), out))
            finally:
                await pending.put(done)

        reader = asyncio.ensure_future(read())
        draining = asyncio.ensure_future(drain.started.wait())
        try:
            while not drain.draining:
                next_task = asyncio.ensure_future(pending.get())
                await asyncio.wait((next_task, draining), return_when=asyncio.FIRST_COMPLETED)
                if not next_task.done():
                    next_task.cancel()
                    break
                if (item := next_task.result()) is done:
                    return
                async for response in self._answers(item):
                    yield response
            reader.cancel()
            while not pending.empty():
                if (item := pending.get_nowait()) is done:
                    return
                async for response in self._answers(item):
                    yield response
            error = ServingError(Kind.SERVER_SHUTTING_DOWN)
            await context.abort(grpc.StatusCode[error.grpc_code], error.message)
        finally:
            drain.leave()
            draining.cancel()
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not done:
                    item[0].cancel()


class _Messages:
    """Request/response classes of the TFS services, found by name like those of ``pb``."""

    PredictRequest = tfs_predict.PredictRequest
    PredictResponse = tfs_predict.PredictResponse
    GetModelMetadataRequest = tfs_get_model_metadata.GetModelMetadataRequest
    GetModelMetadataResponse = tfs_get_model_metadata.GetModelMetadataResponse
    GetModelStatusRequest = tfs_get_model_status.GetModelStatusRequest
    GetModelStatusResponse = tfs_get_model_status.GetModelStatusResponse
    ReloadConfigRequest = tfs_model_management.ReloadConfigRequest
    ReloadConfigResponse = tfs_model_management.ReloadConfigResponse


def tfs_errors(method):
    return mapped_errors(method, _Messages)


class PredictionServicer:
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata on the shared data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    @tfs_errors
    async def Predict(self, request, context):
        response = await self.dp.infer(tfs.decode_predict(request), api="TensorFlowServing", method="Predict")
        return tfs.encode_predict(response, request.model_spec.signature_name)

    @tfs_errors
    async def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError(Kind.INVALID_INPUT_FORMAT,
                               'metadata_field must be ["signature_def"]')
        name, version = request.model_spec.name, tfs.model_version(request.model_spec)
        meta = self.dp.counted("TensorFlowServing", "gRPC", "GetModelMetadata", name, version,
                               lambda: self.dp.model_metadata(name, version))
        served = self.dp.servable(request.model_spec.name, version).version
        return tfs.encode_metadata(meta, served)


class ModelServicer:
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    @tfs_errors
    async def GetModelStatus(self, request, context):
        spec = request.model_spec
        version = tfs.model_version(spec)
        return tfs.encode_status(self.dp.counted("TensorFlowServing", "gRPC", "GetModelStatus", spec.name, None,
                                                 lambda: self.dp.model_status(spec.name, version)))

    @tfs_errors
    async def HandleReloadConfigRequest(self, request, context):
        result = await self.dp.reload_config()
        response = tfs_model_management.ReloadConfigResponse()
        if result.error is not None:
            raise ServingError(Kind.CONFIG_RELOAD_FAILED, result.error)
        response.status.error_code = 0
        return response


def _handlers(servicer, service_descriptor, messages) -> grpc.GenericRpcHandler:
    """Method handlers of a service with requests left as bytes (parsed in ``mapped_errors``)."""
    methods = {}
    for method in service_descriptor.methods:
        behaviour = getattr(servicer, method.name)
        serialize = getattr(messages, method.output_type.name).SerializeToString
        if method.client_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, None, serialize)
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, None, serialize)
    return grpc.method_handlers_generic_handler(service_descriptor.full_name, methods)


def create_server(dataplane: DataPlane, *, reuse_port: bool = False,
                  channel_arguments: tuple[tuple[str, object], ...] = (), implementation: str = "grpcio"):
    """A gRPC server with the KServe and TFS services, health checking and reflection registered.

    ``implementation``: "grpcio" (grpc.aio, the default) or "native" (``grpc_native``: our own HTTP/2 on
    libnghttp2, which also answers ModelInfer of small models in place). ``channel_arguments``
    (``--grpc_channel_arguments``) override the defaults below, as in OVMS.
    """
    options = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.so_reuseport": 1 if reuse_port else 0,
        # One connection may not run more calls than this at once; further streams wait for a slot (HTTP/2
        # SETTINGS_MAX_CONCURRENT_STREAMS) instead of each taking memory and a task in this process.
        "grpc.max_concurrent_streams": MAX_CONCURRENT_STREAMS,
    }
    options.update(channel_arguments)
    inference = InferenceServicer(dataplane)
    if implementation == "native":
        from ovms.transport.grpc_native import NativeServer

        server = NativeServer((), options=options,
                              fast={f"/{KSERVE_SERVICE}/ModelInfer": inference.infer_now})
    else:
        server = grpc.aio.server(options=list(options.items()))
    server.add_generic_rpc_handlers((
        _handlers(inference, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb),
        _handlers(PredictionServicer(dataplane),
                  tfs_prediction_service.DESCRIPTOR.services_by_name["PredictionService"], _Messages),
        _handlers(ModelServicer(dataplane), tfs_model_service.DESCRIPTOR.services_by_name["ModelService"],
                  _Messages),
    ))
    health = HealthService()
    server.add_generic_rpc_handlers((health.handler(),
                                     *ReflectionService([KSERVE_SERVICE, TFS_PREDICTION_SERVICE,
                                                         TFS_MODEL_SERVICE]).handlers()))
    server.health_service = health  # set SERVING / NOT_SERVING from the composition root
    return server


def set_health(server: grpc.aio.Server, serving: bool) -> None:
    for service in ("", KSERVE_SERVICE, TFS_PREDICTION_SERVICE, TFS_MODEL_SERVICE):
        server.health_service.set(service, serving)
