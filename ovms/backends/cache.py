"""``--cache_dir``: OpenVINO's compiled-model cache, for every backend.

The composition root calls ``configure`` once; the backends ask ``properties_for`` when they compile. As in OVMS
(docs/model_cache.md), a model whose shape or batch size is "auto" is not cached unless its entry says
``"allow_cache": true`` (its compiled form changes with every new request shape, so the cache would only
grow), and ``"allow_cache": false`` opts a model out. The cache directory is created if missing.
"""
from __future__ import annotations

import logging
import os

from ovms.config import ModelConfig
from ovms.errors import ModelLoadError

log = logging.getLogger("ovms.cache")

_cache_dir: str | None = None


def configure(cache_dir: str | None) -> None:
    global _cache_dir
    _cache_dir = os.path.abspath(cache_dir) if cache_dir else None


def _auto(config: ModelConfig) -> bool:
    values = [config.batch_size, *(config.shape if isinstance(config.shape, tuple) else [config.shape])]
    return any(v == "auto" or (isinstance(v, tuple) and v[1] == "auto") for v in values if v is not None)


def properties_for(config: ModelConfig) -> dict:
    """{"CACHE_DIR": dir} when this model's compiled form goes to the cache, else {}."""
    if _cache_dir is None or config.allow_cache is False:
        return {}
    if config.allow_cache is None and _auto(config):
        return {}
    try:
        os.makedirs(_cache_dir, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"--cache_dir {_cache_dir} cannot be created ({exc.strerror}); give a writable "
                             "directory or leave --cache_dir out") from None
    return {"CACHE_DIR": _cache_dir}
