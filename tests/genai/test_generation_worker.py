"""The generation worker process (ovms.backends.genai_worker) with real parts: a real worker serving the tiny fixture
LLM, killed mid-generation, orphaned by a SIGKILLed server, failing to load, refusing long prompts, and left by
clients that disconnect at once."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ThreadedServer
from tests.genai.conftest import LLM_DIR, LLM_GRAPH

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELLO = {"model": "tiny-llm", "messages": [{"role": "user", "content": "Hello"}]}
LONG = {**HELLO, "ignore_eos": True, "max_tokens": 480}  # the fixture's context is 512 tokens


def wait_for(predicate, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie. A SIGKILLed process shows Z for its main thread while its other
    threads still exit (and hold its sockets open): it is dead only when they are gone too."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except FileNotFoundError:
        return False


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            pass
    return found


def is_worker(pid: int) -> bool:
    try:
        return b"ovms.backends.genai_worker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def write_graph(root: pathlib.Path, models_path: pathlib.Path = LLM_DIR, max_num_seqs: int = 8) -> pathlib.Path:
    graph_dir = root / "tiny-llm"
    graph_dir.mkdir(parents=True, exist_ok=True)
    (graph_dir / "graph.pbtxt").write_text(LLM_GRAPH.format(path=models_path, max_num_seqs=max_num_seqs))
    return graph_dir


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    graph_dir = write_graph(root)
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "tiny-llm",
                                                                    "base_path": str(graph_dir)}}]}))
    with ThreadedServer(config_path=config) as running:
        yield running


@pytest.fixture
def servable(llm_server):
    return llm_server.server.registry.resolve("tiny-llm")


def post(server, path: str, body, **kwargs):
    return requests.post(f"http://{server.rest_url}/v3/{path}", json=body, timeout=30, **kwargs)


def assert_serves(server, servable) -> None:
    """A normal request works and the servable's books are balanced afterwards."""
    response = post(server, "chat/completions", {**HELLO, "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    wait_for(lambda: servable.in_flight == 0 and not servable._active, what="in_flight 0")


# ---- 1. the worker dies mid-generation --------------------------------------------------------------------------

def test_worker_killed_mid_stream_fails_the_stream_and_the_next_request_restarts_it(llm_server, servable):
    assert_serves(llm_server, servable)
    old_pid = servable._worker.pid
    response = post(llm_server, "chat/completions", {**LONG, "stream": True}, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines(decode_unicode=True)
    first = next(line for line in lines if line.startswith("data: "))  # the role chunk: the worker accepted
    assert '"role": "assistant"' in first
    os.kill(old_pid, signal.SIGKILL)
    events = [line[6:] for line in lines if line.startswith("data: ")]
    errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
    assert errors == ["Internal inference error - the generation worker of tiny-llm exited (code -9) during "
                      "generation; retry the request"], events[-3:]
    assert events[-1] == "[DONE]"
    assert not any('"finish_reason": "length"' in e for e in events)  # it did not run to the end
    wait_for(lambda: servable.in_flight == 0 and not servable._active, what="in_flight 0 after the crash")
    assert not alive(old_pid)
    assert_serves(llm_server, servable)
    assert servable._worker.pid != old_pid and alive(servable._worker.pid)


def test_worker_killed_during_unary_request_is_a_500(llm_server, servable):
    assert_serves(llm_server, servable)
    old_pid = servable._worker.pid
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(post, llm_server, "chat/completions", LONG)
        wait_for(lambda: servable.in_flight == 1, what="the request in flight")
        os.kill(old_pid, signal.SIGKILL)
        response = future.result()
    assert response.status_code == 500, response.text
    assert "generation worker of tiny-llm exited (code -9)" in response.json()["error"]
    assert_serves(llm_server, servable)
    assert servable._worker.pid != old_pid


def test_concurrent_requests_after_a_crash_start_one_worker(llm_server, servable):
    assert_serves(llm_server, servable)
    old_pid = servable._worker.pid
    others = {pid for pid in children(os.getpid()) if is_worker(pid) and pid != old_pid}  # other modules' servers
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: servable._worker is None, what="the server to notice the worker's exit")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: post(llm_server, "chat/completions", {**HELLO, "max_tokens": 4}),
                                  range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    workers = [pid for pid in children(os.getpid()) if is_worker(pid) and alive(pid) and pid not in others]
    assert workers == [servable._worker.pid], workers  # no second worker started by a racing request
    assert_serves(llm_server, servable)


def test_worker_killed_while_idle_before_any_request(tmp_path):
    """A worker that dies before the server ever read from it (no request yet): the next request still works."""
    root = tmp_path / "idle"
    config = root / "config.json"
    graph_dir = write_graph(root)
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "tiny-llm",
                                                                    "base_path": str(graph_dir)}}]}))
    with ThreadedServer(config_path=config) as running:
        servable = running.server.registry.resolve("tiny-llm")
        old_pid = servable._worker.pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: not alive(old_pid), what="the worker to die")
        assert_serves(running, servable)
        assert servable._worker.pid != old_pid


