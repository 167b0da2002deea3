"""Backends: the only place that imports ``openvino`` / ``openvino_genai``."""
