"""The image's HEALTHCHECK: exit 0 when the server in this container answers REST /v2/health/ready with 200.

The port is the --rest_port of the ovms process running here, read from /proc (the image has no curl and the
port is whatever the command line gave). Standard library only; prints why it failed, which
`docker inspect` / `podman healthcheck run` show.
"""
from __future__ import annotations

import os
import sys
import urllib.request


def rest_port() -> int | None:
    """--rest_port (or --rest_port=N) of the first ovms process found; None if no process has one."""
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        for i, arg in enumerate(argv):
            if arg.startswith("--rest_port="):
                return int(arg.partition("=")[2])
            if arg == "--rest_port" and i + 1 < len(argv):
                return int(argv[i + 1])
    return None


READY_PATH = "/v2/health/ready"


def check(port: int, *, host: str = "127.0.0.1") -> tuple[bool, str]:
    """(healthy, what to print) for the server's REST readiness on ``port``."""
    url = f"http://{host}:{port}{READY_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200, f"{url}: {response.status}"
    except Exception as error:  # noqa: BLE001 - any failure is "unhealthy", with its reason printed
        return False, f"{url}: {error}"


def main() -> int:
    port = rest_port()
    if not port:
        print("no ovms process with --rest_port here: the health check needs REST enabled")
        return 1
    healthy, message = check(port)
    print(message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
