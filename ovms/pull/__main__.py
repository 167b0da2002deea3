"""``python -m ovms.pull``: pull mode alone, without the serving core (for development and scripts).

``python -m ovms --pull ...`` is the supported entry; this one takes the same flags.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ovms.pull import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ovms.pull", description="Pull a model from Hugging Face.")
    # The four flags the core owns in `python -m ovms`.
    parser.add_argument("--model_name")
    parser.add_argument("--target_device")
    parser.add_argument("--config_path")
    parser.add_argument("--log_level", default="INFO", choices=("TRACE", "DEBUG", "INFO", "WARNING", "ERROR"))
    cli.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {"TRACE": logging.DEBUG}.get(args.log_level, getattr(logging, args.log_level))
    logging.basicConfig(level=level, format="[%(asctime)s][%(levelname)s][%(name)s] %(message)s")
    code, _ = cli.run(args, serve_after=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
