"""Text generation on openvino_genai's ContinuousBatchingPipeline (or LLMPipeline for ``pipeline_type: LM``).

The ContinuousBatchingPipeline runs in a generation worker process (``ovms.backends.genai_worker``: its
``step()`` holds the GIL, which in the server would stop the event loop for every step). This side renders the
chat template, turns the sampling parameters into config overrides, sends the request to the worker (which
tokenizes and checks it) and reads the worker's frames on the event loop (no thread hand-over): the main socket
with ``add_reader`` (acceptances, first tokens, ends), the bulk socket on a timer once per flush interval (the
tokens in between, which nobody waits for: a write that wakes this process costs the worker's stepping thread
20 times more than one that does not). Detokenization happens here with the
incremental detokenizer (``ovms._native.detokenize``), bytes per token taken from the detokenizer IR with its
UTF8Validate node bypassed, so partial UTF-8 pieces keep their raw bytes. If the worker dies, its requests fail
with a clear error and the next request starts a new one.

A GGUF model (``models_path`` a ``.gguf`` file, or a directory holding one; ``ovms.backends.gguf_model``) goes
the same way: openvino_genai builds the pipeline and the tokenizer from the file, the chat template is its
``tokenizer.chat_template`` metadata, and the bytes per token come from its ``tokenizer.ggml.tokens``.

``pipeline_type: LM`` keeps OVMS's one-request-at-a-time LLMPipeline in a thread of this process (its
``generate`` releases the GIL).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from typing import AsyncIterator

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
import openvino_tokenizers  # noqa: F401 - registers the tokenizer ops (VocabDecoder, ...) with ov.Core

from ovms.genai import chat_template
from ovms.genai import parsers as tool_parsers
from ovms._native import load as load_native
from ovms.backends import genai_worker as wire
from ovms.backends import gguf_model
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.genai.types import ChatMessage, GenerationRequest, GenerativeInfo, SamplingParams, TextChunk
from ovms.graph import GenAINodeOptions
from ovms.servable import GenerationStream, GenerativeServable

log = logging.getLogger("ovms.genai")

_FINISH = {"STOP": "stop", "LENGTH": "length", "TOOL_CALL": "tool_calls"}
_FINISH_BY_ENUM = {getattr(ov_genai.GenerationFinishReason, name): text for name, text in _FINISH.items()}
_RUNNING = ov_genai.GenerationStatus.RUNNING
_DONE = object()
# GGUF files are read one at a time in this process (the registry loads models side by side in threads):
# openvino_genai builds a GGUF model through a reader we have not seen to be thread-safe, and one full-suite run
# here had one of three GGUF models loaded side by side not served (not reproduced in four tries since).
_GGUF_LOADS = threading.Lock()
FLUSH_MS_DEFAULT = "50"  # OVMS_GENAI_FLUSH_MS: see genai_worker (tokens leave the worker once per interval)
WORKER_START_SECONDS = 300  # a big model takes a while to compile; a wedged worker must not hang the server
RESTART_BACKOFF_SECONDS = 10  # after a failed (re)start, requests fail fast this long instead of each retrying


def token_byte_table(models_path: pathlib.Path, vocab_size: int) -> list[bytes]:
    """Raw bytes of every token id, from the detokenizer IR without its UTF8Validate node.

    With the node, a token holding part of a multi-byte character decodes to U+FFFD (measured on the fixture:
    ids 97..160 of a byte-level BPE); without it the bytes are exact, and special tokens decode to b"".
    """
    core = ov.Core()
    model = core.read_model(models_path / "openvino_detokenizer.xml")
    for op in model.get_ordered_ops():
        if op.get_type_name() == "UTF8Validate":
            for i in range(op.get_output_size()):
                for target in list(op.output(i).get_target_inputs()):
                    target.replace_source_output(op.input_value(i))
    request = core.compile_model(model, "CPU").create_infer_request()
    request.infer({0: np.arange(vocab_size, dtype=np.int64).reshape(vocab_size, 1)})
    return [bytes(b) for b in request.get_output_tensor(0).bytes_data]


def _structured(params: SamplingParams) -> str | dict | None:
    """The structured-output constraint the worker builds: tool-call tags win over response_format, as in OVMS
    (its parser's config builder replaces the structural tags of the response format)."""
    return params.tool_call_tags if params.tool_call_tags is not None else params.json_schema


def _keep_marker_tokens(token_bytes: list[bytes], vocab: dict, markers: set[str]) -> None:
    """Give the special tokens a parser reads their text back (the table decodes special tokens to b"").

    OVMS decodes with skip_special_tokens(false) for these parsers (requiresStreamingWithSpecialTokens); keeping
    only the parsers' own markers leaves the other special tokens (end of turn, padding) out of the answer.
    """
    for marker in markers:
        token = vocab.get(marker.encode(), vocab.get(marker))  # Tokenizer.get_vocab() keys are bytes
        if token is not None and 0 <= token < len(token_bytes) and not token_bytes[token]:
            token_bytes[token] = marker.encode()


class _Sequence:
    """One request as the servable tracks it until its end arrives."""

    __slots__ = ("request_id", "input_ids", "config", "stream", "cancelled", "accepted", "prompt", "images")

    def __init__(self, request_id: int, input_ids: ov.Tensor, config, stream: "_Stream", *, prompt: str = "",
                 images: list | None = None) -> None:
        self.request_id = request_id
        self.input_ids = input_ids
        self.prompt = prompt  # VLM: the pipeline takes the text (its image tags) and the images
        self.images = images
        self.config = config  # LM: the GenerationConfig; worker: None (sent as overrides)
        self.stream = stream
        self.cancelled = False
        self.accepted: asyncio.Future | None = None  # worker: resolves to the prompt's token count


class _Stream(GenerationStream):
    """The event-loop side of one generation: token ids arrive in a queue and leave as final text."""

    def __init__(self, servable: "LLMServable", params: SamplingParams, prompt_tokens: int) -> None:
        self._servable = servable
        self._params = params
        self.prompt_tokens = prompt_tokens
        self._queue: asyncio.Queue = asyncio.Queue()
        self._sequence: _Sequence | None = None
        self._detokenizers: dict[int, object] = {}
        self._indices: dict[int, int] = {}
        self._ended: set[int] = set()  # indices whose finish chunk went out
        self.started_ns = time.perf_counter_ns()
        self.first_token_ns: int | None = None
        self.generated = 0
        self._finished = False
        self._raw_ids: dict[int, list[int]] | None = {} if params.keep_raw else None  # --verbose_response

    def raw_text(self, index: int) -> str | None:
        """The generated text with every special token (--verbose_response), once the stream has ended."""
        if self._raw_ids is None:
            return None
        return self._servable.tokenizer.decode(self._raw_ids.get(index, []), skip_special_tokens=False)

    def deliver(self, item) -> None:  # on the event loop
        self._queue.put_nowait(item)

    def abort(self) -> None:
        if not self._finished and self._sequence is not None:
            self._finished = True
            self._servable._cancel(self._sequence)

    def _index(self, sequence_id: int) -> int:
        index = self._indices.get(sequence_id)
        if index is None:
            index = self._indices[sequence_id] = len(self._indices)
        return index

    async def __aiter__(self) -> AsyncIterator[TextChunk]:
        servable = self._servable
        try:
            queue = self._queue
            while True:
                item = await queue.get()
                end = None
                if item is _DONE or isinstance(item, BaseException):
                    end, item = item, []
                # Coalesce what already waits (the event loop fell behind the stepping thread): one chunk per
                # sequence instead of one per step keeps the per-token cost flat under load.
                while end is None and not queue.empty():
                    more = queue.get_nowait()
                    if more is _DONE or isinstance(more, BaseException):
                        end = more
                    else:
                        item = item + more
                if len(item) > 1:
                    item = _merge(item)
                for sequence_id, ids, finish, logprobs in item:
                    index = self._index(sequence_id)
                    if index in self._ended:
                        continue  # our stop-string check ended it; genai may send a token or two more

                    detok = self._detokenizers.get(index)
                    if detok is None:
                        detok = self._detokenizers[index] = servable._detokenizer_module.Detokenizer(
                            servable.vocabulary_for(self._params.skip_special_tokens), self._params.stop,
                            include_stop=self._params.include_stop_str_in_output)
                    if ids and self.first_token_ns is None:
                        self.first_token_ns = time.perf_counter_ns()
                    self.generated += len(ids)
                    text = detok.push_many(ids)
                    if self._raw_ids is not None:
                        self._raw_ids.setdefault(index, []).extend(ids)
                    if detok.stopped and finish is None:
                        finish = "stop"  # our stop-string check fired first; genai stops on the same string
                    if finish is not None:
                        text += detok.finish()
                        self._ended.add(index)
                    tokens = [servable.vocabulary.token_bytes(i) for i in ids] if logprobs else None
                    yield TextChunk(index, text, len(ids), finish, logprobs, tokens)
                if end is not None:
                    self._finished = True
                    if end is _DONE:
                        return
                    raise end
        finally:
            if not self._finished:  # the consumer went away (client disconnected): free the sequence
                self.abort()
            servable._record(self)


class _WorkerLost(ServingError):
    """The worker's socket is gone: the request cannot be sent (the worker died or the model is unloading)."""


class LLMServable(GenerativeServable):
    """A text generation model served on a continuous batching pipeline (in a worker process)."""

    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name = name
        self.version = 1
        self.options = options
        path = options.models_path
        # A GGUF file (or a directory holding one): openvino_genai builds the model and the tokenizer from it.
        self.gguf = gguf_model.resolve(path)
        gguf_header = gguf_model.check_servable(self.gguf) if self.gguf is not None else None
        self.model_path = self.gguf or path  # what openvino_genai opens
        # A VLM export (optimum-cli --task image-text-to-text) has a language model beside its vision encoder.
        self.vision = self.gguf is None and (path / "openvino_language_model.xml").is_file()
        if self.gguf is not None and options.pipeline_type in ("VLM", "VLM_CB"):
            raise ModelLoadError(f"{name}: pipeline_type {options.pipeline_type}, but models_path is the GGUF text "
                                 f"model {self.gguf}; use LM, LM_CB or AUTO")
        if self.gguf is None and not self.vision and not (path / "openvino_model.xml").is_file():
            raise ModelLoadError(f"{path}: no openvino_model.xml (nor openvino_language_model.xml for a VLM); "
                                 "models_path must point at an exported GenAI model (optimum-cli export openvino ...)")
        if self.vision and options.pipeline_type in ("LM", "LM_CB"):
            raise ModelLoadError(f"{name}: pipeline_type {options.pipeline_type}, but {path} holds a vision language "
                                 "model; use VLM or VLM_CB (or AUTO)")
        if not self.vision and options.pipeline_type in ("VLM", "VLM_CB"):
            raise ModelLoadError(f"{name}: pipeline_type {options.pipeline_type}, but {path} has no "
                                 "openvino_language_model.xml / openvino_vision_embeddings_model.xml (not a VLM "
                                 "export); use LM, LM_CB or AUTO")
        draft = options.draft_models_path
        if draft is not None and draft.suffix.lower() == ".gguf":
            raise ModelLoadError(f"{name}: draft_models_path {draft} is a GGUF file; openvino_genai 2026.4 loads a "
                                 "draft model from an OpenVINO IR directory only (its draft_model reads "
                                 "openvino_model.xml); export the draft model (--draft_source_model at --pull, or "
                                 "optimum-cli export openvino)")
        if draft is not None and not (draft / "openvino_model.xml").is_file():
            raise ModelLoadError(f"{name}: draft_models_path {draft} holds no openvino_model.xml; point it at an "
                                 "exported draft model (--draft_source_model at --pull, or optimum-cli export)")
        if self.gguf is None and (not (path / "openvino_tokenizer.xml").is_file()
                                  or not (path / "openvino_detokenizer.xml").is_file()):
            raise ModelLoadError(f"{path}: openvino_tokenizer.xml / openvino_detokenizer.xml missing; convert the "
                                 "tokenizer with openvino_tokenizers (optimum-cli ... --convert-tokenizer)")
        if gguf_header is not None:
            model_config = {"max_position_embeddings": gguf_header.context_length}
        else:
            model_config = _read_json(path / "config.json")
        if self.vision and isinstance(model_config.get("text_config"), dict):
            model_config = {**model_config["text_config"], **{k: v for k, v in model_config.items()
                                                               if k in ("max_position_embeddings", "vocab_size")}}
        self.context_length = model_config.get("max_position_embeddings") or model_config.get("max_seq_len")
        # OVMS: LLMPipeline / VLMPipeline, one request at a time, in a thread of this process
        self._lm = options.pipeline_type in ("LM", "VLM")
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._inbox: list[_Sequence] = []  # LM only
        self._active: dict[int, _Sequence] = {}  # request id -> sequence, until its end arrives
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._wbuf = bytearray()  # frames the worker's socket did not take yet (sent when it is writable)
        self._kept_sockets: list[socket.socket] = []  # shut down, not closed: their loop did not let go in time
        self._worker_starts = 0
        self._rbuf = bytearray()
        self._bulk: socket.socket | None = None  # the worker's tokens in mid-answer, read on a timer
        self._bulk_buf = bytearray()
        self._poll_seconds = 0.0
        self._poll_handle: asyncio.TimerHandle | None = None
        self._restart_task: asyncio.Future | None = None  # a worker (re)start in progress, awaited by requests
        self._restart_failed: tuple[float, ModelLoadError] | None = None
        # Recycling (see _recycle): requests sent to the current worker, the recycle in progress, and an event set
        # when no request runs (what the recycle waits for).
        self._recycle_after = _recycle_requests()
        self._sent_to_worker = 0
        self._recycling: asyncio.Task | None = None
        self._idle: asyncio.Event | None = None
        self.worker_recycles = 0
        # metrics (read by the data plane)
        self.in_flight = 0
        self.generated_tokens = 0
        self.cancelled_requests = 0
        self.kv_cache_usage = 0.0
        self.draft_accepted_tokens = 0  # speculative / prompt lookup decoding: tokens taken from the candidates
        eager = not self._lm and os.environ.get("OVMS_GENAI_WORKER_START", "eager") != "lazy"
        if eager:
            self._spawn_worker()  # loads while this process prepares the tokenizer side
        try:
            # One inference thread: a prompt encodes in a fraction of a millisecond, and OpenVINO's idle thread
            # pool would otherwise spin on the cores the worker's pipeline and the event loop need (measured:
            # 0.8 core busy at 2 ms between requests, 0.25 with one thread).
            with _GGUF_LOADS if self.gguf is not None else contextlib.nullcontext():
                self.tokenizer = ov_genai.Tokenizer(str(self.model_path), INFERENCE_NUM_THREADS=1)
                if self._lm:
                    pipeline = ov_genai.VLMPipeline if self.vision else ov_genai.LLMPipeline
                    extra = {}
                    if options.draft_models_path is not None:
                        extra["draft_model"] = ov_genai.draft_model(str(options.draft_models_path),
                                                                    options.draft_device)
                    self._pipe = pipeline(str(self.model_path), options.device, **options.plugin_config, **extra)
                    self._base_config = self._pipe.get_generation_config
            if gguf_header is not None:
                token_bytes = gguf_model.token_byte_table(gguf_header)
            else:
                vocab_size = model_config.get("vocab_size") or len(self.tokenizer.get_vocab())
                token_bytes = token_byte_table(path, int(vocab_size))
        except RuntimeError as exc:
            self._stop_worker()
            raise ModelLoadError(f"{path}: openvino_genai could not load the model: {exc}") from None
        except BaseException:
            self._stop_worker()  # no worker left loading a second copy of the model
            raise
        if eager:
            self._await_worker_ready()
        # A GGUF's template is its tokenizer.chat_template metadata (the tokenizer reads it; OVMS takes it there)
        files_template = chat_template.find_template(path) if self.gguf is None else None
        self.template = files_template or self.tokenizer.get_original_chat_template() or None
        try:
            tool_parser, reasoning_parser = tool_parsers.resolve_parsers(options.tool_parser,
                                                                         options.reasoning_parser, self.template)
        except ValueError as exc:
            self._stop_worker()
            raise ModelLoadError(f"{name}: {exc}") from None
        guided = options.enable_tool_guided_generation not in (False, "false", None)
        if guided and tool_parser not in tool_parsers.guided.GUIDED_PARSERS:
            self._stop_worker()
            raise ModelLoadError(f"{name}: enable_tool_guided_generation: true needs tool_parser "
                                 f"{', '.join(tool_parsers.guided.GUIDED_PARSERS)} (OVMS builds the tool-call "
                                 f"constraint for those only); this model's tool_parser is {tool_parser or 'none'}. "
                                 f"Set the graph's tool_parser, or remove enable_tool_guided_generation")
        if tool_parser or reasoning_parser:
            def source(configured: str | None) -> str:
                return "from the graph" if configured else "detected from the chat template"

            log.info("%s: tool_parser %s (%s), reasoning_parser %s (%s)", name, tool_parser,
                     source(options.tool_parser), reasoning_parser, source(options.reasoning_parser))
        _keep_marker_tokens(token_bytes, self.tokenizer.get_vocab(),
                            tool_parsers.special_tokens(tool_parser, reasoning_parser))
        self._detokenizer_module = load_native("detokenize")
        # Once per model: building it per stream cost O(vocabulary) per request (15 ms for 150k tokens).
        self.vocabulary = self._detokenizer_module.Vocabulary(token_bytes)
        self._token_bytes = token_bytes
        self._vocabulary_with_specials = None  # skip_special_tokens: false, built at its first request
        self._info = GenerativeInfo(tool_parser=tool_parser, reasoning_parser=reasoning_parser,
                                    max_num_seqs=int(options.max_num_seqs), context_length=self.context_length,
                                    vision=self.vision, tool_guided_generation=guided)
        self._eos = self.tokenizer.get_eos_token()
        self._bos = self.tokenizer.get_bos_token()
        if self._lm:
            self._thread = threading.Thread(target=self._run_lm, name=f"ovms-genai-{name}", daemon=True)
            self._thread.start()

    def vocabulary_for(self, skip_special_tokens: bool):
        """The detokenizer's table: special tokens decode to nothing, or (skip_special_tokens: false, as OVMS's
        request field) to their text."""
        if skip_special_tokens:
            return self.vocabulary
        if self._vocabulary_with_specials is None:
            table = list(self._token_bytes)
            for text, token in self.tokenizer.get_vocab().items():
                if 0 <= token < len(table) and not table[token]:
                    table[token] = text if isinstance(text, bytes) else text.encode()
            self._vocabulary_with_specials = self._detokenizer_module.Vocabulary(table)
        return self._vocabulary_with_specials

    @property
    def info(self) -> GenerativeInfo:
        return self._info

    # ---- the worker process ------------------------------------------------------------------------------

    def _spawn_worker(self) -> None:
        options = self.options
        flush_seconds = _flush_seconds()  # before anything starts: a bad value must not leave a process behind
        scheduler = {"max_num_seqs": int(options.max_num_seqs), "cache_size": int(options.cache_size) or 1,
                     "enable_prefix_caching": bool(options.enable_prefix_caching),
                     "dynamic_split_fuse": bool(options.dynamic_split_fuse)}
        if options.max_num_batched_tokens:
            scheduler["max_num_batched_tokens"] = int(options.max_num_batched_tokens)
        if options.cache_interval_multiplier is not None:
            scheduler["cache_interval_multiplier"] = options.cache_interval_multiplier
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        bulk, bulk_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = str(pathlib.Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        level = logging.getLevelName(logging.getLogger("ovms").getEffectiveLevel())
        try:
            self._worker = subprocess.Popen(
                # -P: the server's working directory is not on the worker's sys.path. A process group of its own:
                # a signal to the server's process group (Ctrl-C) is for the server, which ends the worker itself
                # once requests have drained (the worker exits when its socket closes). Not a session of its own:
                # with autogroup scheduling (Linux's default) a session is a CPU group, and the server in another
                # group than the worker's busy threads went without CPU for 50-160 ms at times (time to first
                # token p99 100-200 ms here, 8-17 ms in one group).
                [sys.executable, "-P", "-m", "ovms.backends.genai_worker", "--fd", str(theirs.fileno()),
                 "--bulk-fd", str(bulk_theirs.fileno()),
                 "--log-level", level if isinstance(level, str) else "WARNING"]
                + (["--sched-batch"] if _sched_batch() else []),
                pass_fds=(theirs.fileno(), bulk_theirs.fileno()), env=env, stdin=subprocess.DEVNULL,
                process_group=0)
        except OSError as exc:
            ours.close()
            bulk.close()
            raise ModelLoadError(f"{self.name}: could not start the generation worker process: {exc}") from None
        finally:
            theirs.close()
            bulk_theirs.close()
        self._sock = ours
        self._rbuf = bytearray()
        bulk.setblocking(False)
        self._bulk = bulk
        self._bulk_buf = bytearray()
        self._poll_seconds = flush_seconds
        self._wbuf = bytearray()
        self._worker_starts += 1
        ours.sendall(wire.frame({"models_path": str(self.model_path), "scheduler": scheduler,
                                 "device": options.device, "plugin_config": dict(options.plugin_config),
                                 "flush_seconds": flush_seconds, "context_length": self.context_length,
                                 "max_tokens_limit": options.max_tokens_limit, "vision": self.vision,
                                 "draft": self._draft_spec(scheduler), "assisted": options.decoding != "standard",
                                 "cache_eviction": options.cache_eviction,
                                 "sparse_attention": options.sparse_attention}))
        log.info("%s: generation worker started (pid %d)", self.name, self._worker.pid)

    def _draft_spec(self, scheduler: dict) -> dict | None:
        """The draft model of speculative decoding: its path, device and scheduler (the main one's, overridden by
        the graph's draft_* options, as OVMS does)."""
        options = self.options
        if options.draft_models_path is None:
            return None
        draft_scheduler = {**scheduler, **{k: (int(v) if not isinstance(v, bool) else v)
                                           for k, v in options.draft_scheduler.items()}}
        return {"models_path": str(options.draft_models_path), "device": options.draft_device,
                "scheduler": draft_scheduler}

    def _await_worker_ready(self) -> None:
        """Block until the worker has loaded the pipeline (it answers ready or load_error)."""
        sock = self._sock
        sock.settimeout(WORKER_START_SECONDS)
        try:
            while True:
                messages = wire.unframe(self._rbuf)
                if messages:
                    break
                data = sock.recv(1 << 16)
                if not data:
                    code = self._stop_worker()
                    raise ModelLoadError(f"{self.options.models_path}: the generation worker exited with code "
                                         f"{code} while loading the model; see its log lines above")
                self._rbuf += data
        except (TimeoutError, socket.timeout):
            self._stop_worker()
            raise ModelLoadError(f"{self.options.models_path}: the generation worker did not load the model in "
                                 f"{WORKER_START_SECONDS} s") from None
        finally:
            if self._sock is not None:
                self._sock.setblocking(False)  # from now on the event loop reads and writes it
        kind, data = messages[0]  # ("ready", None) or ("load_error", message)
        if kind == "load_error":
            self._stop_worker()
            raise ModelLoadError(f"{self.options.models_path}: openvino_genai could not load the model: {data}")
        # Any frames after "ready" belong to the reader (none yet: nothing was sent).

    def _send(self, message) -> None:
        """Queue a frame for the worker (event loop thread only); never blocks the loop.

        The socket buffer holds about 180 KB; long prompts can exceed it while the worker is inside a step (it
        reads only between steps). What the socket does not take waits in _wbuf for add_writer.
        """
        sock = self._sock
        if sock is None:
            raise _WorkerLost(Kind.OV_INTERNAL_INFERENCE_ERROR, f"the generation worker of {self.name} is not "
                                                                "running; retry the request")
        data = wire.frame(message)
        if self._wbuf:  # frames are already waiting: keep the order
            self._wbuf += data
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise _WorkerLost(Kind.OV_INTERNAL_INFERENCE_ERROR, f"the generation worker of {self.name} is gone "
                                                                f"({exc}); retry the request") from None
        if sent < len(data):
            self._wbuf += memoryview(data)[sent:]
            self._loop.add_writer(sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._worker_lost()
            return
        del self._wbuf[:sent]
        if not self._wbuf:
            self._loop.remove_writer(sock.fileno())

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the worker's frames on this event loop."""
        if self._loop is loop:
            return
        self._detach()
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def _detach(self) -> bool:
        """Stop watching the worker's socket on its loop (from any thread); False if the loop did not confirm.

        The socket must not be closed while the loop still watches its descriptor: a new connection reusing the
        number would then never be read.
        """
        loop, sock = self._loop, self._sock
        if loop is None or sock is None or loop.is_closed():
            return True
        fd = sock.fileno()

        def remove() -> None:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            self._stop_polling()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            remove()
            return True
        done = threading.Event()

        def remove_then_signal() -> None:
            try:
                remove()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(remove_then_signal)
        except RuntimeError:  # the loop closed meanwhile
            return True
        return done.wait(5)

    def _arm_poll(self) -> None:
        """Read the bulk socket once per flush interval while requests run (event loop thread only)."""
        if (self._poll_handle is None and self._bulk is not None and self._poll_seconds > 0
                and self._loop is not None):
            self._poll_handle = self._loop.call_later(self._poll_seconds, self._on_poll)

    def _stop_polling(self) -> None:
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None

    def _on_poll(self) -> None:
        self._poll_handle = None
        self._drain_bulk()
        if self._active:
            self._arm_poll()

    def _drain_bulk(self) -> None:
        """Dispatch the bulk frames that arrived (the main socket's EOF, not this one's, tells of a lost worker)."""
        bulk = self._bulk
        if bulk is None:
            return
        got = False
        while True:
            try:
                data = bulk.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return
            if not data:
                break
            self._bulk_buf += data
            got = True
        if got:
            for message in wire.unframe(self._bulk_buf):
                self._dispatch(message[1], message[2])

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._drain_bulk()  # the tokens the worker sent before this frame come first
        try:
            data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._worker_lost()
            return
        self._rbuf += data
        for message in wire.unframe(self._rbuf):
            if message[0] == "out":
                self._dispatch(message[1], message[2])

    def _dispatch(self, items: list, usage: float | None) -> None:
        active = self._active
        for request_id, kind, data in items:
            sequence = active.get(request_id)
            if sequence is None:
                continue  # ended already (cancelled here while its tokens were on the way)
            if kind == wire.OUTPUTS:
                if not sequence.cancelled:
                    sequence.stream.deliver(data)
                continue
            if kind == wire.ACCEPTED:
                if not sequence.accepted.done():
                    sequence.accepted.set_result(data)
                continue
            del active[request_id]
            self.in_flight -= 1
            if not active and self._idle is not None:
                self._idle.set()
            if sequence.accepted is not None and not sequence.accepted.done():  # refused before it started
                kind_name, text = data if kind == wire.ERROR else ("OV_INTERNAL_INFERENCE_ERROR", "cancelled")
                sequence.accepted.set_exception(ServingError(Kind[kind_name], text))
                if kind == wire.CANCELLED:
                    self.cancelled_requests += 1
                continue
            if kind == wire.CANCELLED:
                self.cancelled_requests += 1
                sequence.stream.deliver(_DONE)
            elif kind == wire.DONE:
                if data:  # assisted decoding: draft tokens the main model accepted
                    self.draft_accepted_tokens += data
                sequence.stream.deliver(_DONE)
            else:
                kind_name, text = data
                sequence.stream.deliver(ServingError(Kind[kind_name], text))
        if usage is not None:
            self.kv_cache_usage = usage

    def _worker_lost(self) -> None:
        """The worker closed its socket: it crashed or was killed. Fail its requests; the next one restarts it."""
        self._detach()
        code = self._stop_worker(wait=False)
        if self._closed:
            return
        log.error("%s: the generation worker exited unexpectedly (exit code %s) with %d requests running; they "
                  "fail, and the next request starts a new worker. Look above for its last log lines; a "
                  "negative code is the signal that killed it (-9: SIGKILL, often the out-of-memory killer; "
                  "-15: SIGTERM sent to it).", self.name, "not known yet" if code is None else code,
                  len(self._active))
        how = "exited" if code is None else f"exited (code {code})"
        error = ServingError(Kind.OV_INTERNAL_INFERENCE_ERROR, f"the generation worker of {self.name} {how} "
                                                               "during generation; retry the request")
        for sequence in self._active.values():
            if sequence.accepted is not None and not sequence.accepted.done():
                sequence.accepted.set_exception(error)
            else:
                sequence.stream.deliver(error)
        self.in_flight -= len(self._active)
        self._active.clear()
        if self._idle is not None:
            self._idle.set()
        self._loop = None

    def _stop_worker(self, *, wait: bool = True, close_socket: bool = True) -> int | None:
        """Close the socket (the worker exits when it sees EOF) and reap it; its exit code, if known.

        ``wait=False`` (on the event loop): do not block; a worker still alive is reaped by a thread, and killed
        if it has not exited 10 s later. ``close_socket=False``: shut the socket down but keep its descriptor
        (the loop may still watch it).
        """
        sock, self._sock = self._sock, None
        worker, self._worker = self._worker, None
        bulk, self._bulk = self._bulk, None
        if bulk is not None:
            bulk.close()  # never watched by a loop: closing it is safe from any thread
        if sock is not None:
            try:
                if close_socket:
                    sock.close()
                else:
                    sock.shutdown(socket.SHUT_RDWR)
                    self._kept_sockets.append(sock)
            except OSError:
                pass
        if worker is None:
            return None
        if not wait:
            # Its socket closed because it exited (or is exiting): its status is there at once or within a few
            # milliseconds. Never a long wait here, on the event loop: what is still alive is reaped by a thread.
            deadline = time.monotonic() + 0.1
            code = worker.poll()
            while code is None and time.monotonic() < deadline:
                time.sleep(0.002)
                code = worker.poll()
            if code is None:
                threading.Thread(target=self._reap, args=(worker,), name=f"ovms-genai-reap-{self.name}",
                                 daemon=True).start()
            return code
        return self._reap(worker)

    def _reap(self, worker: subprocess.Popen) -> int:
        try:
            return worker.wait(10)
        except subprocess.TimeoutExpired:
            log.warning("%s: the generation worker (pid %d) did not exit within 10 s of its socket closing; "
                        "ovms kills it (SIGKILL)", self.name, worker.pid)
            worker.kill()
            return worker.wait()

    async def _ensure_worker(self) -> None:
        """A running worker, read on this loop: (re)start it if needed, once for all the requests that wait.

        The start runs in a task that requests await through shield(): a request cancelled meanwhile does not
        cancel the start, and nobody reads the new worker's socket before its "ready" has arrived.
        """
        loop = asyncio.get_running_loop()
        task = self._restart_task
        if task is None or task.done():
            task = None
            if self._worker is not None and self._worker.poll() is not None:
                self._worker_lost()  # it died while no reader watched its socket (no request since it started)
            if self._sock is None:
                failed = self._restart_failed
                if failed is not None and time.monotonic() - failed[0] < RESTART_BACKOFF_SECONDS:
                    raise ServingError(Kind.OV_INTERNAL_INFERENCE_ERROR, f"the generation worker of {self.name} "
                                                                         f"could not start: {failed[1]}; next try "
                                                                         f"within {RESTART_BACKOFF_SECONDS} s")
                if self._worker_starts:
                    log.warning("%s: starting a new generation worker", self.name)
                else:
                    log.info("%s: starting the generation worker (first request)", self.name)
                task = self._restart_task = loop.create_task(asyncio.to_thread(self._restart_worker))
        if task is not None:
            try:
                await asyncio.shield(task)
            except ModelLoadError as exc:
                raise ServingError(Kind.OV_INTERNAL_INFERENCE_ERROR, f"the generation worker of {self.name} "
                                                                     f"could not start: {exc}") from None
        self._attach(loop)

    async def _recycle(self) -> None:
        """Replace the generation worker after OVMS_GENAI_WORKER_RECYCLE_REQUESTS requests.

        openvino_genai 2026.4's ContinuousBatchingPipeline keeps 8-10 KB per finished request and its tokenizer
        about as much again, which nothing gives back (bench/genai_pipeline_leak.py); only a new process does.
        New requests wait here (none fails) while the running ones finish; then the worker is told to exit and
        a new one loads. Waiting instead of loading the new worker beside the old one keeps the model's memory
        at one copy; the cost is one pause of (the longest running answer + a model load) per cycle.
        """
        try:
            log.info("%s: recycling the generation worker after %d requests (openvino_genai keeps memory for "
                     "every finished request; a new process returns it): new requests wait for the %d running "
                     "ones to finish and for a new worker to load", self.name, self._sent_to_worker,
                     len(self._active))
            while self._active:
                self._idle = asyncio.Event()
                await self._idle.wait()
            self._idle = None
            kept = self._detach()
            self._loop = None
            code = await asyncio.to_thread(self._stop_worker, close_socket=kept)
            self._sent_to_worker = 0
            await self._ensure_worker()
            self.worker_recycles += 1
            log.info("%s: generation worker recycled (the old one exited with code %s)", self.name, code)
        finally:
            self._recycling = None

    def _restart_worker(self) -> None:
        try:
            self._spawn_worker()
            self._await_worker_ready()
        except ModelLoadError as exc:
            self._restart_failed = (time.monotonic(), exc)
            raise
        self._restart_failed = None

    # ---- requests ----------------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[ChatMessage], *, tools: list | None = None,
                            template_kwargs: dict | None = None) -> str:
        if not self.template:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, f"model {self.name} has no chat template "
                                                           "(chat_template.jinja, tokenizer_config.json or the "
                                                           "tokenizer IR); use /v3/completions")
        return chat_template.render(self.template, [m.as_template_dict() for m in messages], tools=tools,
                                    bos_token=self._bos, eos_token=self._eos, template_kwargs=template_kwargs)

    def _encode(self, text: str) -> ov.Tensor:
        return self.tokenizer.encode(text, add_special_tokens=False).input_ids

    async def tokenize(self, texts: list[str], *, max_length: int | None = None, truncation: bool = False,
                       pad_to_max_length: bool = False, add_special_tokens: bool = True,
                       padding_side: str | None = None) -> list[list[int]]:
        options = {"add_special_tokens": add_special_tokens, "pad_to_max_length": pad_to_max_length}
        if max_length is not None:
            options["max_length"] = max_length
        if truncation:
            options["truncation"] = True
        if padding_side is not None:
            options["padding_side"] = padding_side
        try:
            encoded = self.tokenizer.encode(texts, **options)
        except RuntimeError as exc:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, str(exc).splitlines()[0]) from None
        ids, mask = encoded.input_ids.data, encoded.attention_mask.data
        if pad_to_max_length:
            return [row.tolist() for row in ids]
        return [row[keep != 0].tolist() for row, keep in zip(ids, mask)]

    def _overrides(self, params: SamplingParams) -> dict:
        """The GenerationConfig fields this request changes from the model's defaults (generation_config.json)."""
        overrides: dict = {}
        if params.max_new_tokens is not None:
            if self.options.max_tokens_limit and params.max_new_tokens > self.options.max_tokens_limit:
                raise ServingError(Kind.GENAI_INVALID_REQUEST, "max_tokens exceeds limit provided in graph config: "
                                                               f"{self.options.max_tokens_limit}")
            overrides["max_new_tokens"] = params.max_new_tokens
        if params.temperature is not None:
            overrides["temperature"] = params.temperature
            overrides["do_sample"] = params.temperature > 0
        for name in ("top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            value = getattr(params, name)
            if value is not None:
                overrides[name] = value
        if params.seed is not None:
            overrides["rng_seed"] = params.seed
        if params.stop:
            overrides["stop_strings"] = set(params.stop)
            overrides["include_stop_str_in_output"] = params.include_stop_str_in_output
        overrides["ignore_eos"] = params.ignore_eos
        if params.best_of is not None and params.best_of > 1:
            overrides["num_beams"] = params.best_of
            overrides["num_return_sequences"] = params.n
            overrides["do_sample"] = False
        elif params.n > 1:
            overrides["num_return_sequences"] = params.n
        if params.logprobs is not None:
            overrides["logprobs"] = max(1, params.logprobs)
        for name in ("num_assistant_tokens", "assistant_confidence_threshold", "max_ngram_size"):
            value = getattr(params, name)
            if value is not None:
                overrides[name] = value
        # OVMS's defaults per decoding method (src/llm/io_processing/base_generation_config_builder.cpp)
        decoding = self.options.decoding
        if decoding == "speculative" and not overrides.get("num_assistant_tokens") \
                and not overrides.get("assistant_confidence_threshold"):
            overrides["num_assistant_tokens"] = 5
        elif decoding == "prompt_lookup":
            if not overrides.get("num_assistant_tokens"):
                overrides["num_assistant_tokens"] = 5
            if not overrides.get("max_ngram_size"):
                overrides["max_ngram_size"] = 3
        return overrides

    def _config(self, params: SamplingParams, prompt_tokens: int):
        """LM: the request's GenerationConfig, checked (the worker does the same in its process)."""
        config = self._base_config()  # a copy of the defaults (generation_config.json)
        try:
            wire.complete_config(config, self._overrides(params), _structured(params), prompt_tokens,
                                 self.context_length, self.options.max_tokens_limit, ov_genai)
        except ValueError as exc:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, wire.first_line(exc)) from None
        return config

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        if self._closed:
            raise ServingError(Kind.OV_INTERNAL_INFERENCE_ERROR, f"{self.name} is unloading; retry the request")
        queued = len(self._active) + len(self._inbox)
        if queued >= 2 * self._info.max_num_seqs:
            raise ServingError(Kind.SERVER_BUSY, f"{queued} requests in flight on {self.name}; max_num_seqs is "
                                                 f"{self._info.max_num_seqs}")
        request_id = next(self._ids)
        if self._lm:
            input_ids = self._encode(request.prompt)
            prompt_tokens = int(input_ids.get_shape()[1])  # VLM: the text's tokens (the image tokens not counted)
            config = self._config(request.params, prompt_tokens)
            if self.vision:
                config.apply_chat_template = False  # the prompt is the rendered conversation already
            stream = _Stream(self, request.params, prompt_tokens)
            sequence = _Sequence(request_id, input_ids, config, stream, prompt=request.prompt,
                                 images=request.images)
            stream._sequence = sequence
            self._loop = asyncio.get_running_loop()
            with self._lock:
                self._inbox.append(sequence)
                self.in_flight += 1
                self._lock.notify()
            return stream
        # The worker tokenizes (as a caller of the pipeline in its own process would) and answers ACCEPTED with
        # the prompt's token count, or ERROR (prompt longer than the context, ...): errors stay HTTP errors.
        overrides = self._overrides(request.params)
        if self._recycling is None and self._recycle_after and self._sent_to_worker >= self._recycle_after:
            self._recycling = asyncio.get_running_loop().create_task(self._recycle())
        if self._recycling is not None:
            await asyncio.shield(self._recycling)
        await self._ensure_worker()
        self._sent_to_worker += 1
        stream = _Stream(self, request.params, 0)
        sequence = _Sequence(request_id, None, None, stream)
        sequence.accepted = asyncio.get_running_loop().create_future()
        stream._sequence = sequence
        self._send(("add", request_id, request.prompt, overrides, _structured(request.params),
                    request.images or None))
        self._active[request_id] = sequence
        self.in_flight += 1
        self._arm_poll()
        try:
            stream.prompt_tokens = await sequence.accepted
        except asyncio.CancelledError:  # the client left before the worker took the request
            self._cancel(sequence)
            raise
        return stream

    def _cancel(self, sequence: _Sequence) -> None:
        if sequence.cancelled:
            return
        sequence.cancelled = True
        if self._lm:  # read by the streamer, which answers CANCEL
            self.cancelled_requests += 1
            return
        if sequence.request_id in self._active:
            try:
                self._send(("cancel", sequence.request_id))
            except _WorkerLost:
                pass  # the worker is gone, and with it the sequence

    def _record(self, stream: _Stream) -> None:
        self.generated_tokens += stream.generated
        stream.generated_tokens = stream.generated
        if stream.first_token_ns is not None:
            stream.ttft_us = (stream.first_token_ns - stream.started_ns) / 1000
            if stream.generated > 1:
                stream.tpot_us = (time.perf_counter_ns() - stream.first_token_ns) / 1000 / (stream.generated - 1)

    # ---- pipeline_type LM --------------------------------------------------------------------------------

    def _run_lm(self) -> None:
        """LLMPipeline.generate with a streamer, one request after another."""
        while True:
            with self._lock:
                while not self._closed and not self._inbox:
                    self._lock.wait()
                if self._closed:
                    break
                sequence = self._inbox.pop(0)
                self._active[sequence.request_id] = sequence
            loop = self._loop
            streamed = [0]

            class _Streamer(ov_genai.StreamerBase):
                def write(self, token):
                    ids = list(token) if isinstance(token, (list, tuple)) else [int(token)]
                    streamed[0] += len(ids)
                    loop.call_soon_threadsafe(_deliver, [(sequence, [(0, ids, None, None)])])
                    return ov_genai.StreamingStatus.CANCEL if sequence.cancelled else ov_genai.StreamingStatus.RUNNING

                def end(self):
                    pass

            try:
                if self.vision:
                    self._pipe.generate(sequence.prompt, images=[ov.Tensor(a) for a in sequence.images or ()],
                                        generation_config=sequence.config, streamer=_Streamer())
                else:
                    self._pipe.generate(sequence.input_ids, sequence.config, _Streamer())
                finish = "length" if streamed[0] >= sequence.config.max_new_tokens else "stop"
                items = [(sequence, [(0, [], finish, None)]), (sequence, _DONE)]
            except Exception as exc:  # noqa: BLE001 - handed to the request
                items = [(sequence, ServingError(Kind.GENAI_INVALID_REQUEST, wire.first_line(exc)))]
            with self._lock:
                self._active.pop(sequence.request_id, None)
                self.in_flight -= 1
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._lm:
            self._thread.join(10)
            return
        # Closing the socket is the worker's signal to stop (it cancels what runs and exits on EOF).
        self._stop_worker(close_socket=self._detach())


