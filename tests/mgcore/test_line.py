"""Line relaxation, semicoarsening and the ``auto`` choices (mgcore.line, mgcore.anisotropy)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from mgcore import (
    CoarseSolver,
    MultigridOptions,
    MultigridSolver,
    SeparableSolver,
    Stencil,
    asymptotic_factor,
    build_hierarchy,
    solve,
)
from mgcore.anisotropy import choose, coupling_strengths, line_relaxable, mixed_coupling
from mgcore.blocks import ResidualCorrection
from mgcore.line import LineSolve, cyclic_reduction, line_gauss_seidel, thomas
from mgcore.smoothers import SMOOTHERS, make_smoother
from mgcore.smoothers import auto as auto_smoother
from pde.problems import anisotropic as anisotropic_problem
from pde.problems import rotated_anisotropic


def anisotropic(eps: float, strong: str = "x") -> Stencil:
    """``-u_xx - eps u_yy`` (strong along x, axis 0) or ``-eps u_xx - u_yy`` (strong along y)."""
    if strong == "x":
        return Stencil.from_kernel([[0, -1, 0], [-eps, 2 + 2 * eps, -eps], [0, -1, 0]])
    return Stencil.from_kernel([[0, -eps, 0], [-1, 2 + 2 * eps, -1], [0, -eps, 0]])


def random_tridiagonal(shape, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lower = -torch.rand((*shape, n), generator=generator, dtype=torch.float64)
    upper = -torch.rand((*shape, n), generator=generator, dtype=torch.float64)
    diagonal = 2.5 + torch.rand((*shape, n), generator=generator, dtype=torch.float64)
    rhs = torch.randn((*shape, n), generator=generator, dtype=torch.float64)
    return lower, diagonal, upper, rhs


def dense(lower, diagonal, upper):
    return torch.diag_embed(diagonal) + torch.diag_embed(lower[..., 1:], -1) + torch.diag_embed(upper[..., :-1], 1)


# ---------------------------------------------------------------------------------------------- tridiagonal
@pytest.mark.parametrize("n", [1, 2, 3, 8, 31, 64])
@pytest.mark.parametrize("solver", [cyclic_reduction, thomas])
def test_tridiagonal_solvers_match_dense_solve(n, solver):
    lower, diagonal, upper, rhs = random_tridiagonal((3, 2), n)
    x = solver(lower, diagonal, upper, rhs)
    expected = torch.linalg.solve(dense(lower, diagonal, upper), rhs.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(x, expected, atol=1e-13, rtol=1e-12)


@pytest.mark.parametrize("solver", [cyclic_reduction, thomas])
def test_gradcheck_through_a_line_solve(solver):
    lower, diagonal, upper, rhs = (v.requires_grad_() for v in random_tridiagonal((2,), 7, seed=1))
    assert torch.autograd.gradcheck(solver, (lower, diagonal, upper, rhs))


def test_gradcheck_through_the_line_smoother_block():
    A = Stencil.from_kernel([[0, -1, 0], [-0.1, 2.2, -0.1], [0, -1, 0]])
    B = LineSolve(A, axis=0, grid_shape=(5, 4), classes=[(1,)])
    r = torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(B, (r,))
    S = line_gauss_seidel(A, (5, 4), axis=0)
    f = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda u: S(u, f), (r,))


# ---------------------------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("name", ["zebra-x", "line-x", "line-x-symmetric"])
def test_one_line_sweep_solves_a_1d_problem_exactly(name):
    # Decoupled lines (-u_xx only): one sweep along x solves every line exactly.
    A = Stencil.from_kernel([[0, -1, 0], [0, 2, 0], [0, -1, 0]])
    f = torch.randn(2, 1, 17, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u = SMOOTHERS[name](A, (17, 6), 0)(None, f, sweeps=1)
    assert float(A.residual(u, f).abs().max()) < 1e-13 * float(f.abs().max())


def test_one_zebra_sweep_solves_a_single_line_in_3d():
    A = Stencil.laplacian(3, h=(1.0, 3.0, 3.0))
    f = torch.randn(1, 1, 1, 1, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    u = SMOOTHERS["zebra-z"](A, (1, 1, 15), 0)(None, f)
    assert float(A.residual(u, f).abs().max()) < 1e-13


def test_lexicographic_sweep_is_line_gauss_seidel():
    # One sweep equals the block Gauss-Seidel update computed with the assembled matrix.
    A = rotated_anisotropic((6, 5), 0.3, 0.4).A
    grid = (6, 5)
    M = A.to_sparse(grid).toarray()
    f = torch.randn(1, 1, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    u0 = torch.randn_like(f)
    u = SMOOTHERS["line-y"](A, grid, 0)(u0, f)
    # Lines along y (axis 1) are the rows of the C-ordered grid, swept in increasing x: D + L is the block
    # lower triangle of M with 5x5 blocks.
    lower = np.tril(M)
    for i in range(6):
        block = slice(5 * i, 5 * i + 5)
        lower[block, block] = M[block, block]
    expected = u0.flatten().numpy() + np.linalg.solve(lower, (f - A(u0)).flatten().numpy())
    assert np.allclose(u.flatten().numpy(), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------- solves
def spsolve_reference(A: Stencil, grid, b: np.ndarray) -> np.ndarray:
    return spla.spsolve(A.to_sparse(grid).tocsc(), b.ravel()).reshape(grid)


CASES_2D = [  # (smoother, coarsening, strong axis of the problem)
    ("line-x", "full", "x"), ("line-y", "full", "y"), ("line-x-symmetric", "full", "x"),
    ("line-y-symmetric", "full", "y"), ("zebra-x", "full", "x"), ("zebra-y", "full", "y"),
    ("zebra-alternating", "full", "x"), ("rbgs", "x", "x"), ("rbgs", "y", "y"), ("zebra-x", "y", "x"),
    ("auto", "auto", "x"), ("auto", "auto", "y"), ("auto", "full", "y"), ("rbgs", "auto", "x"),
]


@pytest.mark.parametrize("smoother, coarsening, strong", CASES_2D)
def test_2d_agrees_with_spsolve(smoother, coarsening, strong):
    grid = (31, 23)
    A = anisotropic(0.01, strong)
    b = np.random.default_rng(0).standard_normal(grid)
    x, info = solve(A, b, rtol=1e-13, maxiter=200, smoother=smoother, coarsening=coarsening, max_coarse=20)
    reference = spsolve_reference(A, grid, b)
    assert info.converged
    assert np.linalg.norm(x - reference) <= 1e-10 * np.linalg.norm(reference)


@pytest.mark.parametrize(
    "smoother, coarsening, h",
    [
        ("zebra-x", "full", (1.0, 10.0, 10.0)), ("zebra-z", "full", (10.0, 10.0, 1.0)),
        ("zebra-alternating", "full", (1.0, 1.0, 1.0)), ("rbgs", "xy", (1.0, 1.0, 10.0)),
        ("auto", "auto", (1.0, 1.0, 10.0)), ("auto", "auto", (1.0, 10.0, 10.0)),
    ],
)
def test_3d_agrees_with_spsolve(smoother, coarsening, h):
    grid = (15, 11, 9)
    A = Stencil.laplacian(3, h=h)
    b = np.random.default_rng(1).standard_normal(grid)
    x, info = solve(A, b, rtol=1e-13, maxiter=200, smoother=smoother, coarsening=coarsening, max_coarse=30)
    reference = spsolve_reference(A, grid, b)
    assert info.converged
    assert np.linalg.norm(x - reference) <= 1e-10 * np.linalg.norm(reference)


def test_semicoarsening_galerkin_matches_rediscretization():
    # Away from the boundary the Galerkin operator of semi full weighting/linear interpolation is the
    # rediscretised one with the y part (-eps, 2 eps, -eps) spread over (1/8, 3/4, 1/8) along x.
    A = anisotropic(0.01)
    galerkin = build_hierarchy(A, (15, 15), coarsening="x", coarse_operator="galerkin", max_coarse=50)
    rediscretized = build_hierarchy(A, (15, 15), coarsening="x", max_coarse=50)
    assert galerkin[1].coarse_operator == "galerkin" and rediscretized[1].coarse_operator == "rediscretized"
    assert galerkin[1].grid_shape == rediscretized[1].grid_shape == (7, 15)
    assert rediscretized[1].A.coefficients.tolist() == pytest.approx([-0.25, -0.01, 0.52, -0.01, -0.25])
    Ac = galerkin[1].A
    interior = {o: float(Ac.coefficients[k, 3, 7]) for k, o in enumerate(Ac.offsets)}
    assert interior[(1, 0)] == pytest.approx(-0.25 + 0.02 / 8) and interior[(0, 0)] == pytest.approx(0.5 + 0.015)
    assert interior[(0, 1)] == pytest.approx(-0.0075) and interior[(1, 1)] == pytest.approx(-0.00125)
    # Both operators solve to the same accuracy: one V-cycle reduces the error alike.
    b = np.ones((15, 15))
    for h in (galerkin, rediscretized):
        _, info = solve(A, b, rtol=1e-10, coarsening="x", max_coarse=50,
                        coarse_operator=h[1].coarse_operator.replace("rediscretized", "rediscretize"))
        assert info.converged and info.iterations <= 10


@pytest.mark.parametrize("smoother", ["zebra-x", "zebra-alternating", "line-x-symmetric", "auto"])
def test_symmetric_line_smoothers_precondition_cg(smoother):
    grid = (31, 31)
    A = anisotropic(0.001)
    b = np.ones(grid)
    solver = MultigridSolver(A, grid=grid, smoother=smoother, coarsening="auto", presmooth=1, postsmooth=1)
    assert solver.symmetric
    x, info = solver.solve(b, rtol=1e-10, accel="cg")
    assert info.converged and info.iterations <= 8
    assert np.linalg.norm(x - spsolve_reference(A, grid, b)) <= 1e-8 * np.linalg.norm(x)


def test_lexicographic_line_gauss_seidel_is_not_symmetric():
    solver = MultigridSolver(
        anisotropic(0.01), grid=(15, 15), smoother="line-x", presmooth=1, postsmooth=1, max_coarse=20
    )
    assert not solver.symmetric
    with pytest.raises(ValueError, match="accel: 'cg' needs a symmetric cycle"):
        solver.solve(np.ones((15, 15)), accel="cg")


# ---------------------------------------------------------------------------------------------- auto
def test_auto_is_point_relaxation_and_full_coarsening_on_poisson():
    for dim, grid in ((2, (63, 63)), (3, (15, 15, 15))):
        A = Stencil.laplacian(dim)
        auto = build_hierarchy(A, grid, smoother="auto", coarsening="auto", presmooth=1, postsmooth=1)
        rbgs = build_hierarchy(A, grid, presmooth=1, postsmooth=1)
        assert [level.grid_shape for level in auto.levels] == [level.grid_shape for level in rbgs.levels]
        assert all(level.smoother.name == "auto:rbgs" for level in auto.levels[:-1])
        assert all(level.coarsened_axes == tuple(range(dim)) for level in auto.levels[:-1])
        assert asymptotic_factor(auto).factor == asymptotic_factor(rbgs).factor
    _, info = solve(Stencil.laplacian(2), np.ones((63, 63)), smoother="auto", coarsening="auto")
    assert info.method == "V(1,2) auto:rbgs"


@pytest.mark.parametrize("shape", [(6, 40), (40, 7), (3, 64), (64, 64)])
@pytest.mark.parametrize("strong", ["x", "y"])
def test_separable_coarsest_solve_matches_spsolve(shape, strong):
    A = anisotropic(0.01, strong)
    rng = np.random.default_rng(3)
    f = rng.standard_normal((2, 1, *shape))
    solver = SeparableSolver(A, shape)
    u = solver(torch.from_numpy(f))
    matrix = A.to_sparse(shape).tocsc()
    for k in range(2):
        expected = spla.spsolve(matrix, f[k, 0].ravel())
        assert np.linalg.norm(u[k, 0].numpy().ravel() - expected) <= 1e-12 * np.linalg.norm(expected)
    assert not np.shares_memory(u.numpy(), f)
    # float32 hierarchies re-factor, and the solve keeps the right-hand side's dtype.
    single = SeparableSolver(A, shape).float()
    u32 = single(torch.from_numpy(f).float())
    assert u32.dtype == torch.float32
    assert float((u32.double() - u).abs().max() / u.abs().max()) < 1e-4


def test_separable_coarsest_solve_differentiates_and_refuses():
    A = anisotropic(0.1)
    solver = SeparableSolver(A, (5, 9))
    f = torch.rand(1, 1, 5, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solver, (f,))
    # Cyclic reduction (the path under autograd and off the CPU) gives the LAPACK solution.
    assert torch.allclose(solver(f).detach(), solver(f.detach()), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="A: the separable solve needs"):
        SeparableSolver(Stencil.laplacian(3), (3, 3, 9))
    with pytest.raises(ValueError, match="A: the separable solve needs"):
        SeparableSolver(Stencil(anisotropic(0.1).offsets, anisotropic(0.1).coefficient_arrays((5, 9))), (5, 9))
    # 4 - 2 cos(pi/6) - 2 cos(pi/4) is an eigenvalue of the 5 x 3 Laplacian: shifted by it, A is singular.
    shift = 4.0 - 2 * math.cos(math.pi / 6) - 2 * math.cos(math.pi / 4)
    singular = Stencil.from_kernel([[0.0, -1.0, 0.0], [-1.0, 4.0 - shift, -1.0], [0.0, -1.0, 0.0]])
    with pytest.raises(ValueError, match=r"A: the operator of the coarsest level .* is singular"):
        SeparableSolver(singular, (5, 3))


def test_auto_reports_its_choices_per_level():
    A = Stencil.laplacian(3, h=(1.0, 1.0, 10.0))  # z weak (eps = 0.01): semicoarsen x and y
    solver = MultigridSolver(A, grid=(31, 31, 31), smoother="auto", coarsening="auto", max_coarse=100)
    h = solver.hierarchy()
    assert [level.coarsened_axes for level in h.levels] == [(0, 1)] * 4 + [None]
    assert [level.grid_shape for level in h.levels] == [(31, 31, 31), (15, 15, 31), (7, 7, 31), (3, 3, 31),
                                                         (1, 1, 31)]
    lines = repr(h).splitlines()
    assert lines[1].endswith("coarsened") and lines[2].endswith("xy") and "auto:rbgs (1,2)" in lines[2]
    _, info = solver.solve(np.ones((31, 31, 31)))
    assert info.method == "V(1,2) levels 0-3 auto:rbgs coarsen xy"
    # In 2D with a weak y: zebra lines along x, and x coarsened alone while it stays the strong axis.
    solver = MultigridSolver(anisotropic(0.001), grid=(63, 63), smoother="auto", coarsening="auto")
    _, info = solver.solve(np.ones((63, 63)))
    assert info.method == "V(1,2) levels 0-1 auto:zebra-x coarsen x" and info.iterations <= 3
    h = solver.hierarchy()  # stored with x last (solver.axis_order); h.caller_shape names the caller's axes
    assert [h.caller_shape(level.grid_shape) for level in h.levels] == [(63, 63), (31, 63), (15, 63)]
    # The first thin grid that semicoarsening leaves (4:1, short side <= 256) is solved exactly by fast
    # diagonalisation when its stencil is constant and separable ...
    h = build_hierarchy(anisotropic(0.001), (255, 255), smoother="auto", coarsening="auto", max_coarse=500)
    assert [level.grid_shape for level in h.levels] == [(255, 255), (127, 255), (63, 255)]
    assert isinstance(h.coarse_solver, SeparableSolver) and "exact (fast diagonalisation)" in repr(h)
    _, info = MultigridSolver(anisotropic(0.001), grid=(255, 255), smoother="auto", coarsening="auto").solve(
        np.ones((255, 255)))
    assert info.method == "V(1,2) levels 0-1 auto:zebra-x coarsen x, exact 63 x 255 by fast diagonalisation"
    assert info.converged and info.iterations <= 3
    # ... and by dense LU otherwise (variable coefficients are not separable).
    variable = Stencil(anisotropic(0.001).offsets, anisotropic(0.001).coefficient_arrays((255, 255)))
    h = build_hierarchy(variable, (255, 255), smoother="auto", coarsening="auto", max_coarse=500)
    assert isinstance(h.coarse_solver, CoarseSolver) and "exact (sparse LU)" in repr(h)  # 63 x 127 unknowns: sparse
    # An isotropic coarse level on an elongated grid gets alternating zebra lines.
    assert auto_smoother(Stencil.laplacian(2), (7, 255), 1).name == "auto:zebra-xyyx"
    assert auto_smoother(Stencil.laplacian(2), (7, 255), 0).name == "auto:rbgs"


def test_strength_of_couplings():
    assert coupling_strengths(anisotropic(0.01, "y")) == (0.01, 1.0)
    assert choose(anisotropic(0.01, "y"), (15, 15)) == (("zebra-y", {}), (1,))
    # Bilinear elements (pyamg's diffusion_stencil_2d(0.001), diagonal couplings): lines, full coarsening.
    elements = Stencil.from_kernel(
        [[-1.001, -3.998, -1.001], [1.996, 8.008, 1.996], [-1.001, -3.998, -1.001]])
    assert choose(elements, (15, 15)) == (("zebra-x", {}), (0, 1))
    assert choose(anisotropic(0.01), (15, 15), coarsened=(1,)) == (("zebra-x", {}), (1,))
    assert choose(anisotropic(0.01), (15, 15), coarsened=(0,)) == (("rbgs", {}), (0,))
    rotated = rotated_anisotropic((7, 7), 0.1, math.pi / 6).A
    assert mixed_coupling(rotated) > 0.1 and mixed_coupling(anisotropic(0.1)) == 0.0
    assert choose(rotated, (7, 7))[0] == ("zebra-alternating", {"axes": (0, 1, 1, 0)})
    # Variable coefficients: an axis is weak only where it is weak everywhere.
    coefficients = anisotropic(0.01).coefficient_arrays((9, 9))
    coefficients[:, 4, 4] = torch.tensor([-1.0, -1.0, 4.0, -1.0, -1.0], dtype=torch.float64)
    assert coupling_strengths(Stencil(anisotropic(0.01).offsets, coefficients)) == (1.0, 1.0)


def test_coarsening_option_is_validated():
    with pytest.raises(ValueError, match="coarsening: expected one of 'full', 'auto'"):
        MultigridOptions(coarsening="diagonal")
    with pytest.raises(ValueError, match="coarsening: interpolation='operator' needs 'full'"):
        MultigridOptions(coarsening="auto", interpolation="operator")
    with pytest.raises(ValueError, match="coarsening: expected 'full', 'auto' or axis letters of a 2D grid"):
        build_hierarchy(Stencil.laplacian(2), (15, 15), coarsening="z")
    with pytest.raises(ValueError, match="axis: expected one of"):
        make_smoother(("zebra-alternating", {"axes": ("w",)}), Stencil.laplacian(2), (7, 7), 0)


# ---------------------------------------------------------------------------------------------- factors
def auto_factor(A: Stencil, grid, iterations: int = 20, vectors: int = 2, **options) -> float:
    h = build_hierarchy(A, grid, smoother="auto", coarsening="auto", presmooth=1, postsmooth=1, **options)
    return asymptotic_factor(h, iterations=iterations, vectors=vectors).factor


@pytest.mark.parametrize("strong", ["x", "y"])
@pytest.mark.parametrize("eps", [1.0, 0.1, 0.01, 0.001])
def test_auto_factor_on_anisotropic_problems(eps, strong):
    # Measured up to 1023^2 in benchmarks/results/anisotropic_factors_2026-11-22.md.
    assert max(auto_factor(anisotropic(eps, strong), (n, n)) for n in (63, 127)) <= 0.15


def test_auto_factor_does_not_grow_at_255():
    small, large = (auto_factor(anisotropic(0.001, "y"), (n, n), iterations=12, vectors=1) for n in (127, 255))
    assert large <= 0.15 and large - small <= 0.02


def test_auto_factor_on_rotated_anisotropy():
    A = rotated_anisotropic((127, 127), 0.1, math.pi / 6).A
    assert auto_factor(A, (127, 127), coarse_operator="galerkin") <= 0.2


@pytest.mark.parametrize("h", [(1.0, 1.0, 10.0), (1.0, 10.0, 10.0), (10.0, 1.0, 1.0)])
def test_auto_factor_in_3d(h):
    # eps = 0.01 on one axis (h = 10 there) and on two axes.
    assert auto_factor(Stencil.laplacian(3, h=h), (31, 31, 31), iterations=12, vectors=1) <= 0.2


# ---------------------------------------------------------------------------------------------- factored lines
def _variable(offsets, shape, seed, symmetric=True):
    """A diagonally dominant variable stencil (symmetric line parts unless ``symmetric=False``)."""
    generator = torch.Generator().manual_seed(seed)
    coefficients = -torch.rand((len(offsets), *shape), generator=generator, dtype=torch.float64)
    centre = offsets.index((0,) * len(shape))
    coefficients[centre] = 2.0 * len(offsets) + torch.rand(shape, generator=generator, dtype=torch.float64)
    A = Stencil(offsets, coefficients)
    return A.symmetrized() if symmetric else A


@pytest.mark.parametrize(
    ("shape", "axis", "points", "symmetric"),
    [((9, 8), 0, 5, True), ((9, 8), 1, 9, True), ((7, 6), 0, 5, False), ((5, 4, 6), 2, 7, True),
     ((5, 4, 6), 0, 27, False)],
)
def test_factored_line_solves_equal_the_unfactored_ones(shape, axis, points, symmetric):
    dim = len(shape)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=dim) if points == 3**dim or sum(map(abs, o)) <= 1]
    A = _variable(offsets, shape, seed=points + axis, symmetric=symmetric)
    classes = [q for q in itertools.product((0, 1), repeat=dim - 1)][:2]
    factored = LineSolve(A, axis, shape, classes)
    assert factored._factors is not None and all(f is not None for f in factored._factors)
    assert {f.kind for f in factored._factors} == {"pt" if symmetric else "gt"}
    r = torch.randn(3, 1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for method in ("cyclic_reduction", "thomas"):
        expected = LineSolve(A, axis, shape, classes, method=method)(r)
        assert float((factored(r) - expected).abs().max()) < 1e-13 * float(expected.abs().max())
    # The zebra step forming its residual on its own lines, against the plain residual-correction block.
    u, f = torch.randn_like(r), torch.randn_like(r)
    for k in range(len(classes)):
        B = LineSolve(A, axis, shape, [classes[k]])
        # Lines along the last axis take the shared block's sub-lattice path (the residual on their lines only).
        assert (B.lattices is not None) == (axis == dim - 1)
        plain = u + B(A.residual(u, f))  # the whole-grid step, u + B (f - A u)
        line = ResidualCorrection(A, B)
        u_before = u.clone()
        assert float((line(u, f) - plain).abs().max()) < 1e-13 * float(plain.abs().max())
        assert torch.equal(u, u_before)  # not in place unless asked
        workspace = torch.empty_like(f)
        assert float((line(None, f, workspace=workspace) - B(f)).abs().max()) < 1e-13


def test_factored_lines_follow_dtype_and_fall_back_under_autograd():
    A = anisotropic(0.01)
    B = LineSolve(A, 0, (15, 12), [(0,)])
    r = torch.randn(1, 1, 15, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = LineSolve(A, 0, (15, 12), [(0,)], method="cyclic_reduction")(r)
    B32 = copy.deepcopy(B).to(torch.float32)
    assert B32._factors[0].factors[0].dtype == np.float32
    assert float((B32(r.float()).double() - expected).abs().max()) < 1e-5 * float(expected.abs().max())
    leaf = r.clone().requires_grad_()
    y = B(leaf)  # autograd records: cyclic reduction, differentiable
    assert y.requires_grad and float((y.detach() - expected).abs().max()) < 1e-13
    S = line_gauss_seidel(A, (15, 12), axis="x")
    assert S.steps[0].B.method == "factored"
    # Mixed precision deep-copies the hierarchy and converts it: the factors follow.
    b = np.random.default_rng(0).standard_normal((31, 31))
    x, info = MultigridSolver(A, grid=(31, 31), smoother="zebra-x", cycle_dtype=torch.float32).solve(b, rtol=1e-10)
    x64, info64 = MultigridSolver(A, grid=(31, 31), smoother="zebra-x").solve(b, rtol=1e-10)
    assert info.converged and info64.converged and np.abs(x - x64).max() < 1e-8 * np.abs(x64).max()
    with pytest.raises(ValueError, match="method"):
        line_gauss_seidel(A, (15, 12), method="lu")


def test_factored_line_solves_on_tiny_grids():
    A = Stencil.laplacian(2)
    for shape in [(1, 1), (1, 2), (2, 1), (3, 1)]:
        for axis in (0, 1):
            r = torch.arange(1.0, 1.0 + math.prod(shape), dtype=torch.float64).reshape(1, 1, *shape)
            expected = LineSolve(A, axis, shape, [(0,)], method="cyclic_reduction")(r)
            assert torch.allclose(LineSolve(A, axis, shape, [(0,)])(r), expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------- stored axis order
def test_lines_across_the_last_axis_are_stored_last():
    # Strong along x (axis 0): the solver stores the grid transposed, so the lines run along the contiguous axis;
    # the caller sees no difference but the speed.
    grid = (65, 41)
    A = anisotropic(0.001)
    T = A.permute_axes((1, 0))  # the same problem, strong along y
    assert dict(zip(T.offsets, T.coefficients.tolist()))[(0, 1)] == -1.0
    b = np.random.default_rng(3).standard_normal(grid)
    x0 = np.random.default_rng(4).standard_normal(grid)
    kept = x0.copy()
    solver = MultigridSolver(A, grid=grid, smoother="auto", coarsening="auto", presmooth=1, postsmooth=1)
    assert solver.axis_order == (1, 0)
    shapes = []
    x, info = solver.solve(b, x0, rtol=1e-11, callback=lambda xk: shapes.append(xk.shape))
    np.testing.assert_array_equal(x0, kept)
    assert set(shapes) == {grid} and info.converged
    assert info.method == "V(1,1) levels 0-1 auto:zebra-x coarsen x"
    assert "65 x 41" in repr(solver) and "32 x 41" in repr(solver) and "auto:zebra-x (1,1)      x" in repr(solver)
    # The transposed problem solved as given runs the same cycles: the same iterate up to round-off.
    reference = MultigridSolver(T, grid=grid[::-1], smoother="auto", coarsening="auto", presmooth=1, postsmooth=1)
    assert reference.axis_order is None
    xt, info_t = reference.solve(b.T, x0.T, rtol=1e-11)
    assert info_t.iterations == info.iterations
    np.testing.assert_allclose(x, xt.T, rtol=0, atol=1e-13 * np.abs(x).max())
    assert np.linalg.norm(x - spsolve_reference(A, grid, b)) <= 1e-9 * np.linalg.norm(x)
    # A batch of right-hand sides as flat vectors, CG with the cycle, and FMG (semicoarsened levels).
    flat = np.stack([b.ravel(), x0.ravel()])
    xs, _ = solver.solve(flat, rtol=1e-11)
    np.testing.assert_allclose(xs[0].reshape(grid), x, atol=1e-9 * np.abs(x).max())
    xc, status = spla.cg(A.to_sparse(grid), b.ravel(), M=solver.aspreconditioner(), rtol=1e-11)
    assert status == 0 and np.linalg.norm(xc.reshape(grid) - x) <= 1e-8 * np.linalg.norm(x)
    assert np.linalg.norm(b - (A.to_sparse(grid) @ solver.fmg(b).ravel()).reshape(grid)) <= 1e-3 * np.linalg.norm(b)
    # Isotropic, already last, or a smoother named by the caller: stored as given.
    assert MultigridSolver(Stencil.laplacian(2), grid=grid, smoother="auto").axis_order is None
    assert MultigridSolver(A, grid=grid, smoother="zebra-x").axis_order is None


def test_stored_axis_order_in_3d_and_for_variable_coefficients():
    grid = (13, 7, 9)
    A = Stencil.laplacian(3, h=(0.1, 1.0, 1.0))  # strong along x
    solver = MultigridSolver(A, grid=grid, smoother="auto", coarsening="auto", max_coarse=50)
    assert solver.axis_order == (1, 2, 0)
    b = np.random.default_rng(5).standard_normal(grid)
    x, info = solver.solve(b, rtol=1e-10)
    assert info.converged and info.method.startswith("V(1,2) auto:zebra-x")
    assert np.linalg.norm(x - spsolve_reference(A, grid, b)) <= 1e-8 * np.linalg.norm(x)
    # Variable coefficients permute with the grid: the matrix is the same up to the renumbering.
    coefficients = A.coefficient_arrays(grid) * torch.from_numpy(
        np.random.default_rng(6).uniform(1.0, 2.0, grid))
    V = Stencil(A.offsets, coefficients)
    P = V.permute_axes((1, 2, 0))
    number = np.arange(math.prod(grid)).reshape(grid).transpose(1, 2, 0).ravel()
    M, N = V.to_sparse(grid), P.to_sparse(tuple(grid[a] for a in (1, 2, 0)))
    assert abs(M[number][:, number] - N).max() == 0
    x, info = MultigridSolver(V, grid=grid, smoother="auto", max_coarse=50).solve(b, rtol=1e-10)
    assert np.linalg.norm(x - spsolve_reference(V, grid, b)) <= 1e-8 * np.linalg.norm(x)
    with pytest.raises(ValueError, match=r"order: expected a permutation of 0\.\.2"):
        A.permute_axes((0, 0, 1))


FACES = [
    "periodic",  # lines along and across periodic axes
    ("periodic", "dirichlet"),  # cyclic lines along x only
    ("dirichlet", "periodic"),  # lines across the periodic axis only
    "neumann",  # the box scheme: face rows halved, mirrored neighbours folded in
    (("neumann", "dirichlet"), "periodic"),
]


def _line_blocks(A: Stencil, grid, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The dense matrix of ``A`` and, per point, the index of its line along ``axis``."""
    M = A.to_sparse(grid).toarray()
    index = np.indices(grid).reshape(len(grid), -1)
    others = [a for a in range(len(grid)) if a != axis]
    line = np.ravel_multi_index(index[others], [grid[a] for a in others])
    return M, line


