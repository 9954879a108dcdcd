"""Property-based tests of ``mgcore.solve``: over random small grids (2D and 3D), dtypes, batch shapes and
memory layouts the answer agrees with SciPy's ``spsolve`` on the same matrix, or the input is refused with a
``ValueError``/``TypeError`` naming it; the inputs are never modified.

Derandomised (the same examples on every run) and small, so the suite stays within seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mgcore import MultigridSolver, Stencil, solve  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)

LAYOUTS = ("C", "F", "flipped", "torch", "torch-transposed", "torch-strided")
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@st.composite
def grids(draw):
    dim = draw(st.sampled_from((2, 2, 3)))
    side = st.integers(3, 20) if dim == 2 else st.integers(3, 8)
    return tuple(draw(side) for _ in range(dim))


def _laplacian_condition(grid) -> float:
    """``lambda_max / lambda_min`` of the Dirichlet Laplacian on ``grid`` with one spacing (closed form)."""
    low = sum(4 * math.sin(math.pi / (2 * (n + 1))) ** 2 for n in grid)
    high = sum(4 * math.sin(n * math.pi / (2 * (n + 1))) ** 2 for n in grid)
    return high / low


def _layout(values: np.ndarray, layout: str):
    """The same numbers in another memory layout (numpy or torch)."""
    if layout == "C":
        return np.ascontiguousarray(values)
    if layout == "F":
        return np.asfortranarray(values)
    if layout == "flipped":  # negative strides on the last axis, values in the same places
        return np.flip(np.ascontiguousarray(np.flip(values, -1)), -1)
    if layout == "torch":
        return torch.from_numpy(np.ascontiguousarray(values))
    if layout == "torch-transposed":  # a permuted view, not contiguous
        return torch.from_numpy(np.ascontiguousarray(np.swapaxes(values, -1, -2))).transpose(-1, -2)
    # every other element of a wider buffer
    wide = np.zeros((*values.shape[:-1], 2 * values.shape[-1]), dtype=values.dtype)
    wide[..., ::2] = values
    return torch.from_numpy(wide)[..., ::2]


def _snapshot(value):
    return value.clone() if isinstance(value, torch.Tensor) else np.array(value, copy=True)


def _unchanged(value, before) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.equal(value, before))
    return np.array_equal(value, before, equal_nan=True)


@settings(SETTINGS, max_examples=80)
@given(
    grid=grids(),
    batch=st.sampled_from(((), (1,), (2,), (0,), (2, 2), (3, 0))),
    dtype=st.sampled_from((np.float64, np.float32)),
    layout=st.sampled_from(LAYOUTS),
    max_coarse=st.sampled_from((10, 1000)),  # 10: real cycles on these small grids; 1000: one dense solve
    accel=st.sampled_from((None, "cg")),
    device=st.sampled_from(DEVICES),
    seed=st.integers(0, 2**16),
)
def test_solve_agrees_with_spsolve(grid, batch, dtype, layout, max_coarse, accel, device, seed):
    h = 1.0 / (grid[0] + 1)
    A = Stencil.laplacian(len(grid), h=h).to(device)
    values = np.random.default_rng(seed).standard_normal((*batch, *grid)).astype(dtype)
    b = _layout(values, layout)
    if device != "cpu" and isinstance(b, torch.Tensor):
        b = b.to(device)
    elif device != "cpu":  # numpy data with a GPU stencil: solved there, returned as numpy
        A = A.cpu()
    before = _snapshot(b)
    rtol = 1e-9
    solver = MultigridSolver(A, grid, max_coarse=max_coarse, presmooth=1, postsmooth=1)
    x, info = solver.solve(b, rtol=rtol, maxiter=200, accel=accel)

    assert _unchanged(b, before)
    assert type(x) is type(b) and tuple(x.shape) == tuple(b.shape)
    if isinstance(b, torch.Tensor):
        assert x.device == b.device
        x = x.cpu()
    assert (x.dtype == b.dtype) if isinstance(b, torch.Tensor) else (x.dtype == values.dtype)
    assert np.shape(info.converged) == batch and bool(np.all(info.converged))
    matrix = A.to_sparse(grid).tocsc()
    x64 = np.asarray(x, dtype=np.float64).reshape(-1, math.prod(grid))
    rhs = values.astype(np.float64).reshape(-1, math.prod(grid))
    # ||x - x*|| <= cond(A) ||b - A x|| / ||b|| ||x*||; a float32 result adds its rounding (2^-24 per entry).
    rounding = 0.0 if dtype == np.float64 else 2.0**-23
    for xi, bi in zip(x64, rhs):
        reference = spla.spsolve(matrix, bi)
        scale = np.linalg.norm(reference)
        assert np.linalg.norm(xi - reference) <= (2 * _laplacian_condition(grid) * rtol + rounding) * scale + 1e-300


BAD_B = st.sampled_from(
    (
        ("int", TypeError),
        ("float16", TypeError),
        ("complex", TypeError),
        ("list", TypeError),
        ("nan", ValueError),
        ("inf", ValueError),
        ("short", ValueError),
        ("scalar", ValueError),
    )
)


def _bad(kind: str, grid, rng):
    values = rng.standard_normal(grid)
    if kind == "int":
        return values.astype(np.int64)
    if kind == "float16":
        return torch.from_numpy(values).to(torch.float16)
    if kind == "complex":
        return values.astype(np.complex128)
    if kind == "list":
        return values.tolist()
    if kind in ("nan", "inf"):
        values.flat[rng.integers(values.size)] = np.nan if kind == "nan" else -np.inf
        return values
    if kind == "short":
        return values[..., :-1]
    return np.array(1.0)  # 0-d: no grid at all


@SETTINGS
@given(grid=grids(), bad=BAD_B, as_x0=st.booleans(), seed=st.integers(0, 2**16))
def test_bad_right_hand_sides_are_refused_by_name(grid, bad, as_x0, seed):
    kind, error = bad
    rng = np.random.default_rng(seed)
    A = Stencil.laplacian(len(grid), grid_shape=grid)
    value = _bad(kind, grid, rng)
    before = _snapshot(value) if not isinstance(value, list) else list(value)
    name = "x0" if as_x0 else "b"
    with pytest.raises(error) as raised:
        if as_x0:
            solve(A, np.ones(grid), value)
        else:
            solve(A, value)
    assert str(raised.value).startswith(f"{name}:"), str(raised.value)
    if isinstance(value, list):
        assert value == before
    else:
        assert _unchanged(value, before)


@SETTINGS
@given(
    grid=grids(),
    option=st.sampled_from(("rtol", "atol", "maxiter", "accel", "callback", "cycle_dtype")),
    value=st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(), st.integers(-5, 0)),
)
def test_bad_options_are_refused_by_name(grid, option, value):
    """Any value of an option is either accepted (then the solve is right) or refused naming that option."""
    A = Stencil.laplacian(len(grid), h=1.0 / (grid[0] + 1))
    b = np.random.default_rng(0).standard_normal(grid)
    kwargs = {option: value}
    try:
        x, info = solve(A, b, **kwargs)
    except (TypeError, ValueError) as err:
        assert str(err).startswith(f"{option}:"), str(err)
        return
    if info.converged:  # the stopping rule held, so x is as close to spsolve's answer as cond(A) allows
        matrix = A.to_sparse(grid).tocsc()
        reference = spla.spsolve(matrix, b.ravel())
        residual = np.linalg.norm(b.ravel() - matrix @ x.ravel())
        assert residual <= info.threshold * (1 + 1e-9)
        bound = _laplacian_condition(grid) * info.threshold / np.linalg.norm(b) * np.linalg.norm(reference)
        assert np.linalg.norm(x.ravel() - reference) <= 2 * bound + 1e-12 * np.linalg.norm(reference)
