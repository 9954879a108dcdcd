"""Operator-dependent transfers (Alcouffe, Brandt, Dendy & Painter 1981): exactness, adjointness, robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from mgcore import MultigridSolver, Stencil, asymptotic_factor, build_hierarchy, solve
from mgcore.hierarchy import galerkin_stencil
from mgcore.transfers import (
    FullWeighting,
    Linear,
    WeightedProlongation,
    WeightedRestriction,
    coarse_shape,
    operator_dependent_transfers,
)
from pde.problems import diffusion


def _cells(shape, sigma, seed):
    """Log-normal cell coefficients ``exp(N(0, sigma^2))``, ``n + 1`` cells per axis."""
    rng = np.random.default_rng(seed)
    return np.exp(sigma * rng.standard_normal(tuple(n + 1 for n in shape)))


def _jump_cells(shape, contrast, kind):
    """Coefficient ``contrast`` on a square inclusion not aligned with any coarse grid, or on random 5 x 5-cell
    blocks, and 1 elsewhere."""
    i, j = np.meshgrid(*(np.arange(n + 1) for n in shape), indexing="ij")
    if kind == "inclusion":
        return np.where((abs(i - 27) <= 9) & (abs(j - 35) <= 12), contrast, 1.0)
    blocks = np.where(np.random.default_rng(0).random((shape[0] // 5 + 1, shape[1] // 5 + 1)) < 0.5, contrast, 1.0)
    return np.kron(blocks, np.ones((5, 5)))[: shape[0] + 1, : shape[1] + 1]


def _matrix(apply, shape_in):
    n = math.prod(shape_in)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape_in)
    return apply(eye).reshape(n, -1).T.numpy()


@pytest.mark.parametrize("shape", [(7, 7), (15, 7), (31, 31)])
def test_laplacian_gives_bilinear_interpolation_and_full_weighting(shape):
    """For the 5-point Laplacian, and for its 9-point Galerkin coarse operator, the weights are bilinear."""
    fine = Stencil.laplacian(2)
    for A in (fine, galerkin_stencil(fine, shape)):
        grid = shape if A is fine else coarse_shape(shape)
        if any(n < 2 for n in grid):
            continue
        R, P = operator_dependent_transfers(A.offsets, A.coefficients, grid)
        c = torch.randn(3, 1, *coarse_shape(grid), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x = torch.randn(3, 1, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(P(c, grid), Linear(2)(c, grid), atol=1e-14)
        assert torch.allclose(R(x), FullWeighting(2)(x), atol=1e-14)


@pytest.mark.parametrize("shape", [(9, 9), (15, 7), (7, 21)])
def test_restriction_is_transpose_over_four(shape):
    A = diffusion(_cells(shape, 1.5, 0)).A
    R, P = operator_dependent_transfers(A.offsets, A.coefficients, shape)
    coarse = coarse_shape(shape)
    matrix_P = _matrix(lambda c: P(c, shape), coarse)
    matrix_R = _matrix(R, shape)
    np.testing.assert_allclose(matrix_R, matrix_P.T / 4, atol=1e-15)


def test_interpolates_constants_away_from_the_boundary():
    """Zero-row-sum rows: a constant coarse vector is interpolated exactly wherever no boundary is near."""
    shape = (31, 31)
    A = diffusion(_cells(shape, 2.0, 1)).A
    _, P = operator_dependent_transfers(A.offsets, A.coefficients, shape)
    u = P(torch.ones(1, 1, *coarse_shape(shape), dtype=torch.float64))
    assert torch.allclose(u[0, 0, 2:-2, 2:-2], torch.ones(27, 27, dtype=torch.float64), atol=1e-13)
    assert float(u.min()) > 0


def test_galerkin_operator_is_rap_as_matrices():
    shape = (15, 13)
    A = diffusion(_cells(shape, 1.0, 2)).A
    R, P = operator_dependent_transfers(A.offsets, A.coefficients, shape)
    coarse = galerkin_stencil(A, shape, R=R, P=P)
    expected = _matrix(R, shape) @ A.to_sparse(shape).toarray() @ _matrix(lambda c: P(c, shape), coarse_shape(shape))
    np.testing.assert_allclose(coarse.to_sparse(coarse_shape(shape)).toarray(), expected, atol=1e-12)
    assert coarse.is_symmetric()


@pytest.mark.parametrize("kind, operator_bound, linear_bound", [("inclusion", 0.06, 0.5), ("blocks", 0.2, 0.8)])
def test_robust_for_jumping_coefficients(kind, operator_bound, linear_bound):
    """Contrast 1e4: linear interpolation nearly stalls (0.58, 0.85), operator-dependent does not (0.04, 0.17)."""
    shape = (63, 63)
    A = diffusion(_jump_cells(shape, 1e4, kind)).A
    factors = {}
    for interpolation in ("linear", "operator"):
        h = build_hierarchy(A, shape, presmooth=2, postsmooth=2, coarse_operator="galerkin",
                            interpolation=interpolation, max_coarse=50)
        factors[interpolation] = asymptotic_factor(h, iterations=30, vectors=1).factor
    assert factors["operator"] <= operator_bound, factors
    assert factors["linear"] >= linear_bound, factors


@pytest.mark.parametrize("n", [64, 100])
def test_even_levels_fall_back_to_linear(n):
    """Even sides keep linear transfers on those levels, and Poisson converges as before."""
    A = Stencil.laplacian(2)
    h = build_hierarchy(A, (n, n), presmooth=2, postsmooth=2, interpolation="operator", max_coarse=50)
    kinds = [type(level.P).__name__ for level in h.levels[:-1]]
    assert kinds == ["WeightedProlongation" if s[0] % 2 else "Linear" for s in (lv.grid_shape for lv in h.levels[:-1])]
    assert asymptotic_factor(h, iterations=30, vectors=1).factor <= 0.11


def test_lognormal_factor_and_spsolve_agreement():
    """Log-normal sigma = 1 at 127^2: V(2,2) rbgs factor 0.1 with operator-dependent transfers (0.5 with linear),
    and the solution equals SciPy's direct solve."""
    shape = (127, 127)
    A = diffusion(_cells(shape, 1.0, 3)).A
    solver = MultigridSolver(A, shape, presmooth=2, postsmooth=2, interpolation="operator", max_coarse=50)
    factor = asymptotic_factor(solver.hierarchy(), iterations=30, vectors=1).factor
    linear = asymptotic_factor(
        build_hierarchy(A, shape, presmooth=2, postsmooth=2, coarse_operator="galerkin", max_coarse=50),
        iterations=30, vectors=1,
    ).factor
    assert factor <= 0.13 and linear >= 0.4, (factor, linear)
    b = np.random.default_rng(4).standard_normal(shape)
    x, info = solve(A, b, rtol=1e-12, presmooth=2, postsmooth=2, interpolation="operator")
    assert info.converged and info.iterations <= 14, (info.iterations, info.reason)
    reference = spla.spsolve(A.to_sparse().tocsc(), b.ravel()).reshape(shape)
    assert np.linalg.norm(x - reference) / np.linalg.norm(reference) <= 1e-10
    x32, info32 = solve(A, b, rtol=1e-12, presmooth=2, postsmooth=2, interpolation="operator",
                        cycle_dtype=torch.float32)
    assert info32.converged and np.linalg.norm(x32 - reference) / np.linalg.norm(reference) <= 1e-10


