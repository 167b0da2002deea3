"""The hubs this service knows, and why the unavailable ones are unavailable (``GET /plugins`` shows both)."""
from __future__ import annotations

from ovms.download.hubs.base import Plugin
from ovms.download.hubs.geti import GetiPlugin
from ovms.download.hubs.huggingface import HuggingFacePlugin
from ovms.download.hubs.ollama import OllamaPlugin
from ovms.download.hubs.remote_url import AllowEntry, RemoteUrlPlugin
from ovms.download.hubs.ultralytics import UltralyticsPlugin


def default_plugins(*, remote_url_allowlist: list[AllowEntry] | None = None) -> dict[str, Plugin]:
    """Every hub of the API; ``remote_url_allowlist`` None reads EXTERNAL_SOURCES_URL_ALLOWLIST."""
    plugins: dict[str, Plugin] = {
        "huggingface": HuggingFacePlugin(),
        "openvino": HuggingFacePlugin("openvino", always_ovms=True),
        "ollama": OllamaPlugin(),
        "ultralytics": UltralyticsPlugin(),
        "geti": GetiPlugin(),
        "remote-url": RemoteUrlPlugin(remote_url_allowlist),
    }
    return plugins
