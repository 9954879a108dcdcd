"""Measured convergence of a cycle: the asymptotic factor by power iteration on its error propagation.

A cycle for ``A u = f`` maps the error ``e = u - u*`` to ``M e``; with ``f = 0`` the exact solution is
``u* = 0``, so one cycle applied to ``u = e`` returns ``M e``.  The asymptotic convergence factor is the
spectral radius ``ρ(M)``; power iteration estimates it from ``||M^k e|| / ||M^{k-1} e||`` (Trottenberg et
al. 2001, section 2.5.2), which, unlike the residual ratio of one run, does not depend on the right-hand
side.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from mgcore import kernels
from mgcore.cycles import Cycle, cycle
from mgcore.hierarchy import Hierarchy

__all__ = ["FactorEstimate", "PassCount", "asymptotic_factor", "count_passes"]


@dataclass
class FactorEstimate:
    """Result of :func:`asymptotic_factor`."""

    factor: float
    """The estimate of ρ(M): the geometric mean of the last ``window`` norm ratios, largest over vectors."""
    ratios: np.ndarray
    """``||M^k e|| / ||M^{k-1} e||`` per iteration (rows) and start vector (columns)."""
    iterations: int
    """Power iterations run."""


def asymptotic_factor(
    hierarchy: Hierarchy,
    *,
    kind: Cycle | str = Cycle.V,
    iterations: int = 30,
    vectors: int = 2,
    window: int = 5,
    seed: int = 0,
    symmetric: bool = False,
) -> FactorEstimate:
    """Estimate the asymptotic convergence factor ρ(M) of one cycle by power iteration.

    Parameters
    ----------
    hierarchy : Hierarchy
        The multigrid hierarchy (any smoother, fixed or learned).
    kind : Cycle or str
        V, W or F.
    iterations : int
        Power iterations.
    vectors : int
        Random start vectors, iterated together as a batch; the largest estimate is returned.
    window : int
        Ratios averaged (geometrically) at the end, which damps the oscillation of complex eigenvalue pairs.
    seed : int
        Seed of the start vectors.
    symmetric : bool
        Reverse the post-smoother's steps (the cycle used to precondition CG).

    Examples
    --------
    >>> from mgcore import Stencil, build_hierarchy
    >>> h = build_hierarchy(Stencil.laplacian(2), (63, 63), presmooth=1, postsmooth=1)
    >>> 0.05 < asymptotic_factor(h).factor < 0.12
    True
    """
    if iterations < 2 or vectors < 1 or not 1 <= window <= iterations:
        raise ValueError(
            f"iterations, vectors, window: expected iterations >= 2, vectors >= 1, 1 <= window <= iterations; "
            f"got {iterations}, {vectors}, {window}"
        )
    kind = Cycle.parse(kind)
    top = hierarchy[0]
    A = top.A
    dtype = A.coefficients.dtype if hasattr(A, "coefficients") else torch.float64
    device = A.coefficients.device if hasattr(A, "coefficients") else None
    generator = torch.Generator().manual_seed(seed)
    e = torch.rand((vectors, 1, *top.grid_shape), generator=generator, dtype=torch.float64) - 0.5
    e = e.to(device=device, dtype=dtype)
    e = e / e.flatten(1).norm(dim=1).reshape(-1, *([1] * (e.ndim - 1)))
    zero = torch.zeros_like(e)
    ratios = []
    with torch.no_grad():
        for _ in range(iterations):
            e = cycle(hierarchy, e, zero, kind, symmetric=symmetric)
            norms = e.flatten(1).norm(dim=1)
            ratios.append(norms.double().cpu().numpy())
            # Renormalise (vectors that reached exactly zero stay zero: the cycle solved them exactly).
            e = e / norms.clamp_min(1e-300).reshape(-1, *([1] * (e.ndim - 1)))
    ratios = np.array(ratios)  # (iterations, vectors)
    tail = np.clip(ratios[-window:], 1e-300, None)
    per_vector = np.exp(np.log(tail).mean(axis=0))
    factor = float(per_vector.max())
    if not math.isfinite(factor):
        factor = float("inf")
    return FactorEstimate(factor=factor, ratios=ratios, iterations=iterations)


@dataclass
class PassCount:
    """Result of :func:`count_passes`: what one cycle costs in operations and memory traffic."""

    kernels: int
    """Tensor operations that touch memory (views and allocations excluded): on a GPU, at least one kernel
    launch each, which is what a CUDA graph or a fused cycle saves."""
    grid_passes: float
    """Elements read or written by those operations (tensor arguments plus results), in units of one
    fine-grid array: the memory traffic of a cycle, whose floor is a few tens of passes for a fused V(2,1)."""
    fine_grid_kernels: int
    """Kernels that touch at least a quarter of a fine-grid array (the ones that matter for bandwidth)."""


def count_passes(hierarchy: Hierarchy, *, kind: Cycle | str = Cycle.V, batch: int = 1) -> PassCount:
    """Count the operations and the fine-grid passes of one cycle from a zero guess, as executed.

    Every ATen operation of the cycle is intercepted (``TorchDispatchMode``) on the device and dtype the
    hierarchy lives on.  The counts are those of the eager PyTorch path (the compiled CPU loops of
    :mod:`mgcore.kernels` switched off); they measure how far it is from a fused
    cycle (Williams, Waterman & Patterson 2009: a bandwidth-bound kernel's time is its traffic over the
    memory bandwidth).

    Examples
    --------
    >>> from mgcore import Stencil, build_hierarchy
    >>> count = count_passes(build_hierarchy(Stencil.laplacian(2), (63, 63), max_coarse=50))
    >>> count.kernels > 0 and 10 < count.grid_passes < 200
    True
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    kind = Cycle.parse(kind)
    top = hierarchy[0]
    A = top.A
    dtype = A.coefficients.dtype if hasattr(A, "coefficients") else torch.float64
    device = A.coefficients.device if hasattr(A, "coefficients") else None
    f = torch.ones((batch, 1, *top.grid_shape), dtype=dtype, device=device)
    fine = f.numel()
    tally = {"kernels": 0, "elements": 0, "fine": 0}

    def elements(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel()
        if isinstance(value, (list, tuple)):
            return sum(elements(v) for v in value)
        return 0

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.__name__
            if not func.is_view and not name.startswith(("empty", "_local_scalar", "detach", "lift_fresh")):
                touched = elements(args) + elements(kwargs) + elements(out)
                tally["kernels"] += 1
                tally["elements"] += touched
                tally["fine"] += int(touched >= fine // 4)
            return out

    # The PyTorch path: the compiled CPU loops of mgcore.kernels are no ATen operations to count, nor is a
    # sparse (SciPy) coarsest solve: a copy of the hierarchy with the dense one is counted.
    if getattr(hierarchy.coarse_solver, "name", "") == "sparse LU":
        hierarchy = copy.deepcopy(hierarchy)
        hierarchy.coarse_solver.densify(device)
    with torch.no_grad(), kernels.disabled():
        cycle(hierarchy, None, f, kind)  # warm: the level workspaces are allocated once, outside the count
        with _Counter():
            cycle(hierarchy, None, f, kind)
    return PassCount(kernels=tally["kernels"], grid_passes=tally["elements"] / fine, fine_grid_kernels=tally["fine"])