@pytest.mark.parametrize("bc", FACES)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("method", ["factored", "cyclic_reduction", "thomas"])
@pytest.mark.parametrize("variable", [False, True])
def test_zebra_lines_on_periodic_and_neumann_faces_are_exact_line_solves(bc, axis, method, variable):
    """Each colour's B is ``E (E^T A E)^{-1} E^T`` of the matrix itself: periodic lines are cyclic systems
    (Sherman-Morrison), the box scheme's lines hold its halved face rows."""
    grid = (8, 6)
    p = anisotropic_problem(grid, 0.3, bc=bc, solution=None)
    A = p.A
    if variable:  # the same operator held as per-point coefficients (plus a smooth variation)
        coefficients = A.coefficient_arrays(grid) * torch.linspace(1.0, 1.5, grid[0], dtype=torch.float64)[:, None]
        A = Stencil(A.offsets, coefficients, boundary=[("periodic",) * 2 if q else ("dirichlet",) * 2
                                                       for q in A.periodic])
    M = A.to_sparse(grid).toarray()
    r = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 1, *grid)))
    for parity in (0, 1):
        B = LineSolve(A, axis, grid, [(parity,)], method=method)
        chosen = np.zeros(grid, dtype=bool)
        chosen[tuple(slice(None) if a == axis else slice(parity, None, 2) for a in range(2))] = True
        chosen = chosen.reshape(-1)
        expected = np.zeros((2, M.shape[0]))
        block = M[np.ix_(chosen, chosen)]
        expected[:, chosen] = np.linalg.solve(block, r.reshape(2, -1).numpy()[:, chosen].T).T
        assert np.abs(B(r).reshape(2, -1).numpy() - expected).max() <= 1e-12 * np.abs(expected).max()
        y = torch.zeros_like(r)
        B.accumulate_(y, r)
        assert np.abs(y.reshape(2, -1).numpy() - expected).max() <= 1e-12 * np.abs(expected).max()


