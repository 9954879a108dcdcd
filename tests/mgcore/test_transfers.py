"""Grid transfers as matrices: R = P^T / 2^d, exactness of P and of cubic interpolation, conv versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgcore.transfers import (
    ConvProlongation,
    ConvRestriction,
    FullWeighting,
    Injection,
    Linear,
    coarse_shape,
    cubic_interpolate,
)

SHAPES = [(7,), (8,), (9,), (2,), (3,), (7, 7), (8, 8), (7, 10), (6, 9), (3, 4, 5), (5, 5, 5), (4, 6, 7)]


def _matrix(apply, shape_in: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear map on grids, column j = the map applied to unit vector j."""
    n = math.prod(shape_in)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape_in)
    out = apply(eye)
    return out.reshape(n, -1).T.numpy()


def _coords(shape: tuple[int, ...], h: float = 1.0) -> list[torch.Tensor]:
    axes = [torch.arange(1, n + 1, dtype=torch.float64) * h for n in shape]
    return list(torch.meshgrid(*axes, indexing="ij"))


@pytest.mark.parametrize("shape", SHAPES)
def test_restriction_is_prolongation_transpose_over_2d(shape):
    dim = len(shape)
    coarse = coarse_shape(shape)
    R = _matrix(FullWeighting(dim), shape)
    P = _matrix(lambda c: Linear(dim)(c, shape), coarse)
    assert R.shape == (math.prod(coarse), math.prod(shape))
    assert P.shape == (math.prod(shape), math.prod(coarse))
    # Weights are dyadic, so the identity holds exactly in floating point (Trottenberg et al. 2001, 2.3).
    np.testing.assert_array_equal(R, P.T / 2**dim)
    # Every coarse point interpolates to its own fine point 2i + 1 with weight 1.
    assert np.all(P.max(axis=0) == 1.0)


@pytest.mark.parametrize("shape", [(9,), (7, 7), (15, 7), (7, 9, 5)])
def test_linear_reproduces_linear_functions_on_odd_grids(shape):
    dim = len(shape)
    h = 1.0 / (shape[0] + 1)
    fine = _coords(shape, h)
    coarse = [x[tuple(slice(1, None, 2) for _ in shape)] for x in fine]  # coarse point i = fine 2i + 1

    def tensor_linear(xs):  # a product of affine factors: bilinear/trilinear interpolation is exact for it
        return math.prod((1.0 + (k + 2) * x) for k, x in enumerate(xs))

    def affine(xs):
        return 1.0 + sum((k + 2) * x for k, x in enumerate(xs))

    for fn in (tensor_linear, affine):
        u = Linear(dim)(fn(coarse)[None, None], shape)[0, 0]
        # The zero boundary is used next to the boundary, so compare away from it: points 1..n-2 per axis.
        inner = tuple(slice(1, n - 1) for n in shape)
        torch.testing.assert_close(u[inner], fn(fine)[inner], rtol=1e-14, atol=1e-14)
    # Functions vanishing on the boundary and linear between coarse points: hat functions are exact.
    c = torch.zeros(coarse_shape(shape), dtype=torch.float64)
    c[tuple(n // 2 for n in c.shape)] = 1.0
    u = Linear(dim)(c[None, None], shape)[0, 0]
    assert u.sum().item() == pytest.approx(2**dim)


@pytest.mark.parametrize("shape", SHAPES)
def test_injection(shape):
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    y = Injection(len(shape))(x)
    index = tuple(slice(1, 2 * (n // 2), 2) if n >= 2 else slice(None) for n in shape)
    torch.testing.assert_close(y, x[(..., *index)], rtol=0, atol=0)
    assert tuple(y.shape[2:]) == coarse_shape(shape)
    assert y.data_ptr() != x.data_ptr()  # a copy, not a view into the fine grid


@pytest.mark.parametrize("shape", [(7, 7), (8, 8), (7, 10), (9, 6), (5, 5, 5), (4, 6, 7), (6, 6, 6)])
def test_conv_transfers_equal_fixed_ones(shape):
    dim = len(shape)
    torch.manual_seed(0)
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    R = ConvRestriction(3, dim=dim).to(torch.float64)
    torch.testing.assert_close(R(x), FullWeighting(dim)(x), rtol=1e-14, atol=1e-14)
    c = torch.randn(2, 3, *coarse_shape(shape), dtype=torch.float64)
    P = ConvProlongation(3, dim=dim).to(torch.float64)
    torch.testing.assert_close(P(c, shape), Linear(dim)(c, shape), rtol=1e-14, atol=1e-14)


def test_conv_transfers_are_trainable_and_validated():
    R = ConvRestriction(2)
    assert R.conv.weight.requires_grad and R.conv.weight.shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        ConvRestriction(2, kernel_size=5)


@pytest.mark.parametrize("shape", [(15,), (7, 7), (15, 7), (7, 15, 7)])
def test_cubic_interpolate_exact_for_cubics_on_odd_grids(shape):
    dim = len(shape)
    h = 1.0 / (shape[0] + 1)
    lengths = [(n + 1) * h for n in shape]
    fine = _coords(shape, h)
    coarse = [x[tuple(slice(1, None, 2) for _ in shape)] for x in fine]

    def fn(xs):  # cubic in each variable, vanishing on the boundary (the zero Dirichlet values used)
        return math.prod(x * (L - x) * (1.0 + (k + 1) * x) for k, (x, L) in enumerate(zip(xs, lengths)))

    u = cubic_interpolate(fn(coarse)[None, None], shape, dim)[0, 0]
    torch.testing.assert_close(u, fn(fine), rtol=1e-13, atol=1e-13)
    # Linear interpolation is not exact for these.
    assert (Linear(dim)(fn(coarse)[None, None], shape)[0, 0] - fn(fine)).abs().max() > 1e-4


def test_cubic_interpolate_falls_back_to_linear():
    # Even axes do not nest uniformly; odd axes with fewer than 3 coarse points have too few for a cubic.
    for shape in [(8, 8), (5, 5), (6, 5)]:
        c = torch.randn(1, 1, *coarse_shape(shape), dtype=torch.float64)
        torch.testing.assert_close(cubic_interpolate(c, shape, 2), Linear(2)(c, shape), rtol=0, atol=0)


def test_coarse_shape():
    assert coarse_shape((1023, 1023)) == (511, 511)
    assert coarse_shape((10, 7, 1)) == (5, 3, 1)
    assert coarse_shape((2, 3)) == (1, 1)


def test_prolongation_rejects_wrong_coarse_grid():
    with pytest.raises(ValueError, match="coarse grid"):
        Linear(2)(torch.zeros(1, 1, 3, 3), (9, 9))
