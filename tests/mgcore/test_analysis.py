"""The asymptotic factor by power iteration against the spectral radius of the assembled error propagation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgcore import Cycle, Stencil, build_hierarchy, cycle
from mgcore.analysis import FactorEstimate, asymptotic_factor


def _error_propagation(hierarchy, kind: Cycle = Cycle.V) -> np.ndarray:
    """The matrix ``M`` of one cycle: column ``j`` is ``cycle(e_j, f=0)`` (the exact solution is 0)."""
    shape = hierarchy[0].grid_shape
    n = math.prod(shape)
    identity = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
    with torch.no_grad():
        columns = cycle(hierarchy, identity, torch.zeros_like(identity), kind)
    return columns.reshape(n, n).T.numpy()


@pytest.mark.parametrize(
    ("smoother", "pre", "post"),
    [("rbgs", 1, 1), ("wjacobi", 2, 2), ("chebyshev", 1, 1), ("jacobi", 1, 0)],
)
def test_factor_matches_spectral_radius(smoother, pre, post):
    A = Stencil.laplacian(2, h=1 / 16)
    h = build_hierarchy(A, (15, 15), smoother=smoother, presmooth=pre, postsmooth=post, max_coarse=10)
    rho = float(np.abs(np.linalg.eigvals(_error_propagation(h))).max())
    estimate = asymptotic_factor(h, iterations=60, vectors=2)
    assert isinstance(estimate, FactorEstimate)
    assert estimate.ratios.shape == (60, 2)
    # Power iteration approaches rho from below; it must not overshoot and must get within 3%.
    assert rho * 0.97 <= estimate.factor <= rho * 1.001, (estimate.factor, rho)


def test_factor_of_a_nonsymmetric_operator_and_w_cycle():
    # A convection-diffusion stencil (non-symmetric): the cycle is non-normal, and power iteration still
    # finds the spectral radius of its error propagation.
    A = Stencil.from_kernel([[0, -1.2, 0], [-1, 4, -1], [0, -0.8, 0]])
    h = build_hierarchy(A, (15, 15), smoother="wjacobi", presmooth=1, postsmooth=1, max_coarse=10)
    rho = float(np.abs(np.linalg.eigvals(_error_propagation(h))).max())
    estimate = asymptotic_factor(h, iterations=80, vectors=3, kind="V")
    assert abs(estimate.factor - rho) <= 0.03 * rho
    rho_w = float(np.abs(np.linalg.eigvals(_error_propagation(h, Cycle.W))).max())
    w = asymptotic_factor(h, iterations=80, kind=Cycle.W)
    assert abs(w.factor - rho_w) <= 0.03 * rho_w


def test_factor_is_deterministic_and_independent_of_the_rhs():
    A = Stencil.laplacian(2)
    h = build_hierarchy(A, (31, 31), smoother="rbgs", presmooth=2, postsmooth=1, max_coarse=50)
    first = asymptotic_factor(h, seed=3)
    again = asymptotic_factor(h, seed=3)
    other = asymptotic_factor(h, seed=4)
    assert first.factor == again.factor
    np.testing.assert_array_equal(first.ratios, again.ratios)
    assert abs(first.factor - other.factor) < 0.01  # a property of the cycle, not of the start vector
    assert 0.02 < first.factor < 0.12


def test_exact_coarse_solve_has_factor_zero():
    h = build_hierarchy(Stencil.laplacian(2), (7, 7))  # 49 unknowns: one level, a dense LU solve
    assert len(h) == 1
    assert asymptotic_factor(h, iterations=3, window=2).factor < 1e-12


def test_factor_of_a_divergent_cycle_exceeds_one():
    # Jacobi with omega = 1.9 amplifies high frequencies: the estimate must report divergence, not a small number.
    A = Stencil.laplacian(2)
    h = build_hierarchy(A, (15, 15), smoother=("wjacobi", {"omega": 1.9}), presmooth=1, postsmooth=1, max_coarse=10)
    assert asymptotic_factor(h, iterations=20).factor > 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"iterations": 1}, "iterations"), ({"vectors": 0}, "vectors"), ({"window": 40}, "window")],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    h = build_hierarchy(Stencil.laplacian(2), (15, 15), max_coarse=10)
    with pytest.raises(ValueError, match=match):
        asymptotic_factor(h, **kwargs)
    with pytest.raises(ValueError, match="cycle"):
        asymptotic_factor(h, kind="X")


def test_count_passes_of_a_v_cycle():
    """Kernels and fine-grid passes of one V(2,1) red-black cycle, as the eager engine executes it."""
    from mgcore.analysis import count_passes

    h = build_hierarchy(Stencil.laplacian(2), (255, 255), presmooth=2, postsmooth=1)
    count = count_passes(h)
    assert count.kernels == 169
    assert count.fine_grid_kernels == 95
    assert 150 < count.grid_passes < 220
    # Twice the batch: the same kernels; per right-hand side, fewer passes (the coarsest LU factor is read once).
    double = count_passes(h, batch=2)
    assert double.kernels == count.kernels and count.grid_passes - 20 < double.grid_passes < count.grid_passes
