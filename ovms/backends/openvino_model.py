"""OpenVINO backend for classic models (IR, ONNX, PaddlePaddle, TensorFlow, TensorFlow Lite) in versioned model
directories, or one model file served as version 1.

Each version is compiled once and served by ``nireq`` infer requests, each driven by a worker thread of its own
that takes jobs from a queue. The event loop never waits on inference: it enqueues a job and awaits a future
that the worker resolves with ``loop.call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import logging
import pathlib
import queue
import threading
import time

import numpy as np
import openvino as ov

from ovms.backends import cache
from ovms.backends import ov_message as _first_line
from ovms.backends.model_files import NameMapping, check_model_file, find_model_file, model_source, read_mapping
from ovms.backends.preprocessing import preprocess
from ovms.config import ModelConfig
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.image_input import ImageBatch
from ovms.servable import InferServable, validate_inputs
from ovms.types import InferRequest, InferResponse, Tensor, TensorSpec

log = logging.getLogger("ovms.backends.openvino")

_DATATYPE = {
    "boolean": "BOOL", "u8": "UINT8", "u16": "UINT16", "u32": "UINT32", "u64": "UINT64", "i8": "INT8",
    "i16": "INT16", "i32": "INT32", "i64": "INT64", "f16": "FP16", "f32": "FP32", "f64": "FP64",
    "string": "BYTES", "bf16": "BF16",
}

_core: ov.Core | None = None
# infer_now runs a model on the event loop when one inference takes less than this: the [1,16] and
# [1,3,224,224] fixtures take 15 and 65 us here, against about 60 us for the hand-off to a worker and back.
INLINE_SECONDS = 0.0005
INLINE_MAX_BYTES = 4 << 20
PROBE_SECONDS = 0.005
# plugin_config keys by which a user chooses the CPU's threading; with none of them, a model whose inference takes
# under SINGLE_THREAD_SECONDS is compiled with one inference thread (see _fewer_threads).
THREADING_KEYS = frozenset({"INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "CPU_THREADS_NUM",
                            "CPU_THROUGHPUT_STREAMS", "PERFORMANCE_HINT_NUM_REQUESTS"})
SINGLE_THREAD_SECONDS = 0.0005


def prepare_bindings() -> None:
    """Make OpenVINO's first tensor from a numpy array, in the calling thread.

    pybind11 sets up its numpy API on that first conversion, inside a std::call_once that takes the GIL: two
    threads converting their first arrays at once deadlock there (one holds the GIL and waits for the once, the
    other holds the once and waits for the GIL). It was seen with three models loading in parallel, each timing
    itself on zeros; a model's first requests on several worker threads could meet it too."""
    ov.Tensor(np.zeros(1, dtype=np.float32))


def core() -> ov.Core:
    """One OpenVINO Core per process (it owns the device plugins)."""
    global _core
    if _core is None:
        _core = ov.Core()
    return _core


def _timer(compiled: ov.CompiledModel):
    """A function timing one inference of zeros on ``compiled`` (seconds), after one untimed inference that pays
    the one-time costs; None for a model that cannot be timed that way (dynamic or string inputs, inputs over
    INLINE_MAX_BYTES, which never run in place anyway, or zeros it refuses)."""
    request = compiled.create_infer_request()
    try:
        size = 0
        for port in compiled.inputs:
            if port.get_partial_shape().is_dynamic or port.get_element_type() == ov.Type.string:
                return None
            zeros = np.zeros(tuple(port.get_shape()), dtype=port.get_element_type().to_dtype())
            size += zeros.nbytes
            if size > INLINE_MAX_BYTES:
                return None
            request.set_tensor(port, ov.Tensor(zeros))
        request.infer()
    except Exception:  # noqa: BLE001 - a model that fails on zeros is simply not timed
        return None

    def one() -> float:
        started = time.perf_counter()
        request.infer()
        return time.perf_counter() - started
    return one


