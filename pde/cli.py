"""``mgnet solve`` (and, from :mod:`pde.cli_learn`, ``mgnet learn-smoother``).

``mgnet solve --problem poisson --shape 1023 1023 --smoother rbgs --cycle V --rtol 1e-8 --compare-pyamg``
prints the hierarchy, a per-cycle residual table and a summary; ``--compare-pyamg`` solves the same CSR
matrix with pyamg's ``ruge_stuben_solver`` and reports both; ``--plot FILE`` draws the residual histories.

Bad input ends the command with one line on stderr and exit status 2 (``--debug`` shows the traceback).
The device, the output paths and the memory the solve needs are checked before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mgcore.options import CG_SWEEPS, MultigridOptions
from pde.specs import FAMILIES, PARAMETERS, families_taking, family_spec

USER_ERRORS = (ValueError, TypeError, OSError, MemoryError, ArithmeticError, RuntimeError)
"""What a command reports as one line: bad values, files and folders, memory, divergence, torch's refusals."""


def family_name(name: str) -> str:
    """The canonical family name of ``name`` or one of its aliases (argparse ``type=``; an unknown name is
    returned as it is, for argparse's list of choices)."""
    try:
        return family_spec(name).name
    except ValueError:
        return name


def add_family_arguments(parser: argparse.ArgumentParser, *, training: bool) -> None:
    """One ``--NAME`` option per family parameter of :data:`pde.specs.PARAMETERS`, with its help.

    ``training=False`` (``mgnet solve``): the default is the parameter's fixed value.  ``training=True``
    (``mgnet learn-smoother``): the default ``None`` leaves the family's default, a sampled range or a fixed
    value.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_family_arguments(parser, training=False)
    >>> args = parser.parse_args([])
    >>> args.eps, round(args.theta, 6), args.sigma
    (0.01, 0.523599, 1.0)
    """
    for parameter in PARAMETERS.values():
        takers = ", ".join(families_taking(parameter.name))
        shown = parameter.shown or format(parameter.fixed, parameter.format)
        if not training:
            default, tail = parameter.fixed, f"for {takers} (default {shown})"
        elif parameter.sample is not None:
            low, high = parameter.sample
            scale = "log-uniformly" if parameter.log_scale else "uniformly"
            default, tail = None, f"({takers}); omit to sample it {scale} in [{low:.4g}, {high:.4g}]"
        else:
            default, tail = None, f"({takers}; default {shown})"
        parser.add_argument(f"--{parameter.name}", type=float, default=default, help=f"{parameter.help} {tail}")


def family_choices_help(default: str) -> str:
    """The help of ``--problem``/``--family``: each family's name and equation, from the table."""
    listed = "; ".join(f"{spec.name}: {spec.summary}" for spec in FAMILIES.values())
    return f"{listed} (default {default})"


def report_error(command: str, error: BaseException, args: argparse.Namespace) -> int:
    """Print ``error`` as one line on stderr and return exit status 2; with ``--debug``, re-raise it."""
    if getattr(args, "debug", False):
        raise error
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    print(f"{command}: {text}", file=sys.stderr)
    return 2


