"""The long fuzz run: every network-facing parser fed generated inputs (tests/fuzz/harness.py).

    .venv/bin/python bench/fuzz.py [--per-target 200000] [--seed N]

Prints one line per target (inputs, refused, crashes, hangs, slowest input) and exits 1 on any crash or hang,
showing the first ones with the input id that reproduces them (`run(target, 1, seed)` on that index).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.fuzz.harness import TARGETS, run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-target", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    from ovms._native import is_native

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, seed {args.seed}, "
          f"native codec {'loaded' if is_native('tensorcodec') else 'NOT loaded'}")
    print("| target | inputs | refused | crashes | hangs | slowest | inputs/s |")
    print("|---|---|---|---|---|---|---|")
    bad = 0
    total = 0
    for target in TARGETS:
        started = time.monotonic()
        report = run(target, args.per_target, args.seed)
        elapsed = time.monotonic() - started
        total += report.inputs
        bad += len(report.crashes) + len(report.hangs)
        print(f"| {target} | {report.inputs:,} | {report.refused:,} | {len(report.crashes)} | {len(report.hangs)} | "
              f"{report.slowest * 1e3:.1f} ms | {report.inputs / elapsed:,.0f} |", flush=True)
        for item in (report.crashes + report.hangs)[:3]:
            print(item, file=sys.stderr)
    print(f"total {total:,} inputs, {bad} crashes or hangs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
