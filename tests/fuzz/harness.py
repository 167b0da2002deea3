"""Generated inputs for the parsers that take bytes from the network, and the rule each must keep.

Every target is fed a mix of random data and mutations of valid requests (field values swapped for other
types, shapes blown up, bytes flipped, bodies cut short). The rule: a parser either accepts the input or
refuses it with the error users see (``ServingError``, ``PullError``, ``CodecError``, the protobuf
``DecodeError``); anything else escaping is a crash. Each input also runs under a time bound (a hang), and
the two tensor-codec twins must agree on every input.

Used by tests/fuzz/test_fuzz.py (a short run in `make test`) and bench/fuzz.py (the long run).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
import signal
import struct
import time
import traceback
from typing import Callable

import numpy as np
from google.protobuf.message import DecodeError

from ovms._native import load
from ovms._native.codec_errors import CodecError
from ovms._proto.messages import kserve, tfs_predict
from ovms.errors import Kind, ServingError
from ovms.genai import protocol as openai
from ovms.protocol import kserve_grpc, kserve_rest, tfs
from ovms.pull.errors import PullError
from ovms.pull.hub import parse_tree_page
from ovms.pull.responses import Verdict, classify
from ovms.servable import validate_inputs
from ovms.types import TensorSpec

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16"]
REFUSALS = (ServingError, PullError, CodecError, DecodeError)
HANG_SECONDS = 2.0


class FakeServable:
    """Input specs to validate against (validate_inputs reads only ``inputs``)."""

    def __init__(self, specs):
        self.inputs = specs


SPECS = [FakeServable([TensorSpec("INPUT0", "FP32", (1, 16))]),
         FakeServable([TensorSpec("INPUT0", "INT32", (-1, 16)), TensorSpec("INPUT1", "INT32", (1, 16))]),
         FakeServable([TensorSpec("text", "BYTES", (-1,))])]


# ---- generators ---------------------------------------------------------------------------------------------

def rand_scalar(rng: random.Random):
    return rng.choice([
        lambda: rng.randint(-2**70, 2**70), lambda: rng.randint(-3, 40), lambda: rng.random() * 1e6,
        lambda: float("nan"), lambda: float("inf"), lambda: rng.choice([True, False]), lambda: None,
        lambda: "".join(rng.choice("ab\u00e9\x00{}[]\"\\") for _ in range(rng.randint(0, 8))),
        lambda: rng.choice(DATATYPES), lambda: -1, lambda: 2**63, lambda: 1e308 * 10,
    ])()


def rand_json(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 4 or roll < 0.5:
        return rand_scalar(rng)
    if roll < 0.75:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["name", "datatype", "shape", "data", "inputs", "outputs", "parameters", "id", "binary_data_size",
            "instances", "model", "messages", "role", "content", "max_tokens", "stream", "tools", "type",
            "path", "size", "oid", "lfs", "x"]
    return {rng.choice(keys): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def rand_shape(rng: random.Random) -> list:
    return rng.choice([
        lambda: [rng.randint(-2, 5) for _ in range(rng.randint(0, 4))],
        lambda: [1, 16], lambda: [2**31, 2**31], lambda: [2**62, 4], lambda: [0], lambda: [],
        lambda: [1, rng.randint(0, 40)], lambda: [-1, 16], lambda: [10**12],
    ])()


def mutate(rng: random.Random, value):
    """Replace one node of a JSON value with something else (recursively chosen)."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        copy = dict(value)
        if rng.random() < 0.15:
            del copy[key]
        else:
            copy[key] = mutate(rng, copy[key])
        return copy
    if isinstance(value, list) and value and rng.random() < 0.7:
        copy = list(value)
        i = rng.randrange(len(copy))
        copy[i] = mutate(rng, copy[i])
        if rng.random() < 0.1:
            copy.append(rand_json(rng))
        return copy
    return rng.choice([lambda: rand_json(rng), lambda: rand_shape(rng), lambda: rand_scalar(rng)])()


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.6:
            data[rng.randint(0, len(data)):rng.randint(0, len(data))] = b""
        elif op < 0.8:
            pos = rng.randint(0, len(data))
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data = data[:rng.randint(0, len(data))]
    return bytes(data)