@pytest.mark.parametrize("bc", FACES)
@pytest.mark.parametrize("backward", [False, True])
def test_lexicographic_lines_on_periodic_and_neumann_faces(bc, backward):
    """``B = (D + L)^{-1}``: ``D`` the lines' blocks (cyclic on a periodic line axis), ``L`` the couplings to the
    line before in the sweep (none for the first line: the sweep axis does not wrap)."""
    grid = (7, 6) if bc == "neumann" else (8, 6)
    A = anisotropic_problem(grid, 0.3, bc=bc, solution=None).A
    M, line = _line_blocks(A, grid, 0)
    before = line[:, None] + (1 if backward else -1) == line[None, :]
    lower_part = np.where((line[:, None] == line[None, :]) | before, M, 0.0)
    r = np.random.default_rng(2).standard_normal(M.shape[0])
    expected = np.linalg.solve(lower_part, r)
    B = line_gauss_seidel(A, grid, axis=0, order="lexicographic", symmetric=True).steps[int(backward)].B
    got = B(torch.from_numpy(r).reshape(1, 1, *grid)).reshape(-1).numpy()
    assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()


@pytest.mark.parametrize("bc, shape", [("periodic", (64, 64)), (("periodic", "dirichlet"), (64, 63)),
                                       (("dirichlet", "periodic"), (63, 64)), ("neumann", (63, 63)),
                                       (("neumann", "dirichlet"), (63, 63))])
