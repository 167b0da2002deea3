"""Client stubs for the services defined in ovms's own descriptors (ovms ships no generated *_pb2_grpc code)."""
from __future__ import annotations

import types

import grpc
from google.protobuf.message_factory import GetMessageClass


def stub(channel: grpc.Channel, service_descriptor) -> types.SimpleNamespace:
    """One multicallable per method of ``service_descriptor``, named as the method, like a generated Stub."""
    methods = {}
    for method in service_descriptor.methods:
        path = f"/{service_descriptor.full_name}/{method.name}"
        request, response = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
            (method.client_streaming, method.server_streaming)]
        methods[method.name] = kind(path, request_serializer=request.SerializeToString,
                                    response_deserializer=response.FromString)
    return types.SimpleNamespace(**methods)