def to_body(document, rng: random.Random | None = None) -> bytes:
    """JSON text of ``document``; sometimes one value is swapped for a list nested hundreds to thousands deep."""
    body = json.dumps(document, allow_nan=True).encode()
    if rng is not None and rng.random() < 0.03:
        depth = rng.choice([63, 65, 999, 1025, 5000])
        deep = b"[" * depth + b"1" + b"]" * depth
        body = body.replace(b"[", deep[:-1] + b",", 1) if rng.random() < 0.5 else deep
    return body


def valid_rest_request(rng: random.Random) -> tuple[dict, bytes | None]:
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    if rng.random() < 0.5:
        return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                            "data": data.ravel().tolist()}], "outputs": [{"name": "OUTPUT0"}]}, None
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                        "parameters": {"binary_data_size": 64}}]}, data.tobytes()


def valid_grpc_request() -> bytes:
    request = kserve.ModelInferRequest(model_name="m", id="x")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    if random.random() < 0.5:
        tensor.contents.fp32_contents.extend(range(16))
    else:
        request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    request.outputs.add(name="OUTPUT0")
    return request.SerializeToString()


def valid_tfs_request() -> bytes:
    request = tfs_predict.PredictRequest()
    request.model_spec.name = "m"
    proto = request.inputs["INPUT0"]
    proto.dtype = 1
    proto.tensor_shape.dim.add(size=1)
    proto.tensor_shape.dim.add(size=16)
    proto.tensor_content = np.arange(16, dtype=np.float32).tobytes()
    return request.SerializeToString()


# ---- targets: each takes (rng) and returns what it checked, raising on a broken rule -------------------------

class Broken(Exception):
    """A rule other than "refuse cleanly" was broken (twins disagree, a wrong kind of answer)."""


def _validate(request) -> None:
    for servable in SPECS:
        try:
            validate_inputs(servable, request)
        except ServingError:
            pass


def target_codec(rng: random.Random) -> None:
    """Both tensor-codec twins on the same random input: same result, or both refuse."""
    pure, native = load("tensorcodec", pure=True), _native_codec()
    datatype = rng.choice(DATATYPES + ["FP8", "", "int32"])
    shape = rand_shape(rng)
    kind = rng.randrange(4)
    if kind == 0:
        buffer = bytes(rng.randrange(256) for _ in range(rng.randint(0, 96)))
        args, name = (buffer, datatype, shape), "raw_to_array"
    elif kind == 1:
        buffer = b"".join(struct.pack("<I", rng.choice([0, 1, 3, 2**31, 2**32 - 1])) + b"abc"[:rng.randint(0, 3)]
                          for _ in range(rng.randint(0, 4)))
        args, name = (buffer,), "unpack_bytes"
    elif kind == 2:
        values = rand_json(rng) if rng.random() < 0.3 else [rand_scalar(rng) for _ in range(rng.randint(0, 20))]
        args, name = (values if isinstance(values, list) else [values], datatype, shape), "contents_to_array"
    else:
        args, name = (rand_json(rng) if rng.random() < 0.5 else mutate(rng, list(range(16))), datatype,
                      shape), "json_to_array"
    outcomes = []
    for codec in filter(None, (pure, native)):
        try:
            outcomes.append(("ok", getattr(codec, name)(*args)))
        except (CodecError, ValueError, OverflowError, TypeError) as exc:
            # The codec's contract: CodecError for bad data; the callers map ValueError/OverflowError too.
            if not isinstance(exc, (CodecError, ValueError, OverflowError)):
                raise
            outcomes.append(("refused", None))
    if len(outcomes) == 2:
        (a, x), (b, y) = outcomes
        if a != b:
            raise Broken(f"twins disagree on {name}{args!r:.200}: pure {a}, native {b}")
        if a == "ok" and not _same(x, y):
            raise Broken(f"twins give different results for {name}{args!r:.200}")


