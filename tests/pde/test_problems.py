"""Model problems: agreement with pyamg's matrices, O(h^2) convergence, SPD, boundary lifting, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from mgcore.operators import Stencil
from pde import (
    Problem,
    anisotropic,
    diffusion,
    grid_coordinates,
    lognormal_diffusion,
    poisson,
    rotated_anisotropic,
)

pyamg = pytest.importorskip("pyamg")


def _assert_same_matrix(A, B, rtol: float = 0.0) -> None:
    """Same sparsity pattern (explicit zeros aside) and values to ``rtol``."""
    A, B = sp.csr_array(A, dtype=np.float64), sp.csr_array(B, dtype=np.float64)
    for M in (A, B):
        M.eliminate_zeros()
        M.sort_indices()
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    np.testing.assert_allclose(A.data, B.data, rtol=rtol, atol=0)


def _solve(p: Problem) -> torch.Tensor:
    u = spla.spsolve(p.to_sparse().tocsc(), p.f.numpy().ravel())
    return torch.from_numpy(u).reshape(p.grid_shape)


# ------------------------------------------------------------------------------------------ matrices
@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (5, 7), (8, 5), (3, 4, 5), (4, 4, 4), (5, 5, 5), (6, 3, 4)])
def test_poisson_matrix_equals_pyamg(shape):
    p = poisson(shape)
    reference = pyamg.gallery.poisson(shape, format="csr")
    M = p.to_sparse()
    assert M.format == "csr" and M.shape == (math.prod(shape),) * 2
    _assert_same_matrix(M * p.h**2, reference, rtol=1e-15)
    # 1/h^2 = (n + 1)^2 is exact, so dividing by it recovers pyamg's integers bit for bit (entry by entry:
    # SciPy divides a matrix by a scalar through its reciprocal, which rounds).
    scaled = M.copy()
    scaled.data = scaled.data / (shape[0] + 1) ** 2
    _assert_same_matrix(scaled, reference)
    assert p.h == 1.0 / (shape[0] + 1) and p.grid_shape == shape
    assert p.A.is_constant and p.A.is_axis_aligned and len(p.A.offsets) == 2 * len(shape) + 1


@pytest.mark.parametrize(("eps", "theta"), [(1.0, 0.0), (0.01, math.pi / 4), (0.1, math.pi / 6), (0.3, 2.0)])
@pytest.mark.parametrize("shape", [(5, 5), (6, 6), (7, 4), (4, 9)])
def test_rotated_anisotropic_equals_pyamg(eps, theta, shape):
    stencil = pyamg.gallery.diffusion_stencil_2d(epsilon=eps, theta=theta, type="FD")
    reference = pyamg.gallery.stencil_grid(stencil, shape, format="csr")
    p = rotated_anisotropic(shape, eps, theta)
    _assert_same_matrix(p.to_sparse() * p.h**2, reference, rtol=1e-15)
    assert p.A.is_symmetric()


def test_anisotropic_axes_and_pyamg():
    # eps couples along axis 1 (y): -u_xx - eps u_yy with axis 0 = x.
    p = anisotropic((5, 6), 0.01)
    coefficients = dict(zip(p.A.offsets, p.A.coefficients.tolist()))
    assert coefficients[(1, 0)] == -36.0 and coefficients[(0, 1)] == pytest.approx(-0.36)
    stencil = pyamg.gallery.diffusion_stencil_2d(epsilon=0.01, theta=0.0, type="FD")
    _assert_same_matrix(p.to_sparse() * p.h**2, pyamg.gallery.stencil_grid(stencil, (5, 6)), rtol=1e-15)
    _assert_same_matrix(p.to_sparse(), rotated_anisotropic((5, 6), 0.01, 0.0).to_sparse())
    assert p.A.is_axis_aligned and len(p.A.offsets) == 5


def test_diffusion_with_unit_coefficient_is_poisson():
    for shape in [(3, 4), (5, 5), (3, 4, 5)]:
        p = diffusion(np.ones(tuple(n + 1 for n in shape)))
        assert not p.A.is_constant and p.grid_shape == shape
        _assert_same_matrix(p.to_sparse(), poisson(shape).to_sparse())
    # A constant coefficient c scales the Laplacian by c.
    q = diffusion(np.full((5, 6), 3.0))
    _assert_same_matrix(q.to_sparse(), 3.0 * poisson((4, 5)).to_sparse(), rtol=1e-15)


def _diffusion_reference(a: np.ndarray) -> np.ndarray:
    """Dense matrix of -div(a grad u) by loops over nodes and edges, the documented edge averaging."""
    shape = tuple(m - 1 for m in a.shape)
    dim = len(shape)
    n = math.prod(shape)
    index = np.arange(n).reshape(shape)
    M = np.zeros((n, n))
    for x in itertools.product(*(range(s) for s in shape)):
        full = tuple(i + 1 for i in x)  # index among all nodes, boundary = 0 and n + 1
        for k in range(dim):
            for step in (-1, 1):
                # The edge from full node `full` to `full + step e_k`: cells along k between the two nodes,
                # along the other axes the cells on either side of the node line.
                ranges = []
                for m in range(dim):
                    if m == k:
                        c = full[m] - 1 if step == -1 else full[m]
                        ranges.append((c,))
                    else:
                        ranges.append((full[m] - 1, full[m]))
                weight = np.mean([a[c] for c in itertools.product(*ranges)])
                M[index[x], index[x]] += weight
                y = list(x)
                y[k] += step
                if 0 <= y[k] < shape[k]:
                    M[index[x], index[tuple(y)]] -= weight
    return M * (shape[0] + 1) ** 2


@pytest.mark.parametrize("cells", [(4, 5), (6, 4), (4, 5, 6)])
def test_diffusion_matches_reference_and_is_spd(cells):
    rng = np.random.default_rng(0)
    a = np.exp(rng.standard_normal(cells))
    p = diffusion(a)
    M = p.to_sparse().toarray()
    np.testing.assert_allclose(M, _diffusion_reference(a), rtol=1e-13, atol=1e-10)
    np.testing.assert_array_equal(M, M.T)
    assert np.linalg.eigvalsh(M).min() > 0
    assert p.A.is_symmetric() and p.A.is_axis_aligned and len(p.A.offsets) == 2 * len(cells) + 1
    assert p.exact is None and torch.equal(p.f, torch.ones(p.grid_shape, dtype=torch.float64))


@pytest.mark.parametrize(
    "make",
    [
        lambda: poisson((6, 5)),
        lambda: poisson((4, 3, 5)),
        lambda: anisotropic((6, 5), 0.001),
        lambda: rotated_anisotropic((6, 6), 0.01, 0.7),
        lambda: lognormal_diffusion((5, 6), 2.0, seed=3),
    ],
)
def test_symmetric_positive_definite(make):
    p = make()
    M = p.to_sparse().toarray()
    np.testing.assert_allclose(M, M.T, rtol=0, atol=1e-12 * abs(M).max())
    assert np.linalg.eigvalsh(M).min() > 0
    assert p.A.is_symmetric()


def test_lognormal_diffusion_sampling():
    p, q = lognormal_diffusion((7, 7), 1.5, seed=4), lognormal_diffusion((7, 7), 1.5, seed=4)
    assert torch.equal(p.A.coefficients, q.A.coefficients)
    assert not torch.equal(p.A.coefficients, lognormal_diffusion((7, 7), 1.5, seed=5).A.coefficients)
    _assert_same_matrix(lognormal_diffusion((5, 6), 0.0).to_sparse(), poisson((5, 6)).to_sparse())
    r = lognormal_diffusion((3, 3, 3), 1.0, seed=0, dtype=torch.float32, name="x")
    assert r.name == "x" and r.f.dtype == torch.float32 and r.A.coefficients.dtype == torch.float32


# ------------------------------------------------------------------------------------- discretisation
CONVERGENCE = [
    ("poisson-2d-sin", lambda n: poisson((n, n))),
    ("poisson-2d-mixed", lambda n: poisson((n, n), solution="mixed")),
    ("poisson-2d-rect", lambda n: poisson((n, (5 * n) // 4), solution="sin")),
    ("poisson-2d-callable", lambda n: poisson((n, n), solution=lambda x, y: torch.exp(x * y) + torch.sin(3 * y))),
    ("poisson-3d-mixed", lambda n: poisson((n // 2, n // 2, n // 2), solution="mixed")),
    ("anisotropic", lambda n: anisotropic((n, n), 0.1, solution="mixed")),
    ("rotated", lambda n: rotated_anisotropic((n, n), 0.1, 0.7, solution="mixed")),
    ("rotated-callable", lambda n: rotated_anisotropic((n, n), 0.5, 2.0, solution=lambda x, y: torch.cos(x + 2 * y))),
]


@pytest.mark.parametrize(("label", "make"), CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_second_order_convergence(label, make):
    errors = []
    for n in (8, 16, 32):  # grids of 7, 15, 31 points per side: h = 1/8, 1/16, 1/32 (3D: 1/4, 1/8, 1/16)
        p = make(n - 1)
        assert p.exact is not None and p.exact.shape == p.grid_shape
        errors.append(p.error(_solve(p)))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(3.4 < r < 4.6 for r in ratios), (label, errors, ratios)
    assert ratios[1] == pytest.approx(4.0, rel=0.08), (label, ratios)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: poisson((5, 7), solution=s),
        lambda s: poisson((4, 3, 5), solution=s),
        lambda s: anisotropic((6, 5), 0.3, solution=s),
        lambda s: rotated_anisotropic((5, 6), 0.2, 0.9, solution=s),
    ],
)
def test_quadratic_solutions_are_reproduced_exactly(make):
    # Central differences are exact for quadratics, so the discrete solution equals u to rounding: this
    # checks f (by automatic differentiation) and the lifted boundary values together.
    def u(*xs):
        x, y = xs[0], xs[1]
        z = xs[2] if len(xs) == 3 else 0.0
        return 1 + x - 2 * y + 3 * x**2 + x * y - 2 * y**2 + 0.5 * y * z + z**2

    p = make(u)
    assert p.error(_solve(p)) < 1e-11
    assert p.name.endswith("custom")


@pytest.mark.parametrize("shape", [(5, 7), (6, 4), (3, 4, 5)])
def test_lift_boundary_against_full_matrix_with_boundary_nodes(shape):
    # Assemble -Δ on the grid with its boundary ring as unknowns too; the rows of the interior nodes,
    # applied to the exact solution on every node, give f; moving the boundary columns to the right-hand
    # side must give the problem's f.
    p = poisson(shape, solution="mixed")
    padded = tuple(n + 2 for n in shape)
    full = pyamg.gallery.poisson(padded, format="csr") / p.h**2
    interior = np.zeros(padded, dtype=bool)
    interior[tuple(slice(1, -1) for _ in shape)] = True
    interior = interior.ravel()
    xs = grid_coordinates(shape, p.h, padded=True)
    u = (math.prod(torch.sin(math.pi * x) for x in xs) + torch.exp(xs[0]) * torch.cos(xs[1])).numpy().ravel()
    rows = full[interior]
    # f = -Δu in closed form: the harmonic part drops out.
    f_pde = len(shape) * math.pi**2 * math.prod(torch.sin(math.pi * x) for x in grid_coordinates(shape, p.h))
    expected = f_pde.numpy().ravel() - rows[:, ~interior] @ u[~interior]
    np.testing.assert_allclose(p.f.numpy().ravel(), expected, rtol=1e-12, atol=1e-9)
    # The interior block is the problem's matrix, and the boundary really is non-zero.
    _assert_same_matrix(rows[:, interior], p.to_sparse(), rtol=1e-15)
    assert np.abs(u[~interior]).max() > 1.0
    np.testing.assert_allclose(u[interior], p.exact.numpy().ravel(), rtol=1e-15, atol=1e-15)


def test_diffusion_boundary_and_rhs():
    # -div(a grad u) = 0 with a constant a and linear boundary values: the discrete solution is linear.
    p = diffusion(np.full((6, 5), 2.0), rhs=np.zeros((5, 4)), boundary=lambda x, y: 1 + 2 * x - y)
    x, y = grid_coordinates(p.grid_shape, p.h)
    torch.testing.assert_close(_solve(p), 1 + 2 * x - y, rtol=1e-12, atol=1e-12)
    # A variable coefficient: lifting equals the full flux form on the padded grid, by reference.
    rng = np.random.default_rng(1)
    a = np.exp(rng.standard_normal((5, 6)))
    g = lambda x, y: torch.cos(x) + y**2  # noqa: E731
    q = diffusion(a, rhs=lambda x, y: x * y, boundary=g)
    x, y = grid_coordinates(q.grid_shape, q.h)
    g_pad = g(*grid_coordinates(q.grid_shape, q.h, padded=True))
    g_pad[1:-1, 1:-1] = 0.0
    torch.testing.assert_close(q.f, x * y - _boundary_flux(a, g_pad, q.h), rtol=1e-12, atol=1e-9)


def _boundary_flux(a: np.ndarray, g: torch.Tensor, h: float) -> torch.Tensor:
    """(A g)(x) at interior nodes for g zero inside: the boundary terms of the flux form, by loops."""
    shape = tuple(m - 1 for m in a.shape)
    out = torch.zeros(shape, dtype=torch.float64)
    for i, j in itertools.product(range(shape[0]), range(shape[1])):
        I, J = i + 1, j + 1  # full node indices
        edges = {
            (I - 1, J): (a[I - 1, J - 1] + a[I - 1, J]) / 2,
            (I + 1, J): (a[I, J - 1] + a[I, J]) / 2,
            (I, J - 1): (a[I - 1, J - 1] + a[I, J - 1]) / 2,
            (I, J + 1): (a[I - 1, J] + a[I, J]) / 2,
        }
        out[i, j] = sum(-w * g[node] for node, w in edges.items()) / h**2
    return out


# ------------------------------------------------------------------------------------------ Problem
def test_problem_methods():
    p = poisson((7, 9), solution="mixed")
    assert isinstance(p.A, Stencil) and p.dim == 2 and p.name == "poisson-2d-7x9-mixed"
    assert p.f.dtype == torch.float64 and p.f.shape == (7, 9)
    u = p.direct_solve()
    torch.testing.assert_close(u, _solve(p))
    batch = p.random_rhs(3, seed=1)
    assert batch.shape == (3, 1, 7, 9) and torch.equal(batch, p.random_rhs(3, seed=1))
    assert not torch.equal(batch, p.random_rhs(3, seed=2))
    assert p.random_rhs(2, channels=4).shape == (2, 4, 7, 9)
    solved = p.direct_solve(batch)
    residual = p.A(solved) - batch
    assert residual.abs().max() < 1e-9 * batch.abs().max() * p.h**-2
    # error(): the worst sample of a batch; max norm vs scaled L2 norm.
    many = torch.stack([p.exact, p.exact + 0.25])[:, None]
    assert p.error(many) == pytest.approx(0.25)
    assert p.error(p.exact + 0.25, norm="l2") == pytest.approx(0.25 * math.sqrt(p.h**2 * 63))
    assert p.error(p.exact.numpy()) == 0.0
    with pytest.raises(ValueError, match="norm"):
        p.error(u, norm="l1")
    with pytest.raises(ValueError, match="u"):
        p.error(torch.zeros(9, 7))
    with pytest.raises(ValueError, match="exact"):
        poisson((3, 3), solution=None).error(u)
    with pytest.raises(ValueError, match="batch"):
        p.random_rhs(0)


def test_dtype_and_solution_options():
    p = poisson((5, 5), dtype=torch.float32)
    assert p.f.dtype == p.exact.dtype == p.A.coefficients.dtype == torch.float32
    q = poisson((5, 5), solution=None)
    assert q.exact is None and torch.equal(q.f, torch.ones(5, 5, dtype=torch.float64))
    # "sin" on the unit square has a zero boundary: f is -Δu = 2 π^2 u exactly.
    s = poisson((5, 5))
    torch.testing.assert_close(s.f, 2 * math.pi**2 * s.exact, rtol=1e-14, atol=1e-14)
    # Constant and linear callables have f = 0 inside.
    c = poisson((4, 4), solution=lambda x, y: 3.0 + 0 * x)
    assert c.error(_solve(c)) < 1e-12
    with pytest.raises(ValueError, match="solution"):
        poisson((5, 5), solution="cos")
    with pytest.raises(TypeError, match="solution"):
        poisson((5, 5), solution=3)
    with pytest.raises(ValueError, match="solution"):
        poisson((5, 5), solution=lambda x, y: torch.ones(3))
    with pytest.raises(TypeError, match="dtype"):
        poisson((5, 5), dtype=torch.int64)


def test_validation():
    for bad in [(2, 5), (5, 1), (0, 4, 4)]:
        with pytest.raises(ValueError, match="shape"):
            poisson(bad)
    for bad in [(5,), (5, 5, 5, 5), 5, (5.0, 5.0), "55"]:
        with pytest.raises(ValueError, match="shape"):
            poisson(bad)
    with pytest.raises(ValueError, match="shape"):
        anisotropic((5, 5, 5), 0.1)
    with pytest.raises(ValueError, match="shape"):
        rotated_anisotropic((2, 5), 0.1, 0.0)
    for eps in [0.0, -1.0, math.nan, math.inf]:
        with pytest.raises(ValueError, match="eps"):
            anisotropic((5, 5), eps)
        with pytest.raises(ValueError, match="eps"):
            rotated_anisotropic((5, 5), eps, 0.3)
    for theta in [math.nan, math.inf, -math.inf]:
        with pytest.raises(ValueError, match="theta"):
            rotated_anisotropic((5, 5), 0.1, theta)
    with pytest.raises(ValueError, match="coefficient"):
        diffusion(np.ones((3, 5)))
    with pytest.raises(ValueError, match="coefficient"):
        diffusion(np.ones(5))
    with pytest.raises(ValueError, match="coefficient"):
        diffusion(-np.ones((5, 5)))
    with pytest.raises(ValueError, match="coefficient"):
        diffusion(np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="rhs"):
        diffusion(np.ones((5, 5)), rhs=np.ones((5, 5)))
    with pytest.raises(TypeError, match="boundary"):
        diffusion(np.ones((5, 5)), boundary=1.0)
    for sigma in [-1.0, math.nan]:
        with pytest.raises(ValueError, match="sigma"):
            lognormal_diffusion((5, 5), sigma)
    with pytest.raises(ValueError, match="shape"):
        lognormal_diffusion((5, 2), 1.0)
    with pytest.raises(ValueError, match="f"):
        Problem(A=Stencil.laplacian(2), f=torch.zeros(3, 4), grid_shape=(3, 3), h=0.25)
    with pytest.raises(TypeError, match="A"):
        Problem(A=Stencil.laplacian(3), f=torch.zeros(3, 3), grid_shape=(3, 3), h=0.25)
