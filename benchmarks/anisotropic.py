"""Anisotropic problems: measured factors of ``auto``, and ``auto`` against pyamg's ``ruge_stuben_solver``.

Two modes:

* ``factors``: the asymptotic V(1,1) factor (power iteration, :func:`mgcore.analysis.asymptotic_factor`) of
  ``smoother="auto", coarsening="auto"`` on ``-u_xx - eps u_yy`` and ``-eps u_xx - u_yy`` for
  eps in {1, 0.1, 0.01, 0.001}, on rotated anisotropy (eps = 0.1, theta = pi/6, Galerkin coarse operators) and
  on 3D problems with eps = 0.01 on one and on two axes, with the choices per level.  No timing.
* ``pyamg``: ``pyamg.gallery.diffusion_stencil_2d(epsilon, theta=0)`` on ``n^2`` passed as CSR with ``grid=``,
  random right-hand side, rtol 1e-8: mgcore ``auto`` (set-up + solve, V(1,1) cycles) against pyamg
  ``ruge_stuben_solver`` set-up + solve (V(1,1) symmetric Gauss-Seidel, its defaults): one warm-up of each,
  then ``--repeats`` (3) alternating timed runs of each, the best and the median reported.  Timed: run it on a
  quiet machine.

Usage::

    python benchmarks/anisotropic.py factors --sizes 255 1023
    python benchmarks/anisotropic.py pyamg --n 1023 --eps 0.01 0.001
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from mgcore import MultigridSolver, Stencil, asymptotic_factor, build_hierarchy  # noqa: E402
from mgcore.io import atomic_write_text  # noqa: E402
from pde.problems import anisotropic, rotated_anisotropic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPS = (1.0, 0.1, 0.01, 0.001)


def _choices(hierarchy) -> str:
    parts = []
    for level in hierarchy.levels[:-1]:
        axes = hierarchy.axis_letters(level.coarsened_axes)  # the caller's axes
        parts.append(f"{level.smoother.name.removeprefix('auto:')}/{axes}")
    # Runs of equal choices, as "zebra-x/xy x5".
    runs: list[list] = []
    for part in parts:
        if runs and runs[-1][0] == part:
            runs[-1][1] += 1
        else:
            runs.append([part, 1])
    text = ", ".join(f"{p} x{k}" if k > 1 else p for p, k in runs)
    if hierarchy.coarse_solver.name != "dense LU":  # a thin grid ended the hierarchy: say how it is solved
        grid = "x".join(str(n) for n in hierarchy.caller_shape(hierarchy.levels[-1].grid_shape))
        text += f"; {grid} {hierarchy.coarse_solver.name}"
    return text


def factor_row(label: str, A: Stencil, grid, **options) -> tuple[str, float, str]:
    with torch.no_grad():
        h = build_hierarchy(A, grid, smoother="auto", coarsening="auto", presmooth=1, postsmooth=1, **options)
        factor = asymptotic_factor(h).factor
    return label, factor, _choices(h)


def run_factors(sizes, sizes_3d, output: Path | None) -> None:
    lines = [
        "# Anisotropic problems: asymptotic V(1,1) factors of smoother='auto', coarsening='auto'",
        "",
        f"Measured {datetime.date.today()} with `python benchmarks/anisotropic.py factors` (power iteration, 30 "
        "iterations, 2 start vectors; `max_coarse` 1000).  Choices per level: smoother/coarsened axes.",
        "",
        "| problem | " + " | ".join(f"{n}^2" for n in sizes) + " | choices at the largest size |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    problems = []
    for eps in EPS:
        problems.append((f"-u_xx - {eps:g} u_yy", lambda n, eps=eps: (anisotropic((n, n), eps).A, {})))
        problems.append((f"-{eps:g} u_xx - u_yy", lambda n, eps=eps: (
            Stencil.from_kernel(np.array([[0, -eps, 0], [-1, 2 + 2 * eps, -1], [0, -eps, 0]]) * (n + 1) ** 2), {})))
    problems.append(("rotated eps=0.1, theta=pi/6, Galerkin", lambda n: (
        rotated_anisotropic((n, n), 0.1, math.pi / 6).A, {"coarse_operator": "galerkin"})))
    for label, make in problems:
        cells, choices = [], ""
        for n in sizes:
            A, options = make(n)
            _, factor, choices = factor_row(label, A, (n, n), **options)
            cells.append(f"{factor:.4f}")
            print(label, n, f"{factor:.4f}", choices, flush=True)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {choices} |")
    lines += ["", "| 3D problem | " + " | ".join(f"{n}^3" for n in sizes_3d) + " | choices at the largest size |",
              "|---|" + "---|" * len(sizes_3d) + "---|"]
    problems_3d = (("-u_xx - u_yy - 0.01 u_zz", (1.0, 1.0, 10.0)), ("-u_xx - 0.01 u_yy - 0.01 u_zz", (1.0, 10.0, 10.0)))
    for label, h in problems_3d:
        cells = []
        for n in sizes_3d:
            _, factor, choices = factor_row(label, Stencil.laplacian(3, h=h), (n, n, n))
            cells.append(f"{factor:.4f}")
            print(label, n, f"{factor:.4f}", choices, flush=True)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {choices} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if output is not None:
        atomic_write_text(output, text)


def _commit() -> str:
    """The checked-out commit, with ``+dirty`` when tracked files differ from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _mgcore_run(A, b: np.ndarray, n: int) -> tuple[float, float, int, str]:
    """One timed set-up + solve of ``smoother="auto", coarsening="auto"`` V(1,1): (setup s, solve s, cycles,
    choices per level)."""
    start = time.perf_counter()
    solver = MultigridSolver(A, grid=(n, n), smoother="auto", coarsening="auto", presmooth=1, postsmooth=1)
    setup = time.perf_counter() - start
    _, info = solver.solve(b, rtol=1e-8, maxiter=200)
    assert info.converged, info
    return setup, info.solve_seconds, info.iterations, _choices(solver.hierarchy())


