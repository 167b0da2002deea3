"""Images of chat messages (OpenAI ``image_url`` content parts) -> RGB pixel arrays for a VLM servable.

Where an image may come from, as OVMS and vLLM let an operator decide:

- ``data:image/...;base64,...`` (any URL holding ``base64,``): always accepted, as in OVMS;
- a local file (a path or ``file://``): only under ``--allowed_local_media_path``;
- ``http(s)://``: only from a host listed in ``--allowed_media_domains`` (the server would otherwise fetch any
  address a client names, inside the network it runs in). The transport supplies the fetch function.

Errors are OVMS's texts where OVMS has one ("Invalid base64 string in request", "Image parsing failed", ...),
HTTP 400 either way. Decoding runs in a thread (Pillow releases the GIL while it decodes).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import pathlib
import urllib.parse
from typing import Awaitable, Callable

import numpy as np

from ovms.errors import Kind, ServingError

MAX_IMAGE_BYTES = 20 << 20  # per image, encoded
MAX_IMAGE_PIXELS = 8192 * 8192  # decoded; larger ones are refused before their pixels are allocated
Fetch = Callable[[str, int], Awaitable[bytes]]  # (url, byte limit) -> body


def invalid(message: str) -> ServingError:
    return ServingError(Kind.GENAI_INVALID_REQUEST, message)


@dataclasses.dataclass(slots=True)
class MediaPolicy:
    """What image sources a server accepts (from --allowed_local_media_path / --allowed_media_domains)."""

    local_path: pathlib.Path | None = None
    domains: tuple[str, ...] = ()
    fetch: Fetch | None = None

    def allows_domain(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in self.domains)


async def load_images(urls: list[str], policy: MediaPolicy) -> list[np.ndarray]:
    """The images at ``urls``, each as a uint8 array [1, height, width, 3] (RGB)."""
    encoded = [await _read(url, policy) for url in urls]
    return await asyncio.to_thread(lambda: [decode_image(data) for data in encoded])


async def _read(url: str, policy: MediaPolicy) -> bytes:
    marker = url.find("base64,")
    if marker >= 0:
        try:
            data = base64.b64decode(url[marker + 7:], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Invalid base64 string in request") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise invalid(f"an image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
        return data
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname or ""
        if policy.fetch is None or not policy.allows_domain(host):
            raise invalid(f"Given url does not match any allowed domain from allowed_media_domains: {host!r} "
                          "(the server was started without --allowed_media_domains listing it; send the image "
                          "inline as a data:image/...;base64, URL instead)")
        try:
            return await policy.fetch(url, MAX_IMAGE_BYTES)
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any network failure is the request's
            raise invalid(f"Downloading image failed: {exc}") from None
    if parsed.scheme in ("", "file"):
        return _read_local(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url, policy)
    raise invalid("Url should contain base64 encoded string followed by \"base64,\" prefix or valid URL")


def _read_local(path_text: str, policy: MediaPolicy) -> bytes:
    if policy.local_path is None:
        raise invalid("Loading images from local filesystem is disabled (start the server with "
                      "--allowed_local_media_path to allow a directory)")
    path = pathlib.Path(path_text)
    if not path.is_absolute():
        path = policy.local_path / path
    try:
        resolved = path.resolve(strict=True)
    except OSError:
        raise invalid(f"Image file {path_text} does not exist or cannot be read") from None
    if not resolved.is_relative_to(policy.local_path.resolve()):
        raise invalid(f"Given filepath is not subpath of allowed_local_media_path: {path_text}")
    if resolved.stat().st_size > MAX_IMAGE_BYTES:
        raise invalid(f"image file {path_text} is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return resolved.read_bytes()
    except OSError as exc:
        raise invalid(f"Image file {path_text} cannot be read: {exc.strerror}") from None


def decode_image(data: bytes) -> np.ndarray:
    """PNG / JPEG / WebP / ... bytes -> uint8 [1, H, W, 3] RGB (alpha dropped, palettes expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise invalid(f"an image is {image.width}x{image.height} pixels; the limit is {MAX_IMAGE_PIXELS}")
            rgb = image.convert("RGB")
    except ServingError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise invalid("Image parsing failed") from None
    return np.asarray(rgb, dtype=np.uint8)[np.newaxis].copy()