def test_weighted_transfers_are_differentiable():
    shape = (7, 7)
    A = diffusion(_cells(shape, 1.0, 5)).A
    R, P = operator_dependent_transfers(A.offsets, A.coefficients, shape)
    c = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: R(A(P(v, shape))), (c,))


def test_bad_input():
    A = Stencil.laplacian(2)
    with pytest.raises(ValueError, match="interpolation: expected one of 'linear', 'operator'"):
        build_hierarchy(A, (15, 15), interpolation="cubic")
    with pytest.raises(ValueError, match="interpolation: expected one of 'linear', 'operator'"):
        MultigridSolver(A, interpolation="bilinear")
    with pytest.raises(ValueError, match="interpolation: 'operator' needs a 2D stencil"):
        build_hierarchy(Stencil.laplacian(3), (7, 7, 7), interpolation="operator")
    with pytest.raises(ValueError, match="coarse_operator: interpolation='operator' needs"):
        build_hierarchy(A, (15, 15), interpolation="operator", coarse_operator="rediscretize")
    negative = Stencil.from_kernel([[0, 1, 0], [1, -4, 1], [0, 1, 0]])  # -Laplacian: negative diagonal
    with pytest.raises(ValueError, match="coefficients: the collapsed"):
        operator_dependent_transfers(negative.offsets, negative.coefficients, (7, 7))
    with pytest.raises(ValueError, match="fine_shape: operator-dependent transfers need odd sides"):
        operator_dependent_transfers(A.offsets, A.coefficients, (8, 7))
    with pytest.raises(ValueError, match="weights: expected shape"):
        WeightedProlongation(torch.ones(3, 3, 2, 2), (7, 7))
    _, P = operator_dependent_transfers(A.offsets, A.coefficients, (7, 7))
    with pytest.raises(ValueError, match="fine_shape: this prolongation was built for"):
        P(torch.ones(1, 1, 3, 3), (8, 8))
    with pytest.raises(ValueError, match="x: expected a grid"):
        WeightedRestriction(P)(torch.ones(1, 1, 9, 9))
