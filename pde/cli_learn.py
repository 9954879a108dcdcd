"""``mgnet learn-smoother``: train a learned smoother from the command line.

``pde/cli.py`` (the ``mgnet`` entry point) calls :func:`add_learn_smoother_parser` on its sub-parsers; this
module also runs on its own: ``python -m pde.cli_learn --family aniso --eps 0.01 --out smoother.pt``.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="mgnet")
>>> _ = add_learn_smoother_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["learn-smoother", "--family", "aniso", "--eps", "0.01", "--out", "s.pt"])
>>> args.family, args.eps, args.kernel_size, args.func is run_learn_smoother
('aniso', 0.01, 3, True)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from mgcore.options import MultigridOptions
from pde.cli import add_family_arguments, family_choices_help, family_name
from pde.families import FAMILY_NAMES
from pde.learned import LearnConfig
from pde.specs import PARAMETERS

__all__ = ["add_learn_smoother_parser", "main", "run_learn_smoother"]


def add_learn_smoother_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``learn-smoother`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "learn-smoother",
        help="train a convolutional smoother for a PDE family inside the multigrid V-cycle",
        description=(
            "Train a learned smoother u <- u + K*(D^-1 (f - A u)) per level inside the V-cycle, by minimising "
            "log(mean ||M^K z||^2) / 2K over random and power-iteration vectors z (no reference solutions needed). "
            "The result loads with pde.LearnedSmoother.load and plugs into mgcore.solve(..., smoother=S)."
        ),
    )
    parser.add_argument("--family", type=family_name, choices=FAMILY_NAMES, default="poisson",
                        help="problem family; " + family_choices_help("poisson"))
    add_family_arguments(parser, training=True)
    parser.add_argument("--kernel-size", type=int, default=3, help="odd kernel side, 3 or 5 (default 3)")
    parser.add_argument("--steps", type=int, default=1, help="residual-correction steps per sweep (default 1)")
    parser.add_argument("--levels", type=int, default=1, help="per-level kernels from the finest (default 1)")
    conditioned = parser.add_mutually_exclusive_group()
    conditioned.add_argument(
        "--conditioned", dest="conditioned", action="store_true", default=None,
        help="kernel from the local stencil (default: when the family's operators vary)",
    )
    conditioned.add_argument("--unconditioned", dest="conditioned", action="store_false", help="one fixed kernel")
    # The cycle trained in: one option per MultigridOptions field (the smoother is the one being trained).
    MultigridOptions.add_arguments(parser, defaults=LearnConfig().hierarchy, exclude=("smoother",))
    parser.add_argument("--train-size", type=int, default=63, help="odd training grid side, at most 63 (default 63)")
    parser.add_argument("--iterations", type=int, default=300, help="optimiser steps (default 300)")
    parser.add_argument("--batch", type=int, default=8, help="error vectors per step (default 8)")
    parser.add_argument("--unroll", type=int, default=4, help="cycles unrolled in the loss (default 4)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="where to save the smoother (.pt, tensors only)")
    parser.add_argument("--log", default=None, help="JSON-lines training log (one line per step)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line")
    parser.set_defaults(func=run_learn_smoother)
    return parser


def run_learn_smoother(args: argparse.Namespace) -> int:
    """Train, check, save and report; returns the exit status (0 on success, 1 when training diverged, 2 on
    bad input).  Output paths are checked before training, and a smoother whose cycle does not converge is
    not saved."""
    from pde.cli import USER_ERRORS, report_error

    try:
        return _run_learn_smoother(args)
    except FloatingPointError as error:  # diverged training: a result, not a typing mistake
        if getattr(args, "debug", False):
            raise
        message = str(error)  # "lr: ..." from learn_smoother: the user typed --lr
        print(f"mgnet learn-smoother: {'--' if message.startswith('lr:') else ''}{message}", file=sys.stderr)
        return 1
    except USER_ERRORS as error:
        return report_error("mgnet learn-smoother", error, args)


def _run_learn_smoother(args: argparse.Namespace) -> int:
    import torch

    from mgcore.memory import check_device
    from pde.cli import check_output_path
    from pde.learned import learn_smoother, measure_factor

    if args.train_size > 63:
        raise ValueError(f"--train-size: at most 63 (train small, use on any size); got {args.train_size}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected a positive integer; got {args.threads}")
    check_device(args.device, "--device")
    # Outputs first: a long training run must not end in "cannot write".
    check_output_path(args.out, "--out", create_folders=True)
    if args.log:
        check_output_path(args.log, "--log", create_folders=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    family_options = {k: getattr(args, k) for k in PARAMETERS if getattr(args, k) is not None}
    smoother = learn_smoother(
        args.family,
        progress=not args.quiet,
        log=args.log,
        kernel_size=args.kernel_size,
        steps=args.steps,
        levels=args.levels,
        conditioned=args.conditioned,
        hierarchy=MultigridOptions.from_arguments(args, LearnConfig().hierarchy),
        train_size=args.train_size,
        iterations=args.iterations,
        batch=args.batch,
        unroll=args.unroll,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        **family_options,
    )
    from pde.families import family_from_params

    family = family_from_params(smoother.family)
    problem = family.evaluation((args.train_size, args.train_size))[-1]
    options = MultigridOptions(smoother=smoother, max_coarse=50, **smoother.matching_solver_options())
    estimate = measure_factor(problem.A, problem.grid_shape, options=options)
    factor = estimate.factor
    if not factor < 1.0:  # NaN too
        raise FloatingPointError(
            f"--lr: the trained {options.label.split()[0]} cycle does not converge on {problem.name} "
            f"(asymptotic factor {factor:.3g} >= 1); nothing saved; lower --lr (now {args.lr:g})"
        )
    path = smoother.save(args.out)
    first, last = smoother.history[0], smoother.history[-1]
    print(f"{smoother!r}: trained in {smoother.training['seconds']:.1f} s; per-cycle loss factor "
          f"{first:.4f} -> {last:.4f}")
    shown = f"{factor:.4f}" if math.isfinite(factor) else str(factor)
    print(f"asymptotic {options.label.split()[0]} factor on {problem.name}: {shown}")
    print(f"saved {path}" + (f"; log {args.log}" if args.log else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``learn-smoother`` on its own (``python -m pde.cli_learn ...``)."""
    parser = argparse.ArgumentParser(prog="python -m pde.cli_learn")
    sub = parser.add_subparsers(dest="command")
    add_learn_smoother_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "learn-smoother":
        argv = ["learn-smoother", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