@pytest.mark.parametrize("strong", ["x", "y"])
def test_auto_relaxes_lines_on_periodic_and_neumann_faces(bc, shape, strong):
    """Anisotropy with periodic or Neumann faces: these problems coarsen every axis, so ``auto`` relaxes zebra
    lines along the strong axis on every level.  Point relaxation, which auto took there before, left V(1,2)
    factors of 0.93 at eps = 0.01 (255^2: 100 cycles); lines give 0.04 (measured at 255^2)."""
    eps = 0.01
    p = anisotropic_problem(shape, eps if strong == "x" else 1 / eps, bc=bc, solution=None)
    b = np.random.default_rng(3).standard_normal(shape)
    if p.null_space is not None:
        b -= b.mean()
    x, info = solve(p.A, torch.from_numpy(b), rtol=1e-10, smoother="auto", max_coarse=50)
    assert f"zebra-{strong}" in info.method and info.convergence_factor <= 0.08, (info.method, info.convergence_factor)
    A = p.A.to_sparse(shape)
    if p.null_space is not None:  # fix the constant the way solve does: zero mean
        z = np.ones((A.shape[0], 1))
        A = sp.bmat([[A, sp.csr_matrix(z)], [sp.csr_matrix(z.T), None]])
        reference = spla.spsolve(A.tocsc(), np.append(b.ravel(), 0.0))[:-1]
    else:
        reference = spla.spsolve(A.tocsc(), b.ravel())
    assert np.abs(x.numpy().ravel() - reference).max() <= 1e-9 * np.abs(reference).max()