def _pyamg_run(A, b: np.ndarray) -> tuple[float, float, int, str]:
    """One timed set-up + solve of pyamg's ``ruge_stuben_solver`` (its defaults) to rtol 1e-8."""
    import pyamg

    start = time.perf_counter()
    ml = pyamg.ruge_stuben_solver(A)
    setup = time.perf_counter() - start
    residuals: list[float] = []
    start = time.perf_counter()
    ml.solve(b, tol=1e-8, maxiter=200, residuals=residuals)
    return setup, time.perf_counter() - start, len(residuals) - 1, ""


def run_pyamg(n: int, eps_values, output: Path | None, repeats: int = 3) -> None:
    import statistics

    import pyamg

    rows = [
        f"# `diffusion_stencil_2d(epsilon, theta=0)` at {n}^2: mgcore auto against pyamg ruge_stuben_solver",
        "",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, pyamg {pyamg.__version__}, "
        f"{torch.get_num_threads()} threads; random rhs (seed 0), rtol 1e-8, x0 = 0; one untimed warm-up run of "
        f"each solver, then {repeats} timed set-up + solve runs of each, alternating; {datetime.date.today()}, "
        f"commit {_commit()}.  best = the fastest run (set-up and solve of that run), all = every run's total.",
        "",
        "| epsilon | solver | cycles | setup s | solve s | best total s | all totals s |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for eps in eps_values:
        stencil = pyamg.gallery.diffusion_stencil_2d(epsilon=eps, theta=0.0, type="FD")
        A = pyamg.gallery.stencil_grid(stencil, (n, n), format="csr")
        b = np.random.default_rng(0).standard_normal(n * n)
        _mgcore_run(A, b, n)  # warm-up, not timed
        _pyamg_run(A, b)
        runs: dict[str, list] = {"mgcore": [], "pyamg": []}
        for _ in range(repeats):
            runs["mgcore"].append(_mgcore_run(A, b, n))
            runs["pyamg"].append(_pyamg_run(A, b))
        best = {}
        for key, label in (("mgcore", "mgcore auto V(1,1)"), ("pyamg", "pyamg ruge_stuben_solver")):
            fastest = min(runs[key], key=lambda r: r[0] + r[1])
            totals = ", ".join(f"{r[0] + r[1]:.2f}" for r in runs[key])
            name = f"{label} ({fastest[3]})" if fastest[3] else label
            rows.append(f"| {eps:g} | {name} | {fastest[2]} | {fastest[0]:.2f} | {fastest[1]:.2f} | "
                        f"{fastest[0] + fastest[1]:.2f} | {totals} |")
            print(rows[-1], flush=True)
            best[key] = [r[0] + r[1] for r in runs[key]]
        summary.append(
            f"eps {eps:g}: {min(best['pyamg']) / min(best['mgcore']):.1f}x best against best, "
            f"{statistics.median(best['pyamg']) / statistics.median(best['mgcore']):.1f}x median against median, "
            f"{min(best['pyamg']) / max(best['mgcore']):.1f}x pyamg's best against mgcore's slowest"
        )
    rows += ["", "Speed-up (pyamg / mgcore, set-up + solve):", ""] + [f"- {line}" for line in summary]
    text = "\n".join(rows) + "\n"
    print(text)
    if output is not None:
        atomic_write_text(output, text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    factors = sub.add_parser("factors", help="asymptotic factors of auto (no timing)")
    factors.add_argument("--sizes", type=int, nargs="+", default=[63, 255, 1023])
    factors.add_argument("--sizes-3d", type=int, nargs="+", default=[31, 63])
    factors.add_argument("--output", type=Path, default=None, help="markdown file to write")
    timed = sub.add_parser("pyamg", help="timed comparison with pyamg (quiet machine)")
    timed.add_argument("--n", type=int, default=1023)
    timed.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.001])
    timed.add_argument("--output", type=Path, default=None, help="markdown file to write")
    timed.add_argument("--repeats", type=int, default=3, help="timed runs of each solver (alternating)")
    args = parser.parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        parser.error(f"--repeats: expected an integer >= 1; got {args.repeats}")
    for path in [args.output] if args.output is not None else []:
        if not path.parent.is_dir():
            parser.error(f"--output: directory {path.parent} does not exist")
    if args.mode == "factors":
        run_factors(args.sizes, args.sizes_3d, args.output)
    else:
        run_pyamg(args.n, args.eps, args.output, args.repeats)


if __name__ == "__main__":
    main()
