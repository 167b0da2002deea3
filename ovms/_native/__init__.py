"""Hot paths with two implementations: ``<name>_c`` (Cython) and ``<name>_py`` (the readable reference).

``load(name)`` picks the compiled module when it was built and ``OVMS_NO_EXTENSIONS`` is not ``1``; otherwise
the pure twin. ``load(name, pure=True)`` / ``load(name, pure=False)`` force one (tests use both). The choice is
made once per name and logged at DEBUG.
"""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

_log = logging.getLogger("ovms.native")
_chosen: dict[str, ModuleType] = {}


def extensions_disabled() -> bool:
    """True when the user asked for the pure-Python twins (``OVMS_NO_EXTENSIONS=1``)."""
    return os.environ.get("OVMS_NO_EXTENSIONS", "") == "1"


def load(name: str, *, pure: bool | None = None) -> ModuleType:
    """Return the implementation module of hot path ``name``.

    pure=None: native if available and allowed, else pure. pure=True: the ``_py`` twin. pure=False: the ``_c``
    module or ImportError.
    """
    if pure is True:
        return importlib.import_module(f"ovms._native.{name}_py")
    if pure is False:
        return importlib.import_module(f"ovms._native.{name}_c")
    module = _chosen.get(name)
    if module is None:
        module = None
        if not extensions_disabled():
            try:
                module = importlib.import_module(f"ovms._native.{name}_c")
            except ImportError as exc:  # a pure build, or a broken one: the guard test tells which
                _log.debug("native %s unavailable (%s); using the pure-Python twin", name, exc)
        if module is None:
            module = importlib.import_module(f"ovms._native.{name}_py")
        _chosen[name] = module
    return module


def is_native(name: str) -> bool:
    """Whether ``load(name)`` resolves to the compiled module."""
    return load(name).__name__.endswith("_c")
