"""The hubs this service knows, and why the unavailable ones are unavailable (``GET /plugins`` shows both)."""
from __future__ import annotations

from ovms.download.hubs.base import Plugin
from ovms.download.hubs.huggingface import HuggingFacePlugin
from ovms.download.hubs.ollama import OllamaPlugin
from ovms.download.hubs.remote_url import AllowEntry, RemoteUrlPlugin

NOT_IMPLEMENTED = "not implemented in this service yet"


def default_plugins(*, remote_url_allowlist: list[AllowEntry] | None = None) -> dict[str, Plugin]:
    """Every hub of the API; ``remote_url_allowlist`` None reads EXTERNAL_SOURCES_URL_ALLOWLIST."""
    plugins: dict[str, Plugin] = {
        "huggingface": HuggingFacePlugin(),
        "openvino": HuggingFacePlugin("openvino", always_ovms=True),
        "ollama": OllamaPlugin(),
        "ultralytics": Plugin("ultralytics", description="YOLO models exported to OpenVINO", available=False,
                              unavailable_reason=NOT_IMPLEMENTED + " (needs the ultralytics package and its "
                                                                   "asset server)"),
        "geti": Plugin("geti", description="Models trained on an Intel Geti server", available=False,
                       unavailable_reason=NOT_IMPLEMENTED + " (needs the Geti SDK, GETI_HOST and GETI_TOKEN)"),
        "remote-url": RemoteUrlPlugin(remote_url_allowlist),
    }
    return plugins