def _same(x, y) -> bool:
    if isinstance(x, list):
        return x == y
    return x.dtype == y.dtype and x.shape == y.shape and (
        np.array_equal(x, y, equal_nan=x.dtype.kind == "f") if x.dtype != object else x.tolist() == y.tolist())


@functools.cache
def _native_codec():
    """The compiled twin, or None in a build without it."""
    try:
        return load("tensorcodec", pure=False)
    except ImportError:
        return None


def target_kserve_rest(rng: random.Random) -> None:
    document, binary = valid_rest_request(rng)
    roll = rng.random()
    if roll < 0.6:
        document = mutate(rng, document)
    body = to_body(document, rng)
    header_length = len(body) if binary is not None else None
    if binary is not None:
        body += binary if rng.random() < 0.7 else mutate_bytes(rng, binary)
    if roll > 0.85:
        body = mutate_bytes(rng, body)
    if rng.random() < 0.1:
        header_length = rng.choice([-1, 0, len(body) + 5, rng.randint(0, len(body))])
    request, _ = kserve_rest.decode_infer_request(body, header_length, "m", None)
    _validate(request)


def target_kserve_grpc(rng: random.Random) -> None:
    data = valid_grpc_request()
    if rng.random() < 0.8:
        data = mutate_bytes(rng, data)
    message = kserve.ModelInferRequest.FromString(data)
    request = kserve_grpc.decode_infer_request(message)
    _validate(request)


def target_tfs(rng: random.Random) -> None:
    if rng.random() < 0.5:
        data = valid_tfs_request()
        if rng.random() < 0.8:
            data = mutate_bytes(rng, data)
        request = tfs.decode_predict(tfs_predict.PredictRequest.FromString(data))
    else:
        document = mutate(rng, {"instances": [{"INPUT0": list(range(16))}]} if rng.random() < 0.5
                          else {"inputs": {"INPUT0": [list(range(16))]}})
        request, _ = tfs.decode_rest_predict(document, "m", None, SPECS[0].inputs)
    _validate(request)


def target_openai(rng: random.Random) -> None:
    chat = rng.random() < 0.6
    base = ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": False,
             "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
            if chat else {"model": "m", "prompt": "hi", "max_tokens": 5})
    body = to_body(mutate(rng, base) if rng.random() < 0.9 else rand_json(rng), rng)
    if rng.random() < 0.1:
        body = mutate_bytes(rng, body)
    openai.decode_generate(openai.parse_body(body), chat=chat)


def target_responses(rng: random.Random) -> None:
    base = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                                    {"type": "function_call_output", "call_id": "c", "output": "ok"}],
            "instructions": "be brief", "max_output_tokens": 5, "text": {"format": {"type": "text"}},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}
    body = to_body(mutate(rng, base) if rng.random() < 0.9 else rand_json(rng), rng)
    if rng.random() < 0.1:
        body = mutate_bytes(rng, body)
    openai.decode_responses(openai.parse_body(body))


def _tone_wav() -> bytes:
    samples = (0.5 * np.sin(np.arange(800) / 3.0) * 32767).astype("<i2").tobytes()
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(samples), b"WAVE", b"fmt ", 16, 1, 1, 8000, 16000, 2,
                       16, b"data", len(samples)) + samples


