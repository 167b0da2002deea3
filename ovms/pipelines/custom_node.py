"""Python custom nodes: what OVMS's C custom node libraries do, as a class in a ``.py`` file.

A library (``custom_node_library_config_list`` entry ``{"name", "base_path": "nodes/crop.py", "class_name"}``,
class name ``CustomNode`` by default) is a class with OVMS's custom node interface (src/custom_node_interface.h)
in Python terms::

    class CustomNode:
        def __init__(self, params: dict[str, str]): ...          # initialize(): the node's "params"
        def inputs_info(self) -> dict[str, tuple[str, list[int]]]: ...   # getInputsInfo(): KServe datatype, shape
        def outputs_info(self) -> dict[str, tuple[str, list[int]]]: ...  # getOutputsInfo(); -1: any size
        def execute(self, inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]: ...
        def close(self): ...                                         # deinitialize(); optional

The file is imported once per pipeline load; one instance is made per pipeline node then, and closed when it unloads. ``execute`` runs in
a worker thread, possibly for several requests (and demultiplexed branches) at once.
"""
from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np

from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.pipelines.definition import CustomNodeLibrary
from ovms.types import NUMPY_DTYPE, TensorSpec, datatype_of

log = logging.getLogger("ovms.pipelines")

_loaded = 0


def import_library(library: CustomNodeLibrary):
    """Import the library's file afresh (a reload picks up an edited node); once per pipeline load, so the nodes
    of one pipeline that use one library share its module."""
    global _loaded
    _loaded += 1
    module_name = f"ovms_custom_node_{library.name}_{_loaded}"
    spec = importlib.util.spec_from_file_location(module_name, library.path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"Custom node library failed to open: {library.path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"Custom node library failed to open: importing {library.path} raised "
                             f"{type(exc).__name__}: {exc}") from None
    return module


def _specs(info, node: str, what: str) -> dict[str, TensorSpec]:
    if not isinstance(info, dict):
        raise ModelLoadError(f"Custom node failed on metadata call: node {node}: {what}() must return a dict of "
                             "name -> (datatype, shape)")
    specs = {}
    for name, value in info.items():
        try:
            datatype, shape = value
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ModelLoadError(f"Custom node failed on metadata call: node {node}: {what}()[{name!r}] must be "
                                 f"(datatype, shape), got {value!r}") from None
        if datatype not in NUMPY_DTYPE and datatype != "BYTES":
            raise ModelLoadError(f"Custom node failed on metadata call: node {node}: {what}()[{name!r}] has "
                                 f"datatype {datatype!r}; use a KServe datatype such as FP32, INT64, UINT8, BYTES")
        specs[name] = TensorSpec(name, datatype, shape)
    return specs


class CustomNode:
    """One pipeline node's instance of a Python custom node class."""

    def __init__(self, library: CustomNodeLibrary, module, node: str, params: dict[str, str]) -> None:
        self.node = node
        cls = getattr(module, library.class_name, None)
        if not isinstance(cls, type):
            raise ModelLoadError(f"Custom node library failed to load symbol: {library.path} has no class "
                                 f"{library.class_name} (set class_name in custom_node_library_config_list)")
        for method in ("inputs_info", "outputs_info", "execute"):
            if not callable(getattr(cls, method, None)):
                raise ModelLoadError(f"Custom node library failed to load symbol: class {library.class_name} in "
                                     f"{library.path} has no method {method}()")
        try:
            self.instance = cls(dict(params))
            self.inputs = _specs(self.instance.inputs_info(), node, "inputs_info")
            self.outputs = _specs(self.instance.outputs_info(), node, "outputs_info")
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"Failure during custom node library initialization: node {node} "
                                 f"({library.class_name} in {library.path}) raised {type(exc).__name__}: "
                                 f"{exc}") from None

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the node (blocking; called in a worker thread) and check what it returned."""
        try:
            outputs = self.instance.execute(inputs)
        except Exception as exc:
            log.warning("custom node %s failed: %s: %s", self.node, type(exc).__name__, exc, exc_info=True)
            raise ServingError(Kind.NODE_LIBRARY_EXECUTION_FAILED,
                               f"node {self.node}: {type(exc).__name__}: {exc}") from None
        if not isinstance(outputs, dict):
            raise ServingError(Kind.NODE_LIBRARY_EXECUTION_FAILED,
                               f"node {self.node}: execute() must return a dict of output name -> array, "
                               f"got {type(outputs).__name__}")
        result = {}
        for name, spec in self.outputs.items():
            if name not in outputs:
                raise ServingError(Kind.NODE_LIBRARY_MISSING_OUTPUT, f"node {self.node}: output {name}")
            array = np.asarray(outputs[name])
            try:
                datatype = datatype_of(array)
            except KeyError:
                raise ServingError(Kind.NODE_LIBRARY_INVALID_PRECISION,
                                   f"node {self.node}: output {name} has dtype {array.dtype}") from None
            if datatype != spec.datatype:
                raise ServingError(Kind.NODE_LIBRARY_INVALID_PRECISION,
                                   f"node {self.node}: output {name} is {datatype}, outputs_info() says "
                                   f"{spec.datatype}")
            if len(array.shape) != len(spec.shape) or any(want not in (-1, got)
                                                           for want, got in zip(spec.shape, array.shape)):
                raise ServingError(Kind.NODE_LIBRARY_INVALID_SHAPE,
                                   f"node {self.node}: output {name} has shape {list(array.shape)}, outputs_info() "
                                   f"says {list(spec.shape)}")
            result[name] = array
        return result

    def close(self) -> None:
        close = getattr(self.instance, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("custom node %s: close() failed", self.node)