def _fewer_threads(name: str, version: int, model: ov.Model, compiled: ov.CompiledModel,
                   properties: dict, runs: int = 5) -> ov.CompiledModel:
    """A model that infers in under SINGLE_THREAD_SECONDS, compiled with one inference thread, when that is about
    as fast; else ``compiled`` as it is.

    With OpenVINO's default (the LATENCY hint: one stream using every core), each inference of even a tiny model
    wakes the stream's other oneTBB threads, which then spin (sched_yield) for work between requests: measured here
    on the [1,3,224,224] fixture (65 us per inference) at 8 concurrent clients, the spinning thread burnt 70% of a
    core, and one thread served 30-80% more requests per second on the 2 cores. A user who sets any of
    THREADING_KEYS in plugin_config keeps exactly that. The two compilations are timed in turns (the best of
    ``runs`` each), so that a busy moment of the machine falls on both alike."""
    if int(compiled.get_property("INFERENCE_NUM_THREADS")) <= 1:
        return compiled
    default_timer = _timer(compiled)
    # Clearly slow (20x the bound, twice: the first timed inference still runs 0.4 ms on a 40 us model here, and
    # a busy machine stretches one more): not run again.
    if default_timer is None or min(default_timer(), default_timer()) >= 20 * SINGLE_THREAD_SECONDS:
        return compiled
    # The one thread is the caller's (the event loop's, in place): OpenVINO would pin it to a core on entering
    # each inference and unpin it after (two sched_setaffinity calls, 2 us of a 9 us [1,16] inference).
    try:
        single = core().compile_model(model, "CPU", {"ENABLE_CPU_PINNING": False, **properties,
                                                     "INFERENCE_NUM_THREADS": 1})
    except RuntimeError as exc:
        log.info("model %s version %d: kept OpenVINO's default threads (one thread did not compile: %s)", name,
                 version, _first_line(exc))
        return compiled
    single_timer = _timer(single)
    if single_timer is None:
        return compiled
    default = alone = float("inf")
    for _ in range(runs):
        default = min(default, default_timer())
        alone = min(alone, single_timer())
    if default >= SINGLE_THREAD_SECONDS:
        return compiled
    if alone > 1.5 * default + 20e-6:
        log.info("model %s version %d: one inference thread is slower (%.0f us against %.0f us); kept OpenVINO's "
                 "default threads", name, version, alone * 1e6, default * 1e6)
        return compiled
    log.info("model %s version %d: one inference takes %.0f us; compiled with INFERENCE_NUM_THREADS 1 (%.0f us), "
             "so no idle thread spins between requests. Set INFERENCE_NUM_THREADS, NUM_STREAMS or PERFORMANCE_HINT "
             "in plugin_config to choose the threading yourself", name, version, default * 1e6, alone * 1e6)
    return single


def _partial_shape(text: str) -> ov.PartialShape:
    # OVMS writes "(1,3,-1)" and ranges "1:8"; OpenVINO parses "[1,3,?]" and "1..8".
    inner = text.strip()[1:-1]
    dims = [d.strip().replace(":", "..") for d in inner.split(",") if d.strip()]
    return ov.PartialShape("[" + ",".join("?" if d == "-1" else d for d in dims) + "]")


def _dynamic(port) -> ov.PartialShape:
    # OVMS's "auto" reshapes the model to each request's shape; a fully dynamic shape of the same rank accepts
    # the same requests without recompiling.
    return ov.PartialShape([ov.Dimension(-1)] * port.get_partial_shape().rank.get_length())


