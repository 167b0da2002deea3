"""Live model management: re-read config.json and version directories, on a timer or on request.

An invalid config file changes nothing: the error is logged and returned to whoever asked for the reload.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
from typing import Callable

from ovms.config import ModelConfig, load_config_file
from ovms.errors import ConfigError
from ovms.registry import Registry

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

    def __init__(self, registry: Registry, *, config_path: pathlib.Path | None = None,
                 models: list[ModelConfig] | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.registry = registry
        self.config_path = config_path
        self._models = models or []
        self._on_change = on_change
        self.last_error: str | None = None

    def read(self) -> list[ModelConfig]:
        if self.config_path is None:
            return self._models
        return load_config_file(self.config_path)

    async def reload(self) -> ReloadResult:
        """Apply the current configuration; ``changed`` when any model or version was (un)loaded."""
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
