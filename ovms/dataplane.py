"""Transport-neutral verbs shared by gRPC and REST: live, ready, metadata, infer."""
from __future__ import annotations

import dataclasses
import time
from typing import AsyncIterator, Awaitable, Callable

from ovms import __version__
from ovms.errors import Kind, ServingError
from ovms.drain import Drain
from ovms.metrics import Metrics
from ovms.registry import Registry, VersionState
from ovms.servable import InferServable, Servable, StreamingInferServable
from ovms.types import InferRequest, InferResponse, ModelMetadata, StreamContext

SERVER_NAME = "OpenVINO Model Server"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]


def parse_version(text: str | None) -> int | None:
    """A KServe version string: "" means the default version; otherwise a positive integer."""
    if not text:
        return None
    if not text.isdigit():
        raise ServingError(Kind.MODEL_VERSION_INVALID, f"version must be a positive integer, got {text!r}")
    return int(text)


@dataclasses.dataclass(slots=True)
class VersionStatus:
    """One version's state as OVMS reports it (TFS GetModelStatus, /v1/config)."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str  # OK, or UNKNOWN for a failed load (as OVMS)
    error_message: str


def version_status(entry) -> VersionStatus:
    if entry.error is not None:
        return VersionStatus(entry.version, entry.state.name, "UNKNOWN", "UNKNOWN")
    return VersionStatus(entry.version, entry.state.name, "OK", "OK")


@dataclasses.dataclass(slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


class DataPlane:
    """What every protocol can ask of the server."""

    def __init__(self, registry: Registry, *, reloader: Callable[[], Awaitable] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.live_flag = True
        self.drain = Drain()  # transports count requests in it; SIGTERM starts the drain
        self.started = False  # set once the first configuration is applied: not ready before (empty registry)
        self._reloader = reloader
        self.metrics = metrics if metrics is not None and metrics.on else None

    def _count(self, api: str, interface: str, method: str, name: str, version, ok: bool) -> None:
        """Count a request to a model that exists (OVMS counts nothing for unknown names)."""
        if self.metrics is not None and name in self.registry.models:
            self.metrics.request(api, interface, method, name, str(version or ""), ok)

    async def reload_config(self):
        """Re-read the configuration now (``/v1/config/reload``, TFS HandleReloadConfigRequest)."""
        if self._reloader is None:
            raise ServingError(Kind.NOT_IMPLEMENTED, "this server has no configuration to reload")
        return await self._reloader()

    def live(self) -> bool:
        return self.live_flag

    def ready(self) -> bool:
        return self.live_flag and self.started and not self.drain.draining and self.registry.is_ready()

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, list(EXTENSIONS))

    def model_ready(self, name: str, version: int | None) -> bool:
        model = self.registry.model(name)
        if version is None:
            return model.default_version() is not None
        entry = model.versions.get(version)
        if entry is None:
            raise ServingError(Kind.MODEL_VERSION_MISSING)
        return entry.state is VersionState.AVAILABLE

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Status of every version of a model (newest first), or of the one asked for."""
        model = self.registry.model(name)
        if version:
            entry = model.versions.get(version)
            if entry is None:
                raise ServingError(Kind.MODEL_VERSION_MISSING)
            return [version_status(entry)]
        return [version_status(e) for _, e in sorted(model.versions.items(), reverse=True)]

    def all_status(self) -> dict[str, list[VersionStatus]]:
        """Every model's status, as GET /v1/config shows it."""
        return {name: self.model_status(name) for name in self.registry.models}

    def statistics(self, name: str, version: int | None) -> list:
        """(name, version, InferenceStats) of the versions asked for: one model's, or every model's."""
        names = [name] if name else list(self.registry.models)
        result = []
        for model_name in names:
            model = self.registry.model(model_name)
            if version:
                entry = model.versions.get(version)
                if entry is None:
                    raise ServingError(Kind.MODEL_VERSION_MISSING)
                result.append((model_name, entry.version, entry.stats))
            else:
                result += [(model_name, e.version, e.stats) for _, e in sorted(model.versions.items())
                           if e.state is VersionState.AVAILABLE]
        return result

    def servable(self, name: str, version: int | None) -> Servable:
        return self.registry.resolve(name, version)

    def model_metadata(self, name: str, version: int | None) -> ModelMetadata:
        servable = self.registry.resolve(name, version)
        model = self.registry.model(name)
        versions = [str(v) for v, e in sorted(model.versions.items()) if e.state is VersionState.AVAILABLE]
        return ModelMetadata(servable.name, versions, servable.platform, list(servable.inputs),
                             list(servable.outputs))

    async def infer(self, request: InferRequest, *, api: str = "KServe", interface: str = "gRPC",
                    method: str = "ModelInfer") -> InferResponse:
        started = time.perf_counter_ns()
        entry = self._entry(request, api, interface, method)
        servable = entry.enter()  # counted so an unload waits for this request
        try:
            if not isinstance(servable, InferServable):
                raise ServingError(Kind.NOT_IMPLEMENTED, f"model {request.model_name} does not take tensor "
                                                         "inference requests; use its OpenAI endpoints under /v3")
            response = await servable.infer(request)
        except BaseException:
            self._failed(entry, request, started, api, interface, method)
            raise
        finally:
            entry.leave()
        self._succeeded(entry, request, response, started, api, interface, method)
        return response

    def infer_now(self, request: InferRequest, *, api: str = "KServe", interface: str = "gRPC",
                  method: str = "ModelInfer") -> InferResponse | None:
        """``infer`` done in the calling thread, for servables fast enough to run on the event loop
        (``infer_now`` of the OpenVINO backend); None when the servable wants ``infer`` (nothing counted then)."""
        started = time.perf_counter_ns()
        entry = self._entry(request, api, interface, method)
        if not hasattr(entry.servable, "infer_now"):
            return None
        servable = entry.enter()
        try:
            response = servable.infer_now(request)
        except BaseException:
            self._failed(entry, request, started, api, interface, method)
            raise
        finally:
            entry.leave()
        if response is not None:
            self._succeeded(entry, request, response, started, api, interface, method)
        return response

    def _entry(self, request: InferRequest, api: str, interface: str, method: str):
        try:
            return self.registry.version_entry(request.model_name, request.model_version)
        except ServingError:
            self._count(api, interface, method, request.model_name, request.model_version, False)
            raise

    def _failed(self, entry, request: InferRequest, started: int, api: str, interface: str, method: str) -> None:
        stats = entry.stats
        stats.fail_count += 1
        stats.fail_ns += time.perf_counter_ns() - started
        if self.metrics is not None:
            self.metrics.request(api, interface, method, request.model_name, str(entry.version), False)

    def _succeeded(self, entry, request: InferRequest, response: InferResponse, started: int, api: str,
                   interface: str, method: str) -> None:
        elapsed_ns = time.perf_counter_ns() - started
        stats = entry.stats
        stats.success_count += 1
        stats.success_ns += elapsed_ns
        stats.last_inference_ms = time.time_ns() // 1_000_000
        if response.timings_us is not None:
            stats.queue_ns += int(response.timings_us[0] * 1000)
            stats.compute_infer_ns += int(response.timings_us[1] * 1000)
        metrics = self.metrics
        if metrics is not None:
            version = str(entry.version)
            metrics.request(api, interface, method, request.model_name, version, True)
            metrics.observe("ovms_request_time_us", (request.model_name, version, interface), elapsed_ns / 1000)
            if response.timings_us is not None:
                metrics.observe("ovms_wait_for_infer_req_time_us", (request.model_name, version),
                                response.timings_us[0])
                metrics.observe("ovms_inference_time_us", (request.model_name, version), response.timings_us[1])

    async def infer_stream(self, request: InferRequest, *, stream: StreamContext | None = None, api: str = "KServe",
                           interface: str = "gRPC", method: str = "Stream") -> AsyncIterator[InferResponse]:
        """The responses to one request of a stream: several from a servable that streams (a graph whose Python
        node yields; counted with OVMS's MediaPipe method label "Stream"), else the one ``infer`` gives (counted as
        ModelInfer, as before)."""
        try:
            entry = self.registry.version_entry(request.model_name, request.model_version)
        except ServingError:
            self._count(api, interface, "ModelInfer", request.model_name, request.model_version, False)
            raise
        if not isinstance(entry.servable, StreamingInferServable):
            yield await self.infer(request, api=api, interface=interface)
            return
        started = time.perf_counter_ns()
        servable = entry.enter()
        try:
            async for response in servable.infer_stream(request, stream=stream):
                yield response
        except BaseException:
            entry.stats.fail_count += 1
            entry.stats.fail_ns += time.perf_counter_ns() - started
            self._count(api, interface, method, request.model_name, entry.version, False)
            raise
        finally:
            entry.leave()
        stats = entry.stats
        stats.success_count += 1
        stats.success_ns += time.perf_counter_ns() - started
        stats.last_inference_ms = time.time_ns() // 1_000_000
        self._count(api, interface, method, request.model_name, entry.version, True)

    def counted(self, api: str, interface: str, method: str, name: str, version, call: Callable):
        """Run a non-inference verb (metadata, status, ready) and count it as OVMS does."""
        try:
            result = call()
        except ServingError:
            self._count(api, interface, method, name, version, False)
            raise
        self._count(api, interface, method, name, version, True)
        return result