def check_output_path(path: str, option: str, *, create_folders: bool = False) -> Path:
    """Make sure ``path`` can be written *before* the work that produces it; ``ValueError`` naming ``option``.

    ``create_folders``: missing folders will be created (then the nearest existing one must be writable).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     check_output_path(folder, "--plot")
    Traceback (most recent call last):
    ...
    ValueError: --plot: '...' is a folder; expected a file name
    """
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option}: {str(path)!r} is a folder; expected a file name")
    folder = target.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot write {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if existing != folder and not create_folders:
        raise ValueError(f"{option}: cannot write {str(path)!r}: the folder {str(folder)!r} does not exist")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option}: cannot write {str(path)!r}: the folder {str(existing)!r} is read-only")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{option}: cannot write {str(path)!r}: the file is read-only")
    return target


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``solve`` and ``learn-smoother`` to the ``mgnet`` command line."""
    parser = subparsers.add_parser(
        "solve",
        help="solve a PDE problem by geometric multigrid (optionally against pyamg)",
        description="Solve a model problem with mgcore.solve and print a per-cycle convergence report.",
    )
    parser.add_argument("--problem", type=family_name, choices=tuple(FAMILIES), default="poisson",
                        help="model problem; " + family_choices_help("poisson"))
    parser.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                        help="interior grid points per axis, 2 or 3 numbers (default: 255 255, or the size of "
                             "the --mask image)")
    add_family_arguments(parser, training=False)
    random = ", ".join(spec.name for spec in FAMILIES.values() if spec.random_coefficients)
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the random coefficients of {random} (default 0)")
    parser.add_argument("--bc", nargs="+", default=["dirichlet"], metavar="KIND",
                        help=f"boundary conditions for {_taking('bc')}: one of dirichlet, neumann, periodic for all "
                             "faces, one per axis, or LOW:HIGH per axis (e.g. --bc periodic neumann:dirichlet)")
    parser.add_argument("--mask", metavar="PNG", help=f"image of the active points (bright = active) for "
                                                       f"{_taking('mask')}; its size is the grid")
    parser.add_argument("--mask-bc", choices=("dirichlet", "neumann"), default="dirichlet",
                        help="condition on the boundary of the mask (default dirichlet)")
    parser.add_argument("--screen", type=float, default=0.0, metavar="C",
                        help=f"screening: -Δu + C u = f, C >= 0, for {_taking('screen')} (default 0)")
    # One option per MultigridOptions field; a learned smoother (.pt) brings the options it was trained with.
    MultigridOptions.add_arguments(parser)
    parser.add_argument("--accel", choices=("none", "cg"), default="none",
                        help="cg: multigrid-preconditioned conjugate gradients (uses a symmetric cycle)")
    parser.add_argument("--fmg", action="store_true", help="start from one full-multigrid pass")
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--maxiter", type=int, default=100)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--cycle-dtype", choices=("float64", "float32"), default=None,
                        help="precision of the cycles (default: --dtype); float32 with float64 data is mixed "
                             "precision with float64 residual refinement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--compare-pyamg", action="store_true",
                        help="also solve the same CSR matrix with pyamg.ruge_stuben_solver")
    parser.add_argument("--plot", metavar="PNG", help="write the residual histories to this PNG")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line")
    parser.set_defaults(func=run_solve)
    try:
        from pde.cli_learn import add_learn_smoother_parser
    except ImportError:  # pragma: no cover - present in a full checkout
        return
    add_learn_smoother_parser(subparsers)


def _taking(option: str) -> str:
    """The families whose builder takes the keyword ``option`` (for --help and errors)."""
    return "/".join(spec.name for spec in FAMILIES.values() if option in spec.boundary_options)


def _read_mask(args: argparse.Namespace):
    """The ``--mask`` image as a boolean grid (None without one), read before anything else: its size is the grid,
    so the memory check and the problem both take it; a ``--shape`` that differs is refused."""
    if not args.mask:
        return None
    from pde.boundaries import load_mask

    mask = load_mask(args.mask)
    if mask.ndim != 2:
        raise ValueError(f"--mask: a 2D image; got shape {mask.shape}")
    if args.shape is not None and tuple(args.shape) != mask.shape:
        raise ValueError(
            f"--shape: {' '.join(map(str, args.shape))} differs from the --mask image {args.mask!r}, which is "
            f"{mask.shape[0]} x {mask.shape[1]} pixels (its size is the grid); omit --shape or give {mask.shape[0]} "
            f"{mask.shape[1]}"
        )
    return mask


def _shape(args: argparse.Namespace, mask) -> tuple[int, ...]:
    """The grid: the mask's size, ``--shape``, or 255 x 255."""
    if mask is not None:
        return mask.shape
    return (255, 255) if args.shape is None else tuple(args.shape)


def _problem(args: argparse.Namespace, mask=None):
    spec = FAMILIES[args.problem]
    shape = _shape(args, mask)
    options = {}
    bc = [tuple(kind.split(":")) if ":" in kind else kind for kind in args.bc]
    given = {"bc": bc != ["dirichlet"], "mask": bool(args.mask), "screen": args.screen != 0.0}
    for option, used in given.items():
        if used and option not in spec.boundary_options:
            raise ValueError(
                f"--{option}: supported for {_taking(option)}; the {spec.name} problem does not take it"
            )
    if given["bc"]:
        options["bc"] = bc[0] if len(bc) == 1 else bc
    if mask is not None:
        options["mask"] = mask
        options["mask_bc"] = args.mask_bc
    if given["screen"]:
        options["screen"] = args.screen
    if len(shape) not in spec.dims:
        dims = " or ".join(f"{d}D" for d in spec.dims)
        raise ValueError(f"--shape: the {spec.name} problem is {dims}; got {len(shape)} numbers")
    values = {p.name: getattr(args, p.name) for p in spec.parameters}
    return spec.build(shape, values, seed=args.seed, **options)


