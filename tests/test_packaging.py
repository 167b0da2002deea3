"""The package as users install it: one wheel, built from the sdist of this checkout, in fresh virtualenvs
beside the clients users already have, at the protobuf floor pyproject.toml declares and at the newest.

`make test`'s own venv is an editable install built against the protobuf it runs with; it cannot see a wheel
that lacks its protocol descriptors, or code that only imports with one protobuf major.
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.test_cli import free_ports, stop, wait_ready

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def declared_protobuf_floor() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in dependencies if re.match(r"protobuf\b", d)]
    floor = re.fullmatch(r"protobuf>=([\d.]+)(,<\d+)?", spec)
    assert floor, f"protobuf requirement {spec!r} has no plain floor to test"
    return floor.group(1)


def source_tree(target: pathlib.Path) -> pathlib.Path:
    """The files a clean clone would have (tracked and new, never ignored build output)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith("tests/fixtures/genai/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, pathlib.Path]:
    """`python -m build`: the sdist from the source tree, then the wheel from the sdist (pip's path too)."""
    src = source_tree(tmp_path_factory.mktemp("clean-clone"))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("ovms-*.tar.gz")
    (wheel,) = out.glob("ovms-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_has_sources_and_no_build_output(dist):
    names = tarfile.open(dist["sdist"]).getnames()
    assert any(n.endswith("protos/kserve/grpc_predict_v2.proto") for n in names)
    assert any(n.endswith("ovms/_native/tensorcodec_c.pyx") for n in names)
    assert not [n for n in names if n.endswith((".so", ".c", ".binpb")) or "_pb2" in n]


def test_wheel_has_descriptors_and_native_twins(dist):
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    assert "ovms/_proto/descriptors.binpb" in names
    for twin in ("tensorcodec", "detokenize", "rangewrite", "pytensor"):
        assert any(re.fullmatch(rf"ovms/_native/{twin}_c\.cpython-[^/]+\.so", n) for n in names), twin
    assert not [n for n in names if "_pb2" in n], "no generated protobuf code is shipped"
    # Python nodes import OVMS's top-level module: ``from pyovms import Tensor`` in a handler_path file.
    assert "pyovms/__init__.py" in names


# The clients users have, each with the protobuf it brings: the declared floor, tritonclient's protobuf 6
# (it caps protobuf below 7), and the newest protobuf 7 with openai and ovmsclient.
ENVIRONMENTS = {
    "floor": lambda floor: [f"protobuf=={floor}"],
    "tritonclient": lambda floor: ["tritonclient[grpc]>=2.50", "protobuf<7"],
    "newest": lambda floor: ["protobuf>=7", "openai", "ovmsclient"],
}


@pytest.fixture(scope="module")
def venvs(dist, tmp_path_factory) -> dict[str, pathlib.Path]:
    """One fresh venv per environment, the wheel installed from binaries only (no compiler is used)."""
    floor = declared_protobuf_floor()
    base = tmp_path_factory.mktemp("venvs")

    def make(name: str) -> pathlib.Path:
        venv = base / name
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--only-binary=:all:",
                                 str(dist["wheel"]), *ENVIRONMENTS[name](floor)],
                                capture_output=True, text=True, timeout=900, env={**os.environ, "CC": "false"})
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        return venv

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(ENVIRONMENTS, pool.map(make, ENVIRONMENTS)))


def protobuf_version(venv: pathlib.Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", "import google.protobuf as p; print(p.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def serve_simple(venv: pathlib.Path, model_repo: pathlib.Path, tmp_path: pathlib.Path):
    grpc_port, rest_port = free_ports()
    process = subprocess.Popen([str(venv / "bin" / "ovms"), "--model_name", "simple", "--model_path",
                                str(model_repo / "simple"), "--port", str(grpc_port), "--rest_port", str(rest_port),
                                "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
                                "--log_path", str(tmp_path / "ovms.log")],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_ready(rest_port, process)
    return process, grpc_port


def infer_simple(url: str) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


# Run inside the venv, in one process with the server's own modules, next to the client it holds.
IN_VENV_CLIENTS = {
    "floor": "",
    "tritonclient": """
        import numpy as np, tritonclient.grpc as grpcclient
        import ovms.transport.grpc_server  # the server's protocol modules load beside tritonclient's
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        result = grpcclient.InferenceServerClient(URL).infer("simple", inputs)
        assert (result.as_numpy("OUTPUT0") == 2 * a).all() and (result.as_numpy("OUTPUT1") == 0).all()
    """,
    "newest": """
        import numpy as np, openai
        from ovmsclient import make_grpc_client
        import ovms.transport.grpc_server
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        out = make_grpc_client(URL).predict({"INPUT0": a, "INPUT1": a}, "simple")
        assert (out["OUTPUT0"] == 2 * a).all() and (out["OUTPUT1"] == 0).all()
    """,
}


@pytest.mark.parametrize("environment", list(ENVIRONMENTS))
def test_installed_wheel_serves(environment, venvs, model_repo, tmp_path):
    venv = venvs[environment]
    installed = protobuf_version(venv)
    expected_major = {"floor": declared_protobuf_floor().split(".")[0], "tritonclient": "6", "newest": "7"}
    assert installed.split(".")[0] == expected_major[environment], installed
    if environment == "floor":
        padded = lambda v: [int(x) for x in v.split(".")] + [0] * (3 - len(v.split(".")))  # noqa: E731
        assert padded(installed) == padded(declared_protobuf_floor()), installed

    version = subprocess.run([str(venv / "bin" / "ovms"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("OpenVINO Model Server"), version
    native = subprocess.run([str(venv / "bin" / "python"), "-c", "import ovms._native as n; "
                             "print([n.load(t).__name__ for t in ('tensorcodec', 'detokenize', 'rangewrite')])"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert native.stdout.strip() == str([f"ovms._native.{t}_c" for t in ("tensorcodec", "detokenize", "rangewrite")]), \
        native
    pyovms = subprocess.run([str(venv / "bin" / "python"), "-c", "from pyovms import Tensor; "
                             "t = Tensor('out', b'abc'); print(type(t).__module__, t.datatype, memoryview(t).tobytes())"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert pyovms.stdout.strip() == "ovms._native.pytensor_c UINT8 b'abc'", pyovms

    process, grpc_port = serve_simple(venv, model_repo, tmp_path)
    try:
        infer_simple(f"127.0.0.1:{grpc_port}")
        script = IN_VENV_CLIENTS[environment]
        if script:
            script = f"URL = '127.0.0.1:{grpc_port}'\n" + textwrap.dedent(script)
            result = subprocess.run([str(venv / "bin" / "python"), "-c", script],
                                    capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert result.returncode == 0, result.stderr[-3000:]
    finally:
        stop(process)
    assert "Traceback" not in (tmp_path / "ovms.log").read_text()
