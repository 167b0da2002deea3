"""Model registry: (name, version) -> servable, with OVMS's version states, version policy and live reload.

The registry does not know any backend: the composition root passes a ``loader(config, version)`` that
compiles one version (blocking; run in a worker thread here). ``apply(configs)`` moves the served set to a new
configuration: new models and versions load, removed ones unload after their in-flight requests end, a changed
model entry reloads, and the default version follows the highest available one.
"""
from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from typing import Callable

from ovms.config import ModelConfig, numeric_versions
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.servable import Servable

log = logging.getLogger("ovms.registry")


class VersionState(enum.IntEnum):
    """Model version states and their numeric codes as OVMS reports them."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(slots=True)
class InferenceStats:
    """Triton's statistics extension counters for one version (perf_analyzer reads them)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_infer_ns: int = 0
    last_inference_ms: int = 0


@dataclasses.dataclass(eq=False, slots=True)
class ModelVersion:
    """One version of a model: its state, its servable while loaded, and requests using it."""

    model_name: str
    version: int
    state: VersionState = VersionState.START
    servable: Servable | None = None
    error: str | None = None  # why the last load failed (state stays LOADING, error code UNKNOWN, as OVMS)
    in_flight: int = 0
    stats: InferenceStats = dataclasses.field(default_factory=InferenceStats)
    _idle: asyncio.Event | None = None

    def set_state(self, state: VersionState) -> None:
        if state is not self.state:
            log.info("STATE CHANGED: model %s version %d -> %s", self.model_name, self.version, state.name)
        self.state = state

    def enter(self) -> Servable:
        self.in_flight += 1
        return self.servable

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until no request uses this version."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()


@dataclasses.dataclass(eq=False, slots=True)
class Model:
    config: ModelConfig
    versions: dict[int, ModelVersion] = dataclasses.field(default_factory=dict)
    error: str | None = None  # a model-level problem (no base path, no version directory)
    retired: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    def default_version(self) -> ModelVersion | None:
        """The highest AVAILABLE version (OVMS's default when a request names none)."""
        best = None
        for entry in self.versions.values():
            if entry.state is VersionState.AVAILABLE and (best is None or entry.version > best.version):
                best = entry
        return best


Loader = Callable[[ModelConfig, int], Servable]