def _reshape(model: ov.Model, config: ModelConfig, mapping: NameMapping) -> None:
    shapes: dict[str, ov.PartialShape] = {}
    if config.shape == "auto":
        shapes = {port.get_any_name(): _dynamic(port) for port in model.inputs}
    elif isinstance(config.shape, str):
        if len(model.inputs) != 1:
            raise ModelLoadError(f"model {config.name}: Anonymous fixed shape is invalid for models with multiple "
                                 'inputs; give shapes per input: {"input_name": "(1,3,224,224)"}')
        shapes[model.inputs[0].get_any_name()] = _partial_shape(config.shape)
    elif isinstance(config.shape, tuple):
        names = {n for i in model.inputs for n in i.get_names()}
        for name, text in config.shape:
            name = mapping.real_input(name)  # OVMS names inputs in the config by their mapped names
            if name not in names:
                raise ModelLoadError(f"model {config.name}: Shape from config not found in network: input "
                                     f"{name!r}; inputs are {sorted(names)}")
            shapes[name] = _dynamic(model.input(name)) if text == "auto" else _partial_shape(text)
    if config.batch_size is not None:
        batch = ov.Dimension(-1) if config.batch_size in ("-1", "auto") else ov.Dimension(
            *map(int, config.batch_size.split(":"))) if ":" in config.batch_size else ov.Dimension(
            int(config.batch_size))
        for port in model.inputs:
            name = port.get_any_name()
            shape = shapes.get(name, port.get_partial_shape())
            if shape.rank.is_static and len(shape) > 0:
                shape = ov.PartialShape([batch, *list(shape)[1:]])
                shapes[name] = shape
    if shapes:
        try:
            model.reshape(shapes)
        except RuntimeError as exc:
            raise ModelLoadError(f"model {config.name}: Model could not be reshaped with requested shape "
                                 f"({_first_line(exc)})") from None


def runtime_version() -> str:
    return ov.get_version()


def _spec(port, name: str, layout: str | None = None) -> TensorSpec:
    """The port as clients see it, under its mapped name (mapping_config.json) when it has one."""
    element = port.get_element_type().get_type_name()
    datatype = _DATATYPE.get(element)
    if datatype is None:
        raise ModelLoadError(f"tensor {port.get_any_name()!r} has element type {element}, which KServe cannot "
                             "carry; convert the model to a supported precision")
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic:
        raise ModelLoadError(f"tensor {port.get_any_name()!r} has a dynamic rank; give a shape in the config")
    shape = tuple(d.get_length() if d.is_static else -1 for d in pshape)
    return TensorSpec(name, datatype, shape, layout)


def _model_layout(port) -> str | None:
    """The layout a model file declares for an input (IR rt_info, PrePostProcessor), e.g. "NCHW"."""
    layout = ov.layout_helpers.get_layout(port)
    if layout.empty:
        return None
    text = layout.to_string().strip("[]").replace(",", "")
    return text if text.isalpha() else None


