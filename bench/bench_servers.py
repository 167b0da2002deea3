"""The peer servers of the benchmark, each a process group started on 127.0.0.1 and stopped with TERM then KILL.

ovms runs from the project's .venv; Triton 2.51 (the ``tritonserver`` binary of the nvidia-pytriton wheel, python
backend identity models) and MLServer 1.7.1 (a plain Python identity runtime) from bench/.venv-peers. Each serves
the same two models: ``identity16`` FP32 [1,16] and ``image`` FP32 [1,3,224,224], INPUT0 -> OUTPUT0.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
OVMS_PYTHON = pathlib.Path(os.environ.get("OVMS_PYTHON", REPO / ".venv" / "bin" / "python"))
PEERS = pathlib.Path(os.environ.get("PEERS_VENV", BENCH / ".venv-peers"))
PEERS_PYTHON = PEERS / "bin" / "python"
HOST = "127.0.0.1"

WORKLOADS = {"identity16": [1, 16], "image": [1, 3, 224, 224]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_status(url: str, *, body: bytes | None = None, headers: dict | None = None, timeout: float = 5) -> int:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process in a process group (server + workers + Triton stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


class Server:
    """One peer server: a process group started in its own session, stopped with TERM then KILL."""

    name = "?"
    cwd: pathlib.Path | None = None  # None: the server's work dir

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "server.log"

    def command(self) -> tuple[list[str], dict]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write the model repository."""

    def start(self, *, ready_timeout: float) -> None:
        self.prepare()
        cmd, env = self.command()
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.cwd or self.workdir, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before ready; "
                                   f"log tail:\n{self.log_tail()}")
            if all(http_status(f"{self.http_url}/v2/models/{m}/ready", timeout=2) == 200 for m in WORKLOADS):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {ready_timeout:.0f}s; log tail:\n{self.log_tail()}")

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None and not self._group_alive():
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.2)
                if self.proc.poll() is not None and not self._group_alive():
                    return
        print(f"warning: {self.name} group {self.proc.pid} may still be alive", file=sys.stderr)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def wait_all_idle(servers, *, below: float = 0.05, timeout: float = 30) -> float:
    """Wait until every server uses under `below` of a core over 1 s: a server still draining queued requests
    of the previous point (PEERS.md: up to 30 s for KServe) would steal CPU from the next. Returns seconds waited."""
    servers = list(servers)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = [s.cpu_seconds() for s in servers]
        time.sleep(1.0)
        if all(s.cpu_seconds() - b < below for s, b in zip(servers, before)):
            break
    return time.monotonic() - start


class Ovms(Server):
    """ovms with its native gRPC server (--grpc_server native)."""
    name = "ovms"
    cwd = REPO  # this checkout, whether or not the .venv has it installed
    grpc_workers = 1
    grpc_server = "native"
    rest_server = "native"

    def prepare(self) -> None:
        models = self.workdir / "models"
        subprocess.run([str(OVMS_PYTHON), str(REPO / "tests" / "fixtures" / "models.py"), str(models)],
                       check=True, timeout=120, stdout=subprocess.DEVNULL)
        self.config = models / "config.json"

    def command(self):
        return ([str(OVMS_PYTHON), "-m", "ovms", "--config_path", str(self.config), "--port", str(self.grpc_port),
                 "--rest_port", str(self.http_port), "--grpc_bind_address", HOST, "--rest_bind_address", HOST,
                 "--log_level", "WARNING", "--grpc_workers", str(self.grpc_workers),
                 "--grpc_server", self.grpc_server, "--rest_server", self.rest_server], dict(os.environ))


class OvmsAio(Ovms):
    """ovms as it served before the native transports: grpc.aio in two processes and aiohttp for every REST
    request (--grpc_server grpcio --rest_server aiohttp --grpc_workers 2), for the A/B in one run."""
    name = "ovms-aio"
    grpc_server = "grpcio"
    rest_server = "aiohttp"
    grpc_workers = 2  # grpc.aio is bound by its per-call threads: a second process adds 10-30% here


TRITON_MODEL_PY = '''\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Identity: INPUT0 -> OUTPUT0, the same numpy array."""

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
'''


