"""The compiled CPU loops (mgcore.kernels) against the PyTorch path they replace: the same residuals and
Gauss-Seidel colours up to round-off, the same solves, and the PyTorch path wherever they do not apply."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

import mgcore
import pde
from mgcore import kernels
from mgcore.operators import Stencil
from mgcore.smoothers import red_black_gauss_seidel

needs_loops = pytest.mark.skipif(not kernels.available(), reason="Numba is not installed or MGCORE_KERNELS=0")


@pytest.fixture(autouse=True)
def _loops_on_small_grids(monkeypatch):
    # The loops skip arrays below kernels.MIN_POINTS; the small grids here must run them.
    monkeypatch.setattr(kernels, "MIN_POINTS", 0)


def test_small_grids_keep_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_POINTS", 4096)
    A = Stencil.laplacian(2)
    assert not kernels.fits(A, torch.zeros(1, 1, 63, 63))
    assert not kernels.wanted(63 * 63)
    assert kernels.fits(A, torch.zeros(1, 1, 64, 64)) == kernels.available()


def test_loops_are_available_where_the_project_installs_numba():
    # numba is in install_requires: a set-up where the loops silently fell back would test only one path.
    if os.environ.get("MGCORE_KERNELS", "1") == "0":
        pytest.skip("switched off by MGCORE_KERNELS=0")
    assert kernels.available()


def _stencil(dim: int, faces, screen: float = 0.3) -> Stencil:
    """A constant, anisotropic, screened axis-aligned stencil: each axis its own coupling."""
    base = Stencil.laplacian(dim, h=1.0)
    values = []
    for o in base.offsets:
        if not any(o):
            values.append(2 * dim + screen)
        else:
            axis = next(a for a, v in enumerate(o) if v)
            values.append(-(1.0 + 0.25 * axis))
    return Stencil(base.offsets, torch.tensor(values, dtype=torch.float64), boundary=list(faces))


FACES = ["dirichlet", "periodic", "neumann"]
CASES = [
    (dim, faces, shape)
    for dim, shapes in ((2, [(6, 6), (7, 10)]), (3, [(4, 6, 5), (6, 4, 8)]))
    for faces in itertools.product(FACES, repeat=dim)
    for shape in shapes
    if not any(face == "periodic" and n % 2 for face, n in zip(faces, shape))
]


@needs_loops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("dim", "faces", "shape"), CASES)
def test_residual_and_colours_match_the_pytorch_path(dim, faces, shape, dtype):
    A = _stencil(dim, faces).to(dtype)
    generator = torch.Generator().manual_seed(len(CASES))
    u = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64).to(dtype)
    f = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64).to(dtype)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert kernels.fits(A, u, f, colours=True)
    smoother = red_black_gauss_seidel(A, shape)
    with kernels.disabled():
        r_torch = A.residual(u, f)
        u_torch = smoother(u, f, sweeps=2)
    r_loops = A.residual(u, f)
    u_loops = smoother(u, f, sweeps=2)
    assert torch.allclose(r_loops, r_torch, rtol=0, atol=tol * float(r_torch.abs().max()))
    assert torch.allclose(u_loops, u_torch, rtol=0, atol=tol * float(u_torch.abs().max()))


@needs_loops
def test_mixed_faces_per_side_and_a_given_output():
    L = Stencil.laplacian(2)
    A = Stencil(L.offsets, L.coefficients, boundary=(("neumann", "dirichlet"), "periodic"))
    u = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    f = torch.randn_like(u)
    out = torch.full_like(u, float("nan"))
    with kernels.disabled():
        expected = A.residual(u, f)
    assert A.residual(u, f, out=out) is out
    assert torch.allclose(out, expected, rtol=0, atol=1e-13)


@needs_loops
@pytest.mark.parametrize(
    ("shape", "bc"),
    [((65, 65), "neumann"), ((64, 64), "periodic"), ((63, 63), "dirichlet"), ((33, 33, 33), "neumann")],
)
def test_solves_take_the_same_cycles_to_the_same_solution(shape, bc):
    problem = pde.poisson(shape, bc=bc, screen=1.0 if bc == "neumann" else 0.0, solution=None)
    b = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b -= b.mean()  # compatible with the periodic problem's null space (the constants)
    x_loops, info_loops = mgcore.solve(problem.A, b, grid=shape, rtol=1e-10)
    with kernels.disabled():
        x_torch, info_torch = mgcore.solve(problem.A, b, grid=shape, rtol=1e-10)
    assert info_loops.iterations == info_torch.iterations
    assert float((x_loops - x_torch).norm() / x_torch.norm()) < 1e-12


def test_the_pytorch_path_runs_where_the_loops_do_not_apply():
    A = Stencil.laplacian(2)
    u = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    nine_point = Stencil.from_kernel([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])
    variable = Stencil(A.offsets, A.coefficient_arrays((8, 9)))  # another grid than u's
    periodic = Stencil(A.offsets, A.coefficients, boundary="periodic")
    assert not kernels.fits(nine_point, u)
    assert not kernels.fits(variable, u)
    assert not kernels.fits(variable.float(), torch.zeros(1, 1, 8, 9, dtype=torch.float64))  # float32 coefficients
    assert kernels.fits(variable.double(), torch.zeros(1, 1, 8, 9, dtype=torch.float64))
    assert not kernels.fits(A, u.to(torch.float16))
    assert not kernels.fits(A, u.transpose(2, 3).contiguous().transpose(2, 3))  # not contiguous
    assert not kernels.fits(A, u.clone().requires_grad_())
    assert not kernels.fits(A, torch.zeros(1, 1, 2, 8, dtype=torch.float64))  # fewer than 3 points
    assert not kernels.fits(A, u, torch.zeros(1, 1, 8, 8))  # two dtypes
    assert not kernels.fits(periodic, torch.zeros(1, 1, 7, 8, dtype=torch.float64), colours=True)  # odd wrap
    with kernels.disabled():
        assert not kernels.fits(A, u)


def test_autograd_still_differentiates_through_a_smoothing_step():
    A = Stencil.laplacian(2, h=1.0)
    f = torch.randn(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    smoother = red_black_gauss_seidel(A, (8, 8))
    smoother(None, f).sum().backward()
    assert f.grad is not None and float(f.grad.abs().sum()) > 0


TRANSFER_CASES = [
    (faces, shape)
    for dim, shapes in ((2, [(9, 9), (8, 11), (6, 5)]), (3, [(5, 7, 6), (8, 4, 9)]))
    for faces in itertools.product(["dirichlet", "periodic", "neumann", ("neumann", "dirichlet")], repeat=dim)
    for shape in shapes
    if not any(face == "periodic" and n % 2 for face, n in zip(faces, shape))
]


@needs_loops
@pytest.mark.parametrize(("faces", "shape"), TRANSFER_CASES)
def test_face_aware_transfers_match_the_pytorch_path(faces, shape):
    from mgcore.boundary import BoundaryProlongation, BoundaryRestriction
    from mgcore.operators import parse_faces

    faces = parse_faces(list(faces), len(shape))
    generator = torch.Generator().manual_seed(3)
    active = torch.rand(shape, generator=generator) > 0.2
    for mask in (None, active):
        P = BoundaryProlongation(faces, shape, mask)
        R = BoundaryRestriction(P)
        x = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
        c = torch.randn(2, 1, *P.coarse_shape, generator=generator, dtype=torch.float64)
        u = torch.randn_like(x)
        with kernels.disabled():
            expected = (R(x), R.restrict(x * (mask if mask is not None else 1), masked=False), P(c), u + P(c))
        got = (R(x), R.restrict(x * (mask if mask is not None else 1), masked=False), P(c), P.accumulate_(u.clone(), c))
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, rtol=0, atol=1e-13)


@needs_loops
@pytest.mark.parametrize("shape", [(9, 9), (8, 11), (6, 5), (5, 7, 6), (8, 4, 9)])
def test_dirichlet_transfers_match_the_pytorch_path(shape):
    from mgcore.transfers import FullWeighting, Linear, coarse_shape

    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, *shape, generator=generator, dtype=torch.float32)
    c = torch.randn(1, 3, *coarse_shape(shape), generator=generator, dtype=torch.float32)
    u = torch.randn_like(x)
    R, P = FullWeighting(len(shape)), Linear(len(shape))
    with kernels.disabled():
        expected = (R(x), P(c, shape), u + P(c, shape))
    out = torch.empty_like(x)
    got = (R(x), P(c, shape, out=out), P.accumulate_(u.clone(), c))
    assert got[1] is out
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)


@needs_loops
def test_a_grid_that_does_not_match_the_tables_is_refused_before_the_loops():
    from mgcore.transfers import _tables

    tables = _tables((9, 9))
    with pytest.raises(ValueError, match="c: expected a grid of"):
        kernels.prolong(torch.zeros(1, 1, 5, 4, dtype=torch.float64), tables)
    with pytest.raises(ValueError, match="out: expected a grid of"):
        kernels.prolong(torch.zeros(1, 1, 4, 4), tables, out=torch.zeros(1, 1, 9, 8))
    with pytest.raises(ValueError, match="x: expected a grid of"):
        kernels.restrict(torch.zeros(1, 1, 9, 10), tables)


def _variable(dim: int, faces, shape, generator) -> Stencil:
    """A variable-coefficient axis-aligned stencil: diagonally dominant, with a random positive field."""
    offsets = Stencil.laplacian(dim).offsets
    coefficients = -torch.rand(len(offsets), *shape, generator=generator, dtype=torch.float64)
    centre = offsets.index((0,) * dim)
    coefficients[centre] = len(offsets) + torch.rand(shape, generator=generator, dtype=torch.float64)
    return Stencil(offsets, coefficients, boundary=list(faces))


@needs_loops
@pytest.mark.parametrize(
    ("faces", "shape"),
    [
        (("dirichlet", "dirichlet"), (9, 10)),
        (("periodic", "neumann"), (8, 7)),
        (("periodic", "periodic"), (6, 8)),
        (("dirichlet", "periodic", "neumann"), (5, 6, 7)),
        (("periodic", "dirichlet", "periodic"), (4, 5, 6)),
    ],
)
def test_red_black_colours_of_variable_stencils_match_the_pytorch_path(faces, shape):
    generator = torch.Generator().manual_seed(5)
    A = _variable(len(shape), faces, shape, generator)
    u = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
    f = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
    assert kernels.fits(A, u, f, colours=True)
    smoother = red_black_gauss_seidel(A, shape)
    assert smoother.name == "rbgs"
    with kernels.disabled():
        expected = smoother(u, f, sweeps=2)
    got = smoother(u, f, sweeps=2)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))


@needs_loops
def test_a_masked_domain_solves_alike_with_and_without_the_loops():
    n = 63
    x = (torch.arange(n, dtype=torch.float64) + 1) / (n + 1)
    X, Y = torch.meshgrid(x, x, indexing="ij")
    problem = pde.poisson((n, n), mask=((X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.16).numpy(), solution=None)
    b = torch.randn((n, n), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_loops, info_loops = mgcore.solve(problem.A, b, grid=(n, n), rtol=1e-10)
    with kernels.disabled():
        x_torch, info_torch = mgcore.solve(problem.A, b, grid=(n, n), rtol=1e-10)
    assert info_loops.iterations == info_torch.iterations
    assert float((x_loops - x_torch).norm() / x_torch.norm()) < 1e-11


@needs_loops
def test_the_loops_follow_new_coefficients():
    generator = torch.Generator().manual_seed(7)
    A = _variable(2, ("dirichlet", "dirichlet"), (9, 10), generator)
    u = torch.randn(1, 1, 9, 10, generator=generator, dtype=torch.float64)
    f = torch.randn_like(u)
    smoother = red_black_gauss_seidel(A, (9, 10))
    smoother(u, f)  # the loops keep their view of the coefficients from here
    A.coefficients = A.coefficients * torch.linspace(0.5, 1.5, 5, dtype=torch.float64).reshape(5, 1, 1)  # new array
    smoother = red_black_gauss_seidel(A, (9, 10))
    with kernels.disabled():
        expected = smoother(u, f)
    assert torch.allclose(smoother(u, f), expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