def test_lines_refuse_an_odd_periodic_axis_and_auto_relaxes_points_there():
    """Zebra colours alternate around a periodic axis: an odd number of points there would couple two lines of
    one colour.  ``auto`` then takes point relaxation."""
    p = anisotropic_problem((9, 8), 0.01, bc="periodic", solution=None)
    assert line_relaxable(p.A, (8, 8)) and not line_relaxable(p.A, (9, 8))
    with pytest.raises(ValueError, match=r"^grid_shape: line relaxation needs an even number of points"):
        make_smoother("zebra-y", p.A, (9, 8), 0)
    assert choose(p.A, (9, 8), (0, 1))[0] == ("rbgs", {})
    assert choose(p.A, (8, 8), (0, 1))[0] == ("zebra-x", {})


@pytest.mark.parametrize("bc", [("periodic", "dirichlet", "periodic"), "neumann"])
def test_3d_zebra_lines_on_periodic_and_neumann_faces_are_exact_line_solves(bc):
    """3D: each colour (a checkerboard of lines along z) solves its lines exactly, cyclic along a periodic z."""
    base = Stencil.laplacian(3, h=(10.0, 10.0, 1.0))
    A = Stencil(base.offsets, base.coefficients, boundary=bc)
    grid = (4, 5, 6) if bc != "neumann" else (3, 5, 4)
    M = A.to_sparse(grid).toarray()
    r = np.random.default_rng(4).standard_normal(M.shape[0])
    x_index, y_index, _ = np.indices(grid).reshape(3, -1)
    steps = line_gauss_seidel(A, grid, axis=2).steps
    for colour, step in enumerate(steps):
        chosen = (x_index + y_index) % 2 == colour
        expected = np.zeros_like(r)
        expected[chosen] = np.linalg.solve(M[np.ix_(chosen, chosen)], r[chosen])
        got = step.B(torch.from_numpy(r).reshape(1, 1, *grid)).reshape(-1).numpy()
        assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()


