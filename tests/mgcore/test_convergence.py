"""Convergence of the engine: factors, FMG accuracy, PCG iterations, agreement with SciPy's direct solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from mgcore import MultigridSolver, Stencil, asymptotic_factor, build_hierarchy, solve


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize(
    "shape",
    [(33, 33), (40, 27), (64, 50), (8, 70), (15, 15, 15), (12, 9, 10)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_agrees_with_spsolve(shape):
    """fp64 solutions equal spsolve's on the same CSR matrix to 1e-10 (odd, even, rectangular, 2D, 3D)."""
    A = Stencil.laplacian(len(shape), h=1.0 / (shape[0] + 1))
    b = _random(shape, seed=sum(shape))
    x, info = solve(A, b, rtol=1e-13, maxiter=60)
    assert info.converged, info.reason
    reference = spla.spsolve(A.to_sparse(shape).tocsc(), b.ravel()).reshape(shape)
    assert np.linalg.norm(x - reference) / np.linalg.norm(reference) <= 1e-10


def test_variable_coefficients_agree_with_spsolve():
    """A variable stencil (Galerkin coarse levels) converges to the direct solution too."""
    shape = (31, 22)
    generator = torch.Generator().manual_seed(3)
    a = torch.exp(torch.randn(shape[0] + 1, shape[1] + 1, generator=generator, dtype=torch.float64))
    # -div(a grad u) with edge coefficients the mean of the two cells sharing each edge.
    ax = 0.5 * (a[:, :-1] + a[:, 1:])  # (n0 + 1, n1): edges along axis 0
    ay = 0.5 * (a[:-1, :] + a[1:, :])  # (n0, n1 + 1)
    west, east, south, north = ax[:-1], ax[1:], ay[:, :-1], ay[:, 1:]
    coefficients = torch.stack([-west, -south, west + east + south + north, -north, -east])
    A = Stencil([(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)], coefficients)
    assert A.is_symmetric()
    b = _random(shape, 4)
    x, info = solve(A, b, rtol=1e-12, maxiter=80)
    assert info.converged, info.reason
    reference = spla.spsolve(A.to_sparse().tocsc(), b.ravel()).reshape(shape)
    assert np.linalg.norm(x - reference) / np.linalg.norm(reference) <= 1e-9


def _factor(shape, **kwargs):
    A = Stencil.laplacian(len(shape), h=1.0 / (shape[0] + 1))
    _, info = solve(A, _random(shape, 1), rtol=1e-10, maxiter=60, **kwargs)
    assert info.converged, info.reason
    return info.convergence_factor


@pytest.mark.parametrize(
    ("presmooth", "postsmooth", "bound"), [(1, 1, 0.12), (2, 1, 0.08), (2, 2, 0.06)]
)
def test_rbgs_factors_2d(presmooth, postsmooth, bound):
    """Measured V-cycle factors of red-black Gauss-Seidel, full weighting, bilinear, at two sizes."""
    factors = [_factor((n, n), presmooth=presmooth, postsmooth=postsmooth) for n in (127, 255)]
    assert max(factors) <= bound, factors
    assert abs(factors[0] - factors[1]) <= 0.01, factors


def test_rbgs_factor_3d():
    factors = [_factor((n, n, n), presmooth=1, postsmooth=1) for n in (31, 63)]
    assert max(factors) <= 0.22, factors
    assert abs(factors[0] - factors[1]) <= 0.01, factors


def test_weighted_jacobi_factor():
    factor = _factor((127, 127), smoother=("wjacobi", {"omega": 0.8}), presmooth=2, postsmooth=2)
    assert factor <= 0.20


@pytest.mark.parametrize("kind", ["W", "F"])
def test_w_and_f_no_worse_than_v(kind):
    v = _factor((127, 127), presmooth=1, postsmooth=1)
    other = _factor((127, 127), presmooth=1, postsmooth=1, cycle=kind)
    assert other <= v + 1e-3, (kind, other, v)


