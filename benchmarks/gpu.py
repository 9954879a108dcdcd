"""The GPU report: mgcore solves, their floors, kernels and passes per cycle, and vision throughput.

One command prints every row and writes ``benchmarks/results/gpu_<date>_<device>.md``:

    PYTHONPATH=$PWD python benchmarks/gpu.py                 # on a CUDA machine (default device: cuda)
    python benchmarks/gpu.py --device cpu --quick            # small sizes: a smoke run anywhere

Rows (float64 unless said, rtol 1e-8, manufactured right-hand side of ``pde.poisson``):

* 2D 1023^2 / 4095^2 / 8191^2 set-up + solve and solve alone, and 4095^2 with a random right-hand side;
* the fast Poisson solver floor: DST-I by ``torch.fft`` on the same device, in the same run;
* 3D 127^3 / 255^3 / 511^3;
* FMG alone to discretisation accuracy at 4095^2, against the DST-I floor;
* 64 right-hand sides at 255^2 in one call, against one 2047^2 grid (the same unknowns);
* float32 input against float64 input at 4095^2 (same tolerance);
* ``learn_smoother("poisson")`` 300 steps;
* kernels and fine-grid passes per V(2,1) cycle (:func:`mgcore.analysis.count_passes`);
* vision: ``mgnet_cifar`` (engine blocks) against the hand-written ``PlainMgNet``, bf16, channels_last, and one
  ``mgnet train`` epoch on 50,000 synthetic CIFAR images against the model's throughput.

Every timing synchronises the device, is taken after a warm-up, and is the best of ``--repeats`` runs.  Compile
or graph-capture time, where a path has one, is reported apart.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mgcore
import pde
from mgcore.analysis import count_passes

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls after one warm-up call, with the device synchronised."""
    result = function()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


# ------------------------------------------------------------------------------------------- the floor
def dst1(x: torch.Tensor, dim: int) -> torch.Tensor:
    """DST-I along ``dim`` (SciPy's unnormalised ``dst(type=1)``) by one real FFT of the odd extension."""
    n = x.shape[dim]
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    extended = torch.cat([zero, x, zero, -x.flip(dim)], dim=dim)  # length 2(n + 1)
    return -torch.fft.rfft(extended, dim=dim).imag.narrow(dim, 1, n)


def dst_poisson(f: torch.Tensor, h: float) -> torch.Tensor:
    """Solve the 5-point (7-point) Dirichlet Poisson problem exactly by DST-I on every axis."""
    dims = list(range(f.ndim))
    transformed = f
    for d in dims:
        transformed = dst1(transformed, d)
    eigenvalues = torch.zeros_like(f)
    for d in dims:
        n = f.shape[d]
        k = torch.arange(1, n + 1, dtype=f.dtype, device=f.device)
        shape = [1] * f.ndim
        shape[d] = n
        eigenvalues = eigenvalues + (4 / h**2 * torch.sin(k * math.pi / (2 * (n + 1))) ** 2).reshape(shape)
    u = transformed / eigenvalues
    for d in dims:
        u = dst1(u, d) / (2 * (f.shape[d] + 1))
    return u


# ------------------------------------------------------------------------------------------- rows
def _relative_residual(problem, x: torch.Tensor, b: torch.Tensor) -> float:
    A = problem.A.to(device=x.device, dtype=torch.float64)
    x64, b64 = x.to(torch.float64)[None, None], b.to(torch.float64)[None, None]
    return float(A.residual(x64, b64).norm() / b64.norm())


def solve_row(label: str, shape: tuple[int, ...], device: torch.device, repeats: int, *, random_rhs: bool = False,
              dtype: torch.dtype = torch.float64) -> dict:
    problem = pde.poisson(shape)
    A = problem.A.to(device)
    if random_rhs:
        b = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    else:
        b = problem.f
    b = b.to(device=device, dtype=dtype)

    def setup_and_solve():
        solver = mgcore.MultigridSolver(A, shape)
        return solver, solver.solve(b, rtol=1e-8)

    total, (solver, (x, info)) = timed(setup_and_solve, device, repeats)
    solve_s, (x, info) = timed(lambda: solver.solve(b, rtol=1e-8), device, repeats)
    return {"case": label, "setup_solve": total, "solve": solve_s, "cycles": info.iterations,
            "residual": _relative_residual(problem, x, b), "converged": bool(info.converged)}


