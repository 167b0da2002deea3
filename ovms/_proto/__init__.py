"""Message classes for ovms's wire protocols, built at import time from one compiled descriptor set.

setup.py's ``build_protos`` compiles ``protos/**/*.proto`` into ``descriptors.binpb`` (a serialized
``FileDescriptorSet``). This module adds those files to a private descriptor pool and asks protobuf's runtime
for the message classes. Nothing here is generated Python code, so there is no gencode version to clash with
the protobuf runtime: the classes come from whatever runtime is installed, from the floor pyproject.toml
declares to the newest. (``*_pb2.py`` modules from grpcio-tools carry a check that fails at import when the
runtime is older than the generator, or two majors newer.)

The pool is private because clients such as tritonclient and ovmsclient register the same fully qualified
names ("inference.ModelInferRequest", "tensorflow.TensorProto") in protobuf's default pool, and one process may
hold both (tests, applications that embed the server).
"""
from __future__ import annotations

import importlib.resources
import types

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, wrappers_pb2
from google.protobuf.internal import enum_type_wrapper
from google.protobuf.message_factory import GetMessageClass as _message_class  # protobuf >= 4.22; floor 4.25

DESCRIPTOR_SET = "descriptors.binpb"
# Files of the runtime itself: added from its own modules, never from our set.
_RUNTIME_FILES = (wrappers_pb2, any_pb2)

POOL = descriptor_pool.DescriptorPool()


def _load_pool() -> None:
    try:
        data = importlib.resources.files(__name__).joinpath(DESCRIPTOR_SET).read_bytes()
    except FileNotFoundError:
        raise ImportError(f"{__name__}/{DESCRIPTOR_SET} is missing: this ovms was installed without its compiled "
                          "protocol descriptors. Reinstall it (pip install --force-reinstall ovms), or in a "
                          "checkout run `make build`.") from None
    for runtime_file in _RUNTIME_FILES:
        POOL.AddSerializedFile(runtime_file.DESCRIPTOR.serialized_pb)
    present = {runtime_file.DESCRIPTOR.name for runtime_file in _RUNTIME_FILES}
    for file_proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        if file_proto.name not in present:
            POOL.AddSerializedFile(file_proto.SerializeToString())


def proto_module(filename: str) -> types.SimpleNamespace:
    """A namespace shaped like grpcio-tools' ``*_pb2`` module for ``filename`` (as under protos/).

    It has ``DESCRIPTOR`` (the file), a class per top-level message, and per top-level enum both its wrapper
    (``DataType.Name(...)``) and its values (``DT_FLOAT``). Nested enums are attributes of their message
    classes, as in generated code.
    """
    file = POOL.FindFileByName(filename)
    namespace = types.SimpleNamespace(DESCRIPTOR=file)
    for name, message in file.message_types_by_name.items():
        setattr(namespace, name, _message_class(message))
    for name, enum in file.enum_types_by_name.items():
        setattr(namespace, name, enum_type_wrapper.EnumTypeWrapper(enum))
        for value in enum.values:
            setattr(namespace, value.name, value.number)
    return namespace


_load_pool()