# ---- 2. the server is SIGKILLed: its worker leaves by itself ----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_exits_when_the_server_is_killed(tmp_path):
    graph_dir = write_graph(tmp_path)
    port = free_port()
    log_path = tmp_path / "ovms.log"  # a file, not a pipe: the worker inherits it and outlives our reading
    with log_path.open("wb") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "ovms", "--model_name", "tiny-llm", "--model_path",
                                   str(graph_dir), "--rest_port", str(port), "--rest_bind_address", "127.0.0.1",
                                   "--log_level", "WARNING"], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                  stderr=log_file)
    workers: list[int] = []
    try:
        def ready():
            try:
                return requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                assert server.poll() is None, log_path.read_text()
                return False

        wait_for(ready, timeout=60, what="ovms to be ready")
        workers = [pid for pid in children(server.pid) if is_worker(pid)]
        assert len(workers) == 1, workers
        # a generation running when the server dies: the worker is stepping, not waiting for work
        response = requests.post(f"http://127.0.0.1:{port}/v3/chat/completions", json={**LONG, "stream": True},
                                 stream=True, timeout=30)
        assert any(line.startswith(b"data: ") for line in response.iter_lines())
        server.kill()
        server.wait(10)
        response.close()
        wait_for(lambda: not alive(workers[0]), timeout=5, what=f"worker {workers[0]} to exit")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for pid in workers:  # a failed test must not leave an orphan on the machine
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---- 3. load error -----------------------------------------------------------------------------------------------

def _options(models_path: pathlib.Path):
    from ovms.graph import GenAINodeOptions

    return GenAINodeOptions(task="text_generation", models_path=models_path, cache_size=1,
                            enable_prefix_caching=False, max_num_seqs=4)


@pytest.mark.parametrize("corrupt", ["openvino_model.xml", "openvino_model.bin"])
def test_corrupt_model_is_a_load_error_and_leaves_no_worker(tmp_path, monkeypatch, corrupt):
    from ovms.backends import genai_llm
    from ovms.errors import ModelLoadError

    models_path = tmp_path / "broken-llm"
    shutil.copytree(LLM_DIR, models_path)
    target = models_path / corrupt
    target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
    started: list[subprocess.Popen] = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(genai_llm.subprocess, "Popen", Recording)
    with pytest.raises(ModelLoadError) as caught:
        genai_llm.LLMServable("broken", _options(models_path))
    message = str(caught.value)
    assert message.startswith(f"{models_path}: openvino_genai could not load the model: "), message
    assert len(started) == 1
    assert started[0].returncode is not None and not alive(started[0].pid)


# ---- 4. a prompt longer than the context -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_prompt_over_the_context_is_a_400(llm_server, servable, stream):
    context = json.loads((LLM_DIR / "config.json").read_text())["max_position_embeddings"]
    prompt = "hello world " * context
    tokens = post(llm_server, "tokenize", {"model": "tiny-llm", "text": prompt}).json()["tokens"]
    assert len(tokens) > context
    response = post(llm_server, "completions", {"model": "tiny-llm", "prompt": prompt, "max_tokens": 4,
                                                "stream": stream})
    assert response.status_code == 400, response.text
    assert response.json()["error"].endswith(f"prompt is {len(tokens)} tokens; the model's context is {context}")
    assert_serves(llm_server, servable)


