"""The generation worker: one process per ContinuousBatchingPipeline, stepping it without sharing a GIL.

openvino_genai's ``ContinuousBatchingPipeline.step()`` keeps the GIL for the whole step (its binding has no
``gil_scoped_release``), so a stepping thread inside the server stops the event loop for every step: measured
0.45-0.6x the in-process token rate and +5 to +40 ms time to first token. Here the pipeline lives in a child
process started by ``LLMServable`` (``python -m ovms.backends.genai_worker --fd N``), and the two talk over a
Unix socket pair with length-prefixed pickles:

    server -> worker   ("add", request_id, prompt text, config overrides, json_schema | None,
                        images | None (a VLM's: uint8 [1, H, W, 3] arrays, tagged in the prompt))
                       ("cancel", request_id)
    worker -> server   ("ready", None)      ("load_error", message)
                       ("out", [(request_id, kind, data), ...], kv_cache_usage)

The worker tokenizes the prompt (the server's event loop has better things to do than spend 0.3-0.7 ms per
request in the tokenizer), checks it against the context length and answers ACCEPTED (data = prompt tokens) or
ERROR. An ``out`` frame carries, per flush interval, the new tokens of every running request (kind OUTPUTS, data
= one [sequence_id, token ids, finish reason | None, log probs | None] per sequence, the steps since the last
frame merged), and the ends: DONE, CANCELLED, ERROR (data = (ovms.errors.Kind name, message)).

Two sockets: what the server must see at once (ACCEPTED, a first token, an end) goes on the main one, which the
server's event loop watches; the tokens in between go on the bulk one, which the server reads on a timer of its
own (and before every main frame, so the order holds). A write that wakes a waiting process cost 190-250 us of
the stepping thread here (median, 16 streams), a write nobody waits on 12 us: with a frame every 10 ms, 2.5% of
the stepping thread's time.

The stepping thread reads the main socket between steps without waiting (a poll, no exception when nothing is
there), and waits on it only when nothing runs; the server never blocks on the sockets either way (non-blocking
writes, reads from its event loop), so neither waits on the other. It stops when the main socket closes: the
server closes it to unload the model, and the kernel closes it when the server ends, even by SIGKILL. It runs in
a process group of its own (signals to the server's process group are for the server) and ignores SIGINT as well,
and SIGTTOU (a background process group writing its log to a terminal set to ``tostop`` would stop otherwise).
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time

from ovms.genai.types import IGNORE_EOS_MAX_TOKENS

OUTPUTS, DONE, CANCELLED, ERROR, ACCEPTED = 0, 1, 2, 3, 4
# A running stream's tokens are read from its handle every DRAIN_SECONDS (and sent every flush interval): reading
# after every step cost 3.6 us per stream and step, while 50 ms of them left in the handles made 0.9 ms of reading
# and 0.9 ms of pickling after the last step, on the way to the end of the answer (16 streams).
DRAIN_SECONDS = 0.002
MAX_STEP_FAILURES = 3  # in a row: the pipeline is in a bad state; exit and let the server start a new worker
_HEADER = struct.Struct("<I")

log = logging.getLogger("ovms.genai.worker")


def frame(message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list:
    """Complete messages at the front of ``buffer`` (removed from it); a partial one stays."""
    messages = []
    offset = 0
    size = len(buffer)
    while size - offset >= 4:
        (length,) = _HEADER.unpack_from(buffer, offset)
        if size - offset - 4 < length:
            break
        messages.append(pickle.loads(memoryview(buffer)[offset + 4:offset + 4 + length]))
        offset += 4 + length
    if offset:
        del buffer[:offset]
    return messages


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty (MemoryError())."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def encode_prompts(tokenizer, prompts: list[str], ov):
    """Token ids ([1, n] tensors) of ``prompts``, in order; an Exception in place of a prompt that failed.

    Prompts that arrived together are encoded in one call: measured on the fixture, 16 chat prompts take
    0.29 ms together against 5.7 ms one by one, and 16 requests sent at once wait for all of them. The ids of
    a row are those its attention mask keeps (the batch is padded), the same ids as encoding it alone.
    """
    if len(prompts) > 1:
        try:
            batch = tokenizer.encode(prompts, add_special_tokens=False)
            ids, mask = batch.input_ids.data, batch.attention_mask.data
            return iter([ov.Tensor(row[keep == 1].reshape(1, -1).copy()) for row, keep in zip(ids, mask)])
        except Exception:  # noqa: BLE001 - one bad prompt must not fail the others: encode them one by one
            log.debug("batched encode failed; encoding prompts one by one", exc_info=True)
    return (_encode_one(tokenizer, prompt) for prompt in prompts)


def _encode_one(tokenizer, prompt: str):
    try:
        return tokenizer.encode(prompt, add_special_tokens=False).input_ids
    except Exception as exc:  # noqa: BLE001 - this request's error
        return exc


def _tool_call_constraint(tags: dict, ov_genai):
    """StructuredOutputConfig with the TriggeredTags of ``ovms.genai.parsers.guided.tool_call_tags``."""
    structured = ov_genai.StructuredOutputConfig
    items = [structured.Tag(begin=t["begin"], content=structured.JSONSchema(t["schema"]), end=t["end"])
             for t in tags["tags"]]
    triggered = structured.TriggeredTags(triggers=tags["triggers"], tags=items, at_least_one=tags["at_least_one"])
    return structured(structural_tags_config=triggered)


def complete_config(config, overrides: dict, json_schema: str | dict | None, prompt_tokens: int,
                    context_length: int | None, max_tokens_limit: int | None, ov_genai) -> None:
    """Defaults + the request's overrides, checked against the prompt's length; ValueError says what is wrong."""
    for name, value in overrides.items():
        setattr(config, name, value)
    if context_length:
        room = context_length - prompt_tokens
        if room <= 0:
            raise ValueError(f"prompt is {prompt_tokens} tokens; the model's context is {context_length}")
        if "max_new_tokens" not in overrides:
            config.max_new_tokens = min(config.max_new_tokens, room)
    if "max_new_tokens" not in overrides and overrides.get("ignore_eos"):
        config.max_new_tokens = min(config.max_new_tokens, IGNORE_EOS_MAX_TOKENS)
    if max_tokens_limit and config.max_new_tokens > max_tokens_limit:
        if "max_new_tokens" in overrides:
            raise ValueError(f"max_tokens exceeds limit provided in graph config: {max_tokens_limit}")
        config.max_new_tokens = max_tokens_limit  # no max_tokens asked: the graph's limit is the default
    if isinstance(json_schema, dict):  # tool-call tags (ovms.genai.parsers.guided)
        config.structured_output_config = _tool_call_constraint(json_schema, ov_genai)
    elif json_schema is not None:
        config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=json_schema)
    try:
        config.validate()
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def drain(handle, pending: dict, request_id: int, logprobs, finish_names: dict | None):
    """Read what ``handle`` holds into ``pending[request_id]`` ({sequence id: [id, token ids, finish, log probs]},
    the steps since the last frame merged: a list per sequence instead of a tuple per step pickles in 5 us
    instead of 70 for 16 streams and 10 ms); the last output read as (sequence id, output, finish), or None.

    ``finish_names`` None: finish reasons are not read (0.84 us per output); the caller sets the last one.
    """
    last = None
    held = None
    while handle.can_read():
        if held is None:
            held = pending.get(request_id)
            if held is None:
                held = pending[request_id] = {}
        for sequence_id, output in handle.read().items():
            finish = finish_names.get(output.finish_reason.value) if finish_names is not None else None
            sequence = held.get(sequence_id)
            # generated_ids / generated_log_probs: pybind hands out a new list on each access
            if sequence is None:
                held[sequence_id] = [sequence_id, output.generated_ids, finish,
                                     output.generated_log_probs if logprobs else None]
            else:
                sequence[1] += output.generated_ids
                if finish is not None:
                    sequence[2] = finish
                if logprobs:
                    sequence[3] += output.generated_log_probs
            last = (sequence_id, output, finish)
    return last


def kv_cache_options(scheduler, spec: dict, ov_genai) -> None:
    """The graph's cache_eviction_config and sparse_attention_config on the SchedulerConfig, as OVMS builds them
    (src/llm/language_model/continuous_batching/servable_initializer.cpp)."""
    eviction = spec.get("cache_eviction")
    if eviction:
        crush = eviction.get("kv_crush_config")
        kvcrush = None
        if crush is not None:
            kvcrush = ov_genai.KVCrushConfig(int(crush.get("budget", 0)),
                                             getattr(ov_genai.KVCrushAnchorPointMode,
                                                     crush.get("anchor_point_mode", "RANDOM")),
                                             int(crush.get("rng_seed", 0)))
        scheduler.use_cache_eviction = True
        scheduler.cache_eviction_config = ov_genai.CacheEvictionConfig(
            eviction["start_size"], eviction["recent_size"], eviction["max_cache_size"],
            getattr(ov_genai.AggregationMode, eviction.get("aggregation_mode", "NORM_SUM")),
            eviction.get("apply_rotation", False), eviction.get("snapkv_window_size", 8), kvcrush)
    sparse = spec.get("sparse_attention")
    if sparse is not None:
        fields = dict(sparse)
        mode = getattr(ov_genai.SparseAttentionMode, fields.pop("mode", "TRISHAPE"))
        scheduler.use_sparse_attention = True
        scheduler.sparse_attention_config = ov_genai.SparseAttentionConfig(mode, **fields)


def batch_scheduling() -> bool:
    """Put this thread, and the threads it starts later (OpenVINO's), under Linux's SCHED_BATCH; False if refused.

    Linux does not let a batch thread preempt the running one when it wakes up: OpenVINO's threads waking one
    another between the parallel parts of a step stopped preempting each other (and the server and its clients),
    and the same pipeline ran 8-15% faster at 8 and 16 streams on 2 cores (in-process too, given the same
    policy). The server keeps the default policy: it answers as soon as it wakes.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        return True
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
        log.info("SCHED_BATCH not available (%s); the worker keeps the default scheduling", exc)
        return False


class _Worker:
    def __init__(self, sock: socket.socket, bulk: socket.socket | None = None) -> None:
        self.sock = sock
        self.bulk = bulk if bulk is not None else sock
        self.buffer = bytearray()
        self.closed = False
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def send(self, message, *, bulk: bool = False) -> None:
        (self.bulk if bulk else self.sock).sendall(frame(message))

    def recv_blocking(self):
        """The first message (the load spec)."""
        while True:
            messages = unframe(self.buffer)
            if messages:
                return messages[0]
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError
            self.buffer += data

    def receive(self, wait: bool) -> list:
        """What the server sent since the last call; with ``wait``, block until something (or the end) comes.

        Read on the stepping thread between steps, where a reader thread cost a thread wake-up and a GIL hand-off
        per message on the way to the first token. Between steps a poll asks first: 0.4 us, where a recv that
        finds nothing raises, 11 us per step measured with 16 streams.
        """
        sock = self.sock
        if not wait and not self._poll.poll(0):
            return []
        flags = 0 if wait else socket.MSG_DONTWAIT
        while True:
            try:
                data = sock.recv(1 << 20, flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self.buffer += data
            flags = socket.MSG_DONTWAIT  # then take what else is there without waiting
        return unframe(self.buffer)

    def run(self, spec: dict) -> int:
        import openvino as ov
        import openvino_genai as ov_genai

        def scheduler_config(fields: dict):
            config = ov_genai.SchedulerConfig()
            for name, value in fields.items():
                setattr(config, name, value)
            return config

        scheduler = scheduler_config(spec["scheduler"])
        try:
            kv_cache_options(scheduler, spec, ov_genai)
        except Exception as exc:  # noqa: BLE001 - reported to the server, which names the model
            self.send(("load_error", f"cache_eviction_config / sparse_attention_config: {exc}"))
            return 1
        properties = dict(spec["plugin_config"])
        draft = spec.get("draft")
        try:
            if draft:
                properties["draft_model"] = ov_genai.draft_model(
                    draft["models_path"], draft["device"], scheduler_config=scheduler_config(draft["scheduler"]))
            pipe = ov_genai.ContinuousBatchingPipeline(spec["models_path"], scheduler, spec["device"], properties)
        except Exception as exc:  # noqa: BLE001 - reported to the server, which names the model
            self.send(("load_error", str(exc)))
            return 1
        # Its own tokenizer on one thread: 0.2-0.4 ms per short prompt against 0.5-1 ms for the pipeline's (whose
        # thread pool then spins on the cores the steps need).
        tokenizer = ov_genai.Tokenizer(spec["models_path"], INFERENCE_NUM_THREADS=1)
        context_length = spec.get("context_length")
        max_tokens_limit = spec.get("max_tokens_limit")
        vision = bool(spec.get("vision"))
        gc.freeze()  # the loaded pipeline's objects: no full collection walks them between steps
        try:
            self.send(("ready", None))
        except OSError:  # the server went away while the model loaded
            return 1
        # Keyed by the enum's int value: hashing a pybind enum costs 1.6 us, 16 sequences' worth every step.
        finish_names = {ov_genai.GenerationFinishReason.STOP.value: "stop",
                        ov_genai.GenerationFinishReason.LENGTH.value: "length"}
        running = ov_genai.GenerationStatus.RUNNING
        ignored = ov_genai.GenerationStatus.IGNORED
        active: dict[int, list] = {}  # request id -> [handle, several sequences, beams, logprobs]
        # Tokens leave in one frame per flush_seconds, not per step: every frame costs the stepping thread (and
        # the server, which takes a core from OpenVINO's thread pool to read it). First tokens and ends are sent at
        # once, on the main socket; the frames in between on the bulk socket.
        flush_seconds = float(spec.get("flush_seconds", 0.0))
        # Speculative and prompt lookup decoding: each step gives a sequence 1 + the candidate tokens the main
        # model accepted; reading every step counts them (ovms_llm_draft_accepted_tokens).
        assisted = bool(spec.get("assisted"))
        accepted: dict[int, int] = {}

        def read(handle, request_id, logprobs, names):
            if not assisted:
                return drain(handle, pending, request_id, logprobs, names)
            held = pending.get(request_id)
            before = {k: len(v[1]) for k, v in held.items()} if held else {}
            last = drain(handle, pending, request_id, logprobs, names)
            for key, sequence in pending.get(request_id, {}).items():
                gained = len(sequence[1]) - before.get(key, 0)
                if gained > 1:
                    accepted[request_id] = accepted.get(request_id, 0) + gained - 1
            return last
        pending: dict[int, dict] = {}
        ends: list = []
        accepts: list = []
        started: set[int] = set()
        urgent = False
        step_failures = 0
        last_flush = last_drain = time.perf_counter()
        while True:
            inbox = self.receive(wait=not active)
            if self.closed:
                break
            while inbox:
                encoded = encode_prompts(tokenizer, [m[2] for m in inbox if m[0] == "add"], ov)
                for message in inbox:
                    if message[0] == "add":
                        _, request_id, prompt, overrides, json_schema, images = message
                        try:
                            ids = next(encoded)
                            if isinstance(ids, Exception):
                                raise ids
                            prompt_tokens = int(ids.get_shape()[1])
                            config = pipe.get_config()
                            complete_config(config, overrides, json_schema, prompt_tokens, context_length,
                                            max_tokens_limit, ov_genai)
                            if vision:  # a VLM pipeline takes the text (with its image tags) and the images
                                config.apply_chat_template = False  # the prompt is the rendered conversation
                                handle = pipe.add_request(request_id, prompt, [ov.Tensor(a) for a in images or ()],
                                                          config)
                            else:
                                handle = pipe.add_request(request_id, ids, config)
                            active[request_id] = [handle, config.num_beams > 1 or config.num_return_sequences > 1,
                                                  config.num_beams > 1, config.logprobs]
                            accepts.append((request_id, ACCEPTED, prompt_tokens))
                        except Exception as exc:  # noqa: BLE001 - this request's error, not the worker's
                            ends.append((request_id, ERROR, ("GENAI_INVALID_REQUEST", first_line(exc))))
                        urgent = True
                    elif message[0] == "cancel":
                        entry = active.pop(message[1], None)
                        if entry is not None:
                            entry[0].cancel()
                            ends.append((message[1], CANCELLED, None))
                            started.discard(message[1])
                            accepted.pop(message[1], None)
                            urgent = True
                # What came in meanwhile joins the same step: after a pause, tokenizing the first prompt of a
                # burst took 1-2 ms, while the rest of the burst arrived and then waited for the next step.
                inbox = self.receive(wait=False)
            if self.closed:
                break
            if accepts:
                # Answer before the (prefill) step: the server sets up the response while this process steps.
                frame_items = accepts + ends
                accepts, ends = [], []
                try:
                    self.send(("out", frame_items, None))
                except OSError:
                    break  # the server is gone
            try:
                if pipe.has_non_finished_requests():
                    pipe.step()
            except Exception as exc:  # noqa: BLE001 - every running request fails, the worker goes on
                step_failures += 1
                log.exception("generation step failed (%d in a row)", step_failures)
                for request_id, (handle, _, _, _) in active.items():
                    handle.cancel()  # out of the pipeline too, or the next step fails on them again
                    ends.append((request_id, ERROR, ("OV_INTERNAL_INFERENCE_ERROR", first_line(exc))))
                    started.discard(request_id)
                active.clear()
                urgent = True
                if step_failures >= MAX_STEP_FAILURES:
                    log.error("%d generation steps failed in a row; the worker exits so that the server starts a "
                              "clean one", step_failures)
                    try:
                        self.send(("out", accepts + ends, None))
                    except OSError:
                        pass
                    return 3
            else:
                step_failures = 0
            now = time.perf_counter()
            flush_due = now - last_flush >= flush_seconds
            drain_due = flush_due or assisted or now - last_drain >= DRAIN_SECONDS
            if drain_due:
                last_drain = now
            # Ends are looked for at every drain, and at once when nothing runs any more (one call, not one per
            # stream and step): a stream that ends while others go on is told at most DRAIN_SECONDS later.
            ends_due = drain_due or not pipe.has_non_finished_requests()
            finished = None
            for request_id, (handle, several, beams, logprobs) in active.items():
                done = False
                if several:
                    if beams:  # beam search: results only at the end
                        if handle.get_status() != running:
                            pending[request_id] = {
                                sequence_id: [sequence_id, output.generated_ids,
                                              finish_names.get(output.finish_reason.value, "stop"),
                                              output.generated_log_probs if logprobs else None]
                                for sequence_id, output in enumerate(handle.read_all())}
                            done = True
                    else:  # n > 1: read every step, for each sequence's own finish reason
                        last = read(handle, request_id, logprobs, finish_names)
                        if last is None or last[2] is not None:
                            done = handle.get_status() != running
                    if request_id in pending and request_id not in started:
                        started.add(request_id)
                        urgent = True
                elif request_id not in started:  # its first token leaves at once (time to first token)
                    last = read(handle, request_id, logprobs, None)
                    if last is not None:
                        started.add(request_id)
                        urgent = True
                    done = handle.get_status() != running
                else:
                    # One sequence, running: its tokens wait in the handle until the next drain (DRAIN_SECONDS),
                    # and the handle's status (0.45 us) tells of its end. Read after every step, they cost 3.6 us
                    # per stream and step (can_read twice, the finish reason, the merge); the worker alone went
                    # from 0.93-0.94x to 0.96-0.97x the in-process rate at 16 streams (alternating builds).
                    if ends_due and handle.get_status() != running:
                        last = read(handle, request_id, logprobs, None)
                        done = True
                    elif drain_due:
                        read(handle, request_id, logprobs, None)
                if done and not several and last is not None:
                    pending[request_id][last[0]][2] = finish_names.get(last[1].finish_reason.value, "stop")
                if done:
                    if finished is None:
                        finished = []
                    finished.append(request_id)
                    started.discard(request_id)
                    urgent = True
                    if handle.get_status() == ignored:
                        ends.append((request_id, ERROR, ("SERVER_BUSY", "the request does not fit the KV cache "
                                                                        "(cache_size)")))
                    else:
                        ends.append((request_id, DONE, accepted.pop(request_id, None)))
                    accepted.pop(request_id, None)
            if finished:
                for request_id in finished:
                    del active[request_id]
            if urgent and not flush_due:
                # A frame leaves now: the tokens still waiting in the handles go with it.
                for request_id, (handle, several, _, logprobs) in active.items():
                    if not several and request_id in started:
                        read(handle, request_id, logprobs, None)
            if not (pending or ends or accepts):
                continue
            if urgent or not active or flush_due:
                usage = None
                if ends:
                    try:
                        usage = float(pipe.get_metrics().cache_usage)
                    except Exception:  # noqa: BLE001 - a metric only
                        usage = None
                frame_items = accepts + [(request_id, OUTPUTS, list(held.values()))
                                         for request_id, held in pending.items()] + ends
                bulk = not urgent and flush_seconds > 0  # only tokens in the middle of answers: nobody waits
                pending, ends, accepts, urgent, last_flush = {}, [], [], False, now
                try:
                    self.send(("out", frame_items, usage), bulk=bulk)
                except OSError:
                    break  # the server is gone
        for handle, _, _, _ in active.values():  # closing: free the KV cache blocks
            handle.cancel()
        try:
            if pipe.has_non_finished_requests():
                pipe.step()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ovms generation worker (started by the server; not for direct "
                                                 "use)")
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from the server")
    parser.add_argument("--bulk-fd", type=int, help="the socket for tokens nobody waits for (default: --fd)")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--sched-batch", action="store_true",
                        help="run under SCHED_BATCH (this thread and the threads OpenVINO starts later)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s [genai-worker {os.getpid()}] %(levelname)s %(message)s")
    if args.sched_batch:
        batch_scheduling()
    sock = socket.socket(fileno=args.fd)
    worker = _Worker(sock, socket.socket(fileno=args.bulk_fd) if args.bulk_fd is not None else None)
    try:
        spec = worker.recv_blocking()
    except (EOFError, OSError):
        return 1
    return worker.run(spec)


if __name__ == "__main__":
    sys.exit(main())
