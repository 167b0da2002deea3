"""What to do with an HTTP response to a (ranged) file GET: a pure decision, tested on its own.

The engine asks once per response, when its headers are complete, before any body byte is written.
"""
from __future__ import annotations

import dataclasses
import re

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

WRITE = "write"  # the body is the bytes asked for: write them at the segment's next offset
RESTART_AT_ZERO = "restart-at-zero"  # one-range file, Range ignored: the body is the whole file, write from 0
COLLAPSE = "collapse"  # several ranges, Range ignored: drop them all, fetch the file as one stream
ABORT = "abort"  # the body is not what we asked for: stop and retry (reason says why)
DISCARD = "discard"  # a redirect: follow it
CAPTURE = "capture"  # an error: keep the start of the body for the message


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    action: str
    reason: str = ""


def classify(status: int, headers: dict[str, str], *, next_offset: int, segment_end: int, file_size: int,
             ranged: bool, single_segment: bool) -> Verdict:
    """Decide for a response with ``status`` and lower-cased ``headers`` to a request for
    ``[next_offset, segment_end)`` of a ``file_size``-byte file (``ranged``: a Range header was sent)."""
    if 300 <= status < 400:
        return Verdict(DISCARD)
    if status >= 400 or status < 200:
        return Verdict(CAPTURE)
    if status == 206:
        content_range = headers.get("content-range", "")
        m = _CONTENT_RANGE.match(content_range)
        if not m or int(m.group(1)) != next_offset or (m.group(3) != "*" and int(m.group(3)) != file_size):
            return Verdict(ABORT, f"the server answered with range {content_range!r}, expected bytes "
                                  f"{next_offset}-{segment_end - 1}/{file_size}")
        return Verdict(WRITE)
    if status != 200:
        return Verdict(ABORT, f"unexpected HTTP {status}")
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != file_size:
        return Verdict(ABORT, f"the server's copy is {length} bytes, the hub lists {file_size}")
    if not ranged:
        return Verdict(WRITE)
    if single_segment:
        return Verdict(RESTART_AT_ZERO, "the server ignored the Range request (HTTP 200)")
    return Verdict(COLLAPSE, "the server ignored the Range request (HTTP 200 to a ranged GET)")
