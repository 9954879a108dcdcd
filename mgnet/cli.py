"""The ``mgnet`` command line: one entry point whose subcommands come from the packages.

``pde.cli`` adds ``solve`` and ``learn-smoother``; ``vision.cli`` adds ``train``, ``eval``, ``predict`` and
``models``.  Each package's ``register(subparsers)`` adds its parsers and sets ``func`` on them; heavy imports
happen inside those functions so ``mgnet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every package's subcommands."""
    from pde.cli import register as register_pde
    from vision.cli import register as register_vision

    parser = argparse.ArgumentParser(
        prog="mgnet",
        description="Multigrid solvers, learned smoothers and MgNet classifiers on one engine.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_pde(subparsers)
    register_vision(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mgnet`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    status = args.func(args)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
