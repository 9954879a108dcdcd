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
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_pde(subparsers)
    register_vision(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mgnet`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"mgnet {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except (ValueError, TypeError, OSError, MemoryError, ArithmeticError, RuntimeError) as error:
        # The commands report their own errors; this catches what one lets through, as one line too.
        if args.debug:
            raise
        text = " ".join(str(error).split()) or type(error).__name__
        print(f"mgnet {args.command}: {text}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
