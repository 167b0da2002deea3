"""Soak: mixed traffic at high concurrency for minutes, config reloads and clients that hang up, while the
server's errors, latency, memory and file descriptors are recorded per minute.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 64] [--reload-seconds 30] \
        [--grpc-server grpcio|native] [--rest-server native|aiohttp]

Traffic (one asyncio client process, `concurrency` loops, each picking a kind at random): KServe gRPC
ModelInfer, KServe REST infer (JSON), TFS gRPC Predict, ModelStreamInfer (4 requests per stream), chat
completions streamed and unary, embeddings; 5% of the calls hang up mid-request (a cancelled gRPC call, an SSE
stream dropped after its first chunk). Every `reload-seconds` config.json is rewritten: a model `churn` is added
or removed and `identity16`'s nireq changes (a reload of a model that stays). Errors on models that stay count
as failures; answers about `churn` do not.

Prints one row per minute (calls, errors, p50/p99 ms, server RSS incl. the generation worker, open fds) and a
verdict, from the server at rest (no client connected, the first config back in place) after minute 1 and after
the last minute: 0 errors on staying models, the server process's RSS grown by under 50 MB, its fds by at most 5,
no traceback in the server log, exit 0 on SIGTERM. The generation worker (a child process, recycled after
OVMS_GENAI_WORKER_RECYCLE_REQUESTS requests) is reported with the server but not judged: its RSS depends on its
age when sampled.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402

from ovms._proto.messages import kserve, tf_types, tfs_predict  # noqa: E402

STAYING = {"simple", "identity16", "dummy", "llm", "emb"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """RSS of one process, MB (0 if it is gone)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_and_fds(pid: int) -> tuple[float, int]:
    """RSS (MB) of the server and its children (the generation worker), and the server's open fds."""
    rss = 0
    pids = [pid]
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    for p in pids:
        try:
            for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


class Stats:
    def __init__(self) -> None:
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.churn_errors = 0
        self.hangups = 0
        self.latencies: list[float] = []

    def error(self, kind: str, model: str, detail: str) -> None:
        if model == "churn":
            self.churn_errors += 1
            return
        key = f"{kind}: {detail[:120]}"
        self.errors[key] = self.errors.get(key, 0) + 1


class Traffic:
    def __init__(self, grpc_url: str, rest_url: str) -> None:
        self.channel = grpc.aio.insecure_channel(grpc_url, options=[("grpc.max_receive_message_length", 1 << 26)])
        self.rest = rest_url
        self.session: aiohttp.ClientSession | None = None
        self.stats = Stats()
        self.infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                              request_serializer=kserve.ModelInferRequest.SerializeToString,
                                              response_deserializer=kserve.ModelInferResponse.FromString)
        self.stream = self.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                                 request_serializer=kserve.ModelInferRequest.SerializeToString,
                                                 response_deserializer=kserve.ModelStreamInferResponse.FromString)
        self.predict = self.channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                                request_serializer=tfs_predict.PredictRequest.SerializeToString,
                                                response_deserializer=tfs_predict.PredictResponse.FromString)

    @staticmethod
    def simple_request(model: str) -> kserve.ModelInferRequest:
        request = kserve.ModelInferRequest(model_name=model)
        if model in ("simple", "churn"):
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
                request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
        else:
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
            request.raw_input_contents.append(np.ones(16, dtype=np.float32).tobytes())
        return request

    async def grpc_infer(self, hang_up: bool, ctx: dict) -> str:
        model = ctx["model"] = random.choice(["simple", "identity16", "churn"])
        call = self.infer(self.simple_request(model), timeout=30)
        if hang_up:
            await asyncio.sleep(0)
            call.cancel()
            return model
        reply = await call
        if model == "simple" and np.frombuffer(reply.raw_output_contents[0], np.int32)[3] != 6:
            raise AssertionError("simple answered a wrong OUTPUT0")
        return model

    async def rest_infer(self, hang_up: bool, ctx: dict) -> str:
        model = ctx["model"] = random.choice(["dummy", "identity16"])
        name, shape = ("b", [1, 10]) if model == "dummy" else ("INPUT0", [1, 16])
        body = {"inputs": [{"name": name, "datatype": "FP32", "shape": shape, "data": [1.0] * shape[1]}]}
        async with self.session.post(f"{self.rest}/v2/models/{model}/infer", json=body) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                raise AssertionError(f"HTTP {response.status}: {data}")
        return model

    async def tfs_predict(self, hang_up: bool, ctx: dict) -> str:
        request = tfs_predict.PredictRequest()
        request.model_spec.name = "dummy"
        proto = request.inputs["b"]
        proto.dtype = tf_types.DT_FLOAT
        for size in (1, 10):
            proto.tensor_shape.dim.add(size=size)
        proto.tensor_content = np.zeros(10, np.float32).tobytes()
        await self.predict(request, timeout=30)
        return "dummy"

    async def stream_infer(self, hang_up: bool, ctx: dict) -> str:
        requests = [self.simple_request("identity16") for _ in range(4)]
        call = self.stream(iter(requests), timeout=30)
        got = 0
        async for reply in call:
            if reply.error_message:
                raise AssertionError(reply.error_message)
            got += 1
            if hang_up:
                call.cancel()
                return "identity16"
        if got != 4:
            raise AssertionError(f"stream answered {got} of 4")
        return "identity16"

    async def chat(self, hang_up: bool, ctx: dict) -> str:
        stream = hang_up or random.random() < 0.5
        body = {"model": "llm", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 24,
                "stream": stream}
        async with self.session.post(f"{self.rest}/v3/chat/completions", json=body) as response:
            if response.status != 200:
                raise AssertionError(f"HTTP {response.status}: {await response.text()}")
            if stream:
                async for line in response.content:
                    if hang_up:
                        response.close()  # the client goes away mid-stream
                        return "llm"
                    if line.startswith(b"data: [DONE]"):
                        break
            else:
                data = await response.json()
                if not data["choices"][0]["message"]["content"]:
                    raise AssertionError("empty answer")
        return "llm"

    async def embed(self, hang_up: bool, ctx: dict) -> str:
        async with self.session.post(f"{self.rest}/v3/embeddings", json={"model": "emb", "input": ["a", "b c"]}) \
                as response:
            data = await response.json()
            if response.status != 200 or len(data["data"]) != 2:
                raise AssertionError(f"HTTP {response.status}: {str(data)[:200]}")
        return "emb"

    async def loop(self, deadline: float) -> None:
        kinds = [self.grpc_infer, self.grpc_infer, self.rest_infer, self.tfs_predict, self.stream_infer,
                 self.chat, self.embed]
        while time.monotonic() < deadline:
            kind = random.choice(kinds)
            hang_up = random.random() < 0.05 and kind in (self.grpc_infer, self.stream_infer, self.chat)
            started = time.monotonic()
            ctx = {"model": {"tfs_predict": "dummy", "stream_infer": "identity16", "chat": "llm",
                             "embed": "emb"}.get(kind.__name__, "?")}
            try:
                await kind(hang_up, ctx)
                self.stats.calls += 1
                if hang_up:
                    self.stats.hangups += 1
                else:
                    self.stats.latencies.append(time.monotonic() - started)
            except asyncio.CancelledError:
                if not hang_up:
                    raise
                self.stats.hangups += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and hang_up:
                    self.stats.hangups += 1
                else:
                    self.stats.error(kind.__name__, ctx["model"], f"{exc.code().name} {exc.details()}")
            except Exception as exc:  # every other failure is counted with its text
                self.stats.error(kind.__name__, ctx["model"], f"{type(exc).__name__}: {exc}")


