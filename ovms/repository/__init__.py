"""Remote model repositories: S3 (and S3-compatible stores), Google Cloud Storage and Azure Blob Storage.

A remote ``base_path`` (``s3://``, ``gs://``, ``az://`` or ``azure://``) is mirrored into a local cache
(``mirror.Mirror``) and served from there, so version listing, polling and loading are the local ones. The
cloud SDKs are optional extras (``pip install 'ovms[s3]'``, ``[gcs]``, ``[azure]``); each is imported only when
a URL of its kind is used.
"""
from __future__ import annotations

import re

REMOTE_SCHEMES = ("s3", "gs", "az", "azure")
_URL = re.compile(r"^(?P<scheme>[a-z0-9]+)://(?P<bucket>[^/]+)(?:/(?P<prefix>.*))?$")


def is_remote(path: str) -> bool:
    """True for a URL with a scheme (``s3://...``), whether or not it is one this server reads."""
    return isinstance(path, str) and "://" in path


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket or container, key prefix without slashes at the ends)."""
    match = _URL.match(url)
    if match is None or match["scheme"] not in REMOTE_SCHEMES:
        if url.startswith("azfs://"):
            raise ValueError(f"{url}: Azure file shares (azfs://) are not supported; copy the models to a blob "
                             "container and use az://container/path")
        raise ValueError(f"{url}: not a model repository URL this server reads; use s3://bucket/path, "
                         "gs://bucket/path or az://container/path (azure:// is the same)")
    return match["scheme"], match["bucket"], (match["prefix"] or "").strip("/")


def join(base: str, relative: str) -> str:
    """``relative`` under the remote directory ``base``."""
    return base.rstrip("/") + "/" + relative.lstrip("/")
