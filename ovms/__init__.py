"""ovms: OpenVINO Model Server in Python."""

__version__ = "0.1.0"
