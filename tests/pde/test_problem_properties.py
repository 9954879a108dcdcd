"""Property-based tests of the problem builders: any arguments give either a problem whose multigrid solution
agrees with SciPy's ``spsolve`` on the same matrix, or a ``ValueError``/``TypeError`` naming the argument
that was wrong.  Derandomised, small grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pde  # noqa: E402
from mgcore import MultigridSolver  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)

# Anything a user might pass for a number: good values, bad types, non-finite and out-of-range values.
ANYTHING = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.just("pi/4"),
    st.just([0.1]),
)
GOOD_EPS = st.floats(1e-3, 1e3)
GOOD_THETA = st.floats(-7.0, 7.0)


@st.composite
def shapes(draw, dims=(2, 3)):
    dim = draw(st.sampled_from(dims))
    side = st.integers(3, 20) if dim == 2 else st.integers(3, 8)
    return tuple(draw(side) for _ in range(dim))


BAD_SHAPES = st.one_of(
    st.integers(-3, 40),
    st.lists(st.integers(-2, 2), min_size=2, max_size=3),
    st.lists(st.integers(3, 6), min_size=4, max_size=5),
    st.just("31x31"),
    st.just((3.5, 4)),
    st.none(),
)


@st.composite
def mostly(draw, good, bad, bad_one_in: int = 5):
    """A value from ``good``, or (one time in ``bad_one_in``) from ``bad``."""
    return draw(bad) if draw(st.integers(1, bad_one_in)) == 1 else draw(good)


def _check_built(problem, dtype):
    """What every problem that was built satisfies: its grid recorded, finite values in its dtype."""
    grid = problem.grid_shape
    assert problem.A.grid_shape == grid and problem.f.shape == grid and problem.f.dtype == dtype
    assert problem.A.coefficients.dtype == dtype
    assert bool(torch.isfinite(problem.A.coefficients).all()) and bool(torch.isfinite(problem.f).all())


def _check_solution(problem, dtype):
    """The V-cycle solution of the problem agrees with spsolve on its sparse matrix."""
    _check_built(problem, dtype)
    matrix = problem.to_sparse().tocsc()
    rhs = problem.f.to(torch.float64).numpy().ravel()
    reference = spla.spsolve(matrix, rhs)
    solver = MultigridSolver(problem.A, max_coarse=10, interpolation="linear", presmooth=2, postsmooth=2)
    rtol = 1e-9 if dtype == torch.float64 else 1e-6
    x, info = solver.solve(problem.f.to(torch.float64), rtol=rtol, maxiter=300, accel="cg")
    assert info.converged, info.reason
    event("solved and compared with spsolve")
    residual = np.linalg.norm(rhs - matrix @ x.numpy().ravel())
    assert residual <= info.threshold * (1 + 1e-9)
    # ||x - x*|| <= ||A^-1|| ||r||, with ||A^-1|| = 1 / the smallest eigenvalue (shift-invert Lanczos)
    smallest = float(spla.eigsh(matrix, k=1, sigma=0, which="LM", return_eigenvectors=False)[0])
    if smallest > 0:
        error = np.linalg.norm(x.numpy().ravel() - reference)
        assert error <= 2 * residual / smallest + 1e-12 * np.linalg.norm(reference)


def _refused_by_name(error: Exception, names: tuple[str, ...]) -> None:
    assert isinstance(error, (TypeError, ValueError)), repr(error)
    name = str(error).split(":")[0]
    assert name in names, str(error)
    event(f"refused: {name}")


@SETTINGS
@given(
    shape=mostly(shapes(), BAD_SHAPES),
    solution=st.sampled_from(("sin", "mixed", None, "cosine", 3)),
    dtype=st.sampled_from((torch.float64, torch.float32)),
)
def test_poisson(shape, solution, dtype):
    try:
        problem = pde.poisson(shape, solution=solution, dtype=dtype)
    except Exception as error:  # the property is about which exceptions come out
        _refused_by_name(error, ("shape", "solution", "dtype"))
        return
    _check_solution(problem, dtype)


@SETTINGS
@given(
    shape=mostly(shapes((2,)), BAD_SHAPES),
    eps=mostly(GOOD_EPS, ANYTHING, 3),
    solution=st.sampled_from(("sin", "mixed", None)),
    dtype=st.sampled_from((torch.float64, torch.float32)),
)
def test_anisotropic(shape, eps, solution, dtype):
    try:
        problem = pde.anisotropic(shape, eps, solution=solution, dtype=dtype)
    except Exception as error:
        _refused_by_name(error, ("shape", "eps", "dtype"))
        return
    assert isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0
    if 1e-3 <= eps <= 1e3:
        _check_solution(problem, dtype)
    else:
        _check_built(problem, dtype)


@SETTINGS
@given(
    shape=mostly(shapes((2,)), BAD_SHAPES),
    eps=mostly(st.floats(0.3, 3.0), st.one_of(GOOD_EPS, ANYTHING), 3),
    theta=mostly(GOOD_THETA, ANYTHING, 3),
)
def test_rotated_anisotropic(shape, eps, theta):
    try:
        problem = pde.rotated_anisotropic(shape, eps, theta, solution=None)
    except Exception as error:
        _refused_by_name(error, ("shape", "eps", "theta"))
        return
    assert isinstance(theta, (int, float)) and not isinstance(theta, bool) and math.isfinite(theta)
    # The 9-point stencil stays an M-matrix (a convergent point smoother) only for mild anisotropy.
    if 0.3 <= eps <= 3:
        _check_solution(problem, torch.float64)
    else:
        _check_built(problem, torch.float64)


@SETTINGS
@given(
    shape=mostly(shapes(), BAD_SHAPES),
    sigma=mostly(st.floats(0.0, 1.5), st.one_of(st.floats(1.5, 1e4), ANYTHING), 3),
    seed=mostly(st.integers(0, 2**32), st.one_of(st.integers(-5, -1), st.floats(), st.none(), st.booleans()), 3),
)
def test_lognormal_diffusion(shape, sigma, seed):
    try:
        problem = pde.lognormal_diffusion(shape, sigma, seed=seed)
    except Exception as error:
        _refused_by_name(error, ("shape", "sigma", "seed"))
        return
    assert isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
    if sigma <= 1.5:
        _check_solution(problem, torch.float64)
    else:
        _check_built(problem, torch.float64)