# ---- 5. clients that leave at once ---------------------------------------------------------------------------------

def _send_and_leave(server, body: dict, *, reset: bool) -> None:
    host, port = server.rest_url.split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    if reset:  # close with RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(b"POST /v3/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    sock.close()


def test_clients_that_disconnect_at_once_leave_nothing_behind(llm_server, servable, monkeypatch):
    assert_serves(llm_server, servable)
    pid = servable._worker.pid
    cancelled_before = servable.cancelled_requests
    started: list[float] = []
    long_streams: list[bool] = []
    generate = servable.generate

    async def counting_generate(request):
        started.append(time.monotonic())
        stream = await generate(request)
        long_streams.append(request.params.max_new_tokens == LONG["max_tokens"])
        return stream

    monkeypatch.setattr(servable, "generate", counting_generate)
    bodies = [{**LONG, "stream": True}, {**LONG, "stream": False}]  # streamed and unary, both cancelled
    for i in range(24):
        _send_and_leave(llm_server, bodies[i % 2], reset=i % 4 < 2)

    def settled():
        # A request whose client reset the connection may never reach the handler, so not all 24 arrive: the
        # server has settled when nothing runs and no request started for a second.
        quiet = not started or time.monotonic() - started[-1] > 1.0
        return quiet and len(started) > 0 and servable.in_flight == 0 and not servable._active

    wait_for(settled, timeout=20, what="the server to settle")
    assert servable._worker.pid == pid
    # the 480-token generations were cancelled (a stream's first write failed; a unary one saw its connection
    # closed at the next chunk), not generated to the end
    assert servable.cancelled_requests - cancelled_before == len(long_streams) > 0, (len(started), long_streams)
    monkeypatch.undo()
    assert_serves(llm_server, servable)


def test_generate_cancelled_before_the_worker_accepts(llm_server, servable):
    from ovms.genai.types import GenerationRequest, SamplingParams

    assert_serves(llm_server, servable)
    before = servable.cancelled_requests

    async def cancel_at_once():
        params = SamplingParams(max_new_tokens=400, ignore_eos=True)
        tasks = [asyncio.ensure_future(servable.generate(GenerationRequest("tiny-llm", "Hello", params)))
                 for _ in range(8)]
        await asyncio.sleep(0)  # each sent its "add" and waits for ACCEPTED
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [type(r).__name__ for r in results]

    assert llm_server.call(cancel_at_once()) == ["CancelledError"] * 8
    wait_for(lambda: servable.in_flight == 0 and not servable._active, what="in_flight 0")
    assert servable.cancelled_requests == before + 8
    assert_serves(llm_server, servable)


# ---- 6. closing the servable ends its worker --------------------------------------------------------------------

def test_close_ends_the_worker_even_while_generating():
    from ovms.backends.genai_llm import LLMServable
    from ovms.errors import ServingError
    from ovms.genai.types import GenerationRequest, SamplingParams

    servable = LLMServable("tiny-llm", _options(LLM_DIR))
    pid = servable._worker.pid
    assert alive(pid)

    async def generate_then_close():
        params = SamplingParams(max_new_tokens=480, ignore_eos=True)
        stream = await servable.generate(GenerationRequest("tiny-llm", "Hello", params))
        chunks = aiter(stream)
        await anext(chunks)  # generating
        started = time.monotonic()
        await asyncio.to_thread(servable.close)  # as the registry does
        closed_in = time.monotonic() - started
        with pytest.raises(ServingError, match="tiny-llm is unloading"):
            await servable.generate(GenerationRequest("tiny-llm", "Hello", SamplingParams(max_new_tokens=2)))
        await chunks.aclose()
        return closed_in

    closed_in = asyncio.run(generate_then_close())
    assert closed_in < 5, closed_in  # the worker stopped at once, not after its 10 s grace
    assert not alive(pid)
    assert servable._worker is None


