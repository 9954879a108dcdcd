"""Benchmark: mgcore geometric multigrid against pyamg and a DST fast Poisson solver.

Prints markdown tables and writes a log-log scaling plot.  Every method solves the same manufactured
Poisson problem (``pde.poisson``, u = sin(πx) sin(πy) [sin(πz)]) in float64 to ``rtol = 1e-8``:

* mgcore V(1,2) cycles (the default) with red-black Gauss-Seidel (``mgcore.solve``),
* mgcore FMG + V(1,2): one full-multigrid pass as ``x0``, then V-cycles to rtol,
* mgcore PCG: conjugate gradients preconditioned by a symmetric V(1,1),
* mgcore V(1,2) with float32 cycles and float64 residuals (mixed precision, still to the float64 rtol),
* pyamg ``ruge_stuben_solver`` (setup + solve), plain and with ``accel="cg"``,
* SciPy DST-I diagonalisation of the 2D constant-coefficient Laplacian (the floor).

Then: FMG alone to discretisation accuracy against the DST solver, 64 right-hand sides in one batched
call against 64 pyamg solves that reuse one setup, and the peak extra memory of a solve measured in a
fresh process (VmHWM, reset through /proc/self/clear_refs).

Usage::

    python benchmarks/poisson_vs_pyamg.py                   # the full run (a few minutes on 2 cores)
    python benchmarks/poisson_vs_pyamg.py --quick           # small sizes only
    python benchmarks/poisson_vs_pyamg.py --device cuda     # mgcore rows on a GPU (adds 4095^2)
    python benchmarks/poisson_vs_pyamg.py --boundaries      # Neumann, periodic, mixed, disk, L-shape, a small
                                                            # ellipse, screened at 1023^2 (--boundaries-n N)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SEED = 0
RTOL = 1e-8
REPEATS = 3  # timed runs per solver in the --boundaries rows, each after an untimed one (the best is reported)
RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device, repeats: int = 1, prepare=None):
    """Best-of-``repeats`` wall time of ``function()`` (after one untimed warm-up call), and its result; with
    ``prepare``, each call is ``function(prepare())``, its argument made before the clock starts."""

    def argument() -> tuple:
        return () if prepare is None else (prepare(),)

    function(*argument())  # warm-up: allocator, caches, lazy initialisation
    best, result = float("inf"), None
    for _ in range(repeats):
        given = argument()
        _sync(device)
        start = time.perf_counter()
        outcome = function(*given)
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed < best:  # keep the result (and its set-up time) of the best run
            best, result = elapsed, outcome
    return best, result


def _timed_in_turn(functions: dict, device, repeats: int) -> dict:
    """Best-of-``repeats`` wall times of several ``(function, prepare)`` (``prepare`` None or a maker of the
    argument, called before the clock starts), taken in turn: each round runs every function twice, untimed
    then timed, the order rotating from round to round.

    In turn, so that every function sees the same phases of a shared host, whose speed drifts over seconds; an
    untimed run first, so that each is timed as when it runs again (its allocator and caches as its own last
    run left them), as back-to-back runs are.  Returns ``{name: (seconds, result of the best run)}``."""
    best = {name: (float("inf"), None) for name in functions}
    names = list(functions)
    for round_index in range(repeats):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            function, prepare = functions[name]
            function(*(() if prepare is None else (prepare(),)))  # untimed
            given = () if prepare is None else (prepare(),)
            _sync(device)
            start = time.perf_counter()
            outcome = function(*given)
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed < best[name][0]:
                best[name] = (elapsed, outcome)
    return best


def _relative_residual(A_csr, b: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(b - A_csr @ x) / np.linalg.norm(b))


def _row(method, setup, solve_s, iterations, factor, residual, error, reference_total=None):
    total = setup + solve_s
    ratio = "" if reference_total is None else f"{reference_total / total:.1f}x"
    factor_text = "" if factor is None or not np.isfinite(factor) else f"{factor:.3f}"
    iterations_text = "" if iterations is None else str(iterations)
    return {
        "method": method,
        "setup_s": setup,
        "solve_s": solve_s,
        "total_s": total,
        "iterations": iterations_text,
        "factor": factor_text,
        "relative_residual": residual,
        "error": error,
        "speedup_vs_pyamg": ratio,
    }


def dst_solve(f: np.ndarray, h: float) -> np.ndarray:
    """Solve the 5-point -Δ_h u = f (zero Dirichlet) exactly by the type-I discrete sine transform."""
    from scipy.fft import dstn, idstn

    eigenvalues = 0.0
    for axis, n in enumerate(f.shape):
        k = np.arange(1, n + 1)
        shape = [1] * f.ndim
        shape[axis] = n
        eigenvalues = eigenvalues + (4.0 / h**2) * np.sin(k * np.pi / (2 * (n + 1))).reshape(shape) ** 2
    return idstn(dstn(f, type=1) / eigenvalues, type=1)


def bench_size(shape, device, with_pyamg: bool = True) -> list[dict]:
    import pyamg

    import mgcore
    import pde

    problem = pde.poisson(shape)
    A_csr = problem.to_sparse()
    f = problem.f.to(device)
    b = problem.f.numpy().ravel()
    rows = []

    def error_of(x) -> float:
        x = x.cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x).reshape(shape))
        return problem.error(x)

    pyamg_total = None
    pyamg_rows = []
    if with_pyamg:
        for accel in (None, "cg"):
            label = "pyamg ruge_stuben" + (" + cg" if accel else "")
            residuals: list[float] = []

            def run_pyamg(accel=accel, residuals=residuals):
                residuals.clear()
                start = time.perf_counter()
                ml = pyamg.ruge_stuben_solver(A_csr)
                setup = time.perf_counter() - start
                x = ml.solve(b, tol=RTOL, maxiter=200, residuals=residuals, accel=accel)
                return setup, x

            total, (setup, x) = _timed(run_pyamg, torch.device("cpu"))
            iterations = len(residuals) - 1
            factor = (residuals[-1] / residuals[1]) ** (1 / (iterations - 1)) if iterations > 1 else float("nan")
            row = _row(label, setup, total - setup, iterations, factor, _relative_residual(A_csr, b, x), error_of(x))
            pyamg_rows.append(row)
            if accel is None:
                pyamg_total = total
        for row in pyamg_rows:
            row["speedup_vs_pyamg"] = f"{pyamg_total / row['total_s']:.1f}x"

    def mg_run(presmooth, postsmooth, accel=None, use_fmg=False, cycle_dtype=None):
        def run():
            start = time.perf_counter()
            solver = mgcore.MultigridSolver(
                problem.A.to(device), shape, presmooth=presmooth, postsmooth=postsmooth, cycle_dtype=cycle_dtype
            )
            x0 = solver.fmg(f) if use_fmg else None
            _sync(device)
            setup = time.perf_counter() - start
            x, info = solver.solve(f, x0, rtol=RTOL, accel=accel)
            return setup, x, info

        return run

    variants = [
        ("mgcore V(1,2) rbgs", mg_run(1, 2)),
        ("mgcore FMG + V(1,2)", mg_run(1, 2, use_fmg=True)),
        ("mgcore PCG, V(1,1)", mg_run(1, 1, accel="cg")),
        ("mgcore V(1,2), float32 cycles + float64 refinement", mg_run(1, 2, cycle_dtype=torch.float32)),
    ]
    for label, run in variants:
        total, (setup, x, info) = _timed(run, device, repeats=3)
        x_np = x.double().cpu().numpy().ravel()
        rows.append(
            _row(
                label + (" [FMG in setup]" if "FMG" in label else ""),
                setup,
                total - setup,
                info.iterations,
                info.convergence_factor,
                _relative_residual(A_csr, b, x_np),
                error_of(x),
                pyamg_total,
            )
        )
    rows.extend(pyamg_rows)
    if len(shape) == 2:
        f_np = problem.f.numpy()
        total, x = _timed(lambda: dst_solve(f_np, problem.h), torch.device("cpu"), repeats=3)
        rows.append(
            _row("SciPy DST (direct, the floor)", 0.0, total, None, None,
                 _relative_residual(A_csr, b, x.ravel()), error_of(x), pyamg_total)
        )
    return rows


def bench_fmg_vs_dst(n: int, device) -> dict:
    """One FMG pass (one V(2,1) per level, cubic interpolation) against the DST solver at n^2."""
    import mgcore
    import pde

    problem = pde.poisson((n, n))
    f = problem.f.to(device)

    def run():
        solver = mgcore.MultigridSolver(problem.A.to(device), (n, n), presmooth=2, postsmooth=1)
        return solver.fmg(f)

    fmg_seconds, x = _timed(run, device, repeats=3)
    f_np = problem.f.numpy()
    dst_seconds, exact_discrete = _timed(lambda: dst_solve(f_np, problem.h), torch.device("cpu"), repeats=3)
    discretisation = problem.error(torch.from_numpy(exact_discrete))
    return {
        "n": n,
        "fmg_s": fmg_seconds,
        "dst_s": dst_seconds,
        "ratio": fmg_seconds / dst_seconds,
        "fmg_error": problem.error(x.cpu()),
        "discretisation_error": discretisation,
    }


def bench_batched(n: int, count: int, device) -> list[dict]:
    """``count`` right-hand sides at n^2: one batched mgcore call (three configurations) against ``count``
    pyamg solves that reuse one setup."""
    import pyamg

    import mgcore
    import pde

    problem = pde.poisson((n, n))
    rng = np.random.default_rng(SEED)
    B = rng.standard_normal((count, n, n))
    A_csr = problem.to_sparse()

    def run_pyamg():
        ml = pyamg.ruge_stuben_solver(A_csr)
        return [ml.solve(B[k].ravel(), tol=RTOL, maxiter=200) for k in range(count)]

    pyamg_seconds, xs = _timed(run_pyamg, torch.device("cpu"), repeats=2)
    rows = []
    for label, presmooth, postsmooth, cycle_dtype in (
        ("V(1,2), float64", 1, 2, None),
        ("V(2,2), float64", 2, 2, None),
        ("V(1,2), float32 cycles + float64 refinement", 1, 2, torch.float32),
    ):

        def run_mg(presmooth=presmooth, postsmooth=postsmooth, cycle_dtype=cycle_dtype):
            solver = mgcore.MultigridSolver(
                problem.A.to(device), (n, n), presmooth=presmooth, postsmooth=postsmooth, cycle_dtype=cycle_dtype
            )
            return solver.solve(torch.from_numpy(B).to(device), rtol=RTOL)

        mg_seconds, (X, info) = _timed(run_mg, device, repeats=3)
        X = X.double().cpu().numpy()
        agreement = max(np.linalg.norm(X[k].ravel() - xs[k]) / np.linalg.norm(xs[k]) for k in range(count))
        rows.append(
            {
                "method": label,
                "mgcore_s": mg_seconds,
                "pyamg_s": pyamg_seconds,
                "ratio": pyamg_seconds / mg_seconds,
                "all_converged": bool(np.all(info.converged)),
                "iterations_max": int(np.max(info.iterations)),
                "agreement": agreement,
            }
        )
    return rows


def boundary_problems(n: int) -> dict:
    """The boundary-condition, mask and screening problems of the ``--boundaries`` rows (``pde.poisson``)."""
    import pde

    x = (np.arange(n) + 1) / (n + 1)
    X, Y = np.meshgrid(x, x, indexing="ij")
    # Every grid has the mesh width of the Dirichlet n x n grid, h = 1 / (n + 1): a Neumann face point is an
    # unknown of the vertex-centred scheme, so two Neumann faces give n + 2 points, one Neumann face or a
    # periodic axis n + 1 (pde/boundaries.py); these sizes also nest on every level (mgcore/boundary.py).
    return {
        "pure Neumann": lambda: pde.poisson((n + 2, n + 2), bc="neumann", solution=None),
        "periodic": lambda: pde.poisson((n + 1, n + 1), bc="periodic", solution=None),
        "mixed (periodic x, Neumann/Dirichlet y)": lambda: pde.poisson(
            (n + 1, n + 1), bc=("periodic", ("neumann", "dirichlet")), solution=None
        ),
        "disk": lambda: pde.poisson((n, n), mask=(X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.4**2, solution=None),
        "L-shape": lambda: pde.poisson((n, n), mask=~((X > 0.5) & (Y > 0.5)), solution=None),
        # A small region of a large picture (seamless cloning's case): 5% of the grid, cycled on its active box.
        "ellipse, 5% of the grid": lambda: pde.poisson(
            (n, n), mask=((X - 0.3) / 0.1) ** 2 + ((Y - 0.7) / 0.15) ** 2 < 1, solution=None
        ),
        "screened c=100 (Neumann)": lambda: pde.poisson((n + 2, n + 2), bc="neumann", screen=100.0, solution=None),
    }


def bench_boundaries(n: int, device) -> list[dict]:
    """mgcore V(1,2) (the default cycle) against pyamg ``ruge_stuben_solver`` (setup + solve, rtol 1e-8) on the
    same CSR matrix, for each of :func:`boundary_problems`, with one standard normal right-hand side (projected
    onto the range of the singular ones, the same vector for both solvers); each solver's best of
    :data:`REPEATS` runs, each after an untimed one, the solvers in turn (:func:`_timed_in_turn`)."""
    import pyamg

    import mgcore

    rows = []
    for name, make in boundary_problems(n).items():
        problem = make()
        A_csr = problem.to_sparse()
        b = np.random.default_rng(SEED).standard_normal(problem.grid_shape)
        if problem.null_space is not None:
            z = problem.null_space.numpy()
            b = b - z * (b * z).sum() / z.sum()
        b_flat = b.ravel()
        bt = torch.from_numpy(b).to(device)
        A = problem.A.to(device)

        def run_mg(A=A, bt=bt, shape=problem.grid_shape):
            return mgcore.solve(A, bt, grid=shape, rtol=RTOL, maxiter=100)

        def run_pyamg(A_csr=A_csr, b_flat=b_flat):
            residuals: list[float] = []
            ml = pyamg.ruge_stuben_solver(A_csr)
            return ml.solve(b_flat, tol=RTOL, maxiter=200, residuals=residuals), residuals

        # "same stencil": the runs solve one stencil object, and what a solve keeps on it (loop forms, the
        # active box of a mask) serves the next; pyamg's set-up starts from the CSR matrix each time.  So also
        # "new stencil": each run on a stencil built anew by pde, as a new problem is (before the clock starts).
        timings = _timed_in_turn(
            {
                "same": (run_mg, None),
                "new": (lambda A_new: run_mg(A_new), lambda make=make: make().A.to(device)),
                "pyamg": (run_pyamg, None),
            },
            device,
            repeats=REPEATS,
        )
        (mg_seconds, (x, info)), (fresh_seconds, _) = timings["same"], timings["new"]
        pyamg_seconds, (x_amg, residuals) = timings["pyamg"]
        x = x.double().cpu().numpy().ravel()
        rows.append(
            {
                "problem": name,
                "grid": "x".join(map(str, problem.grid_shape)),
                "mgcore_s": mg_seconds,
                "mgcore_fresh_s": fresh_seconds,
                "mgcore_iterations": int(info.iterations),
                "mgcore_factor": float(info.convergence_factor),
                "mgcore_residual": _relative_residual(A_csr, b_flat, x),
                "pyamg_s": pyamg_seconds,
                "pyamg_iterations": len(residuals) - 1,
                "pyamg_residual": _relative_residual(A_csr, b_flat, x_amg),
                "speedup": pyamg_seconds / mg_seconds,
                "speedup_fresh": pyamg_seconds / fresh_seconds,
            }
        )
    return rows


def _boundaries_table(rows: list[dict]) -> str:
    lines = [
        "| problem | grid | mgcore s, new stencil | mgcore s, same stencil | iterations | factor | rel. residual | "
        "pyamg RS s | pyamg iterations | pyamg rel. residual | speed-up, new stencil | speed-up, same stencil |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['grid']} | {r['mgcore_fresh_s']:.3f} | {r['mgcore_s']:.3f} | "
            f"{r['mgcore_iterations']} | {r['mgcore_factor']:.3f} | {r['mgcore_residual']:.1e} | {r['pyamg_s']:.3f} | "
            f"{r['pyamg_iterations']} | {r['pyamg_residual']:.1e} | **{r['speedup_fresh']:.1f}x** | "
            f"{r['speedup']:.1f}x |"
        )
    return "\n".join(lines)


_MEMORY_CHILD = """
import json, sys, torch
import mgcore, pde

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])  # KiB

