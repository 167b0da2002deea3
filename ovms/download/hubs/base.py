"""What a hub plugin is to the service: it checks a request, says where the model goes, and fetches it.

``fetch`` runs on a download thread. It writes only under ``task.staging`` until the model is complete and
verified, then moves it to ``task.final`` in one rename, so a canceled or failed job never leaves a partial model
under the final name. The staging directory is named after the request (not the job), so a retried or restarted
job resumes from the bytes already there.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Callable


class Refused(Exception):
    """A request the service understands but will not carry out (HTTP 400 with the reason)."""


class BadName(Exception):
    """A model name this hub cannot use (HTTP 422 on ``models[i].name``)."""


class ListingError(Exception):
    """A hub listing (``POST /models/list``) that cannot be answered; ``status`` is the HTTP status (the
    microservice's codes)."""

    status = 502


class CannotList(ListingError):
    status = 501


class BadCredentials(ListingError):
    status = 401


class UpstreamFailed(ListingError):
    status = 502


@dataclasses.dataclass
class FetchTask:
    request: dict  # validated ModelRequest, plus "download_path"
    credentials: dict[str, str]  # decoded override_credentials; memory only
    base: pathlib.Path  # models_dir / download_path
    staging: pathlib.Path  # models_dir/.ovms_download/staging/<key hash>
    final: pathlib.Path  # where the finished model lives
    stop_requested: Callable[[], str | None]  # a reason ("canceled", "shutdown") when the job must stop
    on_progress: Callable[[int, int], None]  # (bytes on disk, total)
    on_status: Callable[[str], None] = lambda status: None  # "converting" once the download is done
    engine: object = None  # ovms.pull.engine.SharedEngine: every job's transfers on one bounded multi handle


@dataclasses.dataclass
class Plugin:
    """A downloader or converter the service knows; unavailable ones say why."""

    name: str
    type: str = "downloader"
    description: str = ""
    available: bool = True
    unavailable_reason: str | None = None
    supports_listing: bool = False
    listing_filter_fields: tuple[str, ...] = ()
    cannot_list_reason: str = "this hub has no listing"

    def describe(self) -> dict:
        return {"name": self.name, "type": self.type, "description": self.description,
                "capabilities": {"supports_parallel_downloads": self.available, "supports_listing":
                                 self.supports_listing, "listing_filter_fields": list(self.listing_filter_fields)},
                "available": self.available, "unavailable_reason": self.unavailable_reason}

    # ---- what a downloader implements ------------------------------------------------------------------------
    def check(self, request: dict) -> None:
        """Raise BadName or Refused before a job is made."""
        if not self.available:
            raise Refused(f"Hub {self.name!r} is not available: {self.unavailable_reason}")

    def revision(self, request: dict) -> str:
        return request.get("revision") or "main"

    def output_dir(self, base: pathlib.Path, request: dict) -> pathlib.Path:
        raise NotImplementedError

    def fetch(self, task: FetchTask) -> dict:
        """Bring the model to ``task.final``; returns the job's ``result`` (model_path, commit, ...)."""
        raise NotImplementedError

    def list_models(self, filters: dict, limit: int, offset: int, credentials: dict[str, str]) -> dict:
        """One window of the hub's models (runs on a thread); raises a ListingError or Refused."""
        raise CannotList(f"Hub {self.name!r} cannot list models: {self.cannot_list_reason}.")


def publish(staging_model: pathlib.Path, final: pathlib.Path) -> None:
    """Move a complete model from staging to its final name (one rename on the same filesystem)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging_model, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
