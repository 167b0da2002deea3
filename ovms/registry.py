"""Model registry: (name, version) -> servable, with OVMS's version states, version policy and live reload.

The registry does not know any backend: the composition root passes a ``loader(config, version)`` that
compiles one version (blocking; run in a worker thread here). ``apply(configs)`` moves the served set to a new
configuration: new models and versions load, removed ones unload after their in-flight requests end, a changed
model entry reloads, and the default version follows the highest available one.

A model that stays never loses its last available version to a change in progress. Versions load first and
retire after: a version the policy no longer selects keeps serving until the one replacing it is AVAILABLE (a
version directory copied in file by file fails to load at first), and a changed model entry serves its current
versions until the new ones are loaded. A version that failed to load is tried again when its files change and
then hold still for one poll, and otherwise on a back-off of 1 s doubling to RETRY_MAX_SECONDS.
"""
from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from typing import Callable

from ovms.config import ModelConfig, numeric_versions, version_files
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.servable import Servable

log = logging.getLogger("ovms.registry")

RETRY_MAX_SECONDS = 60.0


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
    # After a failed load: the files it saw, the files seen at the last poll, failures so far, next back-off try.
    failed_files: tuple | None = None
    seen_files: tuple | None = None
    failures: int = 0
    retry_at: float = 0.0
    held_for: int | None = None  # a newer version this one keeps serving for until it is AVAILABLE

    def retry_due(self, files: tuple, now: float) -> bool:
        """A failed load is tried again once its files changed and held still since the last poll, or when its
        back-off has passed (with the files still)."""
        still, self.seen_files = files == self.seen_files, files
        return still and (files != self.failed_files or now >= self.retry_at)

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
        if model.config.kind == "pipeline":
            entry = model.versions.get(version or 1)  # a pipeline's one version is 1, as in OVMS
            if entry is not None and entry.state is VersionState.AVAILABLE:
                return entry
            if entry is not None and entry.state >= VersionState.UNLOADING:
                raise ServingError(Kind.PIPELINE_NOT_LOADED_ANYMORE)
            if entry is None and version not in (None, 0, 1):
                raise ServingError(Kind.MODEL_VERSION_MISSING)
            raise ServingError(Kind.PIPELINE_NOT_LOADED_YET, entry.error if entry and entry.error else "")
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

        Loads run first, retirements after them, so a model that stays is never without an available version
        while its replacement loads. Failures are recorded on the model or version and logged; one broken model
        never stops the others.
        """
        async with self._lock:
            wanted = {c.name: c for c in configs}
            loads, early, retirements, swaps = [], [], [], []  # early: retired alongside the loads, as before
            changed = False
            for name, model in list(self.models.items()):
                if name not in wanted and not model.retired:
                    log.info("model %s removed from the configuration: unloading", name)
                    model.retired = True
                    early += [e for e in model.versions.values() if e.state < VersionState.UNLOADING]
                    changed = True
            for name, config in wanted.items():
                model = self.models.get(name)
                if model is None or model.retired:
                    model = Model(config, versions=model.versions if model else {})
                    self.models[name] = model
                    changed = True
                elif model.config != config and config.kind in ("model", "pipeline"):
                    log.info("model %s configuration changed: loading every version again; the current ones "
                             "serve until the new ones are loaded", name)
                    staged = Model(config)
                    loads += self._sync_versions(staged)
                    swaps.append((model, staged))
                    changed = True
                    continue
                elif model.config != config:
                    # A graph (an LLM and its generation worker, ...) is reloaded in place as before: two copies
                    # side by side would need twice the memory.
                    log.info("model %s configuration changed: reloading", name)
                    model.config = config
                    early += [e for e in model.versions.values() if e.state < VersionState.UNLOADING]
                    model.versions = {}
                    changed = True
                first_loads = self._sync_versions(model)
                changed |= any(not retry for _, _, retry in first_loads)
                loads += first_loads
            # Servables that call other models (pipelines) load after those models, to be checked against them.
            loads.sort(key=lambda load: load[0].config.uses_models)
            independent = [load for load in loads if not load[0].config.uses_models]
            dependent = loads[len(independent):]
            loaded = await asyncio.gather(*(self._load(model, entry) for model, entry, _ in independent),
                                          *(self._retire(e) for e in early))
            loaded = loaded[:len(independent)]
            loaded += await asyncio.gather(*(self._load(model, entry) for model, entry, _ in dependent))
            changed |= any(ok and retry for ok, (_, _, retry) in zip(loaded, loads))
            for model, staged in swaps:
                retirements += [e for e in model.versions.values() if e.state < VersionState.UNLOADING]
                model.config, model.versions, model.error = staged.config, staged.versions, staged.error
            for model in self.models.values():
                if not model.retired:
                    superseded = self._superseded(model)
                    changed |= bool(superseded)
                    retirements += superseded
            await asyncio.gather(*(self._retire(e) for e in retirements))
            if changed:
                await self._revalidate({id(entry) for _, entry, _ in loads})
            return changed

    async def _revalidate(self, just_loaded: set[int]) -> None:
        """After the served models changed: check every servable that uses them again (OVMS revalidates its
        pipelines), and load again those that failed because a model they need was missing."""
        for model in self.models.values():
            if model.retired or not model.config.uses_models:
                continue
            for entry in model.versions.values():
                if id(entry) in just_loaded or entry.state >= VersionState.UNLOADING:
                    continue
                if entry.servable is None:
                    if entry.error is not None:
                        log.info("%s: the models it uses changed; trying to load it again", model.name)
                        await self._load(model, entry)
                    continue
                try:
                    await asyncio.to_thread(entry.servable.revalidate)
                except ModelLoadError as exc:
                    if entry.error != str(exc):
                        log.error("%s no longer fits the models it uses and is not served until it does: %s",
                                  model.name, exc)
                    entry.error = str(exc)
                    # Only the next change of the models it uses makes it fit again, not its (absent) files.
                    entry.failed_files = entry.seen_files = ()
                    entry.retry_at = float("inf")
                    entry.set_state(VersionState.LOADING)
                    continue
                if entry.error is not None:
                    log.info("%s fits the models it uses again and is served", model.name)
                    entry.error = None
                    entry.set_state(VersionState.AVAILABLE)

    def _present(self, model: Model) -> list[int] | None:
        """The version numbers on disk, or None with ``model.error`` set when there are none."""
        config = model.config
        if config.kind == "pipeline":
            return [1]  # a pipeline has no files and one version, as in OVMS
        if not config.base_path.is_dir():
            self._set_model_error(model, "The provided base path is invalid or doesn't exists: "
                                         f"{config.source_url or config.base_path}")
            return None
        present = [1] if config.kind == "graph" or config.model_file else numeric_versions(config.base_path)
        if not present:
            self._set_model_error(model, f"Not a single model version directory has valid numeric name in "
                                         f"{config.base_path}; put the model files in {config.base_path}/1/")
            return None
        model.error = None
        return present

    def _sync_versions(self, model: Model) -> list[tuple[Model, ModelVersion, bool]]:
        """(model, version, is_retry) to load now: new versions the policy selects, and failed ones due again."""
        present = self._present(model)
        if present is None:
            return []
        loads = []
        now = time.monotonic()
        for version in sorted(model.config.version_policy.select(present)):
            entry = model.versions.get(version)
            if entry is None or entry.state >= VersionState.UNLOADING:
                entry = ModelVersion(model.name, version)
                model.versions[version] = entry
                loads.append((model, entry, False))
            elif entry.error is not None and entry.retry_due(version_files(model.config, version), now):
                log.info("model %s version %d: trying to load it again (%s)", model.name, version,
                         "its files changed" if entry.seen_files != entry.failed_files else "back-off")
                loads.append((model, entry, True))
        return loads

    def _superseded(self, model: Model) -> list[ModelVersion]:
        """Versions to retire now: those whose directory is gone, and those the policy no longer selects, except
        the newest of them while as many selected versions are not AVAILABLE yet (they keep serving)."""
        present = self._present(model)
        if present is None:
            return [e for e in model.versions.values() if e.state < VersionState.UNLOADING]
        selected = set(model.config.version_policy.select(present))
        waiting = sorted(v for v in selected if (e := model.versions.get(v)) is None
                         or e.state is not VersionState.AVAILABLE)
        holdable = sorted((v for v, e in model.versions.items() if v not in selected and v in present
                           and e.state is VersionState.AVAILABLE), reverse=True)
        held = dict(zip(holdable, reversed(waiting)))
        retire = []
        for version, entry in model.versions.items():
            if version in selected or entry.state >= VersionState.UNLOADING:
                continue
            if version in held:
                if entry.held_for != held[version]:
                    log.warning("model %s version %d keeps serving until version %d is available", model.name,
                                version, held[version])
                entry.held_for = held[version]
                continue
            reason = "directory removed" if version not in present else "replaced, per the version policy"
            log.info("model %s version %d is no longer served (%s): unloading", model.name, version, reason)
            retire.append(entry)
        return retire

    @staticmethod
    def _set_model_error(model: Model, error: str) -> None:
        # A remote model's copy is missing only when its bucket could not be read: the management layer has
        # logged that error with its cause, so it is not logged twice.
        if model.error != error and model.config.source_url is None:
            log.error("model %s: %s", model.name, error)
        model.error = error

    async def _load(self, model: Model, entry: ModelVersion) -> bool:
        """Load one version; True when it is AVAILABLE."""
        entry.set_state(VersionState.LOADING)
        files = await asyncio.to_thread(version_files, model.config, entry.version)
        try:
            servable = await asyncio.to_thread(self._loader, model.config, entry.version)
        except Exception as exc:
            # ModelLoadError is the backend's word on the files; anything else is a backend bug, which must not
            # stop the other models either.
            entry.error = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            entry.failures += 1
            entry.failed_files = entry.seen_files = files
            delay = min(2.0 ** (entry.failures - 1), RETRY_MAX_SECONDS)
            entry.retry_at = time.monotonic() + delay
            serving = model.default_version()
            log.error("model %s version %d failed to load: %s. %s; trying again when its files change, or in %g s",
                      model.name, entry.version, entry.error,
                      f"Version {serving.version} keeps serving" if serving else "The model has no version to serve",
                      delay, exc_info=not isinstance(exc, ModelLoadError))
            return False
        entry.servable = servable
        entry.error = entry.failed_files = entry.seen_files = None
        entry.failures = 0
        entry.set_state(VersionState.AVAILABLE)
        return True

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