class Registry:
    """All models the server knows, loaded or not."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self.models: dict[str, Model] = {}
        self._lock = asyncio.Lock()

    # ---- lookups (hot path) --------------------------------------------------------------------------------

    def version_entry(self, name: str, version: int | None = None) -> ModelVersion:
        """The available version a request asks for, or a ServingError with OVMS's message."""
        model = self.models.get(name)
        if model is None or (model.retired and model.default_version() is None):
            raise ServingError(Kind.MODEL_NAME_MISSING)
        if not version:  # None or 0: the default version (TFS clients such as ovmsclient send 0)
            entry = model.default_version()
            if entry is None:
                raise ServingError(Kind.MODEL_VERSION_MISSING)
            return entry
        entry = model.versions.get(version)
        if entry is None:
            raise ServingError(Kind.MODEL_VERSION_MISSING)
        if entry.state is VersionState.AVAILABLE:
            return entry
        if entry.state in (VersionState.START, VersionState.LOADING):
            raise ServingError(Kind.MODEL_VERSION_NOT_LOADED_YET)
        raise ServingError(Kind.MODEL_VERSION_NOT_LOADED_ANYMORE)

    def resolve(self, name: str, version: int | None = None) -> Servable:
        return self.version_entry(name, version).servable

    def model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ServingError(Kind.MODEL_NAME_MISSING)
        return model

    def is_ready(self) -> bool:
        """Every configured model has its default version available."""
        return all(m.default_version() is not None for m in self.models.values() if not m.retired)

    # ---- changes -------------------------------------------------------------------------------------------

    async def apply(self, configs: list[ModelConfig]) -> bool:
        """Move to ``configs``; return whether anything was loaded, reloaded or unloaded.

        Failures are recorded on the model or version and logged; one broken model never stops the others.
        """
        async with self._lock:
            wanted = {c.name: c for c in configs}
            jobs = []
            changed = False
            for name, model in list(self.models.items()):
                if name not in wanted and not model.retired:
                    log.info("model %s removed from the configuration: unloading", name)
                    model.retired = True
                    jobs += [self._retire(e) for e in model.versions.values() if e.state < VersionState.UNLOADING]
                    changed = True
            for name, config in wanted.items():
                model = self.models.get(name)
                if model is None or model.retired:
                    model = Model(config, versions=model.versions if model else {})
                    self.models[name] = model
                    changed = True
                elif model.config != config:
                    log.info("model %s configuration changed: reloading every version", name)
                    model.config = config
                    jobs += [self._retire(e) for e in model.versions.values() if e.state < VersionState.UNLOADING]
                    model.versions = {}
                    changed = True
                jobs_for_model, model_changed = self._sync_versions(model)
                jobs += jobs_for_model
                changed |= model_changed
            await asyncio.gather(*jobs)
            return changed

    def _sync_versions(self, model: Model) -> tuple[list, bool]:
        config = model.config
        if not config.base_path.is_dir():
            error = f"The provided base path is invalid or doesn't exists: {config.base_path}"
            return self._model_error(model, error), False
        present = [1] if config.kind == "graph" else numeric_versions(config.base_path)
        if not present:
            error = (f"Not a single model version directory has valid numeric name in {config.base_path}; put the "
                     f"model files in {config.base_path}/1/")
            return self._model_error(model, error), False
        model.error = None
        desired = set(config.version_policy.select(present))
        jobs, changed = [], False
        for version in sorted(desired):
            entry = model.versions.get(version)
            if entry is None or entry.state >= VersionState.UNLOADING:
                entry = ModelVersion(model.name, version)
                model.versions[version] = entry
                jobs.append(self._load(model, entry))
                changed = True
        for version, entry in model.versions.items():
            if version not in desired and entry.state < VersionState.UNLOADING:
                log.info("model %s version %d is no longer served (directory removed or policy): unloading",
                         model.name, version)
                jobs.append(self._retire(entry))
                changed = True
        return jobs, changed

    def _model_error(self, model: Model, error: str) -> list:
        if model.error != error:
            log.error("model %s: %s", model.name, error)
        model.error = error
        return [self._retire(e) for e in model.versions.values() if e.state < VersionState.UNLOADING]

    async def _load(self, model: Model, entry: ModelVersion) -> None:
        entry.set_state(VersionState.LOADING)
        try:
            servable = await asyncio.to_thread(self._loader, model.config, entry.version)
        except ModelLoadError as exc:
            entry.error = str(exc)
            log.error("model %s version %d failed to load: %s", model.name, entry.version, exc)
            return
        except Exception as exc:  # a backend bug must not stop the other models
            entry.error = f"{type(exc).__name__}: {exc}"
            log.exception("model %s version %d failed to load", model.name, entry.version)
            return
        entry.servable = servable
        entry.error = None
        entry.set_state(VersionState.AVAILABLE)

    async def _retire(self, entry: ModelVersion) -> None:
        """UNLOADING until the last in-flight request ends, then release the servable: END."""
        entry.set_state(VersionState.UNLOADING)
        await entry.drained()
        held, entry.servable = [entry.servable], None
        if held[0] is not None:
            # The servable is handed over in a list the closing thread empties: the executor's work item (which
            # its thread drops only after this coroutine has resumed) then keeps no reference to it, and the
            # collection after this reload (ovms/heap.py) frees it instead of freezing it for good.
            def close() -> None:
                held.pop().close()

            await asyncio.to_thread(close)
        entry.set_state(VersionState.END)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.gather(*(self._retire(e) for m in self.models.values() for e in m.versions.values()
                                   if e.state < VersionState.UNLOADING))