n = int(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
problem = pde.poisson((n, n))
f = problem.f.clone()
solver = mgcore.MultigridSolver(problem.A, (n, n))
solver.solve(f, rtol=1e-8)  # warm-up: the allocator and the lazily built pieces
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to the current RSS
    handle.write("5")
x, info = solver.solve(f, rtol=1e-8)
peak = status("VmHWM")
print(json.dumps({"before_kib": before, "peak_kib": peak, "converged": bool(info.converged)}))
"""


def bench_memory(n: int) -> dict:
    """Peak resident memory added by ``solver.solve`` at n^2, in fine-grid float64 arrays.

    Measured in a fresh process: the resident size before the solve, and the high-water mark ``VmHWM``
    of the solve alone (reset through ``/proc/self/clear_refs``; Linux only).  The returned ``x`` counts.
    """
    output = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(n), str(torch.get_num_threads())],
        capture_output=True, text=True, check=True,
    ).stdout
    data = json.loads(output.strip().splitlines()[-1])
    array_kib = n * n * 8 / 1024
    extra = (data["peak_kib"] - data["before_kib"]) / array_kib
    return {"n": n, "extra_arrays": extra, "array_mib": array_kib / 1024, **data}


def _table(rows: list[dict]) -> str:
    head = (
        "| method | setup s | solve s | total s | iterations | factor | rel. residual | error vs exact | "
        "speed-up vs pyamg RS |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['setup_s']:.3f} | {r['solve_s']:.3f} | {r['total_s']:.3f} | {r['iterations']} | "
            f"{r['factor']} | {r['relative_residual']:.1e} | {r['error']:.2e} | {r['speedup_vs_pyamg']} |"
        )
    return "\n".join(lines)


def _plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, dim in zip(axes, (2, 3)):
        series: dict[str, list[tuple[int, float]]] = {}
        for shape, rows in results.items():
            if len(shape) != dim:
                continue
            unknowns = int(np.prod(shape))
            for row in rows:
                series.setdefault(row["method"], []).append((unknowns, row["total_s"]))
        for method, points in series.items():
            points.sort()
            ax.loglog([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        if series:
            xs = sorted({p[0] for points in series.values() for p in points})
            ref = [xs[0], xs[-1]]
            y0 = min(p[1] for points in series.values() for p in points if p[0] == xs[0])
            ax.loglog(ref, [y0, y0 * ref[1] / ref[0]], "k:", label="O(N)")
        ax.set_xlabel("unknowns N")
        ax.set_ylabel("setup + solve seconds")
        ax.set_title(f"{dim}D Poisson, rtol 1e-8")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="device of the mgcore rows (pyamg always runs on the CPU)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the markdown and the plot")
    parser.add_argument("--tag", default=None, help="file-name tag (default: date and device)")
    parser.add_argument("--boundaries", action="store_true",
                        help="only the Neumann/periodic/mixed/masked/screened rows against pyamg")
    parser.add_argument("--boundaries-n", type=int, default=1023, metavar="N", help="their grid side (default 1023)")
    args = parser.parse_args(argv)

    torch.manual_seed(SEED)
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    if args.boundaries:
        today = datetime.date.today().isoformat()
        tag = args.tag or f"{today}_{device.type}"
        rows = bench_boundaries(args.boundaries_n, device)
        text = "\n".join([
            f"# Boundary conditions, masks, screening: mgcore against pyamg ({today}, mgcore on {device_name})",
            "",
            f"float64, rtol {RTOL:g}, standard normal right-hand side (projected for singular problems); mgcore "
            "V(1,2) rbgs (the default cycle) setup + solve and pyamg ruge_stuben_solver setup + solve on the same "
            f"CSR matrix, each the best of {REPEATS} runs, each run after an untimed one of the same solver, the "
            "three solvers in turn (one pair of runs of each per round, so that all see the same phases of the "
            "host).  mgcore 'new stencil': each run "
            "solves a stencil that pde built anew before the clock started (what a new problem costs); 'same "
            "stencil': the runs solve one stencil object, and reuse what the warm-up kept on it (loop forms, a "
            "mask's active box). "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
            "",
            _boundaries_table(rows),
            "",
        ])
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"poisson_boundaries_{tag}.md").write_text(text)
        return 0
    sizes_2d = [(255, 255), (511, 511)] if args.quick else [(255, 255), (511, 511), (1023, 1023), (2047, 2047)]
    sizes_3d = [(31, 31, 31)] if args.quick else [(31, 31, 31), (63, 63, 63), (127, 127, 127)]
    if device.type == "cuda" and not args.quick:
        sizes_2d.append((4095, 4095))
    today = datetime.date.today().isoformat()
    tag = args.tag or f"{today}_{device.type}"
    lines = [
        f"# Poisson: mgcore against pyamg ({today}, mgcore on {device_name})",
        "",
        f"float64, rtol {RTOL:g} (||b - A x|| <= rtol ||b||), manufactured solution; times are the best of 3 "
        "runs after a warm-up (pyamg: 1 run after a warm-up); setup includes building the hierarchy (and the "
        f"FMG pass for 'FMG + V'). torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
    ]
    results: dict[tuple, list[dict]] = {}
    from tqdm import tqdm

    for shape in tqdm(sizes_2d + sizes_3d, desc="sizes", file=sys.stderr):
        with_pyamg = not (device.type == "cuda" and shape == (4095, 4095))
        rows = bench_size(shape, device, with_pyamg=with_pyamg)
        results[shape] = rows
        block = [f"## {' x '.join(map(str, shape))} ({int(np.prod(shape)):,} unknowns)", "", _table(rows), ""]
        print("\n".join(block), flush=True)
        lines += block
    fmg_rows = [bench_fmg_vs_dst(n, device) for n in ((255, 511) if args.quick else (255, 1023, 2047))]
    block = [
        "## FMG to discretisation accuracy against the DST fast solver",
        "",
        "| n | FMG s | DST s | FMG / DST | FMG error | discretisation error | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in fmg_rows:
        block.append(
            f"| {r['n']} | {r['fmg_s']:.3f} | {r['dst_s']:.3f} | {r['ratio']:.2f} | {r['fmg_error']:.3e} | "
            f"{r['discretisation_error']:.3e} | {r['fmg_error'] / r['discretisation_error']:.2f} |"
        )
    print("\n".join(block), flush=True)
    lines += [*block, ""]
    block = [
        "## 64 right-hand sides at 255^2 (random, rtol 1e-8)",
        "",
        "| mgcore, one batched call | mgcore s | pyamg, 64 solves, one setup | speed-up | all converged | "
        "max iterations | max rel. difference to pyamg |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in bench_batched(255, 64, device):
        block.append(
            f"| {r['method']} | {r['mgcore_s']:.3f} | {r['pyamg_s']:.3f} | {r['ratio']:.1f}x | {r['all_converged']} | "
            f"{r['iterations_max']} | {r['agreement']:.1e} |"
        )
    block.append("")
    print("\n".join(block), flush=True)
    lines += block
    if device.type == "cuda":
        n = 2047 if args.quick else 4095
        import mgcore
        import pde

        problem = pde.poisson((n, n))
        f = problem.f.to(device)
        solver = mgcore.MultigridSolver(problem.A.to(device), (n, n))
        solver.solve(f)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        solver.solve(f)
        extra = (torch.cuda.max_memory_allocated(device) - before) / (n * n * 8)
        block = [
            "## Peak extra GPU memory of a solve",
            "",
            f"At {n}^2 `solver.solve` allocated at most **{extra:.2f} fine-grid float64 arrays** beyond what was "
            "allocated before it (torch.cuda.max_memory_allocated; the returned x included).",
            "",
        ]
        print("\n".join(block), flush=True)
        lines += block
    if device.type == "cpu":
        memory = bench_memory(511 if args.quick else 2047)
        block = [
            "## Peak extra memory of a solve",
            "",
            f"At {memory['n']}^2 one float64 grid array is {memory['array_mib']:.1f} MiB; `solver.solve` raised the "
            f"process's peak resident memory by **{memory['extra_arrays']:.2f} fine-grid arrays** (VmHWM, fresh "
            "process after a warm-up solve, peak reset with /proc/self/clear_refs; the returned x included).",
            "",
        ]
        print("\n".join(block), flush=True)
        lines += block
    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = args.out / f"poisson_vs_pyamg_{tag}.png"
    _plot(results, plot_path, f"mgcore vs pyamg, {device_name}, {today}")
    lines += [f"![scaling]({plot_path.name})", ""]
    markdown_path = args.out / f"poisson_vs_pyamg_{tag}.md"
    markdown_path.write_text("\n".join(lines))
    print(f"wrote {markdown_path} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
