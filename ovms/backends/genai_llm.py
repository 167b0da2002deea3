"""Text generation on openvino_genai's ContinuousBatchingPipeline (or LLMPipeline for ``pipeline_type: LM``).

One stepping thread per pipeline calls ``step()`` while requests are added and cancelled through a locked
inbox; after each step it reads every handle and hands the new token ids of all requests to the event loop in
ONE ``call_soon_threadsafe`` (a wake-up per step, not per token per stream). Detokenization happens on the event
loop with the incremental detokenizer (``ovms._native.detokenize``), bytes per token taken from the
detokenizer IR with its UTF8Validate node bypassed, so partial UTF-8 pieces keep their raw bytes.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import pathlib
import threading
import time
from typing import AsyncIterator

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
import openvino_tokenizers  # noqa: F401 - registers the tokenizer ops (VocabDecoder, ...) with ov.Core

from ovms import chat_template
from ovms._native import load as load_native
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.genai_types import ChatMessage, GenerationRequest, GenerativeInfo, SamplingParams, TextChunk
from ovms.graph import GenAINodeOptions
from ovms.servable import GenerationStream, GenerativeServable

log = logging.getLogger("ovms.genai")

_FINISH = {"STOP": "stop", "LENGTH": "length", "TOOL_CALL": "tool_calls"}
_FINISH_BY_ENUM = {getattr(ov_genai.GenerationFinishReason, name): text for name, text in _FINISH.items()}
_RUNNING = ov_genai.GenerationStatus.RUNNING
_DONE = object()
FLUSH_SECONDS = 0.002
HANDOVER_TIMEOUT = 0.005


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


class _Sequence:
    """One request as the stepping thread sees it."""

    __slots__ = ("request_id", "input_ids", "config", "stream", "handle", "cancelled", "started")

    def __init__(self, request_id: int, input_ids: ov.Tensor, config, stream: "_Stream") -> None:
        self.request_id = request_id
        self.input_ids = input_ids
        self.config = config
        self.stream = stream
        self.handle = None
        self.cancelled = False
        self.started = False  # its first tokens were handed to the event loop


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
        self.started_ns = time.perf_counter_ns()
        self.first_token_ns: int | None = None
        self.generated = 0
        self._finished = False

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
                    detok = self._detokenizers.get(index)
                    if detok is None:
                        detok = self._detokenizers[index] = servable._detokenizer_module.Detokenizer(
                            servable.token_bytes, self._params.stop,
                            include_stop=self._params.include_stop_str_in_output)
                    if ids and self.first_token_ns is None:
                        self.first_token_ns = time.perf_counter_ns()
                    self.generated += len(ids)
                    text = detok.push_many(ids)
                    if detok.stopped and finish is None:
                        finish = "stop"  # our stop-string check fired first; genai stops on the same string
                    if finish is not None:
                        text += detok.finish()
                    yield TextChunk(index, text, len(ids), finish, logprobs)
                if end is not None:
                    self._finished = True
                    if end is _DONE:
                        return
                    raise end
        finally:
            if not self._finished:  # the consumer went away (client disconnected): free the sequence
                self.abort()
            servable._record(self)


class LLMServable(GenerativeServable):
    """A text generation model served on a continuous batching pipeline."""

    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name = name
        self.version = 1
        self.options = options
        path = options.models_path
        if not (path / "openvino_model.xml").is_file():
            raise ModelLoadError(f"{path}: no openvino_model.xml; models_path must point at an exported GenAI "
                                 "model (optimum-cli export openvino ...)")
        if not (path / "openvino_tokenizer.xml").is_file() or not (path / "openvino_detokenizer.xml").is_file():
            raise ModelLoadError(f"{path}: openvino_tokenizer.xml / openvino_detokenizer.xml missing; convert the "
                                 "tokenizer with openvino_tokenizers (optimum-cli ... --convert-tokenizer)")
        model_config = _read_json(path / "config.json")
        self.context_length = model_config.get("max_position_embeddings") or model_config.get("max_seq_len")
        scheduler = ov_genai.SchedulerConfig()
        scheduler.max_num_seqs = int(options.max_num_seqs)
        scheduler.cache_size = int(options.cache_size) or 1
        scheduler.enable_prefix_caching = bool(options.enable_prefix_caching)
        scheduler.dynamic_split_fuse = bool(options.dynamic_split_fuse)
        if options.max_num_batched_tokens:
            scheduler.max_num_batched_tokens = int(options.max_num_batched_tokens)
        self._lm = options.pipeline_type == "LM"  # OVMS: LLMPipeline, one request at a time
        try:
            self.tokenizer = ov_genai.Tokenizer(str(path))
            if self._lm:
                self._pipe = ov_genai.LLMPipeline(str(path), options.device, **options.plugin_config)
                self._base_config = self._pipe.get_generation_config
            else:
                self._pipe = ov_genai.ContinuousBatchingPipeline(str(path), scheduler, options.device,
                                                                 options.plugin_config)
                self._base_config = self._pipe.get_config
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the model: {exc}") from None
        vocab_size = model_config.get("vocab_size") or len(self.tokenizer.get_vocab())
        self.token_bytes = token_byte_table(path, int(vocab_size))
        self._detokenizer_module = load_native("detokenize")
        self.template = chat_template.find_template(path) or self.tokenizer.get_original_chat_template() or None
        tool_parser = options.tool_parser or chat_template.detect_tool_parser(self.template)
        self._info = GenerativeInfo(tool_parser=tool_parser, reasoning_parser=options.reasoning_parser,
                                    max_num_seqs=int(options.max_num_seqs), context_length=self.context_length)
        self._eos = self.tokenizer.get_eos_token()
        self._bos = self.tokenizer.get_bos_token()
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._inbox: list[_Sequence] = []
        self._cancels: list[_Sequence] = []
        self._active: list[_Sequence] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # metrics (read by the data plane)
        self.in_flight = 0
        self.generated_tokens = 0
        self.cancelled_requests = 0
        self.kv_cache_usage = 0.0
        self._thread = threading.Thread(target=self._run_lm if self._lm else self._run, name=f"ovms-genai-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def info(self) -> GenerativeInfo:
        return self._info

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

    async def tokenize(self, text: str) -> list[int]:
        return self._encode(text).data[0].tolist()

    def _config(self, params: SamplingParams, prompt_tokens: int):
        config = self._base_config()  # a copy of the defaults (generation_config.json)
        room = (self.context_length - prompt_tokens) if self.context_length else None
        if room is not None and room <= 0:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, f"prompt is {prompt_tokens} tokens; the model's context "
                                                           f"is {self.context_length}")
        if params.max_new_tokens is not None:
            config.max_new_tokens = params.max_new_tokens
        elif room is not None:
            config.max_new_tokens = min(config.max_new_tokens, room)
        if self.options.max_tokens_limit and config.max_new_tokens > self.options.max_tokens_limit:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, "max_tokens exceeds limit provided in graph config: "
                                                           f"{self.options.max_tokens_limit}")
        if params.temperature is not None:
            config.temperature = params.temperature
            config.do_sample = params.temperature > 0
        for name in ("top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            value = getattr(params, name)
            if value is not None:
                setattr(config, name, value)
        if params.seed is not None:
            config.rng_seed = params.seed
        if params.stop:
            config.stop_strings = set(params.stop)
            config.include_stop_str_in_output = params.include_stop_str_in_output
        config.ignore_eos = params.ignore_eos
        if params.best_of is not None and params.best_of > 1:
            config.num_beams = params.best_of
            config.num_return_sequences = params.n
            config.do_sample = False
        elif params.n > 1:
            config.num_return_sequences = params.n
        if params.logprobs is not None:
            config.logprobs = max(1, params.logprobs)
        if params.json_schema is not None:
            config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=params.json_schema)
        try:
            config.validate()
        except (RuntimeError, ValueError) as exc:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, str(exc).splitlines()[0]) from None
        return config

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        with self._lock:
            queued = len(self._inbox) + len(self._active)
        if queued >= 2 * self._info.max_num_seqs:
            raise ServingError(Kind.SERVER_BUSY, f"{queued} requests in flight on {self.name}; max_num_seqs is "
                                                 f"{self._info.max_num_seqs}")
        input_ids = self._encode(request.prompt)
        prompt_tokens = int(input_ids.get_shape()[1])
        config = self._config(request.params, prompt_tokens)
        stream = _Stream(self, request.params, prompt_tokens)
        sequence = _Sequence(next(self._ids), input_ids, config, stream)
        stream._sequence = sequence
        self._loop = asyncio.get_running_loop()
        with self._lock:
            self._inbox.append(sequence)
            self.in_flight += 1
            self._lock.notify()
        return stream

    def _cancel(self, sequence: _Sequence) -> None:
        if self._lm:  # read by the streamer, which answers CANCEL
            if not sequence.cancelled:
                sequence.cancelled = True
                self.cancelled_requests += 1
            return
        with self._lock:
            self._cancels.append(sequence)
            self._lock.notify()

    def _record(self, stream: _Stream) -> None:
        self.generated_tokens += stream.generated
        stream.generated_tokens = stream.generated
        if stream.first_token_ns is not None:
            stream.ttft_us = (stream.first_token_ns - stream.started_ns) / 1000
            if stream.generated > 1:
                stream.tpot_us = (time.perf_counter_ns() - stream.first_token_ns) / 1000 / (stream.generated - 1)

    # ---- the stepping thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        pipe = self._pipe
        deliveries: list = []
        last_flush = time.perf_counter()
        while True:
            with self._lock:
                while not self._closed and not self._inbox and not self._cancels and not self._active:
                    self._lock.wait()
                if self._closed:
                    self._drop_all(pipe)
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            urgent = bool(inbox or cancels)
            for sequence in inbox:
                try:
                    sequence.handle = pipe.add_request(sequence.request_id, sequence.input_ids, sequence.config)
                    self._active.append(sequence)
                except Exception as exc:  # noqa: BLE001 - handed to the request, not the thread
                    deliveries.append((sequence, ServingError(Kind.GENAI_INVALID_REQUEST, str(exc).splitlines()[0])))
            for sequence in cancels:
                if sequence.handle is not None and not sequence.cancelled:
                    sequence.cancelled = True
                    sequence.handle.cancel()
                    self.cancelled_requests += 1
            try:
                if pipe.has_non_finished_requests():
                    pipe.step()
            except Exception as exc:  # noqa: BLE001
                log.exception("generation step failed on %s", self.name)
                for sequence in self._active:
                    deliveries.append((sequence, ServingError(Kind.OV_INTERNAL_INFERENCE_ERROR, str(exc))))
                self._active = []
            still = []
            for sequence in self._active:
                if sequence.cancelled:
                    deliveries.append((sequence, _DONE))
                    continue
                handle = sequence.handle
                outputs = []
                finished = False
                if sequence.config.num_beams > 1:  # beam search: results only at the end
                    if handle.get_status() != _RUNNING:
                        for sequence_id, output in enumerate(handle.read_all()):
                            outputs.append(self._output(sequence_id, output, True, sequence.config.logprobs))
                        finished = True
                else:
                    # Finish reasons tell when a sequence ends, so get_status() is only asked when nothing was
                    # read (measured: about 20 us per sequence per step with it on every step).
                    while handle.can_read():
                        for sequence_id, output in handle.read().items():
                            outputs.append(self._output(sequence_id, output, False, sequence.config.logprobs))
                    if not outputs or outputs[-1][2] is not None:
                        finished = handle.get_status() != _RUNNING
                if outputs:
                    deliveries.append((sequence, outputs))
                    if not sequence.started:
                        sequence.started = urgent = True
                if not finished:
                    still.append(sequence)
                elif handle.get_status() == ov_genai.GenerationStatus.IGNORED:
                    deliveries.append((sequence, ServingError(Kind.SERVER_BUSY, "the request does not fit the KV "
                                                                                "cache (cache_size)")))
                else:
                    deliveries.append((sequence, _DONE))
            self._active = still
            now = time.perf_counter()
            if not deliveries or self._loop is None:
                continue
            if not urgent and still and now - last_flush < FLUSH_SECONDS:
                continue  # keep stepping; these tokens leave with the next flush
            done = sum(1 for _, item in deliveries if item is _DONE or isinstance(item, BaseException))
            if done:
                with self._lock:
                    self.in_flight -= done
                try:
                    self.kv_cache_usage = float(pipe.get_metrics().cache_usage)
                except Exception:  # noqa: BLE001 - a metric only
                    pass
            handed = threading.Event()
            try:
                self._loop.call_soon_threadsafe(_deliver, deliveries, handed)
            except RuntimeError:  # the loop closed (server stopping)
                handed.set()
            deliveries = []
            last_flush = now
            # step() holds the GIL (measured: a 1 ms sleep on another thread overshoots by 5.6 ms at p50, the
            # interpreter's switch interval), so the event loop runs only when this thread lets it: wait (GIL
            # released) until the loop has taken these tokens. Flushing every FLUSH_SECONDS rather than every
            # step amortizes that hand-over and the per-chunk work; first tokens and finished requests flush at
            # once.
            handed.wait(HANDOVER_TIMEOUT)

    def _drop_all(self, pipe) -> None:
        """Closing: cancel what still runs and step once so the scheduler frees its KV-cache blocks."""
        for sequence in self._active:
            if sequence.handle is not None:
                sequence.handle.cancel()
        self._active = []
        try:
            if pipe.has_non_finished_requests():
                pipe.step()
        except Exception:  # noqa: BLE001 - closing anyway
            log.debug("final step on close failed", exc_info=True)

    def _run_lm(self) -> None:
        """pipeline_type LM: LLMPipeline.generate with a streamer, one request after another."""
        while True:
            with self._lock:
                while not self._closed and not self._inbox:
                    self._lock.wait()
                if self._closed:
                    break
                sequence = self._inbox.pop(0)
                self._active.append(sequence)
            loop = self._loop
            streamed = [0]

            class _Streamer(ov_genai.StreamerBase):
                def write(self, token):
                    ids = list(token) if isinstance(token, (list, tuple)) else [int(token)]
                    streamed[0] += len(ids)
                    loop.call_soon_threadsafe(_deliver, [(sequence, [(0, ids, None, None)])], threading.Event())
                    return ov_genai.StreamingStatus.CANCEL if sequence.cancelled else ov_genai.StreamingStatus.RUNNING

                def end(self):
                    pass

            try:
                self._pipe.generate(sequence.input_ids, sequence.config, _Streamer())
                finish = "length" if streamed[0] >= sequence.config.max_new_tokens else "stop"
                items = [(sequence, [(0, [], finish, None)]), (sequence, _DONE)]
            except Exception as exc:  # noqa: BLE001 - handed to the request
                items = [(sequence, ServingError(Kind.GENAI_INVALID_REQUEST, str(exc).splitlines()[0]))]
            with self._lock:
                self._active.remove(sequence)
                self.in_flight -= 1
            try:
                loop.call_soon_threadsafe(_deliver, items, threading.Event())
            except RuntimeError:
                pass

    @staticmethod
    def _output(sequence_id: int, output, final: bool, want_logprobs: int):
        finish = _FINISH_BY_ENUM.get(output.finish_reason)
        logprobs = list(output.generated_log_probs) if want_logprobs else None
        if final and finish is None:
            finish = "stop"
        return sequence_id, list(output.generated_ids), finish, logprobs

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(10)


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


def _deliver(deliveries, handed: threading.Event) -> None:
    handed.set()
    for sequence, item in deliveries:
        sequence.stream.deliver(item)


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
