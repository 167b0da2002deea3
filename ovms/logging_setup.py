"""Logging as OVMS users expect: --log_level TRACE..ERROR, --log_path, one line per event."""
from __future__ import annotations

import logging
import sys

TRACE = 5
LEVELS = {"TRACE": TRACE, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
          "ERROR": logging.ERROR}
FORMAT = "[%(asctime)s.%(msecs)03d][%(process)d][%(name)s][%(levelname)s] %(message)s"


def configure(level: str = "INFO", path: str | None = None) -> None:
    logging.addLevelName(TRACE, "TRACE")
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(LEVELS[level], logging.WARNING))
