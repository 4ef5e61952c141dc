"""``dpdistill``: the command-line entry point for running the system. It only wires together the commands,
which live beside what they run: the owner's (``owner_node.commands``), the distiller's
(``distiller_node.commands``) and running the system (``deploy.run_commands``). Measuring it (speed, the
``bench-*`` benchmarks, the privacy audit, membership inference) is ``dpdistill-bench``
(``benchmarks.cli``): benchmarks run the system, so they sit above it and it never imports them."""

from __future__ import annotations

import argparse
import sys

from deploy import run_commands as running
from distiller_node import commands as distiller
from owner_node import commands as owner

# The measuring commands, which are ``dpdistill-bench``'s (``benchmarks.commands``; deploy never imports it,
# so tests/test_layout.py checks that the two agree): ``dpdistill speed`` points there.
MEASURING = ("speed", "audit", "membership")
BENCHMARK_PREFIX = "bench-"


def is_measuring(command: str) -> bool:
    return command in MEASURING or command.startswith(BENCHMARK_PREFIX)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpdistill",
        description="Two-party differentially private dataset distillation.",
        epilog=f"Measuring it ({', '.join(MEASURING)}, {BENCHMARK_PREFIX}*): dpdistill-bench --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (running, owner, distiller):
        group.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen command; a refusal (bad input) is one line on stderr and status 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and is_measuring(argv[0]):
        print(f"dpdistill: error: {argv[0]} measures the system; run: dpdistill-bench {argv[0]} ...", file=sys.stderr)
        return 2
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
