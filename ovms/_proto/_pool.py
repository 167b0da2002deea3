"""The private descriptor pool every generated ``*_pb2`` module of ovms registers into.

Clients such as tritonclient and ovmsclient register the same fully qualified message names in protobuf's
default pool; a private pool lets them live in one process with the server.
"""
from google.protobuf import descriptor_pool, wrappers_pb2, any_pb2

POOL = descriptor_pool.DescriptorPool()
for _dependency in (wrappers_pb2, any_pb2):
    POOL.AddSerializedFile(_dependency.DESCRIPTOR.serialized_pb)
