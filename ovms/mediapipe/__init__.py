"""MediaPipe graphs with Python nodes and model nodes, served as KServe servables (OVMS's graph.pbtxt).

``definition`` reads and checks the graph, ``python_node`` runs the user's ``OvmsPythonModel``, ``executor`` moves
packets between nodes for one request, ``servable`` answers ModelInfer and ModelStreamInfer. Nothing here imports
OpenVINO: model nodes call the served models through the registry.
"""
from __future__ import annotations

import pathlib

from ovms.errors import ModelLoadError

GENAI_CALCULATORS = ("HttpLLMCalculator", "LLMCalculator", "EmbeddingsCalculatorOV", "EmbeddingsCalculator",
                     "RerankCalculatorOV", "RerankCalculator", "ImageGenCalculator", "S2tCalculator",
                     "T2sCalculator")


def is_mediapipe_graph(graph_path: pathlib.Path | None) -> bool:
    """A graph served by this package: it has no GenAI calculator (those are ovms.backends.genai's). A GenAI graph
    with Python nodes is refused (ModelLoadError): the GenAI loader would serve its one node and skip the rest."""
    if graph_path is None:
        return False
    from ovms.graph import parse_text_proto

    try:
        document = parse_text_proto(graph_path.read_text())
    except Exception:
        return False  # the GenAI reader reports what is wrong with the file
    calculators = {str((n.get("calculator") or [""])[-1]) for n in document.get("node", []) if isinstance(n, dict)}
    generative = calculators & set(GENAI_CALCULATORS)
    if generative and "PythonExecutorCalculator" in calculators:
        raise ModelLoadError(f"graph {graph_path}: PythonExecutorCalculator nodes together with "
                             f"{', '.join(sorted(generative))} in one graph are not supported by this server; serve "
                             "the Python nodes as a graph of their own and the generative model as another")
    return bool(calculators) and not generative


def load_mediapipe_servable(config, registry=None):
    """Read, check and load a graph (blocking: Python nodes' initialize runs here)."""
    from ovms.mediapipe.definition import read_definition
    from ovms.mediapipe.servable import MediapipeServable

    where = f"graph {config.name} ({config.graph_path})"
    definition = read_definition(config.graph_path, where=where)
    return MediapipeServable(config.name, definition, registry=registry, where=where)


__all__ = ["ModelLoadError", "is_mediapipe_graph", "load_mediapipe_servable"]
