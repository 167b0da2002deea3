"""Knobs of the download engine, read once from the environment and logged at start.

``GIT_LFS_RESUME_ATTEMPTS`` / ``GIT_LFS_RESUME_INTERVAL_SECONDS`` keep OVMS's names and defaults (OVMS docs,
"Pull mode: Tuning resume behavior"): attempts per file before giving up (0 disables resume: no retries, and
partial files from an earlier run are discarded), and the pause between attempts. The ``OVMS_PULL_*`` ones are
ours.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from ovms.pull.errors import UsageError

log = logging.getLogger("ovms.pull")

DEFAULT_HUB = "https://huggingface.co"


@dataclasses.dataclass(frozen=True, slots=True)
class PullSettings:
    endpoint: str = DEFAULT_HUB
    token: str | None = None
    proxy: str | None = None
    resume_attempts: int = 5
    resume_interval: float = 10.0
    connections: int = 32  # the most transfers at once; the engine starts with `initial_connections` and adds
    initial_connections: int = 8  # more while the total rate grows (ovms/pull/transfer.py ConnectionControl)
    segment_bytes: int = 16 << 20  # files larger than this are split into up to `connections` ranges
    connect_timeout: float = 10.0
    stall_seconds: float = 30.0  # abort a transfer that received nothing for this long, then retry
    checkpoint_seconds: float = 0.5  # how often the bytes on disk are recorded in the sidecars
    progress_seconds: float = 5.0  # period of the progress log line when stderr is not a terminal
    sync: bool = True  # fdatasync the files before the completion record (power-cut safety); OVMS_PULL_SYNC=0 skips
    direct_io: bool = True  # large files written with O_DIRECT (no page cache); OVMS_PULL_DIRECT_IO=0 turns it off

    @property
    def resume_enabled(self) -> bool:
        return self.resume_attempts > 0


def _number(env: dict, name: str, default: float, *, integer: bool = False, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a {'whole ' if integer else ''}number.",
                         remedy=f"Set {name} to a number >= {minimum} (default {default}) or unset it.") from None
    if value < minimum:
        raise UsageError(f"{name}={raw!r} is below {minimum}.", remedy=f"Set {name} >= {minimum} or unset it.")
    return value


def _switch(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}={raw!r} is neither on nor off.",
                     remedy=f"Set {name} to 1 or 0 (default {int(default)}) or unset it.")


def from_environment(env: dict | None = None) -> PullSettings:
    """Settings from ``env`` (default ``os.environ``); raises UsageError for malformed values."""
    env = os.environ if env is None else env
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"HF_ENDPOINT={endpoint!r} is not an http(s) URL.",
                         remedy="Set HF_ENDPOINT to e.g. https://huggingface.co or your mirror's URL.")
    settings = PullSettings(
        endpoint=endpoint,
        token=env.get("HF_TOKEN") or None,
        proxy=env.get("https_proxy") or env.get("HTTPS_PROXY") or None,
        resume_attempts=int(_number(env, "GIT_LFS_RESUME_ATTEMPTS", 5, integer=True)),
        resume_interval=_number(env, "GIT_LFS_RESUME_INTERVAL_SECONDS", 10.0),
        connections=int(_number(env, "OVMS_PULL_CONNECTIONS", 32, integer=True, minimum=1)),
        initial_connections=int(_number(env, "OVMS_PULL_INITIAL_CONNECTIONS", 8, integer=True, minimum=1)),
        segment_bytes=int(_number(env, "OVMS_PULL_SEGMENT_BYTES", 16 << 20, integer=True, minimum=1 << 20)),
        connect_timeout=_number(env, "OVMS_PULL_CONNECT_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        stall_seconds=_number(env, "OVMS_PULL_STALL_SECONDS", 30.0, minimum=0.1),
        progress_seconds=_number(env, "OVMS_PULL_PROGRESS_SECONDS", 5.0, minimum=0.1),
        sync=env.get("OVMS_PULL_SYNC", "1") != "0",
        direct_io=_switch(env, "OVMS_PULL_DIRECT_IO", True),
    )
    return settings


def log_settings(settings: PullSettings) -> None:
    """The resolved configuration, in OVMS's words first (users grep for it)."""
    log.info("LFS resume: attempts=%d interval=%g s", settings.resume_attempts, settings.resume_interval)
    log.info("Pull from %s: %d to %d connections (more while the total rate grows), files over %d MiB fetched as "
             "parallel ranges%s, stall timeout %g s%s%s", settings.endpoint,
             min(settings.initial_connections, settings.connections), settings.connections,
             settings.segment_bytes >> 20, " written with O_DIRECT" if settings.direct_io else "",
             settings.stall_seconds,
             ", HF_TOKEN set" if settings.token else "", f", proxy {settings.proxy}" if settings.proxy else "")