def test_lazy_start_spawns_the_worker_on_the_first_request(monkeypatch):
    """gRPC-only worker processes (--grpc_workers > 1) load LLMs lazily: no second copy of the weights."""
    from ovms.backends.genai_llm import LLMServable
    from ovms.genai.types import GenerationRequest, SamplingParams

    monkeypatch.setenv("OVMS_GENAI_WORKER_START", "lazy")
    servable = LLMServable("tiny-llm", _options(LLM_DIR))
    try:
        assert servable._worker is None  # loaded (tokenizer, template) but no pipeline process yet

        async def first_request():
            stream = await servable.generate(GenerationRequest("tiny-llm", "Hello",
                                                               SamplingParams(max_new_tokens=3, ignore_eos=True)))
            return [chunk async for chunk in stream]

        chunks = asyncio.run(first_request())
        assert sum(chunk.token_count for chunk in chunks) == 3
        assert alive(servable._worker.pid)
    finally:
        servable.close()
    assert servable._worker is None


def test_unloading_by_config_reload_ends_the_worker(tmp_path):
    graph_dir = write_graph(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "tiny-llm",
                                                                    "base_path": str(graph_dir)}}]}))
    with ThreadedServer(config_path=config) as running:
        servable = running.server.registry.resolve("tiny-llm")
        assert_serves(running, servable)
        pid = servable._worker.pid
        config.write_text(json.dumps({"model_config_list": []}))
        response = requests.post(f"http://{running.rest_url}/v1/config/reload", timeout=30)
        assert response.status_code == 201, response.text  # OVMS: 201 when the configuration changed
        wait_for(lambda: not alive(pid), timeout=10, what=f"worker {pid} to exit after the unload")
        assert servable._worker is None


def test_a_bad_flush_interval_is_a_load_error_that_says_what_to_set(monkeypatch):
    from ovms.backends.genai_llm import LLMServable
    from ovms.errors import ModelLoadError

    monkeypatch.setenv("OVMS_GENAI_FLUSH_MS", "fast")
    with pytest.raises(ModelLoadError, match=r"OVMS_GENAI_FLUSH_MS='fast': expected milliseconds between 0 and 1000"):
        LLMServable("tiny-llm", _options(LLM_DIR))


def test_prompts_larger_than_the_socket_buffer_do_not_stall_the_server(llm_server, servable):
    """Frames the worker's socket cannot take wait in a buffer (add_writer); the event loop keeps serving."""
    huge = {**HELLO, "messages": [{"role": "user", "content": "word " * 60_000}], "max_tokens": 4}  # 300 KB
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, llm_server, "chat/completions", huge) for _ in range(4)]
        # while the four 300 KB prompts are on their way, the server answers other requests
        health = requests.get(f"http://{llm_server.rest_url}/v2/health/ready", timeout=5)
        responses = [future.result() for future in futures]
    assert health.status_code == 200
    for response in responses:  # the worker took them whole, tokenized them and refused them by length
        assert response.status_code == 400, response.text
        assert "tokens; the model's context is 512" in response.json()["error"], response.text
    assert not servable._wbuf
    assert_serves(llm_server, servable)


def test_max_tokens_limit_is_the_default_and_a_bound(tmp_path):
    """OVMS's graph option: a request without max_tokens generates up to the limit; one above it is a 400."""
    graph_dir = write_graph(tmp_path)
    graph = graph_dir / "graph.pbtxt"
    graph.write_text(graph.read_text().replace('device: "CPU",', 'device: "CPU",\n      max_tokens_limit: 6,'))
    assert "max_tokens_limit: 6" in graph.read_text()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "tiny-llm",
                                                                    "base_path": str(graph_dir)}}]}))
    with ThreadedServer(config_path=config) as running:
        response = post(running, "chat/completions", {**HELLO, "ignore_eos": True})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["completion_tokens"] == 6 and body["choices"][0]["finish_reason"] == "length"
        response = post(running, "chat/completions", {**HELLO, "max_tokens": 7})
        assert response.status_code == 400
        assert "max_tokens exceeds limit provided in graph config: 6" in response.json()["error"]
        # OVMS's bound on generations that ignore EOS comes first (it is checked with the request's fields)
        response = post(running, "chat/completions", {**HELLO, "ignore_eos": True, "max_completion_tokens": 4001})
        assert response.status_code == 400
        assert response.json()["error"].endswith("when ignore_eos is true max_completion_tokens can not be greater "
                                                 "than 4000"), response.text