class OpenVINOServable(InferServable):
    """One compiled model version."""

    platform = "OpenVINO"

    def __init__(self, config: ModelConfig, version: int, version_dir: pathlib.Path, *,
                 model_file: pathlib.Path | None = None) -> None:
        self.name = config.name
        self.version = version
        path = check_model_file(model_file) if model_file is not None else find_model_file(version_dir)
        mapping = read_mapping(path.parent)
        try:
            model = core().read_model(model_source(path))
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: Error while loading a network ({_first_line(exc)})") from None
        # OVMS order (modelinstance.cpp loadTensors, then reshape): layouts and preprocessing first, so a configured
        # shape is in the layout clients send, e.g. --layout NHWC:NCHW --shape "(1,224,224,3)".
        model, tensor_layouts = preprocess(model, config, mapping)
        _reshape(model, config, mapping)
        try:
            properties = {**cache.properties_for(config), **dict(config.plugin_config)}
            self._compiled = core().compile_model(model, config.target_device, properties)
            chosen = {key for key, _ in config.plugin_config}
            if config.target_device == "CPU" and not THREADING_KEYS & chosen:
                self._compiled = _fewer_threads(self.name, version, model, self._compiled, properties)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: Cannot load network into target device {config.target_device} "
                                 f"({_first_line(exc)})") from None
        self._inputs, self._real_input, self._dim_bounds = [], {}, {}
        self._input_port = {}  # set_tensor by port: no lookup by name per request
        for source, port in zip(model.inputs, self._compiled.inputs):
            real = port.get_any_name()
            spec = _spec(port, mapping.inputs.get(real, real), tensor_layouts.get(real) or _model_layout(source))
            self._inputs.append(spec)
            self._real_input[spec.name] = real
            self._input_port[spec.name] = port
            if len(spec.shape) == 4:  # for images: ranges such as 100:200, which TensorSpec shows as -1
                self._dim_bounds[spec.name] = tuple((d.get_min_length(), d.get_max_length())
                                                    for d in port.get_partial_shape())
        self._outputs = [_spec(p, mapping.outputs.get(p.get_any_name(), p.get_any_name()))
                         for p in self._compiled.outputs]
        unknown = (set(mapping.inputs) - set(self._real_input.values())) | (
            set(mapping.outputs) - {p.get_any_name() for p in self._compiled.outputs})
        if unknown:
            log.warning("model %s version %d: %s names %s, which the model does not have (its tensors: %s)",
                        self.name, version, path.parent / "mapping_config.json", sorted(unknown),
                        sorted(self._real_input.values()) + [p.get_any_name() for p in self._compiled.outputs])
        self._output_ports = [(spec.name, spec.datatype, port, port.get_element_type() == ov.Type.string)
                              for spec, port in zip(self._outputs, self._compiled.outputs)]
        nireq = config.nireq or self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.nireq = max(1, int(nireq))
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        # Which infer requests are in use: each worker writes only its own slot, so no lock. OVMS counts an infer
        # request as active from getIdleStream() to returnStream() (ExecutingStreamIdGuard), not while queued.
        self._busy = [False] * self.nireq
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._output_names = {spec.name for spec in self._outputs}
        self._infer_seconds: float | None = None  # what one inference takes (see _run), set by the first one
        self._inline: ov.InferRequest | None = None  # infer_now's request, made on first use
        self._probed = 0.0  # when infer_now last timed a model the workers' times kept off the event loop
        self._workers = [threading.Thread(target=self._work, args=(i,), name=f"ovms-{self.name}-v{version}-{i}",
                                          daemon=True) for i in range(self.nireq)]
        for worker in self._workers:
            worker.start()
        log.info("model %s version %d loaded from %s on %s with %d infer requests", self.name, version, path,
                 config.target_device, self.nireq)

    @property
    def active(self) -> int:
        """Infer requests in use now (the ``ovms_infer_req_active`` gauge)."""
        return sum(self._busy)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def _run(self, request: ov.InferRequest, arrays: dict, as_arrays: bool) -> tuple[dict, float]:
        """One inference on ``request``: inputs set, inferred, outputs read. Returns (outputs, seconds inferring)."""
        for name, array in arrays.items():
            if isinstance(array, ImageBatch):
                array = array.decode(self._dim_bounds.get(name))
            if array.dtype == object:
                tensor = ov.Tensor(np.array(array.tolist(), dtype=np.bytes_).reshape(array.shape))
            else:
                flags = array.flags
                tensor = ov.Tensor(array, shared_memory=flags.writeable and flags.c_contiguous)
            request.set_tensor(self._input_port[name], tensor)
        started = time.perf_counter()
        request.infer()
        inferred = time.perf_counter() - started
        # What one inference costs, for infer_now's choice: a minimum that rises 2% per inference, since a worker's
        # time includes waiting inside OpenVINO for a stream while the other workers infer (an image model's 65 us
        # read as over 500 us under load, and a moving average then kept it off the event loop for good). A float
        # store: no lock needed across threads.
        least = self._infer_seconds
        self._infer_seconds = inferred if least is None else min(least * 1.02, inferred)
        result = {}
        for name, datatype, port, is_string in self._output_ports:
            tensor = request.get_tensor(port)
            if is_string:
                shape = tuple(tensor.shape)
                array = np.array(tensor.bytes_data, dtype=object).reshape(shape)
                result[name] = Tensor(name, datatype, shape, array=array)
                continue
            data = tensor.data  # the shape from numpy: tuple(tensor.shape) costs 11 us through ov.Shape
            if as_arrays:  # for a pipeline's next node: one copy, writable, shared with it
                result[name] = Tensor(name, datatype, data.shape, array=data.copy())
            else:
                # Wire bytes straight away: one copy out of the request's buffer, which the next job
                # reuses; a JSON answer views them with np.frombuffer.
                result[name] = Tensor(name, datatype, data.shape, raw=data.tobytes())
        return result, inferred

    def _work(self, slot: int) -> None:
        """One infer request, driven synchronously by its own thread (OpenVINO releases the GIL in ``infer``).

        Measured on the [1,16] fixture (2 cores): 115-125 us per request through this hand-off against
        155-225 us through AsyncInferQueue callbacks, whose OpenVINO threads add a wake-up per request.
        """
        request = self._compiled.create_infer_request()
        while (job := self._jobs.get()) is not None:
            loop, future, arrays, queued, as_arrays = job
            started = time.perf_counter()
            self._busy[slot] = True
            try:
                result, inferred = self._run(request, arrays, as_arrays)
            except BaseException as exc:  # never let an exception die silently in this thread
                self._busy[slot] = False
                loop.call_soon_threadsafe(_resolve, future, None, exc)
            else:
                self._busy[slot] = False
                loop.call_soon_threadsafe(_resolve, future, (result, started - queued, inferred), None)

    def _check_outputs(self, request: InferRequest) -> None:
        for name in request.requested_outputs or ():
            if name not in self._output_names:
                raise ServingError(Kind.INVALID_MISSING_OUTPUT, f"Unknown output: {name}")

    def _response(self, request: InferRequest, produced: dict, waited: float, inferred: float) -> InferResponse:
        requested = request.requested_outputs
        outputs = [produced[name] for name in requested] if requested else list(produced.values())
        return InferResponse(self.name, self.version, outputs, request.id, (waited * 1e6, inferred * 1e6))

    async def infer(self, request: InferRequest) -> InferResponse:
        arrays = validate_inputs(self, request)
        self._check_outputs(request)
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((future.get_loop(), future, arrays, time.perf_counter(), request.outputs_as_arrays))
        try:
            produced, waited, inferred = await future
        except ServingError:  # the request's own fault, found in the worker (an image that does not decode)
            raise
        except Exception as exc:
            raise self._failed(exc) from None
        return self._response(request, produced, waited, inferred)

    def infer_now(self, request: InferRequest) -> InferResponse | None:
        """Infer in the calling thread (the event loop's) when one inference takes under INLINE_SECONDS, as on
        small models, where handing the job to a worker thread and back costs more than the inference; None:
        use ``infer``. Image inputs (decoded in the worker) and inputs over INLINE_MAX_BYTES always go to the
        workers, and so does every request until the workers have timed one inference."""
        seconds = self._infer_seconds
        if INLINE_SECONDS <= 0:  # in-place inference turned off
            return None
        if seconds is None or seconds > INLINE_SECONDS:
            # The workers' times include waiting for a stream while the others infer: a model that ran in place
            # under 0.5 ms can read slower under load and then never get back. So once a second one request
            # of a model that looks under PROBE_SECONDS is run in place, uncontended, to time it again.
            now = time.monotonic()
            if seconds is None or seconds > PROBE_SECONDS or now - self._probed < 1.0:
                return None
            self._probed = now
        arrays = validate_inputs(self, request)
        size = 0
        for array in arrays.values():
            if isinstance(array, ImageBatch):
                return None
            size += array.nbytes
        if size > INLINE_MAX_BYTES:  # a model with dynamic shapes sent a big tensor: not on the event loop
            return None
        self._check_outputs(request)
        if self._inline is None:
            self._inline = self._compiled.create_infer_request()
        try:
            produced, inferred = self._run(self._inline, arrays, request.outputs_as_arrays)
        except ServingError:
            raise
        except Exception as exc:
            raise self._failed(exc) from None
        return self._response(request, produced, 0.0, inferred)

    def _failed(self, exc: Exception) -> ServingError:
        """An inference OpenVINO failed: logged, and OVMS's error for the client."""
        log.error("model %s version %d: inference failed: %s", self.name, self.version, exc)
        return ServingError(Kind.OV_INTERNAL_INFERENCE_ERROR, _first_line(exc))

    def close(self) -> None:
        """Stop the workers after the jobs already queued (the registry calls this once requests drained)."""
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(60)
        self._inline = None
        del self._compiled


def _resolve(future: asyncio.Future, result, exc) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def load_servable(config: ModelConfig, version: int) -> OpenVINOServable:
    """Compile ``<base_path>/<version>``, or the model file a config names (blocking: call it off the event loop)."""
    if config.model_file is not None:
        return OpenVINOServable(config, version, config.base_path, model_file=config.base_path / config.model_file)
    return OpenVINOServable(config, version, config.base_path / str(version))


