"""Model registry: (name, version) -> servable, with OVMS's version states and version policy.

The registry does not know any backend: the composition root passes a ``loader(config, version)`` that
compiles one version (blocking; run in a worker thread here).
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
class ModelVersion:
    version: int
    state: VersionState = VersionState.START
    servable: Servable | None = None
    error: str | None = None


@dataclasses.dataclass(slots=True)
class Model:
    config: ModelConfig
    versions: dict[int, ModelVersion] = dataclasses.field(default_factory=dict)
    error: str | None = None  # a model-level load problem (no version directory, ...)

    @property
    def name(self) -> str:
        return self.config.name

    def default_version(self) -> ModelVersion | None:
        """The highest AVAILABLE version (OVMS's default when a request names none)."""
        available = [v for v in self.versions.values() if v.state is VersionState.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None


Loader = Callable[[ModelConfig, int], Servable]


class Registry:
    """All models the server knows, whether or not they loaded."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self.models: dict[str, Model] = {}

    def resolve(self, name: str, version: int | None = None) -> Servable:
        """The servable for a request, or a ServingError with OVMS's message."""
        model = self.models.get(name)
        if model is None:
            raise ServingError(Kind.MODEL_NAME_MISSING)
        if version is None or version == 0:  # 0 is "default" for TFS clients (ovmsclient sends it)
            chosen = model.default_version()
            if chosen is None:
                raise ServingError(Kind.MODEL_VERSION_MISSING)
            return chosen.servable
        entry = model.versions.get(version)
        if entry is None:
            raise ServingError(Kind.MODEL_VERSION_MISSING)
        if entry.state is VersionState.AVAILABLE:
            return entry.servable
        if entry.state in (VersionState.START, VersionState.LOADING):
            raise ServingError(Kind.MODEL_VERSION_NOT_LOADED_YET)
        raise ServingError(Kind.MODEL_VERSION_NOT_LOADED_ANYMORE)

    def model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ServingError(Kind.MODEL_NAME_MISSING)
        return model

    def is_ready(self) -> bool:
        """Server readiness: every configured model has its default version available."""
        return all(m.default_version() is not None for m in self.models.values())

    async def load(self, configs: list[ModelConfig]) -> None:
        """Load every model's selected versions; failures are recorded and logged, never raised."""
        for config in configs:
            model = Model(config)
            self.models[config.name] = model
            if not config.base_path.is_dir():
                model.error = (f"model {config.name}: The provided base path is invalid or doesn't exists: "
                               f"{config.base_path}")
                log.error("%s", model.error)
                continue
            versions = config.version_policy.select(numeric_versions(config.base_path))
            if not versions:
                model.error = (f"model {config.name}: Not a single model version directory has valid numeric "
                               f"name in {config.base_path}; put the model files in {config.base_path}/1/")
                log.error("%s", model.error)
                continue
            for version in versions:
                model.versions[version] = ModelVersion(version)
        await asyncio.gather(*(self._load_version(m, v) for m in self.models.values() for v in list(m.versions)))

    async def _load_version(self, model: Model, version: int) -> None:
        entry = model.versions[version]
        entry.state = VersionState.LOADING
        log.info("STATE CHANGED: model %s version %d -> LOADING", model.name, version)
        try:
            servable = await asyncio.to_thread(self._loader, model.config, version)
        except ModelLoadError as exc:
            entry.error = str(exc)
            log.error("model %s version %d failed to load: %s", model.name, version, exc)
            return
        except Exception as exc:  # a backend bug must not stop the other models
            entry.error = f"{type(exc).__name__}: {exc}"
            log.exception("model %s version %d failed to load", model.name, version)
            return
        entry.servable = servable
        entry.state = VersionState.AVAILABLE
        log.info("STATE CHANGED: model %s version %d -> AVAILABLE", model.name, version)

    def close(self) -> None:
        for model in self.models.values():
            for entry in model.versions.values():
                if entry.servable is not None:
                    entry.state = VersionState.END
                    entry.servable.close()
                    entry.servable = None
