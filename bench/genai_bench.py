"""Text generation: ovms over HTTP/SSE vs the same ContinuousBatchingPipeline driven in-process.

    .venv/bin/python bench/genai_bench.py [--streams 1 8 16] [--max-tokens 256] [--rounds 20]
                                          [--in-process-sched default|batch]

Both sides use the fixture LLM (tests/fixtures/genai/tiny-llm), the same SchedulerConfig (cache_size 1,
max_num_seqs 256, no prefix caching), the same chat-templated prompt and greedy decoding with ignore_eos, so
each request generates exactly --max-tokens tokens. For N concurrent streams, N requests start together and
the point's aggregate tokens/s is (N * max_tokens) / (wall time of the round); TTFT is request start to first
token (in-process: the prompt handed to the tokenizer to the first token read from the handle; ovms: POST sent
to the first SSE content chunk received), TPOT is (last token - first token) / (tokens - 1) per request. ovms
runs as its own process (python -m ovms) so the client does not share its GIL; the client is a lean asyncio
protocol on keep-alive connections (see _SseClient). This VM's speed drifts by up to 2x from round to round, so besides the
ratio of aggregate rates the bench reports the median (and quartiles) of per-pair ratios, each pair being one
in-process round and the ovms round right after it. ovms runs its generation worker under SCHED_BATCH, which
speeds OpenVINO up on its own; --in-process-sched batch gives the in-process side the same policy, so the ratio
shows the serving overhead alone. Results also go to bench/results/genai.json.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
LLM_DIR = ROOT / "tests" / "fixtures" / "genai" / "tiny-llm"
GRAPH = """node: {{
  calculator: "HttpLLMCalculator"
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
      models_path: "{path}", cache_size: 1, max_num_seqs: 256, enable_prefix_caching: false, device: "CPU"
    }}
  }}
}}
"""
SETTLE_SECONDS = 0.05
MESSAGES = [{"role": "user", "content": "Hello"}]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def summarize(walls: list[float], ttfts: list[float], tpots: list[float], tokens: int) -> dict:
    return {"tokens_per_s": tokens / sum(walls), "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
            "ttft_p99_ms": percentile(ttfts, 99) * 1e3, "tpot_p50_ms": percentile(tpots, 50) * 1e3,
            "tpot_p99_ms": percentile(tpots, 99) * 1e3}


# ---- in-process ----------------------------------------------------------------------------------------------

class InProcess:
    """The pipeline ovms wraps, driven directly: add_request, step() in a loop, read every handle after a step."""

    def __init__(self, *, sched_batch: bool = False) -> None:
        import openvino_genai as ov_genai

        from ovms.genai import chat_template

        # sched_batch: the pipeline's threads (started now, they inherit this thread's policy) and its rounds run
        # under SCHED_BATCH, the policy ovms gives its generation worker; the client's rounds do not.
        self.sched_batch = sched_batch
        if sched_batch:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size, scheduler.max_num_seqs, scheduler.enable_prefix_caching = 1, 256, False
        self.pipe = ov_genai.ContinuousBatchingPipeline(str(LLM_DIR), scheduler, "CPU", {})
        self.tokenizer = ov_genai.Tokenizer(str(LLM_DIR))
        self.prompt = chat_template.render(chat_template.find_template(LLM_DIR), MESSAGES)
        self.request_id = 0
        self._default_policy()

    def _default_policy(self) -> None:
        if self.sched_batch:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    def round(self, streams: int, max_tokens: int):
        if self.sched_batch:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        try:
            return self._round(streams, max_tokens)
        finally:
            self._default_policy()

    def _round(self, streams: int, max_tokens: int):
        """One round of ``streams`` concurrent requests: (wall seconds, [(start, first, last, tokens)])."""
        pipe = self.pipe
        config = pipe.get_config()
        config.max_new_tokens, config.ignore_eos = max_tokens, True
        started = time.perf_counter()
        handles = []
        for _ in range(streams):
            self.request_id += 1
            submitted = time.perf_counter()  # a request's clock starts with its text, as ovms's does
            ids = self.tokenizer.encode(self.prompt, add_special_tokens=False).input_ids
            handles.append([pipe.add_request(self.request_id, ids, config), submitted, None, None, 0])
        while pipe.has_non_finished_requests():
            pipe.step()
            now = time.perf_counter()
            for item in handles:
                handle = item[0]
                while handle.can_read():
                    for output in handle.read().values():
                        if output.generated_ids:
                            if item[2] is None:
                                item[2] = now
                            item[3] = now
                            item[4] += len(output.generated_ids)
        for item in handles:  # tokens left unread at the end
            while item[0].can_read():
                for output in item[0].read().values():
                    item[4] += len(output.generated_ids)
        return time.perf_counter() - started, [(start, first, last, count) for _, start, first, last, count in handles]


# ---- ovms over HTTP/SSE ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ovms(workdir: pathlib.Path) -> tuple[subprocess.Popen, int]:
    graph_dir = workdir / "tiny-llm"
    graph_dir.mkdir()
    (graph_dir / "graph.pbtxt").write_text(GRAPH.format(path=LLM_DIR))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ovms", "--model_name", "tiny-llm", "--model_path",
                                str(graph_dir), "--rest_port", str(port), "--rest_bind_address", "127.0.0.1",
                                "--log_level", "WARNING"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    import urllib.request

    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status == 200:
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("ovms did not become ready in 60 s")


class _SseClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that POSTs a pre-encoded request and reads its SSE answer.

    The client shares the 2 cores with ovms, and every microsecond it spends per chunk comes out of the
    pipeline's steps, so it does what a client on another machine would cost nothing for and no more: it
    de-chunks the body in ``data_received`` (no task wake-up per read), timestamps the first and last content
    chunk, and parses JSON only for the usage chunk. An aiohttp client cost 3x its CPU per chunk here.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("ovms closed the connection mid-answer"))
        if not self.lost.done():
            self.lost.set_result(None)

    def request(self, payload: bytes) -> asyncio.Future:
        self.buffer = bytearray()
        self.headers_seen = False
        self.events = b""
        self.first = self.last = None
        self.tokens = 0
        self.done = asyncio.get_running_loop().create_future()
        self.start = time.perf_counter()
        self.transport.write(payload)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self.buffer
        buffer += data
        if not self.headers_seen:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:buffer.find(b"\r\n")])
            if b" 200 " not in status:
                self.done.set_exception(RuntimeError(f"ovms answered {status!r}: {bytes(buffer[end:end + 300])!r}"))
                return
            del buffer[:end + 4]
            self.headers_seen = True
        body = []
        finished = False
        while True:  # chunked transfer encoding: "<hex size>\r\n<data>\r\n", ended by a 0-size chunk
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(buffer[:line_end], 16)
            if len(buffer) < line_end + 2 + size + 2:
                break
            body.append(bytes(buffer[line_end + 2:line_end + 2 + size]))
            del buffer[:line_end + 2 + size + 2]
            if size == 0:
                finished = True
                break
        if body:
            events = (self.events + b"".join(body)).split(b"\n\n")
            self.events = events.pop()
            for event in events:
                if b'"delta": {"content": "' in event and b'"content": ""' not in event:
                    self.last = now
                    if self.first is None:
                        self.first = now
                elif b'"usage"' in event and event.startswith(b"data: {"):
                    self.tokens = json.loads(event[6:])["usage"]["completion_tokens"]
        if finished and not self.done.done():
            self.done.set_result((self.start, self.first, self.last, self.tokens))


class OverHttp:
    """``streams`` keep-alive connections to ovms, reused round after round."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.clients: list[_SseClient] = []

    def _payload(self, max_tokens: int) -> bytes:
        body = json.dumps({"model": "tiny-llm", "messages": MESSAGES, "stream": True, "ignore_eos": True,
                           "max_tokens": max_tokens, "stream_options": {"include_usage": True}}).encode()
        return (f"POST /v3/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    async def _round(self, streams: int, max_tokens: int):
        while len(self.clients) < streams:
            _, client = await self.loop.create_connection(_SseClient, "127.0.0.1", self.port)
            self.clients.append(client)
        payload = self._payload(max_tokens)
        started = time.perf_counter()
        results = await asyncio.gather(*[client.request(payload) for client in self.clients[:streams]])
        return time.perf_counter() - started, results

    def round(self, streams: int, max_tokens: int):
        return self.loop.run_until_complete(self._round(streams, max_tokens))

    def close(self) -> None:
        for client in self.clients:
            client.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def collect(rounds: list) -> dict:
    walls, ttfts, tpots, total = [], [], [], 0
    for wall, results in rounds:
        walls.append(wall)
        for start, first, last, count in results:
            ttfts.append(first - start)
            tpots.append((last - first) / max(1, count - 1))
            total += count
    return summarize(walls, ttfts, tpots, total)


def paired_ratios(mine: list, theirs: list) -> list[float]:
    """ovms tokens/s over in-process tokens/s, round by round (each pair ran back to back)."""
    def rate(round_):
        wall, results = round_
        return sum(count for *_, count in results) / wall
    return sorted(rate(b) / rate(a) for a, b in zip(mine, theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--in-process-sched", choices=["default", "batch"], default="default",
                        help="the in-process side's scheduling policy: default (as a program that drives the pipeline "
                             "runs) or batch (SCHED_BATCH, what ovms gives its generation worker)")
    args = parser.parse_args()
    results = {}
    local = InProcess(sched_batch=args.in_process_sched == "batch")
    gc.freeze()  # the client's own full collections (50 ms with openvino loaded) would show as ovms latency
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_ovms(pathlib.Path(workdir))
        remote = OverHttp(port)
        try:
            for streams in args.streams:
                # Rounds alternate (in-process, ovms, in-process, ...) so the drift of a shared VM hits both sides
                # alike; the first round of each side warms up and is dropped.
                local.round(streams, args.max_tokens)
                remote.round(streams, args.max_tokens)
                mine, theirs = [], []
                for _ in range(args.rounds):
                    mine.append(local.round(streams, args.max_tokens))
                    # OpenVINO's threads spin for a while after the in-process round, in this process, on the
                    # cores the client and ovms are about to need: let them park before the other side starts.
                    time.sleep(SETTLE_SECONDS)
                    theirs.append(remote.round(streams, args.max_tokens))
                    time.sleep(SETTLE_SECONDS)
                a, b = collect(mine), collect(theirs)
                pairs = paired_ratios(mine, theirs)
                results[streams] = {"in_process": a, "ovms": b, "ratio": b["tokens_per_s"] / a["tokens_per_s"],
                                    "paired_ratio_median": percentile(pairs, 50),
                                    "paired_ratio_quartiles": [percentile(pairs, 25), percentile(pairs, 75)],
                                    "ttft_overhead_p50_ms": b["ttft_p50_ms"] - a["ttft_p50_ms"]}
        finally:
            remote.close()
            process.terminate()
            process.wait(10)
    print(f"{'streams':>7} {'in-proc tok/s':>13} {'ovms tok/s':>11} {'ratio':>6} {'paired (q1-q3)':>17} {'TTFT p50/p99 ms (in / ovms)':>30} "
          f"{'TPOT p50/p99 ms (in / ovms)':>30}")
    for streams, r in results.items():
        a, b = r["in_process"], r["ovms"]
        print(f"{streams:>7} {a['tokens_per_s']:>13,.0f} {b['tokens_per_s']:>11,.0f} {r['ratio']:>6.2f} "
              f"{r['paired_ratio_median']:>6.2f} ({r['paired_ratio_quartiles'][0]:.2f}-{r['paired_ratio_quartiles'][1]:.2f}) "
              f"{a['ttft_p50_ms']:>7.2f}/{a['ttft_p99_ms']:<6.2f} {b['ttft_p50_ms']:>7.2f}/{b['ttft_p99_ms']:<6.2f} "
              f"{a['tpot_p50_ms']:>7.3f}/{a['tpot_p99_ms']:<6.3f} {b['tpot_p50_ms']:>7.3f}/{b['tpot_p99_ms']:<6.3f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "genai.json").write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "results": results},
                                               indent=1))


if __name__ == "__main__":
    main()
