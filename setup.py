"""Build steps that pyproject.toml cannot express: Cython twins and the protocol descriptors.

`OVMS_NO_EXTENSIONS=1 pip install .` skips the Cython modules; the pure-Python twins are then used.
"""
import ctypes.util
import glob
import os
import pathlib
import sys

from setuptools import Command, Extension, setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent.resolve()


class BuildProtos(Command):
    """Compile protos/**/*.proto into ovms/_proto/descriptors.binpb (a serialized FileDescriptorSet).

    No *_pb2.py code is generated: ovms._proto builds the message classes from this set with the protobuf
    runtime that is installed. Generated code carries the gencode version of the grpcio-tools that pip's build
    isolation happened to pick, and fails at import against an older (or two majors newer) runtime; the
    descriptor set's wire format is the same for every protobuf version.
    """

    description = "compile the protocol descriptors"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        from grpc_tools import protoc
        import grpc_tools

        proto_root = ROOT / "protos"
        out = ROOT / "ovms" / "_proto" / "descriptors.binpb"
        include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
        protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
        args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--descriptor_set_out={out}", "--include_imports",
                *protos]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {protos}")


class BuildPyWithProtos(build_py):
    def run(self):
        self.run_command("build_protos")
        # The package data list is computed lazily on first use; drop any list made before the descriptor set
        # existed, so a build from a clean clone ships it.
        self.__dict__.pop("data_files", None)
        super().run()


def extensions():
    if os.environ.get("OVMS_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    sources = sorted(glob.glob("ovms/_native/*_c.pyx"))
    exts = []
    for source in sources:
        stem = pathlib.Path(source).stem
        link = []
        if stem == "h2conn_c":  # the native gRPC transport, on the libnghttp2 that libcurl brings along
            library = ctypes.util.find_library("nghttp2")
            if library is None:
                print("warning: libnghttp2 not found (Debian/Ubuntu: libnghttp2-14); building without the native "
                      "HTTP/2 connection, so --grpc_server native uses the pure-Python twin", file=sys.stderr)
                continue
            link = [f"-l:{library}"]
        exts.append(Extension(f"ovms._native.{stem}", [source], extra_compile_args=["-O3"], extra_link_args=link))
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(ext_modules=extensions(), cmdclass={"build_protos": BuildProtos, "build_py": BuildPyWithProtos})
