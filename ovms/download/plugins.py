"""The hubs this service knows, and why the missing ones are missing (``GET /plugins`` shows both)."""
from __future__ import annotations

from ovms.download.hubs.base import Plugin
from ovms.download.hubs.huggingface import HuggingFacePlugin
from ovms.download.hubs.ollama import OllamaPlugin

NOT_IMPLEMENTED = "not implemented in this service yet"


def default_plugins() -> dict[str, Plugin]:
    plugins: dict[str, Plugin] = {
        "huggingface": HuggingFacePlugin(),
        "openvino": HuggingFacePlugin("openvino", always_ovms=True),
        "ollama": OllamaPlugin(),
        "ultralytics": Plugin("ultralytics", description="YOLO models exported to OpenVINO", available=False,
                              unavailable_reason=NOT_IMPLEMENTED + " (needs the ultralytics package and its "
                                                                   "asset server)"),
        "geti": Plugin("geti", description="Models trained on an Intel Geti server", available=False,
                       unavailable_reason=NOT_IMPLEMENTED + " (needs the Geti SDK, GETI_HOST and GETI_TOKEN)"),
        "remote-url": Plugin("remote-url", description="A file from an allow-listed HTTP(S) URL", available=False,
                             unavailable_reason=NOT_IMPLEMENTED),
    }
    return plugins
