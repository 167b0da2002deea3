"""Backends: the only place that imports ``openvino`` / ``openvino_genai``."""


def ov_message(exc: BaseException) -> str:
    """OpenVINO's message without its "Exception from src/...cpp:NN:" location lines."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith("Exception from ")]
    return " ".join(lines) if lines else type(exc).__name__
