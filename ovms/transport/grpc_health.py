"""gRPC health checking and server reflection, on ovms's own descriptors.

Both are small, fixed wire contracts (grpc/doc/health-checking.md, grpc/doc/server-reflection.md). Serving them
here instead of through grpcio-health-checking and grpcio-reflection keeps their generated ``*_pb2`` modules,
and the protobuf versions those demand at import, out of the server's dependencies.
"""
from __future__ import annotations

import asyncio

import grpc

from ovms._proto import POOL
from ovms._proto.messages import health as health_pb
from ovms._proto.messages import reflection_v1, reflection_v1alpha

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = {"grpc.reflection.v1.ServerReflection": reflection_v1,
                       "grpc.reflection.v1alpha.ServerReflection": reflection_v1alpha}
Status = health_pb.HealthCheckResponse


class HealthService:
    """grpc.health.v1.Health: Check answers the status set for a service name ("" is the whole server);
    Watch streams it, once now and again on every change."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": Status.SERVING}
        self._changed = asyncio.Event()

    def set(self, service: str, serving: bool) -> None:
        status = Status.SERVING if serving else Status.NOT_SERVING
        if self._status.get(service) != status:
            self._status[service] = status
            self._changed.set()
            self._changed = asyncio.Event()

    async def check(self, request: bytes, context: grpc.aio.ServicerContext) -> health_pb.HealthCheckResponse:
        service = health_pb.HealthCheckRequest.FromString(request).service
        if service not in self._status:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return Status(status=self._status[service])

    async def watch(self, request: bytes, context: grpc.aio.ServicerContext):
        service = health_pb.HealthCheckRequest.FromString(request).service
        last = None
        while True:
            changed = self._changed
            status = self._status.get(service, Status.SERVICE_UNKNOWN)
            if status != last:
                yield Status(status=status)
                last = status
            await changed.wait()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(self.check, None, Status.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch, None, Status.SerializeToString),
        })


class ReflectionService:
    """grpc.reflection v1 and v1alpha: the services served, and the descriptor files that define them.

    A file request is answered with the file and every file it imports, as grpcio-reflection does, so a client
    such as grpcurl can build the messages in one round trip.
    """

    def __init__(self, services: list[str]) -> None:
        self._services = sorted(set(services) | {HEALTH_SERVICE, *REFLECTION_SERVICES})

    @staticmethod
    def _files(file) -> list[bytes]:
        ordered, seen, todo = [], set(), [file]
        while todo:
            current = todo.pop(0)
            if current.name in seen:
                continue
            seen.add(current.name)
            ordered.append(current.serialized_pb)
            todo.extend(current.dependencies)
        return ordered

    def _answer(self, messages, request):
        response = messages.ServerReflectionResponse(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                response.list_services_response.service.extend(
                    messages.ServiceResponse(name=name) for name in self._services)
            elif kind == "file_by_filename":
                response.file_descriptor_response.file_descriptor_proto.extend(
                    self._files(POOL.FindFileByName(request.file_by_filename)))
            elif kind == "file_containing_symbol":
                response.file_descriptor_response.file_descriptor_proto.extend(
                    self._files(POOL.FindFileContainingSymbol(request.file_containing_symbol)))
            elif kind == "all_extension_numbers_of_type":
                message = POOL.FindMessageTypeByName(request.all_extension_numbers_of_type)
                response.all_extension_numbers_response.base_type_name = message.full_name
                response.all_extension_numbers_response.extension_number.extend(
                    e.number for e in POOL.FindAllExtensions(message))
            elif kind == "file_containing_extension":
                extension = POOL.FindExtensionByNumber(
                    POOL.FindMessageTypeByName(request.file_containing_extension.containing_type),
                    request.file_containing_extension.extension_number)
                response.file_descriptor_response.file_descriptor_proto.extend(self._files(extension.file))
            else:
                response.error_response.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error_response.error_message = "the request names no reflection query"
        except KeyError:
            response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
            response.error_response.error_message = f"{kind} {getattr(request, kind)!r} is not known to this server"
        return response

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = []
        for service, messages in REFLECTION_SERVICES.items():
            async def info(requests, context, messages=messages):
                async for data in requests:
                    yield self._answer(messages, messages.ServerReflectionRequest.FromString(data))
            serialize = messages.ServerReflectionResponse.SerializeToString
            handlers.append(grpc.method_handlers_generic_handler(service, {
                "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(info, None, serialize)}))
        return handlers

