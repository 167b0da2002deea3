"""Live model management: re-read config.json and version directories, on a timer or on request.

An invalid config file changes nothing: the error is logged and returned to whoever asked for the reload.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
from typing import Callable

from ovms.config import ModelConfig, load_config_file, localize
from ovms.errors import ConfigError
from ovms.registry import Registry
from ovms.repository import storage as remote_storage
from ovms.repository.mirror import Mirror

log = logging.getLogger("ovms.management")


@dataclasses.dataclass(slots=True)
class ReloadResult:
    changed: bool
    error: str | None = None


class ConfigManager:
    """Keeps the registry in step with the configuration source.

    ``source`` is a config.json path, or None in single-model mode where ``single`` is the fixed model list
    (its version directories are still watched).
    """

    def __init__(self, registry: Registry, *, config_path: pathlib.Path | str | None = None,
                 models: list[ModelConfig] | None = None,
                 on_change: Callable[[], None] | None = None,
                 repository_cache: str | None = None) -> None:
        self.registry = registry
        self.config_path = config_path
        self._models = models or []
        self._on_change = on_change
        self.last_error: str | None = None
        self._repository_cache = repository_cache
        self.mirror: Mirror | None = None  # made when a remote repository is first used
        self._remote_errors: dict[str, str] = {}
        self._copies: dict[str, ModelConfig] = {}  # the last good local copy of each remote model
        self._lock = asyncio.Lock()

    def read(self) -> list[ModelConfig]:
        if self.config_path is None:
            configs = self._models
        else:
            configs = load_config_file(self.config_path, read_text=remote_storage.read_text)
        return [self._localize(c) if c.source_url else c for c in configs]

    def _localize(self, config: ModelConfig) -> ModelConfig:
        """Bring the local copy of a remote model up to date and point its config at it.

        If the bucket cannot be read, the last good copy keeps serving (an outage or a credentials rotation does
        not unload models); the error is logged once per model until it changes.
        """
        if self.mirror is None:
            self.mirror = Mirror(self._repository_cache)
        versioned = config.kind == "model" and config.source_graph is None and config.task is None
        try:
            local = self.mirror.sync(config.source_url, select=config.version_policy.select if versioned else None)
            localized = localize(config, local)
        except (remote_storage.RemoteError, ConfigError) as exc:
            message = f"model {config.name}: cannot use {config.source_url}: {exc}"
            previous = self._copies.get(config.name)
            if self._remote_errors.get(config.name) != message:
                log.error("%s. %s", message, "The last downloaded copy keeps serving; trying again at the next poll"
                          if previous else "The model is not served; trying again at the next poll")
            self._remote_errors[config.name] = message
            if previous is not None and previous.source_url == config.source_url:
                return previous
            return dataclasses.replace(config, base_path=self.mirror.root / ".not-downloaded" / config.name)
        if self._remote_errors.pop(config.name, None):
            log.info("model %s: %s is readable again", config.name, config.source_url)
        self._copies[config.name] = localized
        return localized

    def close(self) -> None:
        """Remove the local copies when they live in a temporary directory of this process."""
        if self.mirror is not None and self._repository_cache is None:
            import shutil

            shutil.rmtree(self.mirror.root, ignore_errors=True)

    async def reload(self) -> ReloadResult:
        """Apply the current configuration; ``changed`` when any model or version was (un)loaded."""
        async with self._lock:  # the poller and /v1/config/reload share the local copies
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        try:
            configs = await asyncio.to_thread(self.read)
        except ConfigError as exc:
            if str(exc) != self.last_error:
                log.error("configuration not applied, the previous one stays in force: %s", exc)
            self.last_error = str(exc)
            return ReloadResult(False, str(exc))
        if self.last_error is not None:
            log.info("configuration is valid again: %s", self.config_path)
        self.last_error = None
        changed = await self.registry.apply(configs)
        if changed and self._on_change is not None:
            self._on_change()
        return ReloadResult(changed)

    async def poll(self, interval: float) -> None:
        """Reload every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep polling whatever one pass hit
                log.exception("configuration poll failed; trying again in %s s", interval)