def test_a_stop_string_ends_the_choice_once(llm_server, servable):
    """Our detokenizer may see the stop string a token before genai does: one finish chunk, no text after it."""
    response = post(llm_server, "chat/completions", {**HELLO, "stream": True, "stop": ["!"], "max_tokens": 40},
                    stream=True)
    events = [line[6:] for line in response.iter_lines() if line.startswith(b"data: {")]
    chunks = [json.loads(event)["choices"][0] for event in events]
    finishes = [c["finish_reason"] for c in chunks if c["finish_reason"] is not None]
    assert finishes == ["stop"], finishes
    assert chunks[-1]["finish_reason"] == "stop"
    text = "".join(c["delta"].get("content") or "" for c in chunks)
    assert "!" not in text
    assert_serves(llm_server, servable)


def test_prompts_that_arrive_together_encode_as_they_would_alone():
    import openvino as ov
    import openvino_genai as ov_genai

    from ovms.backends.genai_worker import encode_prompts

    tokenizer = ov_genai.Tokenizer(str(LLM_DIR), INFERENCE_NUM_THREADS=1)
    prompts = ["<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "short", "a longer prompt " * 40,
               "こんにちは 👋", "", "What is the weather in Paris?"]
    alone = [tokenizer.encode(p, add_special_tokens=False).input_ids.data[0].tolist() for p in prompts]
    together = [t.data[0].tolist() for t in encode_prompts(tokenizer, prompts, ov)]
    assert together == alone
    # one prompt the tokenizer refuses does not fail the others: they are encoded one by one
    mixed = list(encode_prompts(tokenizer, ["Hello", 42, "Paris"], ov))
    assert isinstance(mixed[1], Exception)
    assert [mixed[0].data[0].tolist(), mixed[2].data[0].tolist()] == [alone_of(tokenizer, "Hello"),
                                                                      alone_of(tokenizer, "Paris")]


def alone_of(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).input_ids.data[0].tolist()


# ---- the two sockets: main (waited on) and bulk (read on a timer) -----------------------------------------------

