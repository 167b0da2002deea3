"""``POST /models/list``: what a hub can list, in the microservice's shape, and the errors a listing can end in.

Answer: ``{hub, items: [{name, owner, precisions, tags, model_type, last_modified, metadata}], count, total, limit,
offset, has_more, next_offset}``; a hub that cannot list is 501, credentials the hub refuses 401, an upstream that
fails 502 (the microservice's codes).

The Hugging Face Hub's model search (``GET /api/models``) pages with a cursor in ``Link: rel="next"``, not an
offset, and states no total: ``offset`` is reached by reading pages of up to ``PAGE_LIMIT`` from the start, one item
past the window tells ``has_more``, and ``total`` is known (and given) only when the listing ended inside it.
"""
from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse

from ovms.download.hubs.base import BadCredentials, Refused, UpstreamFailed
from ovms.pull.errors import PullError
from ovms.pull.hub import HubClient
from ovms.pull.settings import from_environment

_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')  # RFC 8288, as the Hub sends it


PAGE_LIMIT = 1000  # the Hub's largest page
LIST_RETRIES = 1
MAX_PAGES = 20  # never walk further than 20 000 repositories for one window
HF_FILTERS = ("search", "author", "pipeline_tag", "library", "tags", "sort")
_PRECISION = re.compile(r"(?:^|[-_])(int4|int8|fp16|fp32)(?:[-_]|$)", re.IGNORECASE)
# the Hub's pipeline_tag -> ModelRequest.type
MODEL_TYPE_OF_PIPELINE = {
    "text-generation": "llm", "image-text-to-text": "vlm", "feature-extraction": "embeddings",
    "sentence-similarity": "embeddings", "text-ranking": "rerank", "text-classification": "rerank",
    "text-to-image": "image_generation", "automatic-speech-recognition": "speech2text",
    "text-to-speech": "text2speech", "object-detection": "vision", "image-classification": "vision",
    "image-segmentation": "vision",
}


def window(items_seen: list[dict], limit: int, offset: int, exhausted: bool, hub: str) -> dict:
    """The answer for items ``[offset, offset + limit)`` of a listing of which ``items_seen`` were read."""
    items = items_seen[offset:offset + limit]
    has_more = len(items_seen) > offset + limit or not exhausted
    return {"hub": hub, "items": items, "count": len(items), "total": len(items_seen) if exhausted else None,
            "limit": limit, "offset": offset, "has_more": has_more,
            "next_offset": offset + len(items) if has_more else None}


def huggingface(filters: dict, limit: int, offset: int, token: str | None, *, hub: str = "huggingface",
                author: str | None = None) -> dict:
    """The Hub's model search; ``author`` fixed for the openvino hub (OpenVINO organisation)."""
    unknown = sorted(k for k in filters if k not in HF_FILTERS)
    if unknown:
        raise Refused(f"filters.{unknown[0]} is not a filter of hub {hub!r} (it takes "
                             f"{', '.join(HF_FILTERS)}).")
    settings = from_environment()
    # A listing is answered while the client waits: two tries a second apart, not the downloads' patient budget
    # (GIT_LFS_RESUME_ATTEMPTS x GIT_LFS_RESUME_INTERVAL_SECONDS, 5 x 10 s by default).
    settings = dataclasses.replace(settings, token=token or settings.token,
                                   resume_attempts=min(settings.resume_attempts, LIST_RETRIES),
                                   resume_interval=min(settings.resume_interval, 1.0))
    params: list[tuple[str, str]] = []
    for key in ("search", "author", "pipeline_tag", "library", "sort"):
        if filters.get(key) not in (None, ""):
            params.append((key, str(filters[key])))
    if author is not None:
        params = [(k, v) for k, v in params if k != "author"] + [("author", author)]
    tags = filters.get("tags") or []
    for tag in [tags] if isinstance(tags, str) else tags:
        params.append(("filter", str(tag)))
    wanted = offset + limit + 1
    params.append(("limit", str(min(PAGE_LIMIT, wanted))))
    url: str | None = f"{settings.endpoint}/api/models?{urllib.parse.urlencode(params)}"
    client = HubClient(settings)
    seen: list[dict] = []
    try:
        for _ in range(MAX_PAGES):
            try:
                resp = client.get(url)
            except PullError as exc:
                raise UpstreamFailed(f"The hub at {settings.endpoint} could not be reached: {exc}") from None
            if resp.status in (401, 403):
                raise BadCredentials(f"The hub at {settings.endpoint} refused the credentials (HTTP {resp.status})"
                                     f"{'' if settings.token else '; it needs a token (HF_TOKEN)'}.")
            if resp.status != 200:
                raise UpstreamFailed(f"The hub's model search answered HTTP {resp.status} ({url}).")
            try:
                page = json.loads(resp.body)
                if not isinstance(page, list):
                    raise ValueError("not a list")
                seen += [_hf_item(entry) for entry in page]
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise UpstreamFailed(f"The hub's model search at {url} sent an unexpected answer ({exc}).") from None
            match = _LINK_NEXT.search(resp.headers.get("link", ""))
            url = urllib.parse.urljoin(url, match.group(1)) if match else None
            if url is None or len(seen) >= wanted:
                break
    finally:
        client.close()
    return window(seen, limit, offset, url is None, hub)


def _hf_item(entry: dict) -> dict:
    repo_id = entry["id"]
    owner, _, name = repo_id.partition("/")
    precisions = sorted({m.group(1).lower() for m in _PRECISION.finditer(name)})
    return {"name": repo_id, "owner": owner if name else None, "precisions": precisions,
            "tags": list(entry.get("tags") or []),
            "model_type": MODEL_TYPE_OF_PIPELINE.get(entry.get("pipeline_tag") or ""),
            "last_modified": entry.get("lastModified") or entry.get("createdAt"),
            "metadata": {k: entry.get(k) for k in ("pipeline_tag", "library_name", "downloads", "likes", "private",
                                                   "gated") if k in entry}}
