"""``dpdistill``: the command-line entry point. It only wires together the commands, which live beside
what they run: the owner's (``owner_node.commands``), the distiller's (``distiller_node.commands``),
running the system (``deploy.run_commands``) and measuring it (``benchmarks.commands``)."""

from __future__ import annotations

import argparse
import sys

from benchmarks import commands as measuring
from deploy import run_commands as running
from distiller_node import commands as distiller
from owner_node import commands as owner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpdistill", description="Two-party differentially private dataset distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (running, owner, distiller, measuring):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"dpdistill: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