def _merge(outputs: list) -> list:
    """Outputs of several steps -> one per sequence id (ids and logprobs concatenated, the last finish kept)."""
    merged: dict[int, list] = {}
    for sequence_id, ids, finish, logprobs in outputs:
        entry = merged.get(sequence_id)
        if entry is None:
            merged[sequence_id] = [sequence_id, list(ids), finish, list(logprobs) if logprobs else None]
        else:
            entry[1] += ids
            entry[2] = finish or entry[2]
            if logprobs:
                entry[3] = (entry[3] or []) + list(logprobs)
    return [tuple(entry) for entry in merged.values()]


def _deliver(deliveries) -> None:
    for sequence, item in deliveries:
        sequence.stream.deliver(item)


def _sched_batch() -> bool:
    """OVMS_GENAI_SCHED_BATCH (default 1): the generation worker runs under SCHED_BATCH (see genai_worker)."""
    return os.environ.get("OVMS_GENAI_SCHED_BATCH", "1").strip().lower() not in ("0", "false", "no", "off")


def _recycle_requests() -> int:
    """OVMS_GENAI_WORKER_RECYCLE_REQUESTS: requests after which the generation worker is replaced (0: never).

    The default, 50,000, bounds what openvino_genai keeps per finished request to about 1 GB.
    """
    text = os.environ.get("OVMS_GENAI_WORKER_RECYCLE_REQUESTS", "50000")
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelLoadError(f"OVMS_GENAI_WORKER_RECYCLE_REQUESTS={text!r}: expected a number of requests (0 "
                             "never recycles the generation worker)")
    return value


def _flush_seconds() -> float:
    text = os.environ.get("OVMS_GENAI_FLUSH_MS", FLUSH_MS_DEFAULT)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1000:
        raise ModelLoadError(f"OVMS_GENAI_FLUSH_MS={text!r}: expected milliseconds between 0 and 1000 "
                             f"(default {FLUSH_MS_DEFAULT})")
    return value / 1000


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
