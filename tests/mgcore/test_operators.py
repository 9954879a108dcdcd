"""Stencil application against its assembled matrix, symmetry, boundary lifting, ConvOperator, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mgcore.operators import ConvOperator, Stencil
from mgcore.sparse import stencil_from_sparse

SHAPES = [(5, 5), (6, 4), (7, 8), (3, 4, 5), (4, 4, 4)]


def _random_kernel(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3,) * dim)


def _random_variable(dim: int, shape: tuple[int, ...], seed: int) -> Stencil:
    rng = np.random.default_rng(seed)
    offsets = list(itertools.product((-1, 0, 1), repeat=dim))
    return Stencil(offsets, torch.from_numpy(rng.standard_normal((len(offsets), *shape))))


def _stencils(shape: tuple[int, ...]) -> list[Stencil]:
    dim = len(shape)
    return [
        Stencil.laplacian(dim, h=0.5),
        Stencil.from_kernel(_random_kernel(dim, 1)),
        _random_variable(dim, shape, 2),
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_apply_equals_sparse_matrix(shape):
    u = torch.randn(2, 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for A in _stencils(shape):
        M = A.to_sparse(shape)
        assert sp.issparse(M) and M.format == "csr" and M.shape == (math.prod(shape),) * 2
        y = A(u)
        assert y.shape == u.shape
        for b, c in itertools.product(range(2), range(3)):
            expected = M @ u[b, c].numpy().ravel()
            np.testing.assert_allclose(y[b, c].numpy().ravel(), expected, rtol=1e-13, atol=1e-13)
        # out= writes in place; residual is f - A u.
        out = torch.empty_like(u)
        assert A(u, out=out) is out
        torch.testing.assert_close(out, y)
        f = torch.randn_like(u)
        torch.testing.assert_close(A.residual(u, f), f - y)


def test_laplacian_matches_pyamg_poisson():
    pyamg = pytest.importorskip("pyamg")
    for shape in [(4, 5), (3, 4, 5)]:
        M = Stencil.laplacian(len(shape)).to_sparse(shape)
        assert (M != pyamg.gallery.poisson(shape, format="csr")).nnz == 0


def test_autograd_through_variable_stencil():
    A = _random_variable(2, (4, 5), 3)
    u = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    (A(u) ** 2).sum().backward()
    M = A.to_sparse().toarray()
    expected = 2 * M.T @ (M @ u.detach().numpy().ravel())
    np.testing.assert_allclose(u.grad.numpy().ravel(), expected, rtol=1e-12)


def test_diagonal_and_properties():
    A = Stencil.laplacian(2, h=(1.0, 0.5))
    assert A.diagonal().ndim == 0 and A.diagonal().item() == 2 + 8
    assert A.is_constant and A.grid_shape is None and A.radius == 1 and A.is_axis_aligned
    V = _random_variable(3, (3, 4, 5), 0)
    assert V.diagonal().shape == (1, 1, 3, 4, 5)
    assert not V.is_constant and V.grid_shape == (3, 4, 5) and not V.is_axis_aligned
    assert repr(A) == "Stencil(dim=2, points=5, constant, radius=1)"
    assert "variable on (3, 4, 5)" in repr(V)
    with pytest.raises(ValueError, match="diagonal"):
        Stencil([(1, 0), (-1, 0)], [1.0, 1.0]).center_index  # noqa: B018


def test_is_symmetric():
    assert Stencil.laplacian(3).is_symmetric()
    assert Stencil.from_kernel([[1, 2, 3], [4, 5, 4], [3, 2, 1]]).is_symmetric()
    assert not Stencil.from_kernel([[1, 2, 3], [4, 5, 6], [7, 8, 9]]).is_symmetric()
    assert not Stencil([(0, 0), (0, 1)], [2.0, -1.0]).is_symmetric()  # no mirror offset
    # Variable: symmetric iff the matrix is; check against the assembled matrix.
    rng = np.random.default_rng(0)
    for shape in [(4, 5), (3, 4, 3)]:
        V = _random_variable(len(shape), shape, 1)
        M = V.to_sparse()
        assert not V.is_symmetric()
        W = stencil_from_sparse((M + M.T).tocoo(), shape)
        assert W.is_symmetric() and not W.is_constant
        # Coefficients at cells whose neighbour is outside are ignored by the check.
        c = W.coefficients.clone()
        k = W.offsets.index((0,) * (len(shape) - 1) + (1,))
        c[k][..., -1] = torch.from_numpy(rng.standard_normal(c[k][..., -1].shape))
        assert Stencil(W.offsets, c).is_symmetric()


def _full_matrix(A: Stencil, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the interior points of the padded grid, with every neighbour (boundary ones included)."""
    r = A.radius
    padded = tuple(n + 2 * r for n in shape)
    index = np.arange(math.prod(padded)).reshape(padded)
    coeffs = A.coefficient_arrays(shape).numpy()
    M = np.zeros((math.prod(shape), math.prod(padded)))
    for row, x in enumerate(itertools.product(*(range(n) for n in shape))):
        for k, o in enumerate(A.offsets):
            M[row, index[tuple(xi + r + oi for xi, oi in zip(x, o))]] += coeffs[k][x]
    interior = np.zeros(padded, dtype=bool)
    interior[tuple(slice(r, r + n) for n in shape)] = True
    return M, interior.ravel(), padded


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 3)])
def test_lift_boundary_equals_full_matrix(shape):
    for A in _stencils(shape):
        M, interior, padded = _full_matrix(A, shape)
        g = torch.randn(2, *padded, dtype=torch.float64)
        f = torch.randn(2, *shape, dtype=torch.float64)
        lifted = A.lift_boundary(f, g)
        for b in range(2):
            gb = g[b].numpy().ravel().copy()
            expected = f[b].numpy().ravel() - M[:, ~interior] @ gb[~interior]
            np.testing.assert_allclose(lifted[b].numpy().ravel(), expected, rtol=1e-13, atol=1e-13)
            # And the interior block of the full matrix is to_sparse().
            np.testing.assert_allclose(M[:, interior], A.to_sparse(shape).toarray(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="boundary_values"):
        Stencil.laplacian(2).lift_boundary(torch.zeros(3, 3), torch.zeros(4, 4))


def test_periodic():
    A = Stencil.from_kernel([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], boundary="periodic")
    u = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    expected = 4 * u
    for shift, dims in [(1, 2), (-1, 2), (1, 3), (-1, 3)]:
        expected = expected - torch.roll(u, shift, dims)
    torch.testing.assert_close(A(u), expected)
    # The matrix wraps around too: compare with the operator on the unit vectors.
    dense = A.to_sparse((5, 6)).toarray()
    columns = A(torch.eye(30, dtype=torch.float64).reshape(30, 1, 5, 6)).reshape(30, 30).T
    np.testing.assert_array_equal(dense, columns.numpy())


def test_conv_operator_shapes():
    A = ConvOperator(4, 8)
    assert A(torch.zeros(2, 4, 9, 7)).shape == (2, 8, 9, 7) and A.dim == 2
    assert A.weight.shape == (8, 4, 3, 3)
    assert ConvOperator(4, 4, stride=2)(torch.zeros(1, 4, 9, 9)).shape == (1, 4, 5, 5)
    assert ConvOperator(3, 6, 5, dim=3)(torch.zeros(1, 3, 6, 5, 4)).shape == (1, 6, 6, 5, 4)
    assert ConvOperator(4, 4, groups=4).weight.shape == (4, 1, 3, 3)
    u, f = torch.randn(1, 4, 5, 5), torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(A.residual(u, f), f - A(u))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="offsets"):
        Stencil([], [])
    with pytest.raises(ValueError, match="offsets"):
        Stencil([(0, 0), (1,)], [1.0, 2.0])
    with pytest.raises(ValueError, match="offsets"):
        Stencil([(0, 0), (0, 0)], [1.0, 2.0])
    with pytest.raises(ValueError, match="offsets"):
        Stencil([(0, 0, 0, 0)], [1.0])
    with pytest.raises(ValueError, match="coefficients"):
        Stencil([(0, 0), (1, 0)], [1.0])
    with pytest.raises(ValueError, match="coefficients"):
        Stencil([(0, 0)], torch.ones(1, 3))
    with pytest.raises(ValueError, match="boundary"):
        Stencil([(0, 0)], [1.0], boundary="robin")
    with pytest.raises(ValueError, match="periodic on one face"):
        Stencil([(0, 0)], torch.ones(1, 3, 3), boundary=[("periodic", "neumann"), "dirichlet"])
    with pytest.raises(ValueError, match="kernel"):
        Stencil.from_kernel(np.ones((2, 3)))
    with pytest.raises(ValueError, match="dim"):
        Stencil.laplacian(4)
    with pytest.raises(ValueError, match="h"):
        Stencil.laplacian(2, h=-1.0)
    with pytest.raises(ValueError, match="h"):
        Stencil.laplacian(2, h=(1.0, 1.0, 1.0))
    A = Stencil.laplacian(2)
    with pytest.raises(ValueError, match="u"):
        A(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="grid_shape"):
        A.to_sparse()
    V = _random_variable(2, (4, 5), 0)
    with pytest.raises(ValueError, match="u"):
        V(torch.zeros(1, 1, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="grid_shape"):
        V.to_sparse((5, 4))
    with pytest.raises(ValueError, match="dim"):
        ConvOperator(1, 1, dim=1)
    with pytest.raises(ValueError, match="kernel_size"):
        ConvOperator(1, 1, kernel_size=4)


@pytest.mark.parametrize("shape", [(5, 6), (6, 8), (7, 3), (3, 4, 5), (4, 6, 4)])
@pytest.mark.parametrize("boundary", ["dirichlet", "periodic", "mixed"])
def test_residual_on_a_sub_lattice_equals_the_full_residual_there(shape, boundary):
    dim = len(shape)
    faces = ["periodic"] + ["neumann"] * (dim - 1) if boundary == "mixed" else boundary
    generator = torch.Generator().manual_seed(dim)
    offsets = list(itertools.product((-1, 0, 1), repeat=dim))
    for variable in (False, True):
        size = (len(offsets), *shape) if variable else (len(offsets),)
        A = Stencil(offsets, torch.randn(size, generator=generator, dtype=torch.float64), boundary=faces)
        u = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
        f = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
        full = A.residual(u, f)
        for lattice in itertools.product(((0, 1), (0, 2), (1, 2)), repeat=dim):
            points = (..., *(slice(start, None, step) for start, step in lattice))
            out = torch.empty_like(full[points])
            r = A.residual_on(u, f, lattice, out=out)
            assert r is out
            assert float((r - full[points]).abs().max()) < 1e-13


def test_is_symmetric_is_kept_until_the_coefficients_change():
    L = Stencil.laplacian(2)
    A = Stencil(L.offsets, L.coefficient_arrays((4, 5)).double())
    assert A.is_symmetric() and A.is_symmetric()
    A.coefficients[0, 2, 2] -= 0.5  # in place: the cached answer must not survive
    assert not A.is_symmetric()
    assert A.symmetrized().is_symmetric()


def test_a_stencil_marked_symmetric_is_checked_again_once_its_coefficients_change():
    c = torch.tensor([[[-1.0, -1.0, -1.0]], [[2.0, 2.0, 2.0]], [[-1.0, -1.0, -1.0]]], dtype=torch.float64)
    S = Stencil([(0, -1), (0, 0), (0, 1)], c, copy=False)
    assert S.coefficients.data_ptr() == c.data_ptr()  # adopted, not copied
    assert Stencil([(0, -1), (0, 0), (0, 1)], c).coefficients.data_ptr() != c.data_ptr()
    S.mark_symmetric()
    assert S.is_symmetric()
    S.coefficients[2, 0, 0] = -3.0  # in place: a new version of the same storage
    assert not S.is_symmetric()
