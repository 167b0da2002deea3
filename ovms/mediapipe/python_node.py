"""A ``PythonExecutorCalculator`` node: the user's ``OvmsPythonModel`` from ``handler_path``.

OVMS's interface (docs/python_support/reference.md): ``initialize(kwargs)`` once at load with node_name,
input_names, output_names and base_path; ``execute(inputs)`` with a list of ``pyovms.Tensor`` sorted by input tag,
returning a list of tensors or yielding lists (generative mode, with a LOOPBACK stream); ``finalize()`` at unload.
Every call here blocks and is made from a worker thread, never on the event loop.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import pathlib
import sys
import traceback
import types

from ovms.errors import ModelLoadError
from ovms.mediapipe.definition import LOOPBACK, GraphDefinition, Node, handler_path

log = logging.getLogger("ovms.mediapipe")


class NodeFailure(Exception):
    """A node failed while processing a request; the message says why, for the response."""


def describe(exc: BaseException, path: pathlib.Path | None = None) -> str:
    """``ValueError: bad input (model.py, line 7)``: the exception and the innermost line of the user's file."""
    where = ""
    if path is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if pathlib.Path(f.filename) == path]
        if frames:
            where = f" ({path.name}, line {frames[-1].lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def _import_handler(path: pathlib.Path) -> types.ModuleType:
    # One module per file, named after its full path: OVMS loads only one of two files that share a name
    # (reference.md, "Multiple nodes"); here /a/model.py and /b/model.py are both served. Executed again on every
    # load, so a reloaded graph runs the handler as it is now.
    name = "ovms_python_node_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.append(directory)  # modules beside the handler import as they would next to it
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


class PythonNode:
    """One loaded Python node: its model object, shared by every request (as OVMS shares it between graphs)."""

    def __init__(self, graph: GraphDefinition, node: Node, *, where: str) -> None:
        self.name = node.name
        self.path = handler_path(graph, node)
        self.inputs = sorted(node.data_inputs(), key=lambda s: (s.tag, s.index))  # OVMS passes them sorted by tag
        self.output_names = {s.name for s in node.data_outputs()}
        self.has_loopback = any(s.tag == LOOPBACK for s in node.inputs)
        prefix = f"{where}: Python node \"{node.name}\" ({self.path})"
        try:
            module = _import_handler(self.path)
        except Exception as exc:
            raise ModelLoadError(f"{prefix}: The Python Node state initialization failed: importing the handler "
                                 f"raised {describe(exc, self.path)}") from None
        model_class = getattr(module, "OvmsPythonModel", None)
        if not isinstance(model_class, type):
            raise ModelLoadError(f"{prefix}: The Python Node state initialization failed: No OvmsPythonModel class "
                                 f"found in {self.path}")
        if not callable(getattr(model_class, "execute", None)):
            raise ModelLoadError(f"{prefix}: The Python Node state initialization failed: OvmsPythonModel class "
                                 f"defined in {self.path} does not implement execute method")
        try:
            self.model = model_class()
            initialize = getattr(self.model, "initialize", None)
            if callable(initialize):
                initialize({"node_name": node.name,
                            "input_names": [s.name for s in node.inputs if s.tag != LOOPBACK],
                            "output_names": [s.name for s in node.outputs if s.tag != LOOPBACK],
                            "base_path": str(self.path.parent)})
        except Exception as exc:
            raise ModelLoadError(f"{prefix}: The Python Node state initialization failed: initialize raised "
                                 f"{describe(exc, self.path)}") from None
        log.info("Python node %s initialized from %s", node.name, self.path)

    def execute(self, inputs: list):
        """Run ``execute`` (in a worker thread): a checked list of tensors, or the generator it returned."""
        try:
            result = self.model.execute(inputs)
        except Exception as exc:
            raise NodeFailure(f"Error occurred during graph execution: {describe(exc, self.path)}") from None
        if isinstance(result, types.GeneratorType) or (hasattr(result, "__next__") and hasattr(result, "__iter__")
                                                       and not isinstance(result, list)):
            if not self.has_loopback:
                raise NodeFailure("Execute yielded, but LOOPBACK is not defined in the node")
            return result
        return self.check_outputs(result)

    def next_outputs(self, generator):
        """The generator's next list of tensors (in a worker thread), or None when it is exhausted."""
        try:
            outputs = next(generator)
        except StopIteration:
            return None
        except Exception as exc:
            raise NodeFailure(f"Error occurred during graph execution: {describe(exc, self.path)}") from None
        return self.check_outputs(outputs)

    def check_outputs(self, outputs) -> list:
        from pyovms import Tensor

        if not isinstance(outputs, list):
            raise NodeFailure(f"Error occurred during graph execution: execute returned {type(outputs).__name__}; "
                              "expected a list of pyovms.Tensor (or a generator of such lists)")
        for output in outputs:
            if not isinstance(output, Tensor):
                raise NodeFailure("Error occurred during graph execution. Wrong object on execute output: "
                                  f"{type(output).__name__}; expected pyovms.Tensor")
            if output.name not in self.output_names:
                raise NodeFailure(f"Error occurred during graph execution: execute returned a tensor named "
                                  f"{output.name!r}, which is not an output stream of the node (outputs: "
                                  f"{', '.join(sorted(self.output_names))})")
        return outputs

    def finalize(self) -> None:
        finalize = getattr(self.model, "finalize", None)
        if not callable(finalize):
            return
        try:
            finalize()
        except Exception as exc:  # OVMS logs it and goes on with the unload
            log.error("Failed to process python node finalize method. %s Python node handler_path: %s",
                      describe(exc, self.path), self.path)
