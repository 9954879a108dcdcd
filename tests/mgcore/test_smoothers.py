"""Multicolour Gauss-Seidel steps formed on their colour's points (``DiagonalScaling(lattices=...)`` through the
shared block's sub-lattice path)."""

from __future__ import annotations

import itertools

import pytest
import torch

from mgcore.blocks import ResidualCorrection, residual_correction
from mgcore.operators import Stencil
from mgcore.smoothers import DiagonalScaling, red_black_gauss_seidel


@pytest.mark.parametrize(("shape", "boundary"), [((9, 8), "dirichlet"), ((8, 6), "periodic"), ((5, 6, 7), "neumann")])
def test_colour_steps_equal_the_masked_residual_correction(shape, boundary):
    dim = len(shape)
    generator = torch.Generator().manual_seed(dim)
    offsets = list(itertools.product((-1, 0, 1), repeat=dim))  # diagonal couplings: 2^d colours
    coefficients = -torch.rand((len(offsets), *shape), generator=generator, dtype=torch.float64)
    coefficients[offsets.index((0,) * dim)] = 3.0 ** dim
    A = Stencil(offsets, coefficients, boundary=boundary)
    smoother = red_black_gauss_seidel(A, shape)
    assert len(smoother.steps) == 2**dim
    assert all(type(s) is ResidualCorrection and len(s.B.lattices) == 1 for s in smoother.steps)
    u = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
    f = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
    workspace = torch.empty_like(f)
    calls = []
    residual_on = A.residual_on

    def counted(*args, **kwargs):
        calls.append(args[2])
        return residual_on(*args, **kwargs)

    A.residual_on = counted  # the shared block takes the sub-lattice path
    for step in smoother.steps:
        plain = u + step.B(A.residual(u, f))  # the whole-grid step, u + B (f - A u)
        before = u.clone()
        assert float((step(u, f, workspace=workspace) - plain).abs().max()) < 1e-14
        assert torch.equal(u, before)  # not in place unless asked
        assert float((step(None, f) - step.B(f)).abs().max()) == 0.0
        v = u.clone()
        assert step(v, f, inplace=True) is v
    assert sorted(set(calls)) == sorted(s.B.lattices[0] for s in smoother.steps)
    # A whole sweep, and under autograd (the plain block runs then).
    reference = u.clone()
    for step in smoother.steps:
        reference = ResidualCorrection(step.A, step.B)(reference, f)
    assert float((smoother(u, f) - reference).abs().max()) < 1e-13
    leaf = u.clone().requires_grad_()
    assert float((smoother(leaf, f).detach() - reference).abs().max()) < 1e-13


def test_two_colours_keep_the_contiguous_block():
    # Red-black on a 5-point stencil: each colour is two sub-lattices, cheaper as one whole-grid residual.
    smoother = red_black_gauss_seidel(Stencil.laplacian(2), (7, 7))
    assert [type(s) for s in smoother.steps] == [ResidualCorrection, ResidualCorrection]
    assert all(s.B.lattices is None for s in smoother.steps)
    A = Stencil.laplacian(2)
    with pytest.raises(ValueError, match="lattices: need a mask"):
        DiagonalScaling(A, 1.0, lattices=[((0, 2), (0, 2))])
    f = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    assert torch.equal(residual_correction(A, DiagonalScaling(A, 1.0), None, f), f / 4)


@pytest.mark.parametrize("boundary", ["neumann", ("periodic", ("neumann", "dirichlet")), "dirichlet"])
def test_masked_scale_of_a_constant_stencil_is_omega_mask_over_the_diagonal(boundary):
    from mgcore.smoothers import DiagonalScaling

    L = Stencil.laplacian(2, h=0.5).double()
    A = Stencil(L.offsets, L.coefficients, boundary=boundary)
    mask = (torch.arange(6 * 8).reshape(6, 8) % 3 == 0).double()
    B = DiagonalScaling(A, 0.8, mask)
    expected = 0.8 * mask / A.diagonal((6, 8))[0, 0] if A.reflect is not None else 0.8 * mask / float(A.diagonal())
    assert torch.allclose(B.scale[0, 0], expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    ("points", "error", "message"),
    [
        (torch.tensor([3, 9, 3]), ValueError, "index 3 is repeated"),
        (torch.tensor([3, 64]), ValueError, r"in \[0, 64\) for grid \(8, 8\); got 3..64"),
        (torch.tensor([-1, 5]), ValueError, "got -1..5"),
        (torch.tensor([1.0, 2.0]), TypeError, "integer flat grid indices"),
    ],
)
def test_point_sets_are_checked_once_where_they_are_given(points, error, message):
    """The compiled point steps index the grid without bounds checks, and a repeated point would be updated
    twice in one Jacobi step: a point set outside the grid or with repeats is refused, naming ``points``; the
    caller's tensor is left as it was."""
    coefficients = Stencil.laplacian(2).coefficient_arrays((8, 8))
    A = Stencil(Stencil.laplacian(2).offsets, coefficients)
    given = points.clone()
    with pytest.raises(error, match="points: .*" + message):
        DiagonalScaling(A, 0.8, points=points, grid_shape=(8, 8))
    assert torch.equal(points, given)
    unordered = DiagonalScaling(A, 0.8, points=torch.tensor([[9, 2], [40, 7]]), grid_shape=(8, 8))
    assert unordered.point_index.tolist() == [9, 2, 40, 7]  # the caller's order is kept