class Triton(Server):
    """Triton 2.51 from the nvidia-pytriton wheel, python backend (PEERS.md has the traps handled here)."""

    name = "triton"

    def __init__(self, workdir: pathlib.Path, *, instances: int = 2):
        super().__init__(workdir)
        self.instances = instances

    def prepare(self) -> None:
        info = json.loads(subprocess.run([str(PEERS_PYTHON), "-c", textwrap.dedent("""
            import json, pathlib, sys, sysconfig, pytriton
            root = pathlib.Path(pytriton.__file__).parent
            ver = f"{sys.version_info.major}.{sys.version_info.minor}"
            print(json.dumps({"root": str(root), "ver": ver, "libdir": sysconfig.get_config_var("LIBDIR"),
                              "site": str(root.parent)}))
        """)], check=True, timeout=60, capture_output=True, text=True).stdout)
        root = pathlib.Path(info["root"])
        self.binary = root / "tritonserver" / "bin" / "tritonserver"
        # The stub for this Python version must sit next to libtriton_python.so: copy the backend to a temp dir.
        self.backends = self.workdir / "backends"
        if not self.backends.exists():
            shutil.copytree(root / "tritonserver" / "backends", self.backends, symlinks=True)
            stubs = root / "tritonserver" / "python_backend_stubs" / info["ver"] / "triton_python_backend_stub"
            shutil.copy2(stubs, self.backends / "python" / "triton_python_backend_stub")
        # Else the stub picks Debian's libpython and model load fails (_thread.RLock ... _recursion_count).
        self.ld_path = [info["libdir"], str(pathlib.Path(info["site"]) / "nvidia_pytriton.libs"),
                        str(root / "tritonserver" / "lib")]
        repo = self.workdir / "models"
        for model, shape in WORKLOADS.items():
            (repo / model / "1").mkdir(parents=True, exist_ok=True)
            (repo / model / "1" / "model.py").write_text(TRITON_MODEL_PY)
            dims = ", ".join(map(str, shape))
            (repo / model / "config.pbtxt").write_text(textwrap.dedent(f"""\
                name: "{model}"
                backend: "python"
                max_batch_size: 0
                input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {dims} ] }} ]
                output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {dims} ] }} ]
                instance_group [ {{ kind: KIND_CPU, count: {self.instances} }} ]
            """))
        self.repo = repo

    def command(self):
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(self.ld_path + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        # The stub ignores PYTHONPATH and takes numpy (< 2) from the python3 first on PATH.
        env["PATH"] = f"{PEERS / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        return ([str(self.binary), "--model-repository", str(self.repo), "--backend-directory", str(self.backends),
                 "--grpc-address", HOST, "--grpc-port", str(self.grpc_port),
                 "--http-address", HOST, "--http-port", str(self.http_port),
                 "--allow-metrics", "false", "--allow-gpu-metrics", "false", "--log-verbose", "0"], env)


MLSERVER_RUNTIME_PY = '''\
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Identity(MLModel):
    """Identity: INPUT0 -> OUTPUT0, the same numpy array."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("OUTPUT0", x)])
'''


class MLServer(Server):
    """MLServer 1.7.1 with a plain Python identity runtime (default settings: one inference worker process)."""

    name = "mlserver"

    def prepare(self) -> None:
        repo = self.workdir / "models"
        for model, shape in WORKLOADS.items():
            d = repo / model
            d.mkdir(parents=True, exist_ok=True)
            (d / "identity_runtime.py").write_text(MLSERVER_RUNTIME_PY)
            tensor = {"datatype": "FP32", "shape": shape}
            (d / "model-settings.json").write_text(json.dumps({
                "name": model, "implementation": "identity_runtime.Identity",
                "inputs": [{"name": "INPUT0", **tensor}], "outputs": [{"name": "OUTPUT0", **tensor}]}))
        (repo / "settings.json").write_text(json.dumps({
            "host": HOST, "http_port": self.http_port, "grpc_port": self.grpc_port,
            "metrics_port": free_port(), "load_models_at_startup": True, "debug": False}))
        self.repo = repo

    def command(self):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        return [str(PEERS / "bin" / "mlserver"), "start", str(self.repo)], env


SERVER_CLASSES = {"ovms": Ovms, "ovms-aio": OvmsAio, "triton": Triton, "mlserver": MLServer}