def target_audio(rng: random.Random) -> None:
    """The audio endpoints' edge: uploaded files (decoded by libsndfile), multipart fields, the speech JSON."""
    from ovms.genai.audio_input import decode_audio

    pick = rng.random()
    if pick < 0.4:
        data = _tone_wav()
        decode_audio(mutate_bytes(rng, data) if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(64)))
    elif pick < 0.7:
        fields = mutate(rng, {"model": "m", "language": "en", "temperature": "0.2", "response_format": "json",
                              "timestamp_granularities[]": "segment", "stream": "false"})
        if not isinstance(fields, dict):
            fields = {"model": fields}
        form = openai.Form({str(k): [v if isinstance(v, str) else json.dumps(v)] for k, v in fields.items()},
                           {"file": [("a.wav", _tone_wav())]} if rng.random() < 0.9 else {})
        openai.decode_transcription(form, translate=rng.random() < 0.3)
    else:
        base = {"model": "m", "input": "Hello", "voice": "tiny", "response_format": "wav", "speed": 1.0}
        body = to_body(mutate(rng, base) if rng.random() < 0.9 else rand_json(rng), rng)
        openai.decode_speech(openai.parse_body(body))


def target_pull(rng: random.Random) -> None:
    if rng.random() < 0.5:
        entry = {"type": "file", "path": "model.bin", "size": 10, "oid": "a" * 40, "lfs": {"oid": "b" * 64}}
        page = mutate(rng, [entry, {"type": "directory", "path": "x"}]) if rng.random() < 0.9 else rand_json(rng)
        body = to_body(page)
        if rng.random() < 0.1:
            body = mutate_bytes(rng, body)
        parse_tree_page(body, "http://hub/api/models/x/tree/sha")
        return
    headers = {}
    for name in ("content-range", "content-length", "location"):
        if rng.random() < 0.6:
            headers[name] = rng.choice([f"bytes {rng.randint(-5, 50)}-{rng.randint(-5, 50)}/{rng.randint(0, 60)}",
                                        "bytes */*", str(rng.randint(-5, 70)), "", "garbage", "\u00e9", "bytes 0-9/*"])
    verdict = classify(rng.choice([200, 206, 204, 301, 302, 404, 416, 500, 100, 0, 999]), headers,
                       next_offset=rng.randint(0, 50), segment_end=rng.randint(0, 60), file_size=rng.randint(0, 60),
                       ranged=rng.random() < 0.5, single_segment=rng.random() < 0.5)
    if not isinstance(verdict, Verdict):
        raise Broken(f"classify returned {verdict!r}")


class _Transport:
    """What FastRestProtocol writes to and closes (its socket), recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol) -> None:
        self.handed_to = protocol


class _HandedOff:
    """Stands in for aiohttp's protocol: records that the connection was handed over, and the bytes."""

    def connection_made(self, transport) -> None:
        pass

    def data_received(self, data) -> None:
        pass


@functools.lru_cache(maxsize=1)
def _rest_dataplane():
    from ovms.dataplane import DataPlane
    from ovms.registry import Registry

    return DataPlane(Registry(lambda config, version: None))  # no models: every infer is a 404 or earlier refusal


