"""Images of chat messages (OpenAI ``image_url`` content parts) -> RGB pixel arrays for a VLM servable.

Where an image may come from, as OVMS and vLLM let an operator decide:

- ``data:image/...;base64,...`` (any URL holding ``base64,``): always accepted, as in OVMS;
- a local file (a path or ``file://``): only under ``--allowed_local_media_path``;
- ``http(s)://``: only from a host listed in ``--allowed_media_domains`` (exact host names, as OVMS and vLLM
  match them; ``all`` allows any host). Otherwise the server would fetch any address a client names, inside
  the network it runs in. The transport supplies the fetch function and re-checks the host it connects to.

Errors are OVMS's texts where OVMS has one ("Invalid base64 string in request", "Image parsing failed", ...),
HTTP 400 either way. Limits: MAX_IMAGES per request, MAX_IMAGE_BYTES encoded per image, MAX_IMAGE_PIXELS per
image and MAX_TOTAL_PIXELS per request, checked from the image header before any pixel is decoded. Reading files
and decoding run in a thread (Pillow releases the GIL while it decodes).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import ipaddress
import os
import pathlib
import re
import stat
import urllib.parse
import warnings
from typing import Awaitable, Callable

import numpy as np

from ovms.errors import Kind, ServingError

MAX_IMAGES = 16  # per request
MAX_IMAGE_BYTES = 20 << 20  # per image, encoded
MAX_IMAGE_PIXELS = 4096 * 4096  # per image (VLM preprocessors scale far below this)
MAX_TOTAL_PIXELS = 4 * 4096 * 4096  # per request: 200 MB of RGB at most
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow decoders we accept (not its 40 others: EPS, TIFF, ...)
Fetch = Callable[[str, str, int], Awaitable[bytes]]  # (url, the host checked, byte limit) -> body
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def invalid(message: str) -> ServingError:
    return ServingError(Kind.GENAI_INVALID_REQUEST, message)


@dataclasses.dataclass(slots=True)
class MediaPolicy:
    """What image sources a server accepts (from --allowed_local_media_path / --allowed_media_domains)."""

    local_path: pathlib.Path | None = None
    domains: tuple[str, ...] = ()
    fetch: Fetch | None = None

    def allows_host(self, host: str) -> bool:
        """Exact match of a plain host name or IP address (no userinfo, ports, or odd characters)."""
        host = canonical_host(host)
        return host is not None and ("all" in self.domains or host in self.domains)


def canonical_host(host: str) -> str | None:
    """A host as the allow-list compares it: an IP address in its canonical form, or a plain DNS name in lower
    case without a trailing dot; None for anything else."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host if _HOST.match(host) else None


def normalize_domains(entries) -> tuple[str, ...]:
    """--allowed_media_domains entries as allows_host compares them (entries that can match no host dropped)."""
    hosts = (canonical_host(entry.strip().strip("[]")) for entry in entries)
    return tuple(h for h in hosts if h)


async def load_images(urls: list[str], policy: MediaPolicy) -> list[np.ndarray]:
    """The images at ``urls``, each as a uint8 array [1, height, width, 3] (RGB)."""
    if len(urls) > MAX_IMAGES:
        raise invalid(f"a request may carry at most {MAX_IMAGES} images; this one has {len(urls)}")
    encoded = [await _read(url, policy) for url in urls]
    return await asyncio.to_thread(_decode_all, encoded)


def _decode_all(encoded: list[bytes]) -> list[np.ndarray]:
    images, total = [], 0
    for data in encoded:
        image = decode_image(data, budget=MAX_TOTAL_PIXELS - total)
        total += image.shape[1] * image.shape[2]
        images.append(image)
    return images


async def _read(url: str, policy: MediaPolicy) -> bytes:
    marker = url.find("base64,")
    if marker >= 0:
        text = url[marker + 7:]
        # Decoded size before decoding: 3 bytes per 4 characters, less one per "=" of padding (without it, an
        # image of exactly the limit was refused inline while accepted from a file or a URL).
        padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
        if len(text) * 3 // 4 - padding > MAX_IMAGE_BYTES:
            raise invalid(f"an image is larger than {MAX_IMAGE_BYTES} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Invalid base64 string in request") from None
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
    except ValueError:
        raise invalid("Url should contain base64 encoded string followed by \"base64,\" prefix or valid URL") \
            from None
    if parsed.scheme in ("http", "https"):
        if policy.fetch is None or not policy.allows_host(host):
            raise invalid(f"Given url does not match any allowed domain from allowed_media_domains: {host!r} "
                          "(the server was started without --allowed_media_domains listing it; send the image "
                          "inline as a data:image/...;base64, URL instead)")
        try:
            return await policy.fetch(url, host, MAX_IMAGE_BYTES)
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any network failure is the request's
            raise invalid(f"Downloading image failed: {type(exc).__name__} {exc}".rstrip()) from None
    if parsed.scheme in ("", "file"):
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
        return await asyncio.to_thread(_read_local, path, policy)
    raise invalid("Url should contain base64 encoded string followed by \"base64,\" prefix or valid URL")


def _read_local(path_text: str, policy: MediaPolicy) -> bytes:
    root = policy.local_path
    if root is None:
        raise invalid("Loading images from local filesystem is disabled (start the server with "
                      "--allowed_local_media_path to allow a directory)")
    outside = invalid(f"Given filepath is not subpath of allowed_local_media_path: {path_text}")
    if "\0" in path_text:
        raise invalid("an image path cannot contain a NUL character")
    root = pathlib.Path(os.path.abspath(root))
    # The path as written first (so a client cannot probe which files exist elsewhere), then after symlinks.
    lexical = pathlib.Path(os.path.normpath(root / path_text))
    if not lexical.is_relative_to(root):
        raise outside
    try:
        resolved = lexical.resolve(strict=True)
    except (OSError, RuntimeError):
        raise invalid(f"Image file {path_text} does not exist or cannot be read") from None
    if not resolved.is_relative_to(root.resolve()):
        raise outside
    try:
        # Before opening: opening a FIFO would wait for a writer, and a device could be read without end.
        if not stat.S_ISREG(resolved.stat().st_mode):
            raise invalid(f"{path_text} is not a regular file")
        with open(resolved, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise invalid(f"Image file {path_text} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise invalid(f"image file {path_text} is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def decode_image(data: bytes, *, budget: int = MAX_TOTAL_PIXELS) -> np.ndarray:
    """PNG / JPEG / WebP / GIF / BMP bytes -> uint8 [1, H, W, 3] RGB (alpha dropped, palettes expanded).

    ``budget``: pixels the request has left (MAX_TOTAL_PIXELS minus its earlier images).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                pixels = image.width * image.height
                if pixels > MAX_IMAGE_PIXELS:
                    raise invalid(f"an image is {image.width}x{image.height} pixels; the limit is "
                                  f"{MAX_IMAGE_PIXELS} pixels per image")
                if pixels > budget:
                    raise invalid(f"the images of this request have more than {MAX_TOTAL_PIXELS} pixels together")
                rgb = image.convert("RGB")
    except ServingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise invalid(f"an image has more than {MAX_IMAGE_PIXELS} pixels (the limit per image)") from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - Pillow's decoders raise SyntaxError, OSError, ValueError, ... on bad data
        raise invalid("Image parsing failed") from None
    return np.asarray(rgb, dtype=np.uint8)[np.newaxis]