def write_config(path: pathlib.Path, repo: pathlib.Path, llm: pathlib.Path, emb: pathlib.Path, step: int) -> None:
    models = [{"config": {"name": n, "base_path": str(repo / n)}} for n in ("simple", "dummy")]
    models.append({"config": {"name": "identity16", "base_path": str(repo / "identity16"), "nireq": 2 + step % 3}})
    if step % 2:
        models.append({"config": {"name": "churn", "base_path": str(repo / "simple")}})
    path.write_text(json.dumps({"model_config_list": models, "mediapipe_config_list": [
        {"name": "llm", "base_path": str(llm)}, {"name": "emb", "base_path": str(emb)}]}))


async def soak(args) -> int:
    from tests.fixtures.models import write_repository
    from tests.genai.conftest import EMBEDDER_DIR, EMBEDDINGS_GRAPH, LLM_DIR, LLM_GRAPH

    work = pathlib.Path(tempfile.mkdtemp(prefix="ovms-soak-"))
    repo = write_repository(work / "repo").parent
    (work / "llm").mkdir()
    # max_num_seqs: the LLM takes 2 x max_num_seqs requests before answering 503 "Server busy" (by design);
    # sized so that all `concurrency` loops may be in chat at once, plus the chats whose clients hung up: a unary
    # chat's handler learns of the hang-up only at its next token (aiohttp does not cancel handlers), so those
    # stay in flight meanwhile, longer while a generation worker recycles (new requests wait for it).
    (work / "llm" / "graph.pbtxt").write_text(LLM_GRAPH.format(path=LLM_DIR,
                                                             max_num_seqs=max(16, args.concurrency)))
    (work / "emb").mkdir()
    (work / "emb" / "graph.pbtxt").write_text(EMBEDDINGS_GRAPH.format(path=EMBEDDER_DIR))
    config = work / "config.json"
    write_config(config, repo, work / "llm", work / "emb", 0)
    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "ovms", "--config_path", str(config), "--port", str(grpc_port),
                               "--rest_port", str(rest_port), "--grpc_bind_address", "127.0.0.1",
                               "--rest_bind_address", "127.0.0.1", "--log_path", str(work / "ovms.log"),
                               "--grpc_server", args.grpc_server, "--rest_server", args.rest_server],
                              cwd=ROOT, start_new_session=True)
    traffic = Traffic(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}")
    try:
        traffic.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                                connector=aiohttp.TCPConnector(limit=args.concurrency))
        for _ in range(600):
            try:
                async with traffic.session.get(f"http://127.0.0.1:{rest_port}/v2/health/ready") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert server.poll() is None, "the server exited during start-up"
            await asyncio.sleep(0.1)
        rows = []
        step = 0
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.minutes} min, c={args.concurrency}, "
              f"reload every {args.reload_seconds} s")
        print("| minute | calls | errors | hang-ups | p50 ms | p99 ms | RSS MB | fds |")
        print("|---|---|---|---|---|---|---|---|")

        async def run(minutes: range) -> int | None:
            """Traffic for ``minutes`` (one row each), then every loop finished; the server's exit code if it
            stopped."""
            nonlocal step
            start = time.monotonic() - (minutes.start - 1) * 60
            deadline = start + (minutes.stop - 1) * 60
            loops = [asyncio.create_task(traffic.loop(deadline)) for _ in range(args.concurrency)]
            next_reload = time.monotonic() + args.reload_seconds
            for minute in minutes:
                minute_end = start + minute * 60
                while time.monotonic() < minute_end:
                    if time.monotonic() >= next_reload:
                        step += 1
                        write_config(config, repo, work / "llm", work / "emb", step)
                        next_reload += args.reload_seconds
                    await asyncio.sleep(0.5)
                    if server.poll() is not None:
                        print(f"the server exited with {server.returncode}")
                        return server.returncode
                s, traffic.stats = traffic.stats, Stats()
                rss, fds = tree_rss_and_fds(server.pid)
                lat = sorted(s.latencies) or [0.0]
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                errors = sum(s.errors.values())
                rows.append((minute, s.calls, errors, rss, fds, s.errors))
                print(f"| {minute} | {s.calls:,} | {errors} | {s.hangups} | {statistics.median(lat) * 1e3:.1f} | "
                      f"{p99 * 1e3:.1f} | {rss:.0f} | {fds} |", flush=True)
                for text, count in list(s.errors.items())[:5]:
                    print(f"    {count} x {text}", file=sys.stderr)
            await asyncio.gather(*loops, return_exceptions=True)
            return None

        async def at_rest() -> tuple[int, float, float]:
            """(open fds, RSS MB of the server process, RSS MB with its generation worker) with no client connected
            and the first config back in place: what a leak would add to. Connections in flight and worker pipes
            make the per-minute fds move by tens, and the recycled generation worker's age the RSS by 100 MB."""
            nonlocal traffic
            await traffic.session.close()
            await traffic.channel.close()
            write_config(config, repo, work / "llm", work / "emb", 0)
            await asyncio.sleep(5)  # the reload (1 s poll) done, closed connections reaped by the server
            tree, count = tree_rss_and_fds(server.pid)
            at_rest = (count, rss_mb(server.pid), tree)
            stats = traffic.stats
            traffic = Traffic(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}")
            traffic.stats = stats
            traffic.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                                    connector=aiohttp.TCPConnector(limit=args.concurrency))
            return at_rest

        # Minute 1 warms everything up (models, the generation worker, connection pools); the fds at rest after it
        # are the baseline, and those at rest after the last minute are compared with it.
        exited = await run(range(1, 2))
        rest_before = None if exited is not None else await at_rest()
        if exited is None and args.minutes > 1:
            exited = await run(range(2, args.minutes + 1))
        rest_after = None if exited is not None else await at_rest()
        if exited is not None:
            return 1
    finally:
        if traffic.session is not None:
            await traffic.session.close()
        await traffic.channel.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log = (work / "ovms.log").read_text(errors="replace")
        tracebacks = log.count("Traceback")
        recycles = log.count("generation worker recycled")
        shutil.rmtree(work, ignore_errors=True)
    total_errors = sum(r[2] for r in rows)
    growth = rows[-1][3] - rows[0][3] if len(rows) > 1 else 0.0
    fd_growth = rest_after[0] - rest_before[0]
    server_growth = rest_after[1] - rest_before[1]
    ok = total_errors == 0 and server_growth < 50 and fd_growth <= 5 and tracebacks == 0 and server.returncode == 0
    print(f"errors on staying models: {total_errors}; at rest after minute 1 / after the last: server RSS "
          f"{rest_before[1]:.0f}/{rest_after[1]:.0f} MB ({server_growth:+.0f}), with the generation worker "
          f"{rest_before[2]:.0f}/{rest_after[2]:.0f} MB, fds {rest_before[0]}/{rest_after[0]} ({fd_growth:+d}); under "
          f"load, per minute: RSS with the worker {min(r[3] for r in rows):.0f}-{max(r[3] for r in rows):.0f} MB "
          f"(last - first {growth:+.0f}), fds {min(r[4] for r in rows)}-{max(r[4] for r in rows)}; tracebacks in "
          f"the server log: {tracebacks}; generation worker recycles: {recycles}; server exit: {server.returncode} "
          f"-> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reload-seconds", type=float, default=30)
    parser.add_argument("--grpc-server", choices=("grpcio", "native"), default="grpcio", help="ovms --grpc_server")
    parser.add_argument("--rest-server", choices=("native", "aiohttp"), default="native", help="ovms --rest_server")
    sys.exit(asyncio.run(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