def _smoother(spec: str):
    """A smoother name, or a learned smoother loaded from a file (``.pt``/``.pth``, or any existing file)."""
    from mgcore.smoothers import SMOOTHERS

    if spec in SMOOTHERS:
        return spec
    path = Path(spec)
    if path.suffix in (".pt", ".pth") or path.is_file():
        from pde.learned import LearnedSmoother

        if not path.is_file():
            raise ValueError(
                f"--smoother: no such file {spec!r}; expected a learned smoother file or one of {sorted(SMOOTHERS)}"
            )
        try:
            return LearnedSmoother.load(path)
        except ValueError as err:
            raise ValueError(f"--smoother: {str(err).removeprefix('path: ')}") from err
    return spec  # an unknown name: the solver names it


def _preflight(args: argparse.Namespace, mask=None):
    """Check the device, the plot path and the memory (of the grid :func:`_shape` gives) before anything is
    built; return the device."""
    import torch

    from mgcore.memory import MemoryEstimate, check_device, check_memory, estimate_solve_memory

    shape = _shape(args, mask)
    what = "--mask" if mask is not None else "--shape"
    if len(shape) not in (2, 3):
        raise ValueError(f"--shape: takes 2 or 3 numbers; got {list(shape)}")
    if min(shape) < 3:
        raise ValueError(f"{what}: every side needs at least 3 points; got {list(shape)}")
    device = check_device(args.device, "--device")
    if args.plot:
        check_output_path(args.plot, "--plot")
    spec = FAMILIES[args.problem]
    estimate = estimate_solve_memory(
        shape,
        stencil_points=spec.stencil_points or 2 * len(shape) + 1,
        # Boundary conditions, masks and screening make the axis-aligned stencils variable (counted as such).
        variable=spec.random_coefficients or args.bc != ["dirichlet"] or bool(args.mask) or args.screen != 0.0,
        # A learned smoother file is counted as what it becomes, a smoother factory.
        options=MultigridOptions.from_arguments(
            args,
            MultigridOptions(smoother=_smoother if Path(args.smoother or "rbgs").suffix else args.smoother or "rbgs"),
            exclude=("smoother",),
        ),
        cycle_dtype=None if args.cycle_dtype is None else getattr(torch, args.cycle_dtype),
        batch=1,
        accel=None if args.accel == "none" else "cg",
    )
    points = 1
    for n in shape:
        points *= n
    parts = {"problem arrays": spec.problem_arrays * points * 8, **estimate.parts}
    check_memory(MemoryEstimate(parts), device, what=what)
    return device


def run_solve(args: argparse.Namespace) -> int:
    """Run ``mgnet solve``; returns 0 when the solve converged, 1 otherwise, 2 on bad input."""
    try:
        return _run_solve(args)
    except USER_ERRORS as error:
        return report_error("mgnet solve", error, args)


