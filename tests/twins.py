"""The twins a test run expects (STYLE.md, "Native code"): the compiled ``<name>_c`` modules, unless the run asked
for the pure-Python twins with ``OVMS_NO_EXTENSIONS=1`` (``make test-pure``), where they need not even be built."""
from __future__ import annotations

import importlib
import os

import pytest

PURE_RUN = os.environ.get("OVMS_NO_EXTENSIONS", "") == "1"


def expected_module(name: str) -> str:
    """The module ``ovms._native.load(name)`` must resolve to in this run."""
    return f"ovms._native.{name}{'_py' if PURE_RUN else '_c'}"


def native_built(name: str) -> bool:
    try:
        importlib.import_module(f"ovms._native.{name}_c")
    except ImportError:
        return False
    return True


def twin_params(name: str) -> list:
    """Parameters for ``pure`` (True: the ``_py`` twin, False: the ``_c`` module). A run with extensions always
    has the native one, so a missing build fails there; a pure run leaves it out only when it was not built."""
    params = [pytest.param(True, id="pure")]
    if not PURE_RUN or native_built(name):
        params.append(pytest.param(False, id="native"))
    return params