def run_worker_directly(bulk: bool, max_tokens: int = 200) -> tuple[list[int], list[tuple[str, int]]]:
    """One greedy request on a real worker started by hand; (token ids in the order a server would read them,
    [(socket, kind) per item received]). The reader never polls the bulk socket on its own: it drains it only
    before each main frame, the latest a server may, so the order must hold even then."""
    from ovms.backends import genai_worker as wire

    main_ours, main_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    bulk_ours, bulk_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = [sys.executable, "-P", "-m", "ovms.backends.genai_worker", "--fd", str(main_theirs.fileno())]
    if bulk:
        command += ["--bulk-fd", str(bulk_theirs.fileno())]
    worker = subprocess.Popen(command, pass_fds=(main_theirs.fileno(), bulk_theirs.fileno()),
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    main_theirs.close()
    bulk_theirs.close()
    main_buf, bulk_buf = bytearray(), bytearray()
    ids: list[int] = []
    seen: list[tuple[str, int]] = []
    try:
        main_ours.settimeout(60)
        main_ours.sendall(wire.frame({"models_path": str(LLM_DIR), "device": "CPU", "plugin_config": {},
                                      "scheduler": {"cache_size": 1, "max_num_seqs": 4,
                                                    "enable_prefix_caching": False},
                                      "flush_seconds": 0.002}))

        def main_frames():
            while True:
                messages = wire.unframe(main_buf)
                if messages:
                    return messages
                data = main_ours.recv(1 << 20)
                assert data, "the worker closed its socket"
                main_buf.extend(data)

        assert main_frames() == [("ready", None)]
        main_ours.sendall(wire.frame(("add", 1, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
                                      {"max_new_tokens": max_tokens, "ignore_eos": True}, None, None)))
        bulk_ours.setblocking(False)
        done = False
        while not done:
            messages = main_frames()
            while True:  # what went on the bulk socket before this main frame
                try:
                    data = bulk_ours.recv(1 << 20)
                except BlockingIOError:
                    break
                bulk_buf.extend(data)
            batches = [("bulk", m) for m in wire.unframe(bulk_buf)] + [("main", m) for m in messages]
            for where, (_, items, _) in batches:
                for request_id, kind, data in items:
                    assert request_id == 1
                    seen.append((where, kind))
                    if kind == wire.OUTPUTS:
                        assert len(data) == 1 and data[0][0] == 0  # one sequence, the steps merged
                        ids += data[0][1]
                    elif kind == wire.DONE:
                        done = True
                    else:
                        assert kind == wire.ACCEPTED, (kind, data)
    finally:
        main_ours.close()
        bulk_ours.close()
        worker.wait(30)
    return ids, seen


def test_tokens_in_mid_answer_go_on_the_bulk_socket_and_arrive_in_order():
    ids_bulk, seen_bulk = run_worker_directly(bulk=True)
    ids_main, seen_main = run_worker_directly(bulk=False)
    assert len(ids_bulk) == 200 and ids_bulk == ids_main  # greedy: the same tokens, in the same order
    assert ("bulk", 0) in seen_bulk  # tokens between the first one and the end went on the bulk socket
    assert all(where == "main" for where, kind in seen_bulk if kind != 0)  # acceptance and end: main socket
    assert seen_bulk[0] == ("main", 4) and seen_bulk[1] == ("main", 0) and seen_bulk[-1] == ("main", 1)
    assert {where for where, _ in seen_main} == {"main"}  # without --bulk-fd everything goes on the main socket


# ---- scheduling ---------------------------------------------------------------------------------------------------

def worker_policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of a process (OpenVINO's included)."""
    policies = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            policies.add(os.sched_getscheduler(int(task)))
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
    return policies


def test_the_worker_and_its_openvino_threads_run_under_sched_batch(llm_server, servable):
    assert_serves(llm_server, servable)  # the pipeline has stepped: OpenVINO's threads exist
    pid = servable._worker.pid
    assert len(os.listdir(f"/proc/{pid}/task")) > 1
    assert worker_policies(pid) == {os.SCHED_BATCH}
    assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the server answers as soon as it wakes


def test_sched_batch_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("OVMS_GENAI_SCHED_BATCH", "0")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "tiny-llm",
                                                                    "base_path": str(write_graph(tmp_path))}}]}))
    with ThreadedServer(config_path=config) as running:
        servable = running.server.registry.resolve("tiny-llm")
        assert_serves(running, servable)
        assert worker_policies(servable._worker.pid) == {os.SCHED_OTHER}


# ---- recycling: openvino_genai keeps memory per finished request; a new worker returns it ----------------------

def test_worker_is_recycled_after_its_requests_and_no_request_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("OVMS_GENAI_WORKER_RECYCLE_REQUESTS", "5")
    graph_dir = write_graph(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "tiny-llm",
                                                                    "base_path": str(graph_dir)}}]}))
    with ThreadedServer(config_path=config) as server:
        servable = server.server.registry.resolve("tiny-llm")
        pids = {servable._worker.pid}
        expected = post(server, "chat/completions", {**HELLO, "max_tokens": 12, "temperature": 0}).json()

        def chat(i: int):
            body = {**HELLO, "max_tokens": 12, "temperature": 0, "stream": i % 2 == 0}
            response = post(server, "chat/completions", body, stream=body["stream"])
            pids.add(servable._worker.pid if servable._worker else None)
            if body["stream"]:
                text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                               for line in response.iter_lines(decode_unicode=True)
                               if line.startswith("data: {") and json.loads(line[6:])["choices"])
                return response.status_code, text
            return response.status_code, response.json()["choices"][0]["message"]["content"]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(chat, range(24)))
        assert [code for code, _ in results] == [200] * 24
        assert {text for _, text in results} == {expected["choices"][0]["message"]["content"]}
        assert servable.worker_recycles >= 3  # 25 requests, a new worker every 5
        live = [pid for pid in children(os.getpid()) if is_worker(pid) and alive(pid)]
        assert servable._worker.pid in live and not (pids - {None, servable._worker.pid}) & set(live)
        assert_serves(server, servable)