def test_power_iteration_factor_matches_theory():
    """The asymptotic factor by power iteration: V(1,1) RBGS on 2D Poisson is about 0.11 (LFA: 0.074
    for two grids; Trottenberg et al. 2001, table 2.4 reports 0.10-0.12 for V-cycles)."""
    hierarchy = build_hierarchy(Stencil.laplacian(2), (127, 127), presmooth=1, postsmooth=1)
    estimate = asymptotic_factor(hierarchy, iterations=25)
    assert 0.09 <= estimate.factor <= 0.12


def _manufactured(n):
    """-Δu = f on the unit square with u = sin(πx) sin(2πy) (zero boundary)."""
    h = 1.0 / (n + 1)
    x = torch.arange(1, n + 1, dtype=torch.float64) * h
    X, Y = torch.meshgrid(x, x, indexing="ij")
    exact = torch.sin(math.pi * X) * torch.sin(2 * math.pi * Y)
    f = 5 * math.pi**2 * exact
    return Stencil.laplacian(2, h=h), f, exact


@pytest.mark.parametrize("n", [255, 1023])
def test_fmg_reaches_discretisation_error(n):
    """One FMG pass with one V(2,1) per level: error at most 1.5x the discretisation error."""
    A, f, exact = _manufactured(n)
    solver = MultigridSolver(A, (n, n), presmooth=2, postsmooth=1)
    discrete, info = solver.solve(f, rtol=1e-11, maxiter=50)
    assert info.converged
    discretisation_error = float((discrete - exact).abs().max())
    fmg_error = float((solver.fmg(f) - exact).abs().max())
    assert fmg_error <= 1.5 * discretisation_error, (fmg_error, discretisation_error)


def test_discretisation_error_is_second_order():
    errors = []
    for n in (31, 63, 127):
        A, f, exact = _manufactured(n)
        x, info = solve(A, f, rtol=1e-12)
        assert info.converged
        errors.append(float((x - exact).abs().max()))
    ratios = [errors[k] / errors[k + 1] for k in range(2)]
    assert all(3.6 <= r <= 4.4 for r in ratios), ratios


@pytest.mark.parametrize("n", [255, 1023])
def test_pcg_iterations(n):
    A = Stencil.laplacian(2, h=1.0 / (n + 1))
    _, info = solve(A, _random((n, n), 2), rtol=1e-8, accel="cg", presmooth=1, postsmooth=1)
    assert info.converged and info.iterations <= 10, info


def test_galerkin_and_rediscretized_agree_on_poisson():
    """On odd grids the two coarse operators give the same answer (and both converge)."""
    A = Stencil.laplacian(2, h=1 / 64)
    b = _random((63, 63), 5)
    x1, i1 = MultigridSolver(A, (63, 63), coarse_operator="galerkin").solve(b, rtol=1e-12)
    x2, i2 = MultigridSolver(A, (63, 63), coarse_operator="rediscretize").solve(b, rtol=1e-12)
    assert i1.converged and i2.converged
    assert np.linalg.norm(x1 - x2) / np.linalg.norm(x2) < 1e-9


def test_fas_equals_correction_scheme_for_linear_problems():
    """With Π = injection the cycle is FAS (the MgNet restriction block); for a linear problem its iterates
    equal the correction scheme's."""
    from mgcore import cycle

    A = Stencil.laplacian(2, h=1 / 64)
    f = torch.from_numpy(_random((1, 1, 63, 63), 8))
    u0 = torch.from_numpy(_random((1, 1, 63, 63), 9))
    correction = build_hierarchy(A, (63, 63), max_coarse=50)
    fas = build_hierarchy(A, (63, 63), max_coarse=50, fas=True)
    assert fas[0].Pi is not None and correction[0].Pi is None
    u_correction, u_fas = u0, u0
    for _ in range(3):
        u_correction = cycle(correction, u_correction, f)
        u_fas = cycle(fas, u_fas, f)
    assert torch.allclose(u_fas, u_correction, rtol=0, atol=1e-10 * float(u_correction.abs().max()))
    assert float(A.residual(u_fas, f).norm()) < 1e-3 * float(A.residual(u0, f).norm())