def test_auto_on_a_level_where_nothing_couples_relaxes_points():
    """A stencil with no coupling (a coarse level of decoupled points, met on a masked anisotropic grid): no axis is
    strong, so there is no line to relax; auto picked alternating lines along no axis and the set-up failed."""
    A = Stencil.from_kernel([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert choose(A, (9, 9)) == (("rbgs", {}), (0, 1))
    assert choose(A, (9, 9), (0, 1)) == (("rbgs", {}), (0, 1))
    x, info = solve(A, torch.ones(9, 9, dtype=torch.float64), smoother="auto", max_coarse=4)
    assert info.converged and float((x - 0.5).abs().max()) == 0.0


def _ellipse(shape, radius: float) -> np.ndarray:
    X, Y = np.meshgrid(*[(np.arange(n) + 1) / (n + 1) for n in shape], indexing="ij")
    return (X - 0.5) ** 2 + (Y - 0.5) ** 2 < radius**2


@pytest.mark.parametrize(
    "shape, eps, bc, radius, mask_bc, smoother",
    [
        ((31, 11), 1 / 0.0431, [("neumann", "dirichlet"), "dirichlet"], 0.25378508766469077, "neumann",
         "line-y-symmetric"),
        ((5, 38), 0.352, ["dirichlet", "neumann"], 0.3418319657469747, "dirichlet", "auto"),
    ],
)
def test_singular_line_blocks_of_thin_masked_levels_are_relaxed_by_points(shape, eps, bc, radius, mask_bc, smoother):
    """Galerkin levels of thin masked domains hold line blocks such as [[a, a], [a, a]] (two coarse points reaching
    the same fine cells): the line solve divided by zero and the first cycle returned NaN.  Those lines are
    relaxed point by point; found by a random search of anisotropic masked problems."""
    p = anisotropic_problem(shape, eps, bc=bc, mask=_ellipse(shape, radius), mask_bc=mask_bc, solution=None)
    b = np.random.default_rng(0).standard_normal(shape)
    z = None if p.null_space is None else p.null_space.numpy()
    if z is not None:  # the Neumann-edged ellipse: compatible b, and the reference bordered by the null vector
        b -= z * (b * z).sum() / z.sum()
    solver = MultigridSolver(p.A, grid=shape, smoother=smoother, max_coarse=10)
    levels = solver.hierarchy(torch.float64).levels[:-1]
    relaxed = [getattr(step.B, "point_lines", 0) for level in levels for step in level.smoother.steps]
    assert sum(relaxed) > 0
    x, info = solver.solve(torch.from_numpy(b), rtol=1e-10)
    assert info.converged and info.iterations <= 10
    A = p.to_sparse()
    if z is None:
        reference = spla.spsolve(A.tocsc(), b.ravel()).reshape(shape)
    else:
        bordered = sp.bmat([[A, sp.csr_matrix(z.reshape(-1, 1))], [sp.csr_matrix(z.reshape(1, -1)), None]])
        reference = spla.spsolve(bordered.tocsc(), np.append(b.ravel(), 0.0))[:-1].reshape(shape)
    assert np.abs(x.numpy() - reference).max() <= 1e-8 * np.abs(reference).max()


def test_relax_singular_lines_keeps_regular_lines_and_finds_cyclic_ones():
    from mgcore.line import relax_singular_lines

    # A ring of 4 points coupled only around it (a periodic 1D Laplacian): singular as a cyclic line.
    ring = tuple(c * torch.ones(4, dtype=torch.float64) for c in (-1.0, 2.0, -1.0))
    assert relax_singular_lines(*ring, cyclic=True)[1] == 1
    ring[0][0] = ring[2][-1] = 0.0  # the same line, not cyclic: the 1D Dirichlet-Neumann chain is regular
    ring[1][0] = 1.0
    assert relax_singular_lines(*ring)[1] == 0
    lower, diagonal, upper, _ = random_tridiagonal((3, 2), 9)
    parts, count = relax_singular_lines(lower, diagonal, upper)
    assert count == 0 and parts[0] is lower and parts[2] is upper


def test_strengths_are_read_where_the_mask_cut_no_coupling():
    """A masked domain one cell wide along the strong axis somewhere: those cells keep their weak couplings
    only, which made the weak axis count as strong (auto took point relaxation: 176 cycles).  Points next to a
    decoupled row are left out of the strengths; found by a random search."""
    shape = (11, 22)
    p = anisotropic_problem(shape, 0.0118, bc=[("dirichlet", "neumann"), "periodic"], mask=_ellipse(shape, 0.3338),
                            mask_bc="neumann", solution=None)
    assert coupling_strengths(p.A)[1] < 0.1
    b = np.random.default_rng(0).standard_normal(shape)
    if p.null_space is not None:
        z = p.null_space.numpy()
        b -= z * (b * z).sum() / z.sum()
    _, info = solve(p.A, torch.from_numpy(b), rtol=1e-10, smoother="auto", max_coarse=50)
    assert "zebra-x" in info.method and info.iterations <= 8, (info.method, info.iterations)
