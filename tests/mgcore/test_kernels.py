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
    variable = Stencil(A.offsets, A.coefficient_arrays((8, 8)))
    periodic = Stencil(A.offsets, A.coefficients, boundary="periodic")
    assert not kernels.fits(nine_point, u)
    assert not kernels.fits(variable, u)
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
