"""Coarse operators of masked domains: rediscretised coarse masks against Galerkin (the engine's choice).

    python benchmarks/masked_coarsening.py                  # disk and L-shape at 255^2
    python benchmarks/masked_coarsening.py --sizes 255 511 --shapes disk L-shape holes

For each masked Poisson problem (Dirichlet on the mask's boundary) it builds two V(2,1) red-black hierarchies
with the same face-aware transfers and band smoothing and measures their asymptotic factors
(:func:`mgcore.asymptotic_factor`):

* *rediscretised*: every coarse level is ``pde.poisson`` on the coarse grid with a coarse mask, either injected
  (coarse point active where the fine point under it is) or "any" (active where any fine point of its
  full-weighting stencil is); restriction and prolongation are masked on both grids;
* *Galerkin*: what ``mgcore.MultigridSolver`` builds (coarse operators ``R A P`` by probing).

Rediscretised masks would make the masked levels as cheap as the rectangle's (constant stencils, no probing);
this table is why the engine does not use them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

SEED = 0


def masks(kind: str, n: int) -> np.ndarray:
    """The active points of the benchmark shapes on the Dirichlet ``n x n`` grid (``h = 1 / (n + 1)``)."""
    x = (np.arange(n) + 1) / (n + 1)
    X, Y = np.meshgrid(x, x, indexing="ij")
    if kind == "disk":
        return (X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.4**2
    if kind == "L-shape":
        return ~((X > 0.5) & (Y > 0.5))
    if kind == "holes":  # 16 round holes
        active = np.ones((n, n), dtype=bool)
        for cx in (0.2, 0.4, 0.6, 0.8):
            for cy in (0.2, 0.4, 0.6, 0.8):
                active &= (X - cx) ** 2 + (Y - cy) ** 2 >= 0.06**2
        return active
    raise ValueError(f"shape: expected disk, L-shape or holes; got {kind!r}")


def coarse_mask(active: np.ndarray, rule: str) -> np.ndarray:
    """The coarse mask on the points ``2 i + 1`` of the fine grid: ``"inject"`` or ``"any"``."""
    nc = active.shape[0] // 2
    centres = 2 * np.arange(nc) + 1
    if rule == "inject":
        return active[np.ix_(centres, centres)]
    padded = np.pad(active, 1)
    out = np.zeros((nc, nc), dtype=bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            out |= padded[np.ix_(centres + di, centres + dj)]
    return out


class _MaskedRestriction(nn.Module):
    """``R`` followed by the coarse mask (the coarse right-hand side is zero off the coarse domain)."""

    def __init__(self, R: nn.Module, coarse_active: torch.Tensor) -> None:
        super().__init__()
        self.R = R
        self.register_buffer("coarse_active", coarse_active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.R(x) * self.coarse_active


class _MaskedProlongation(nn.Module):
    """The coarse mask followed by ``P`` (values off the coarse domain are not interpolated)."""

    def __init__(self, P: nn.Module, coarse_active: torch.Tensor) -> None:
        super().__init__()
        self.P = P
        self.register_buffer("coarse_active", coarse_active)

    def forward(self, c: torch.Tensor, fine_shape=None, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.P(c * self.coarse_active, fine_shape, out=out)


def rediscretised_hierarchy(active: np.ndarray, rule: str, max_coarse: int = 31):
    """V(2,1) red-black levels whose operators are ``pde.poisson`` on each grid with its coarse mask."""
    import pde
    from mgcore.boundary import BoundaryProlongation, BoundaryRestriction
    from mgcore.hierarchy import CoarseSolver, Hierarchy, Level
    from mgcore.operators import parse_faces
    from mgcore.smoothers import red_black_gauss_seidel

    levels = []
    while True:
        n = active.shape[0]
        A = pde.poisson((n, n), mask=active, solution=None).A
        if n <= max_coarse:
            levels.append(Level(A, (n, n)))
            return Hierarchy(levels, CoarseSolver(A, (n, n)))
        P = BoundaryProlongation(parse_faces("dirichlet", 2), (n, n), torch.from_numpy(active))
        coarse = coarse_mask(active, rule)
        coarse_active = torch.from_numpy(coarse).to(A.coefficients.dtype)
        levels.append(
            Level(
                A, (n, n), red_black_gauss_seidel(A, (n, n)), 2, 1,
                _MaskedRestriction(BoundaryRestriction(P), coarse_active), _MaskedProlongation(P, coarse_active),
                coarse_operator="rediscretized",
            )
        )
        active = coarse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[255], help="grid sides (odd; default 255)")
    parser.add_argument("--shapes", nargs="+", default=["disk", "L-shape"], choices=["disk", "L-shape", "holes"])
    args = parser.parse_args(argv)
    if any(n < 63 or n % 2 == 0 for n in args.sizes):
        parser.error("--sizes: expected odd grid sides of at least 63")

    import mgcore
    import pde

    torch.manual_seed(SEED)
    print("| shape | grid | rediscretised, injected mask | rediscretised, 'any' mask | Galerkin (engine) |")
    print("|---|---|---:|---:|---:|")
    for kind in args.shapes:
        for n in args.sizes:
            active = masks(kind, n)
            factors = [
                mgcore.asymptotic_factor(rediscretised_hierarchy(active, rule)).factor for rule in ("inject", "any")
            ]
            solver = mgcore.MultigridSolver(pde.poisson((n, n), mask=active, solution=None).A, grid=(n, n))
            factors.append(mgcore.asymptotic_factor(solver.hierarchy()).factor)
            print(f"| {kind} | {n}^2 | " + " | ".join(f"{f:.3f}" for f in factors) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