def _valid_rest_head(rng: random.Random, body: bytes) -> bytes:
    path = rng.choice([b"/v2/models/m/infer", b"/v2/models/m/versions/1/infer", b"/v2/models/m", b"/v2/models//infer",
                       b"/v2/models/m/versions/x/infer", b"/v2/models/m/infer?x=1", b"/v2/models/%41/infer"])
    lines = [rng.choice([b"POST", b"GET", b"post"]) + b" " + path + b" " + rng.choice([b"HTTP/1.1", b"HTTP/1.0"]),
             b"Host: localhost", b"Content-Length: %d" % len(body)]
    for header in rng.sample([b"Connection: close", b"Inference-Header-Content-Length: 7",
                              b"Inference-Header-Content-Length: x", b"Expect: 100-continue",
                              b"Transfer-Encoding: chunked", b"Content-Length: 3", b"X: " + b"y" * 9000], k=2):
        if rng.random() < 0.3:
            lines.append(header)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def target_rest_fast_path(rng: random.Random) -> None:
    """The REST port's fast path (ovms/transport/rest_native.py) fed requests, pipelined, mutated and cut at
    random points: it must answer complete HTTP responses, hand the connection to aiohttp, or wait for more bytes;
    nothing may escape. An answer with a 4xx status counts as a refusal."""
    from ovms.transport.rest_native import FastRestProtocol

    document, binary = valid_rest_request(rng)
    body = to_body(document, rng) + (binary or b"")
    data = b"".join(_valid_rest_head(rng, body) + body for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.5:
        data = mutate_bytes(rng, data)
    transport = _Transport()
    protocol = FastRestProtocol(_HandedOff, _rest_dataplane(), 1 << 20, set())
    protocol.connection_made(transport)
    cut = 0
    while cut < len(data):  # arrives in random pieces
        step = rng.randint(1, max(1, len(data) // 2))
        protocol.data_received(data[cut:cut + step])
        cut += step
        if hasattr(transport, "handed_to"):
            break
    written = bytes(transport.written)
    statuses = []
    while written:
        head, sep, rest = written.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/1.1 "):
            raise Broken(f"not an HTTP response: {written[:80]!r}")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if len(length) != 1 or len(rest) < length[0]:
            raise Broken(f"a response without its whole body: {head!r}")
        statuses.append(int(head.split(b" ")[1]))
        written = rest[length[0]:]
    if hasattr(transport, "handed_to"):
        raise ServingError(Kind.REST_INVALID_URL, "handed to aiohttp")  # the fast path declined: counted refused
    if any(400 <= status < 500 for status in statuses):
        raise ServingError(Kind.INVALID_INPUT_FORMAT, "answered 4xx")  # refused, as the generated input deserved


def target_h2_frames(rng: random.Random) -> None:
    """Both HTTP/2 server twins (libnghttp2 and h2) fed a real client's bytes, mutated: events or ProtocolError."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for _ in range(rng.randint(1, 4)):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":authority", "a"),
                                     (":path", "/inference.GRPCInferenceService/ModelInfer"),
                                     ("content-type", "application/grpc")])
        client.send_data(stream, valid_grpc_request()[:rng.randint(0, 300)], end_stream=rng.random() < 0.8)
    data = client.data_to_send()
    if rng.random() < 0.8:
        data = mutate_bytes(rng, data)
    twins = [load("h2conn", pure=True)]
    try:
        twins.append(load("h2conn", pure=False))
    except ImportError:
        pass
    refused = False
    for twin in twins:
        server = twin.ServerConnection()
        try:
            server.receive(data)
        except twin.ProtocolError:
            refused = True
        server.data_to_send()
    if refused:
        raise ServingError(Kind.INVALID_INPUT_FORMAT, "HTTP/2 protocol error")


TARGETS: dict[str, Callable[[random.Random], None]] = {
    "codec twins": target_codec, "kserve rest": target_kserve_rest, "kserve grpc": target_kserve_grpc,
    "tfs": target_tfs, "openai": target_openai, "responses": target_responses, "pull responses": target_pull,
    "audio": target_audio, "rest fast path": target_rest_fast_path, "http/2 frames": target_h2_frames,
}


@dataclasses.dataclass
class Report:
    inputs: int = 0
    refused: int = 0
    crashes: list = dataclasses.field(default_factory=list)
    hangs: list = dataclasses.field(default_factory=list)
    slowest: float = 0.0


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run(target: str, count: int, seed: int, *, keep: int = 5) -> Report:
    """Feed ``count`` inputs to ``target``; crashes and hangs are kept (at most ``keep`` each) with their seed."""
    fn = TARGETS[target]
    report = Report()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(count):
            rng = random.Random(f"{seed}-{target}-{i}")
            started = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
            try:
                fn(rng)
            except REFUSALS:
                report.refused += 1
            except _Hang:
                if len(report.hangs) < keep:
                    report.hangs.append(f"input {seed}-{target}-{i}: over {HANG_SECONDS} s")
            except Exception:
                if len(report.crashes) < keep:
                    report.crashes.append(f"input {seed}-{target}-{i}:\n{traceback.format_exc(limit=6)}")
                else:
                    report.crashes.append("...")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            report.slowest = max(report.slowest, time.perf_counter() - started)
            report.inputs += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    return report