def floor_row(n: int, device: torch.device, repeats: int) -> dict:
    problem = pde.poisson((n, n))
    f = problem.f.to(device)
    seconds, u = timed(lambda: dst_poisson(f, 1.0 / (n + 1)), device, repeats)
    return {"case": f"DST-I fast Poisson (torch.fft) {n}^2", "solve": seconds,
            "residual": _relative_residual(problem, u, f)}


def fmg_row(n: int, device: torch.device, repeats: int, floor_seconds: float) -> dict:
    problem = pde.poisson((n, n))
    solver = mgcore.MultigridSolver(problem.A.to(device), (n, n), presmooth=2, postsmooth=1)  # as labelled
    f = problem.f.to(device)
    seconds, x = timed(lambda: solver.fmg(f), device, repeats)
    return {"case": f"FMG alone (one V(2,1) per level, cubic) {n}^2", "solve": seconds,
            "error": problem.error(x.cpu()), "discretisation_error": problem.error(
                dst_poisson(f, 1.0 / (n + 1)).cpu()),
            "ratio_to_floor": seconds / floor_seconds}


def batched_rows(count: int, n: int, big: int, device: torch.device, repeats: int) -> list[dict]:
    A = pde.poisson((n, n)).A.to(device)
    B = torch.randn((count, n, n), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    solver = mgcore.MultigridSolver(A, (n, n))
    seconds, (_, infos) = timed(lambda: solver.solve(B, rtol=1e-8), device, repeats)
    rows = [{"case": f"{count} right-hand sides at {n}^2, one call", "solve": seconds,
             "cycles": int(infos.iterations.max()), "converged": bool(infos.converged.all())}]
    rows.append(solve_row(f"one {big}^2 grid (about the same unknowns)", (big, big), device, repeats))
    return rows


def learn_row(steps: int, device: torch.device, train_size: int = 63) -> dict:
    start = time.perf_counter()
    S = pde.learn_smoother("poisson", iterations=steps, progress=False, device=str(device), train_size=train_size)
    _sync(device)
    return {"case": f"learn_smoother('poisson'), {steps} steps", "solve": time.perf_counter() - start,
            "factor": S.history[-1]}


def passes_row(n: int, dim: int, device: torch.device) -> dict:
    shape = (n,) * dim
    # V(2,1) as labelled, comparable with the counts of earlier runs (the default cycle is V(1,2))
    solver = mgcore.MultigridSolver(pde.poisson(shape).A.to(device), shape, presmooth=2, postsmooth=1)
    h = solver.hierarchy(torch.float64, device)
    count = count_passes(h)
    return {"case": f"one V(2,1) rbgs cycle at {'x'.join(map(str, shape))}", "kernels": count.kernels,
            "fine_kernels": count.fine_grid_kernels, "passes": count.grid_passes}


def vision_rows(device: torch.device, quick: bool) -> list[dict]:
    from benchmarks.throughput import measure

    amp = "bf16" if device.type == "cuda" else "none"
    batch = 8 if quick else 256
    row = measure("mgnet_cifar", str(device), batch, steps=1 if quick else 20, rounds=1 if quick else 3, amp=amp,
                  channels_last=True)
    rows = [{"case": f"mgnet_cifar train step, batch {batch}, {amp}, channels_last: engine / hand-written",
             "ours": row["ours"], "plain": row["plain"], "ratio": row["ratio"]}]
    rows.append(epoch_row(device, quick, amp, row["ours"]))
    return rows


def epoch_row(device: torch.device, quick: bool, amp: str, throughput: float) -> dict:
    """One ``vision.train`` epoch on synthetic CIFAR-10 against the model's measured training throughput."""
    from vision.data import write_cifar_binary
    from vision.train import train

    images = 256 if quick else 50_000
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "cifar-10-batches-bin"
        data.mkdir()
        generator = torch.Generator().manual_seed(0)
        per_batch = images // 5
        for i in range(1, 6):
            x = torch.randint(0, 256, (per_batch, 3, 32, 32), generator=generator, dtype=torch.uint8)
            write_cifar_binary(data / f"data_batch_{i}.bin", x, torch.randint(0, 10, (per_batch,), generator=generator))
        test = torch.randint(0, 256, (64, 3, 32, 32), generator=generator, dtype=torch.uint8)
        write_cifar_binary(data / "test_batch.bin", test, torch.randint(0, 10, (64,), generator=generator))
        result = train(model="mgnet_cifar", dataset="cifar10", data_dir=folder, download=False, epochs=1,
                       batch_size=8 if quick else 256, device=str(device), amp=amp, channels_last=True,
                       output_dir=str(Path(folder) / "run"), progress=False, workers=0)
    seconds = result.history[-1]["epoch_seconds"]
    ideal = 5 * per_batch / throughput
    return {"case": f"mgnet train epoch, {5 * per_batch} synthetic CIFAR images (incl. a 64-image test pass)",
            "solve": seconds, "ideal": ideal, "ratio": ideal / seconds}


# ------------------------------------------------------------------------------------------- report
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def _format(rows: list[dict]) -> str:
    lines = ["| case | setup + solve s | solve s | cycles | result |", "|---|---:|---:|---:|---|"]
    for row in rows:
        extra = []
        for key in ("residual", "error", "discretisation_error", "ratio_to_floor", "factor", "kernels",
                    "fine_kernels", "passes", "ours", "plain", "ratio", "ideal", "converged"):
            if key in row:
                value = row[key]
                extra.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
        setup = f"{row['setup_solve'] * 1e3:.2f} ms" if "setup_solve" in row else ""
        solve = f"{row['solve'] * 1e3:.2f} ms" if "solve" in row else ""
        lines.append(f"| {row['case']} | {setup} | {solve} | {row.get('cycles', '')} | {'; '.join(extra)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run on any device)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (best reported)")
    parser.add_argument("--skip-vision", action="store_true", help="leave out the vision rows")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default results/gpu_<date>_<dev>.md)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        print(f"gpu.py: --device: {error}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    name = _device_name(device)
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    out = args.out or RESULTS / f"gpu_{datetime.date.today().isoformat()}_{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)  # checked before the long work, not after it
    torch.manual_seed(0)
    quick = args.quick
    sizes_2d = (31, 63) if quick else (1023, 4095, 8191)
    sizes_3d = (7, 15) if quick else (127, 255, 511)
    big = sizes_2d[-1] if quick else 4095
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        print(_format([row]).splitlines()[-1], flush=True)

    for n in sizes_2d:
        add(solve_row(f"2D {n}^2", (n, n), device, args.repeats))
    add(solve_row(f"2D {big}^2, random right-hand side", (big, big), device, args.repeats, random_rhs=True))
    floor = floor_row(big, device, args.repeats)
    add(floor)
    add(floor_row(sizes_2d[0], device, args.repeats))
    for n in sizes_3d:
        add(solve_row(f"3D {n}^3", (n, n, n), device, args.repeats))
    add(fmg_row(big, device, args.repeats, floor["solve"]))
    for row in batched_rows(4 if quick else 64, 15 if quick else 255, 31 if quick else 2047, device, args.repeats):
        add(row)
    add(solve_row(f"2D {big}^2, float32 input", (big, big), device, args.repeats, dtype=torch.float32))
    add(solve_row(f"2D {big}^2, float64 input", (big, big), device, args.repeats))
    add(learn_row(5, device, train_size=15) if quick else learn_row(300, device))
    for n in (sizes_2d[0], big):
        add(passes_row(n, 2, device))
    if not args.skip_vision:
        for row in vision_rows(device, quick):
            add(row)
    header = (
        f"# GPU report: mgcore and vision on {name} ({datetime.date.today().isoformat()})\n\n"
        f"`python benchmarks/gpu.py{' --quick' if quick else ''} --device {args.device}`; torch {torch.__version__}; "
        f"best of {args.repeats} runs after a warm-up, device synchronised; float64 unless said; rtol 1e-8.\n\n"
    )
    out.write_text(header + _format(rows) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
