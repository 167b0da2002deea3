"""``python -m ovms.download --port 8200 --models_dir DIR``: the model download service on its own."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiohttp import web

from ovms.download.hubs.remote_url import ALLOWLIST_ENV, parse_allowlist
from ovms.download.plugins import default_plugins
from ovms.download.routes import create_app
from ovms.download.service import DownloadService
from ovms.pull.errors import UsageError
from ovms.pull.settings import from_environment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ovms.download", description=(
        "Model download service: the Model Download microservice's REST API (/api/v1) on ovms's verified, "
        "resumable pull engine. Environment: HF_ENDPOINT, HF_TOKEN, https_proxy, GIT_LFS_RESUME_ATTEMPTS, "
        "GIT_LFS_RESUME_INTERVAL_SECONDS, OVMS_PULL_CONNECTIONS (connections across all downloads, as "
        "--max_connections), OVMS_PULL_*, EXTERNAL_SOURCES_URL_ALLOWLIST, ULTRALYTICS_ASSETS_URL, GETI_HOST, "
        "GETI_ORGANIZATION_ID, GETI_WORKSPACE_ID, GETI_TOKEN."))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8200)), help="default 8200")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                                                            "all interfaces)")
    parser.add_argument("--models_dir", default=os.environ.get("MODELS_DIR"),
                        help="directory the models are downloaded into (env MODELS_DIR); jobs are kept in "
                             "MODELS_DIR/.ovms_download/jobs.sqlite3")
    parser.add_argument("--max_parallel_downloads", type=int, default=4,
                        help="models downloading at once, across all requests (default 4)")
    parser.add_argument("--max_connections", type=int, default=None,
                        help="transfers in flight across all downloads, on one shared connection pool (default "
                             "OVMS_PULL_CONNECTIONS, 32); the count grows to it while the total rate grows")
    parser.add_argument("--remote_url_allowlist", default=os.environ.get(ALLOWLIST_ENV),
                        help="hosts (name[:port]) and http(s) URL prefixes, comma-separated, that hub remote-url may "
                             f"download from (env {ALLOWLIST_ENV}); empty: hub remote-url is unavailable")
    parser.add_argument("--log_level", default=os.environ.get("LOG_LEVEL", "INFO"),
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.models_dir:
        print("--models_dir (or MODELS_DIR) is required.", file=sys.stderr)
        return 64
    if args.max_parallel_downloads < 1:
        print("--max_parallel_downloads must be at least 1.", file=sys.stderr)
        return 64
    if args.max_connections is not None and args.max_connections < 1:
        print("--max_connections must be at least 1.", file=sys.stderr)
        return 64
    try:
        from_environment()  # a malformed OVMS_PULL_* / GIT_LFS_* / HF_ENDPOINT stops the start, not every job
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 64
    try:
        allowlist = parse_allowlist(args.remote_url_allowlist)
    except ValueError as exc:
        print(f"--remote_url_allowlist: {exc}.", file=sys.stderr)
        return 64
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    service = DownloadService(args.models_dir, max_parallel_downloads=args.max_parallel_downloads,
                              max_connections=args.max_connections,
                              plugins=default_plugins(remote_url_allowlist=allowlist))
    app = create_app(service)
    print(f"Model download service on http://{args.host}:{args.port}/api/v1 (models in {service.models_dir})",
          file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True,
                loop=asyncio.new_event_loop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