def _run_solve(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import mgcore

    mask = _read_mask(args)
    device = _preflight(args, mask)
    problem = _problem(args, mask)
    smoother = _smoother(args.smoother or "rbgs")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    b = problem.f.to(device=device, dtype=dtype)
    # A learned smoother is only good in the hierarchy it was trained in: take its cycle, sweeps, transfers and
    # coarse operators unless they are given.
    trained = smoother.matching_solver_options() if hasattr(smoother, "matching_solver_options") else {}
    if args.accel == "cg" and not {"presmooth", "postsmooth"} & trained.keys():
        trained = {**CG_SWEEPS, **trained}  # CG needs a symmetric cycle; --presmooth/--postsmooth still apply
    base = MultigridOptions(smoother=smoother, **trained)
    options = MultigridOptions.from_arguments(args, base, exclude=("smoother",))
    loops_before = mgcore.kernels.loaded()

    def set_up_and_solve():
        start = time.perf_counter()
        solver = mgcore.MultigridSolver(
            problem.A.to(device),
            problem.grid_shape,
            options,
            cycle_dtype=None if args.cycle_dtype is None else getattr(torch, args.cycle_dtype),
        )
        x0 = solver.fmg(b) if args.fmg else None
        setup = time.perf_counter() - start
        x, info = solver.solve(
            b, x0, rtol=args.rtol, atol=args.atol, maxiter=args.maxiter,
            accel=None if args.accel == "none" else "cg", singular="project",
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return solver, x, info, setup, time.perf_counter() - start

    solver, x, info, setup, total = set_up_and_solve()
    grid = " x ".join(map(str, problem.grid_shape))
    print(f"{problem.name} on {grid} ({np.prod(problem.grid_shape):,} unknowns), {args.dtype} on {device}")
    print(solver)
    print()
    print(info.table())
    print()
    print(f"method            {info.method}{' from FMG' if args.fmg else ''}")
    print(f"converged         {info.converged} ({info.reason})")
    print(f"iterations        {info.iterations}")
    print(f"factor            {info.convergence_factor:.4f}  (mean residual reduction per cycle after the first)")
    print(f"setup + solve     {setup:.3f} s + {total - setup:.3f} s = {total:.3f} s")
    if not loops_before and mgcore.kernels.loaded():
        # A one-shot timing: say what it includes (benchmarks/poisson_vs_pyamg.py times warm solves).
        print("                  (includes loading the compiled CPU loops, about 0.5 s once per process)")
    if problem.exact is not None:
        print(f"error vs exact    {problem.error(x.to(torch.float64).cpu()):.3e}  (discretisation + algebraic)")
    histories = {"mgcore " + info.method: info.residuals / info.residuals[0]}
    if args.compare_pyamg:
        # The first solve in a process also loads the compiled loops and meets fresh memory: the comparison
        # takes a second, warm set-up + solve (pyamg's first run has no such one-time cost of that size).
        warm = set_up_and_solve()[4]
        print(f"warm set-up + solve {warm:.3f} s  (a second run in this process, timed for the comparison)")
        histories.update(_compare_pyamg(problem, x, args, warm))
    if args.plot:
        _plot(histories, args.plot, f"{problem.name} {grid}")
        print(f"plot              {args.plot}")
    return 0 if info.converged else 1


def _compare_pyamg(problem, x, args, mg_seconds: float) -> dict:
    import numpy as np
    import pyamg

    A = problem.to_sparse()
    b = problem.f.double().cpu().numpy().ravel()
    start = time.perf_counter()
    ml = pyamg.ruge_stuben_solver(A)
    setup = time.perf_counter() - start
    residuals: list[float] = []
    accel = None if args.accel == "none" else "cg"
    x_amg = ml.solve(b, tol=args.rtol, maxiter=args.maxiter, residuals=residuals, accel=accel)
    total = time.perf_counter() - start
    residuals = np.asarray(residuals)
    iterations = len(residuals) - 1
    factor = (residuals[-1] / residuals[1]) ** (1 / (iterations - 1)) if iterations > 1 else float("nan")
    relative = np.linalg.norm(b - A @ x_amg) / np.linalg.norm(b)
    x_mg = x.double().cpu().numpy().ravel()
    agreement = np.linalg.norm(x_mg - x_amg) / np.linalg.norm(x_amg)
    print()
    print(f"pyamg ruge_stuben_solver on the same {A.shape[0]:,} x {A.shape[1]:,} CSR matrix"
          f"{' with accel=cg' if accel else ''}:")
    print(f"  levels {len(ml.levels)}, operator complexity {ml.operator_complexity():.3f}")
    print(f"  iterations {iterations}, factor {factor:.4f}, relative residual {relative:.2e}")
    print(f"  setup + solve {setup:.3f} s + {total - setup:.3f} s = {total:.3f} s")
    print(f"  mgcore (warm) is {total / mg_seconds:.1f}x faster; ||x_mgcore - x_pyamg|| / ||x_pyamg|| = "
          f"{agreement:.2e}")
    return {"pyamg ruge_stuben": residuals / residuals[0]}


def _plot(histories: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, history in histories.items():
        axes.semilogy(range(len(history)), history, marker="o", label=label)
    axes.set_xlabel("iteration")
    axes.set_ylabel("||r_k|| / ||r_0||")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
