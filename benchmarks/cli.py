"""``dpdistill-bench`` (or ``python -m benchmarks``): measuring the system. Speed, the ``bench-*``
benchmarks, the empirical privacy audit and membership inference (``benchmarks.commands``). Kept apart
from ``dpdistill`` (``deploy.cli``) because the benchmarks run the system: they import ``deploy``, and
``deploy`` never imports them."""

from __future__ import annotations

import argparse
import sys

from benchmarks import commands as measuring
from deploy.cli import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpdistill-bench",
        description="Measure dpdistill: speed, benchmarks, the empirical privacy audit, membership inference.",
        epilog="Running the system (simulate, deploy-local, owner-serve, ...): dpdistill --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    measuring.register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
