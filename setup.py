"""Build steps that pyproject.toml cannot express: Cython twins and the gRPC/protobuf code.

`OVMS_NO_EXTENSIONS=1 pip install .` skips the Cython modules; the pure-Python twins are then used.
"""
import glob
import os
import pathlib
import re

from setuptools import Command, Extension, setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent.resolve()


class BuildProtos(Command):
    """Generate ovms/_proto/*_pb2*.py from protos/*.proto with grpcio-tools."""

    description = "generate protobuf and gRPC Python modules"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        from grpc_tools import protoc
        import grpc_tools

        proto_root = ROOT / "protos"
        out = ROOT / "ovms" / "_proto"
        include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
        protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
        args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {protos}")
        tops = sorted({p.split("/")[0].removesuffix(".proto") for p in protos})
        imports = re.compile(rf"^(from|import) ({'|'.join(map(re.escape, tops))})\b", re.M)
        for path in out.rglob("*_pb2*.py"):
            for parent in path.relative_to(out).parents:
                (out / parent / "__init__.py").touch()
            text = imports.sub(r"\1 ovms._proto.\2", path.read_text())
            # Our descriptors live in a private pool: tritonclient and ovmsclient register the same
            # message names ("inference.ModelInferRequest", "tensorflow.TensorProto") in the default pool,
            # and one process may hold both (tests, embedding applications).
            text = text.replace("_descriptor_pool.Default()", "_ovms_pool.POOL")
            text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool",
                                "from google.protobuf import descriptor_pool as _descriptor_pool\n"
                                "from ovms._proto import _pool as _ovms_pool")
            path.write_text(text)


class BuildPyWithProtos(build_py):
    def run(self):
        self.run_command("build_protos")
        super().run()


def extensions():
    if os.environ.get("OVMS_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    sources = sorted(glob.glob("ovms/_native/*_c.pyx"))
    exts = [Extension(f"ovms._native.{pathlib.Path(s).stem}", [s], extra_compile_args=["-O3"]) for s in sources]
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(ext_modules=extensions(), cmdclass={"build_protos": BuildProtos, "build_py": BuildPyWithProtos})
