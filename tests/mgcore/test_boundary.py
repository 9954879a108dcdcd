"""Multigrid on Neumann, periodic, mixed, masked and screened operators: agreement with spsolve, singular
systems, measured V(2,1) red-black Gauss-Seidel factors, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import mgcore
from mgcore.boundary import BoundaryProlongation, BoundaryRestriction
from pde import poisson


def _reference(p, b: np.ndarray) -> np.ndarray:
    """spsolve; for a singular matrix the bordered system fixes the component along the null vector to 0."""
    A = p.to_sparse()
    if p.null_space is None:
        return spla.spsolve(A.tocsc(), b.ravel()).reshape(b.shape)
    z = p.null_space.numpy().reshape(-1, 1)
    bordered = sp.bmat([[A, sp.csr_matrix(z)], [sp.csr_matrix(z.T), None]]).tocsc()
    return spla.spsolve(bordered, np.append(b.ravel(), 0.0))[:-1].reshape(b.shape)


def _rhs(p, seed: int) -> np.ndarray:
    b = np.random.default_rng(seed).standard_normal(p.grid_shape)
    if p.null_space is not None:
        z = p.null_space.numpy()
        b = b - z * (b * z).sum() / z.sum()
    return b


def _disk(n: int) -> np.ndarray:
    x = (np.arange(n) + 1) / (n + 1)
    X, Y = np.meshgrid(x, x, indexing="ij")
    return (X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.4**2


CASES = [
    ((33, 33), "neumann", None),
    ((32, 20), "periodic", None),
    ((32, 21), ("periodic", ("neumann", "dirichlet")), None),
    ((21, 34), (("dirichlet", "neumann"), ("neumann", "neumann")), None),
    ((31, 31), "dirichlet", "disk"),
    ((31, 31), "neumann", "screen"),
    ((12, 9, 10), "neumann", None),
    ((8, 16, 8), ("periodic", ("neumann", "dirichlet"), "periodic"), None),
]


@pytest.mark.parametrize("shape, bc, extra", CASES)
def test_solution_agrees_with_spsolve(shape, bc, extra):
    kwargs = {}
    if extra == "disk":
        kwargs["mask"] = _disk(shape[0])
    elif extra == "screen":
        kwargs["screen"] = np.linspace(0.0, 50.0, shape[0] * shape[1]).reshape(shape)
    p = poisson(shape, bc=bc, solution=None, **kwargs)
    b = _rhs(p, 5)
    b_before = b.copy()
    x, info = mgcore.solve(p.A, b, rtol=1e-13, maxiter=60, max_coarse=8)
    np.testing.assert_array_equal(b, b_before)  # nothing mutated
    assert info.converged and info.iterations <= 20, info.reason
    reference = _reference(p, b)
    assert np.linalg.norm(x - reference) <= 1e-10 * np.linalg.norm(reference)
    # PCG with the symmetric V(1,1) cycle reaches the same solution.
    x_cg, info_cg = mgcore.solve(p.A, b, rtol=1e-13, accel="cg", presmooth=1, postsmooth=1, max_coarse=8)
    assert info_cg.converged and np.linalg.norm(x_cg - reference) <= 1e-10 * np.linalg.norm(reference)


def test_float32_and_batched():
    p = poisson((32, 32), bc="periodic", solution=None)
    b = np.stack([_rhs(p, s) for s in range(3)])
    x, info = mgcore.solve(p.A.to(torch.float32), torch.from_numpy(b).float(), rtol=1e-6)
    assert info.converged.all()
    reference = np.stack([_reference(p, bi) for bi in b])
    assert np.linalg.norm(x.double().numpy() - reference) <= 1e-5 * np.linalg.norm(reference)


def test_singular_compatibility():
    p = poisson((32, 32), bc="neumann", solution=None)
    b = _rhs(p, 1) + 0.25
    before = b.copy()
    with pytest.raises(ValueError, match="b: incompatible with the singular operator"):
        mgcore.solve(p.A, b)
    np.testing.assert_array_equal(b, before)
    x, info = mgcore.solve(p.A, b, singular="project", rtol=1e-12)
    np.testing.assert_array_equal(b, before)
    assert info.converged and info.extra["removed_component"] == pytest.approx(0.25, abs=1e-12)
    assert abs(x.mean()) < 1e-12
    # The iterate stays zero-mean from a shifted initial guess too.
    x0 = np.full((32, 32), 3.0)
    x1, _ = mgcore.solve(p.A, b - b.mean(), x0, rtol=1e-12)
    assert abs(x1.mean()) < 1e-12 and np.abs(x1 - x).max() < 1e-9
    with pytest.raises(ValueError, match="singular"):
        mgcore.solve(p.A, b, singular="ignore")


def test_a_neumann_edged_disk_in_a_dirichlet_box_is_found_singular():
    """The faces are Dirichlet but the disk does not reach them: with Neumann conditions on its edge the operator
    annihilates the constant on the disk.  The solver finds that from the operator (not the face labels), refuses
    an incompatible ``b`` and solves the projected one as spsolve does."""
    p = poisson((63, 63), mask=_disk(63), mask_bc="neumann", solution=None)
    solver = mgcore.MultigridSolver(p.A, grid=p.grid_shape)
    assert torch.equal(solver.null_space(), p.null_space.to(torch.float64))
    b = _rhs(p, 2) + 0.5 * p.null_space.numpy()
    with pytest.raises(ValueError, match="b: incompatible with the singular operator"):
        solver.solve(b)
    x, info = solver.solve(b, singular="project", rtol=1e-12)
    assert info.converged and info.extra["removed_component"] == pytest.approx(0.5, abs=1e-12)
    expected = _reference(p, b - 0.5 * p.null_space.numpy())
    assert np.abs(x - expected).max() < 1e-10 * np.abs(expected).max()


@pytest.mark.parametrize("row", [3, 5])
def test_null_vector_sees_a_single_grounded_point_on_or_off_its_sample_planes(row):
    """Eight planes are tried first (row 5 is one of them at 31^2), then the whole grid (row 3 is not): a pure
    Neumann box screened at one point is not singular either way."""
    screen = np.zeros((31, 31))
    screen[row, 7] = 1.0
    p = poisson((31, 31), bc="neumann", screen=screen, solution=None)
    assert p.null_space is None and not p.A.is_constant
    # the planes see the grounded point when it lies on one of them, and only then
    on_planes = mgcore.boundary._nonzero_on_sample_planes(p.A, torch.ones(31, 31, dtype=torch.bool), (31, 31), 1e-9)
    assert on_planes == (row == 5)
    assert mgcore.boundary.null_vector(p.A, (31, 31)) is None
    # without the screening (its centre as its neighbour's) the same variable stencil is singular
    coefficients = p.A.coefficients.clone()
    centre = p.A.offsets.index((0, 0))
    coefficients[centre, row, 7] = coefficients[centre, row, 8]
    unscreened = mgcore.Stencil(p.A.offsets, coefficients, boundary=p.A.faces)
    assert float(mgcore.boundary.null_vector(unscreened, (31, 31)).sum()) == 31 * 31


@pytest.mark.parametrize("share, rtol", [(3e-11, 1e-6), (3e-13, 1e-4)])
def test_a_weak_screening_is_not_called_singular(share, rtol):
    """``-Δ + c`` whose ``c`` is ``share`` of the diagonal (``c h^2 / 4``) is not singular (a singular operator
    leaves a rounding near 1e-15): neither the fine grid nor the coarsest of its two levels is treated as singular,
    and the solve takes any right-hand side and agrees with spsolve, both within what a condition number of
    ``1 / share`` allows.  Below :data:`~mgcore.boundary.NULL_TOL` the operator is singular."""
    h = poisson((33, 33), bc="neumann", solution=None).h
    weak = poisson((33, 33), bc="neumann", screen=share * 4 / h**2, solution=None)
    assert weak.null_space is None and mgcore.boundary.null_vector(weak.A, (33, 33)) is None
    solver = mgcore.MultigridSolver(weak.A, grid=(33, 33))
    b = np.random.default_rng(1).standard_normal((33, 33))
    x, info = solver.solve(torch.from_numpy(b), rtol=rtol)
    assert not solver.hierarchy(torch.float64).coarse_solver.singular
    A = weak.to_sparse().tocsc()
    x = x.numpy().ravel()
    assert info.converged and np.linalg.norm(b.ravel() - A @ x) <= rtol * np.linalg.norm(b)
    expected = spla.spsolve(A, b.ravel())
    assert np.abs(x - expected).max() <= 1e-4 * np.abs(expected).max()
    vanishing = poisson((33, 33), bc="neumann", screen=1e-15 * 4 / h**2, solution=None)
    assert float(mgcore.boundary.null_vector(vanishing.A, (33, 33)).sum()) == 33 * 33
    assert mgcore.MultigridSolver(vanishing.A, grid=(33, 33)).hierarchy(torch.float64).coarse_solver.singular


def test_a_coarse_operator_that_p_makes_singular_takes_the_pseudo_inverse():
    """A 3D ball with Dirichlet conditions on its edge, Neumann and Dirichlet faces: two coarse points of its
    masked prolongation reach the same fine cells, so the Galerkin coarsest operator ``R A P`` is singular
    although ``A`` is not (its LU met an exact zero pivot, and the set-up was refused).  Its null space is
    ``P``'s, so the pseudo-inverse gives the correction any solution would: the solve agrees with spsolve."""
    shape = (9, 11, 12)
    axes = np.meshgrid(*((np.arange(n) + 0.5) / n for n in shape), indexing="ij")
    ball = sum((x - c) ** 2 for x, c in zip(axes, (0.599818, 0.647193, 0.437495))) < 0.438099**2
    faces = [("neumann", "neumann"), ("neumann", "dirichlet"), ("neumann", "dirichlet")]
    p = poisson(shape, bc=faces, mask=ball, solution=None)
    assert p.null_space is None and int(ball.sum()) == 404
    solver = mgcore.MultigridSolver(p.A, grid=shape)
    coarse = solver.hierarchy(torch.float64).coarse_solver
    assert coarse.name == "pseudo-inverse" and not coarse.singular
    b = _rhs(p, 3)
    x, info = solver.solve(torch.from_numpy(b), rtol=1e-12)
    expected = _reference(p, b)
    assert info.converged and np.abs(x.numpy() - expected).max() <= 1e-10 * np.abs(expected).max()
    # The caller's own singular operator is still refused (level 0: nothing else to blame).
    with pytest.raises(ValueError, match=r"^A: the operator of the coarsest level \(level 0"):
        mgcore.hierarchy.CoarseSolver(mgcore.Stencil(p.A.offsets, torch.zeros_like(p.A.coefficients)), shape)


def test_a_singular_coarse_operator_with_more_null_space_than_the_constant_takes_the_pseudo_inverse():
    """A 3D ball with Neumann conditions on its edge (singular: the constant on it), periodic in two axes: its
    Galerkin coarsest operator annihilates more than the constant (``P`` maps some coarse vector to zero), so the
    bordered matrix is singular as well.  Its LU solve was round-off blown up to 1e34, which left the cycle
    unsymmetric (CG stalled at 1e-2) and the stationary factor at 0.29; the pseudo-inverse gives a symmetric
    cycle, and the solves agree with spsolve."""
    shape = (12, 10, 10)
    axes = np.meshgrid(*((np.arange(n) + 0.5) / n for n in shape), indexing="ij")
    ball = sum((x - c) ** 2 for x, c in zip(axes, (0.649297, 0.433694, 0.46683))) < 0.292601**2
    p = poisson(shape, bc=[("dirichlet", "dirichlet"), "periodic", "periodic"], mask=ball, mask_bc="neumann",
                solution=None)
    assert p.null_space is not None and int(ball.sum()) == 126
    solver = mgcore.MultigridSolver(p.A, grid=shape, presmooth=1, postsmooth=1)
    hierarchy = solver.hierarchy(torch.float64)
    assert hierarchy.coarse_solver.name == "pseudo-inverse" and hierarchy.coarse_solver.singular
    z = p.null_space.numpy()
    u, v = (np.random.default_rng(seed).standard_normal(shape) for seed in (0, 1))
    u, v = (torch.from_numpy(w - z * (w * z).sum() / z.sum())[None, None] for w in (u, v))
    Mu, Mv = (mgcore.cycles.cycle(hierarchy, None, w, symmetric=True) for w in (u, v))
    assert float((v * Mu).sum()) == pytest.approx(float((u * Mv).sum()), rel=1e-12)  # a symmetric preconditioner
    b = _rhs(p, 4)
    expected = _reference(p, b)
    for accel in (None, "cg"):
        x, info = solver.solve(torch.from_numpy(b), rtol=1e-12, accel=accel)
        assert info.converged and info.iterations <= 12, accel
        assert np.abs(x.numpy() - expected).max() <= 1e-10 * np.abs(expected).max()


@pytest.mark.parametrize("n", [8, 9])
def test_transfers_keep_constants_and_are_adjoint(n):
    faces = (("periodic", "periodic"), ("neumann", "dirichlet"))
    mask = torch.from_numpy(np.random.default_rng(0).uniform(size=(12, n)) > 0.2)
    P = BoundaryProlongation(faces, (12, n), mask)
    R = BoundaryRestriction(P)
    # Axis 1: coarse points on fine 0, 2, 4, ... (the Neumann face point is one); axis 0: on 1, 3, ..., 11.
    assert P.coarse_shape == (6, (n + 1) // 2)
    ones = P(torch.ones(1, 1, *P.coarse_shape, dtype=torch.float64))[0, 0]
    # Constants are kept on the active points, except at a fine point between the last coarse point and the
    # Dirichlet face (axis 1, high side, even n), which interpolates the zero boundary value.
    expected = mask.double()
    if n % 2 == 0:
        expected[:, -1] *= 0.5
    assert torch.equal(ones, expected)
    c = torch.randn(1, 1, *P.coarse_shape, dtype=torch.float64)
    Pc = P(c)[0, 0]
    assert torch.equal(Pc[1::2, 0::2][:, : P.coarse_shape[1]], (c[0, 0] * mask[1::2, 0::2].double()))
    x = torch.randn(1, 1, 12, n, dtype=torch.float64)
    assert float((R(x) * c).sum()) == pytest.approx(float((x * P(c)).sum()) / 4, rel=1e-13)


def test_sparse_input_with_boundary():
    p = poisson((16, 12), bc=("periodic", "neumann"), solution=None)
    b = _rhs(p, 2)
    x, info = mgcore.solve(p.to_sparse(), b.ravel(), grid=(16, 12), boundary=("periodic", "neumann"), rtol=1e-12,
                           max_coarse=8)
    assert info.converged
    np.testing.assert_allclose(x.reshape(16, 12), _reference(p, b), atol=1e-9 * np.abs(x).max())
    with pytest.raises(ValueError, match="boundary: only for a sparse A"):
        mgcore.solve(p.A, b, boundary="neumann")


def test_bad_grids_rejected():
    periodic = poisson((33, 32), bc="periodic", solution=None)
    with pytest.raises(ValueError, match="grid: periodic axis 0 has 33 points"):
        mgcore.solve(periodic.A, _rhs(periodic, 0))
    with pytest.raises(ValueError, match="interpolation"):
        mgcore.MultigridSolver(poisson((32, 32), bc="periodic").A, interpolation="operator")


def _factor(p, **options) -> float:
    """The V(2,1) factor, the cycle of the published factor tables (the default cycle is V(1,2))."""
    b = _rhs(p, 1)
    options = {"presmooth": 2, "postsmooth": 1, **options}
    _, info = mgcore.solve(p.A, b, rtol=1e-10, maxiter=40, singular="project", **options)
    assert info.converged
    return info.convergence_factor


def test_factors_255():
    """V(2,1) rbgs factors at 255^2 (random right-hand side); the 1023^2 and 2047^2 numbers are in
    benchmarks/results/boundaries_factors.md."""
    dirichlet = _factor(poisson((255, 255), solution=None))
    neumann = _factor(poisson((255, 255), bc="neumann", solution=None))
    periodic = _factor(poisson((256, 256), bc="periodic", solution=None))
    assert neumann <= dirichlet + 0.02 and periodic <= dirichlet + 0.02, (dirichlet, neumann, periodic)
    # 257 points between two Neumann faces (h = 1/256, as Dirichlet 255^2) nest exactly: the face points stay
    # coarse points on every level.  The constant box stencil is then rediscretised, as Dirichlet is (measured
    # 0.065 against 0.064), and its Galerkin operators (coarse_operator="galerkin", constant 9-point stencils)
    # beat rediscretised Dirichlet (0.0255).
    nested = poisson((257, 257), bc="neumann", solution=None)
    assert _factor(nested) <= dirichlet + 0.02
    assert _factor(nested, coarse_operator="galerkin") <= 0.035
    x = (np.arange(255) + 1) / 256
    X, Y = np.meshgrid(x, x, indexing="ij")
    lshape = ~((X > 0.5) & (Y > 0.5))
    holes = np.ones_like(lshape)
    for i in range(4):
        for j in range(4):
            holes &= (X - (i + 0.5) / 4) ** 2 + (Y - (j + 0.5) / 4) ** 2 > 0.07**2
    for mask in (_disk(255), lshape, holes):
        assert _factor(poisson((255, 255), mask=mask, solution=None)) <= 0.15


def _holes(n: int) -> np.ndarray:
    x = (np.arange(n) + 1) / (n + 1)
    X, Y = np.meshgrid(x, x, indexing="ij")
    holes = np.ones((n, n), dtype=bool)
    for i in range(4):
        for j in range(4):
            holes &= (X - (i + 0.5) / 4) ** 2 + (Y - (j + 0.5) / 4) ** 2 > 0.07**2
    return holes


def test_boundary_band_keeps_the_masked_factor_from_growing():
    # Measured (benchmarks/results/boundaries_factors_2026-11-23.md): 16 holes, 255^2 -> 1023^2 -> 2047^2,
    # 0.032 -> 0.042 -> 0.056 without the band sweep, 0.032 -> 0.033 -> 0.034 with it.
    factors = [_factor(poisson((n, n), mask=_holes(n), solution=None)) for n in (127, 511)]
    assert max(factors) <= 0.04 and factors[1] - factors[0] <= 0.005, factors
    solver = mgcore.MultigridSolver(poisson((127, 127), mask=_holes(127), solution=None).A, grid=(127, 127))
    assert solver.hierarchy()[0].smoother.name == "rbgs+band"
    assert mgcore.MultigridSolver(poisson((127, 127), solution=None).A, grid=(127, 127)).hierarchy()[
        0].smoother.name == "rbgs"


def test_band_step_at_points_equals_the_whole_grid_step():
    from mgcore.blocks import residual_correction
    from mgcore.smoothers import DiagonalScaling, boundary_band

    for shape, bc in (((40, 33), "dirichlet"), ((16, 12, 10), ("periodic", "dirichlet", "dirichlet"))):
        mask = np.ones(shape, dtype=bool)
        mask[(slice(5, 9),) * len(shape)] = False
        A = poisson(shape, mask=mask, bc=bc, solution=None).A
        band = boundary_band(A, shape)
        assert band is not None and 0 < int(band.sum()) < band.numel() // 2
        generator = torch.Generator().manual_seed(len(shape))
        u = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
        f = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
        points = DiagonalScaling(A, 0.9, band.to(torch.float64), points=True)
        whole = DiagonalScaling(A, 0.9, band.to(torch.float64))
        assert points.points.numel() == int(band.sum()) and whole.points is None
        fast = residual_correction(A, points, u, f)
        expected = residual_correction(A, whole, u, f)
        assert torch.allclose(fast, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
        assert not torch.equal(fast, u)  # u itself untouched, the band updated
        g = u.clone().requires_grad_()  # under autograd: the whole-grid form, differentiable
        residual_correction(A, points, g, f).sum().backward()
        assert g.grad is not None


def test_factors_3d():
    dirichlet = _factor(poisson((31, 31, 31), solution=None))
    neumann = _factor(poisson((31, 31, 31), bc="neumann", solution=None))
    periodic = _factor(poisson((32, 32, 32), bc="periodic", solution=None))
    assert neumann <= dirichlet + 0.03 and periodic <= dirichlet + 0.03, (dirichlet, neumann, periodic)


@pytest.mark.parametrize("case", ["neumann", "periodic", "mask"])
def test_separable_probes_give_the_probed_galerkin_operator_exactly(case):
    # boundary_galerkin prolongs its probes as outer products of 1D interpolations; a P that is not a
    # BoundaryProlongation takes the general path (P applied to each probe): the two must agree bit for bit.
    from mgcore.boundary import active_cells, boundary_galerkin

    n = 24
    if case == "mask":
        x = (np.arange(n - 1) + 1) / n
        X, Y = np.meshgrid(x, x, indexing="ij")
        problem = poisson((n - 1, n - 1), mask=(X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.4**2, solution=None)
    else:
        problem = poisson((n, n - 1) if case == "periodic" else (n - 1, n - 1),
                          bc=("periodic", "neumann") if case == "periodic" else "neumann", solution=None)
    A, shape = problem.A, problem.grid_shape
    P = BoundaryProlongation(A.faces, shape, active_cells(A, shape))
    R = BoundaryRestriction(P)

    class Opaque(torch.nn.Module):  # the same P, hidden from the separable path
        def forward(self, c, fine_shape=None, out=None):
            return P(c, fine_shape, out=out)

    fast = boundary_galerkin(A, shape, R, P)
    general = boundary_galerkin(A, shape, R, Opaque())
    assert fast.offsets == general.offsets
    assert torch.equal(fast.coefficients, general.coefficients)
    assert (P.active is not None) == (case == "mask")


# ------------------------------------------------------------------ constant stencils with Neumann faces
def _box_matrix(shape, faces, screen=0.0):
    """The box scheme as a Kronecker sum of 1D operators (pde/boundaries.py), assembled with scipy.sparse."""
    ones = []
    stiffness, mass = [], []
    for n, (low, high) in zip(shape, faces):
        T = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tolil()
        M = np.ones(n)
        if low == "periodic":
            T[0, n - 1] = T[n - 1, 0] = -1
        if low == "neumann":
            T[0, 0], T[0, 1], M[0] = 1, -1, 0.5
        if high == "neumann":
            T[n - 1, n - 1], T[n - 1, n - 2], M[n - 1] = 1, -1, 0.5
        stiffness.append(T.tocsr())
        mass.append(sp.diags(M))
        ones.append(sp.identity(n))
    total = screen * mass[0]
    for k in range(1, len(shape)):
        total = sp.kron(total, mass[k])
    for k in range(len(shape)):
        term = stiffness[k] if k == 0 else mass[0]
        for j in range(1, len(shape)):
            term = sp.kron(term, stiffness[k] if j == k else mass[j])
        total = total + term
    return total.tocsr()


@pytest.mark.parametrize(
    ("shape", "faces"),
    [
        ((5, 6), (("neumann", "neumann"), ("neumann", "dirichlet"))),
        ((6, 7), (("periodic", "periodic"), ("dirichlet", "neumann"))),
        ((4, 5, 3), (("neumann", "neumann"),) * 3),
    ],
)
def test_constant_neumann_stencil_is_the_box_scheme(shape, faces):
    dim = len(shape)
    kernel = np.zeros((3,) * dim)
    kernel[(1,) * dim] = 2 * dim + 0.5  # screening 0.5
    for axis in range(dim):
        for step in (0, 2):
            index = [1] * dim
            index[axis] = step
            kernel[tuple(index)] = -1
    A = mgcore.Stencil.from_kernel(kernel, boundary=faces)
    expected = _box_matrix(shape, faces, screen=0.5)
    assert abs(A.to_sparse(shape) - expected).max() < 1e-14
    assert A.is_symmetric() and abs(A.to_sparse(shape) - A.to_sparse(shape).T).max() == 0
    u = torch.rand(2, 1, *shape, dtype=torch.float64)
    f = torch.rand(2, 1, *shape, dtype=torch.float64)
    flat = A(u).reshape(2, -1).numpy()
    assert np.allclose(flat, (expected @ u.reshape(2, -1).numpy().T).T, rtol=0, atol=1e-13)
    residual = A.residual(u, f)
    assert torch.allclose(residual, f - A(u), rtol=0, atol=1e-13)
    diagonal = A.diagonal(shape).reshape(-1).numpy()
    assert np.array_equal(diagonal, expected.diagonal())
    # Every sub-lattice of a colour sweep sees the same half rows.
    for start in range(2):
        lattice = tuple((start if a == 0 else a % 2, 2) for a in range(dim))
        points = (..., *(slice(s, None, step) for s, step in lattice))
        assert torch.allclose(A.residual_on(u, f, lattice), residual[points], rtol=0, atol=1e-13)
    y = torch.zeros_like(u)
    assert torch.allclose(A.accumulate_(y, u), A(u), rtol=0, atol=0)
    with pytest.raises(ValueError, match="grid_shape: the diagonal"):
        A.diagonal()


def test_box_problems_give_constant_stencils_and_constant_galerkin_levels():
    assert poisson((9, 9), bc="neumann", solution=None).A.is_constant
    assert poisson((8, 8), bc="periodic", screen=2.0, solution=None).A.is_constant
    assert poisson((8, 9), bc=("periodic", ("neumann", "dirichlet")), solution=None).A.is_constant
    # Masks and variable coefficients keep their coefficient arrays.
    disk = np.ones((9, 9), dtype=bool)
    disk[0, 0] = False
    assert not poisson((9, 9), bc="neumann", mask=disk, solution=None).A.is_constant
    p = poisson((65, 65), bc="neumann", solution=None)
    h = mgcore.build_hierarchy(p.A, p.grid_shape)  # auto: rediscretised where the grid nests, as Dirichlet
    assert [level.coarse_operator for level in h.levels] == ["given"] + ["rediscretized"] * (len(h.levels) - 1)
    assert all(level.A.is_constant and len(level.A.offsets) == 5 for level in h.levels)
    h = mgcore.build_hierarchy(p.A, p.grid_shape, coarse_operator="galerkin")
    assert [level.coarse_operator for level in h.levels] == ["given"] + ["galerkin"] * (len(h.levels) - 1)
    assert all(level.A.is_constant and level.A.boundary == "neumann" for level in h.levels)
    # The rediscretised operator is the box scheme on the grid of spacing 2h (screening kept).
    screened = poisson((9, 9), bc="neumann", screen=3.0, solution=None)
    coarse = mgcore.build_hierarchy(screened.A, (9, 9), max_coarse=10)[1]
    expected = poisson((5, 5), bc="neumann", screen=3.0, solution=None).A
    assert abs(coarse.A.to_sparse((5, 5)) - expected.to_sparse()).max() < 1e-10
    # The constant Galerkin operator is the Galerkin operator computed entry by entry.
    from mgcore.boundary import active_cells, boundary_galerkin
    from mgcore.hierarchy import constant_galerkin

    for shape, bc in (((17, 17), "neumann"), ((16, 17), ("periodic", ("dirichlet", "dirichlet"))),
                      ((16, 18), ("periodic", ("neumann", "dirichlet")))):
        A = poisson(shape, bc=bc, solution=None).A
        P = BoundaryProlongation(A.faces, shape, active_cells(A, shape))
        exact = boundary_galerkin(A, shape, BoundaryRestriction(P), P)
        constant = constant_galerkin(A, shape)
        assert constant.is_constant and constant.faces == A.faces
        assert abs(constant.to_sparse(exact.grid_shape) - exact.to_sparse()).max() < 1e-10
    # Grids that do not nest up to the faces keep the entry-by-entry Galerkin operator.
    assert constant_galerkin(poisson((16, 16), bc="neumann", solution=None).A, (16, 16)) is None


@pytest.mark.parametrize(
    "shape, bc", [((65, 65), "neumann"), ((64, 64), "periodic"), ((65, 64), ("neumann", "periodic"))]
)
def test_fmg_carries_face_aware_levels_up_with_their_own_transfers(shape, bc):
    """Cubic interpolation places coarse point i on fine 2 i + 1 (Dirichlet faces); Neumann and periodic levels
    place them otherwise, so FMG uses their P (cubic crashed on a Neumann side of 2^k + 1 points)."""
    p = poisson(shape, bc=bc, solution=None)
    b = _rhs(p, 11)
    x = mgcore.MultigridSolver(p.A, grid=shape).fmg(b)
    A = p.to_sparse()
    assert np.linalg.norm(b.ravel() - A @ x.ravel()) < 0.1 * np.linalg.norm(b)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _boundary_problems(draw):
    """A random small problem of ``pde.poisson``: per-face conditions (periodic axes even), a ball mask with or
    without a hole and its condition, a constant or sparse per-cell screening."""
    dim = draw(st.sampled_from((2, 2, 3)))
    face = st.sampled_from(("dirichlet", "neumann"))
    faces, shape = [], []
    for _ in range(dim):
        periodic = draw(st.booleans()) and draw(st.booleans())
        faces.append("periodic" if periodic else (draw(face), draw(face)))
        n = draw(st.integers(9, 39) if dim == 2 else st.integers(9, 13))
        shape.append(n + n % 2 if periodic else n)
    shape = tuple(shape)
    options = {}
    if draw(st.booleans()):
        axes = np.meshgrid(*((np.arange(n) + 0.5) / n for n in shape), indexing="ij")
        centre = [draw(st.floats(0.3, 0.7)) for _ in range(dim)]
        radius = draw(st.floats(0.25, 0.5))
        squares = sum((x - c) ** 2 for x, c in zip(axes, centre))
        mask = squares < radius**2
        if draw(st.booleans()):
            mask &= squares > (radius / 3) ** 2
        options.update(mask=mask, mask_bc=draw(face))
    screening = draw(st.sampled_from((None, None, "constant", "cells")))
    if screening == "constant":
        options["screen"] = draw(st.floats(0.1, 50.0))
    elif screening == "cells":
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        options["screen"] = rng.uniform(0, 5, shape) * (rng.uniform(size=shape) < 0.3)
    return shape, faces, options


@given(case=_boundary_problems(), accel=st.sampled_from((None, None, "cg")), batch=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None, derandomize=True, database=None)
def test_random_boundary_problems_agree_with_spsolve(case, accel, batch, seed):
    """Random conditions, masks and screenings, 2D and 3D (a random search of this kind found the two coarse
    operators above and the stalls of mgcore.crop._free_faces): the solve agrees with spsolve in the cycles
    multigrid takes, or ``pde`` refuses the problem by name."""
    shape, faces, options = case
    if "mask" in options and int(options["mask"].sum()) < 4:
        return
    try:
        p = poisson(shape, bc=faces, solution=None, **options)
    except ValueError as error:  # e.g. a Neumann mask in several parts, each singular
        assert str(error).startswith(("mask:", "bc:", "grid:")), error
        return
    b = _rhs(p, seed)
    # max_coarse=20: these small grids get two or three levels (by default they would be one direct solve)
    cycle = {"presmooth": 1, "postsmooth": 1, "max_coarse": 20} if accel == "cg" else {"max_coarse": 20}
    rhs = np.stack([b, 2 * b]) if batch else b
    x, info = mgcore.solve(p.A, torch.from_numpy(rhs), grid=shape, rtol=1e-12, maxiter=200, accel=accel, **cycle)
    expected = _reference(p, b)
    x = x.numpy()
    for got in ([x[0], x[1] / 2] if batch else [x]):
        assert np.abs(got - expected).max() <= 1e-9 * np.abs(expected).max()
    # and in the cycles multigrid takes (a region whose coarse grids reached a Dirichlet face it does not
    # touch took 106 and more; mgcore.crop._free_faces)
    assert np.all(info.converged) and np.max(info.iterations) <= 30


@pytest.mark.parametrize(
    "shape, bc, faces",
    [
        ((65, 65), "neumann", (("neumann", "neumann"),) * 2),
        ((64, 64), "periodic", (("periodic", "periodic"),) * 2),
        ((65, 64), ("neumann", ("dirichlet", "neumann")), (("neumann", "neumann"), ("dirichlet", "neumann"))),
        ((12, 10, 12), [("dirichlet", "neumann"), "periodic", ("neumann", "neumann")],
         (("dirichlet", "neumann"), ("periodic", "periodic"), ("neumann", "neumann"))),
    ],
)
def test_a_sparse_matrix_without_labels_is_labelled_as_its_rows_say(shape, bc, faces):
    """A pyamg user passes the matrix alone: a coupling that wraps around an axis makes it periodic (it was
    refused), a face whose rows sum to zero Neumann (with Dirichlet labels the pure Neumann 65^2 matrix took 100
    cycles to 2.5e-5): the same faces and solution as the stencil of ``pde``."""
    p = poisson(shape, bc=bc, solution=None)
    solver = mgcore.MultigridSolver(p.to_sparse(), grid=shape)
    assert solver.A.faces == faces == p.A.faces
    b = _rhs(p, 7)
    x, info = solver.solve(b.ravel(), rtol=1e-10)
    assert info.converged and info.iterations <= 10
    expected = _reference(p, b)
    assert np.abs(x.reshape(shape) - expected).max() <= 1e-8 * np.abs(expected).max()
    # a Dirichlet matrix stays Dirichlet; a label given is taken as given
    assert mgcore.MultigridSolver(poisson((33, 33)).to_sparse(), grid=(33, 33)).A.boundary == "dirichlet"
    given = mgcore.MultigridSolver(p.to_sparse(), grid=shape, boundary=p.A.faces)
    assert given.A.faces == p.A.faces


def test_compiled_cycles_on_masked_domains_equal_eager_ones():
    """compile=True on masked domains: the graph keeps the boundary band's smoothing (formed before the trace;
    traced, its scales came out zero and the iterates differed by 1e-10 at rtol 1e-10), and a solver's graphs
    are its own (Dynamo refuses a code object's recompile_limit-th variant: here 1, so the second solver
    would fail)."""
    import torch._dynamo

    mask = _disk(31)
    with torch._dynamo.config.patch(recompile_limit=1):
        for bc in ("dirichlet", "neumann"):
            p = poisson((31, 31), bc=bc, mask=mask, solution=None)
            b = torch.from_numpy(_rhs(p, 5))
            eager, eager_info = mgcore.solve(p.A, b, rtol=1e-10, max_coarse=20)
            x, info = mgcore.solve(p.A, b, rtol=1e-10, max_coarse=20, compile=True)
            assert "band" in info.method and info.compile_seconds > 0
            assert info.iterations == eager_info.iterations
            assert float((x - eager).abs().max()) <= 1e-13 * float(eager.abs().max())


def _unscreened(p, mask: np.ndarray) -> mgcore.Stencil:
    """``p``'s operator less its screening of 1 on the mask: Neumann-edged parts that nothing grounds (pde refuses
    to build several such parts, each a singular problem of its own)."""
    A = p.A
    coefficients = A.coefficients.clone()
    coefficients[A.center_index] -= torch.from_numpy(mask.astype(np.float64))
    return mgcore.Stencil(A.offsets, coefficients, boundary=A.faces)


def _parts_reference(A, shape, parts: list[np.ndarray], b: np.ndarray) -> np.ndarray:
    """spsolve bordered by the parts' indicators: the solution with zero mean on each part."""
    Z = sp.csr_matrix(np.stack([part.ravel() for part in parts], 1).astype(np.float64))
    bordered = sp.bmat([[A.to_sparse(shape), Z], [Z.T, None]]).tocsc()
    return spla.spsolve(bordered, np.concatenate([b.ravel(), np.zeros(len(parts))]))[: b.size].reshape(shape)


@pytest.mark.parametrize("accel", [None, "cg"])
def test_parts_that_do_not_couple_each_have_their_constant_in_the_null_space(accel):
    """Two Neumann-edged squares and nothing grounding them: the null space holds each part's constant.  A
    ``b`` with zero mean overall but not on each part was cycled for maxiter without converging; now it is
    refused by name, projected on request (per part), and a compatible one agrees with spsolve."""
    shape = (47, 41)
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[3:20, 4:18] = True
    second[25:44, 20:39] = True
    mask = first | second
    A = _unscreened(poisson(shape, bc="neumann", mask=mask, mask_bc="neumann", screen=1.0, solution=None), mask)
    b = np.random.default_rng(0).standard_normal(shape) * mask
    b -= mask * b[mask].mean()  # compatible with the constant on both parts together only
    original = b.copy()
    with pytest.raises(ValueError, match=r"^b: incompatible .* form 2 parts .* pass singular='project'"):
        mgcore.solve(A, b, rtol=1e-10, accel=accel)
    x, info = mgcore.solve(A, b, rtol=1e-10, accel=accel, singular="project")
    assert np.array_equal(b, original) and info.converged and info.iterations <= 12
    compatible = b - first * b[first].mean() - second * b[second].mean()
    reference = _parts_reference(A, shape, [first, second], compatible)
    assert np.abs(x - reference).max() <= 1e-10 * np.abs(reference).max()
    assert abs(x[first].mean()) <= 1e-12 and abs(x[second].mean()) <= 1e-12
    x0 = np.ones(shape) * first
    y, info = mgcore.solve(A, compatible, x0=x0, rtol=1e-10, accel=accel)
    assert np.abs(y - reference).max() <= 1e-10 * np.abs(reference).max() and x0[first].min() == 1.0


def test_parts_join_across_periodic_faces():
    """A strip that wraps around a periodic axis is one part; ndimage alone labels it as two."""
    from mgcore.boundary import null_parts

    shape = (32, 24)
    wrapped, middle = np.zeros(shape, bool), np.zeros(shape, bool)
    wrapped[:5, 3:20] = wrapped[27:, 3:20] = True
    middle[12:20, 5:18] = True
    mask = wrapped | middle
    A = _unscreened(poisson(shape, bc=("periodic", "neumann"), mask=mask, mask_bc="neumann", screen=1.0,
                            solution=None), mask)
    labels, count = null_parts(A, shape, torch.from_numpy(mask))
    assert count == 2 and len(np.unique(labels.numpy()[wrapped])) == 1
    b = np.random.default_rng(1).standard_normal(shape) * mask
    b -= wrapped * b[wrapped].mean() + middle * b[middle].mean()
    x, info = mgcore.solve(A, b, rtol=1e-10)
    reference = _parts_reference(A, shape, [wrapped, middle], b)
    assert info.converged and np.abs(x - reference).max() <= 1e-10 * np.abs(reference).max()
    with pytest.raises(ValueError, match=r"^mask: the active points form 2 disconnected parts"):
        poisson(shape, bc=("periodic", "neumann"), mask=mask, mask_bc="neumann", solution=None)


def test_a_periodic_axis_that_stops_coarsening_early_leaves_a_sparse_coarsest_solve():
    """200 x 150 periodic stops coarsening at 100 x 75 (75 is odd): 7500 unknowns, beyond the dense LU's limit of
    4096, so the grid was refused; on the CPU SciPy's sparse LU of the bordered matrix takes it (1000^2 stops at
    125^2).  A grid too large for a dense LU refuses to densify (a GPU, torch.compile) by name."""
    from mgcore.hierarchy import DENSE_LU_POINTS

    p = poisson((200, 150), bc="periodic", solution=None)
    b = _rhs(p, 3)
    solver = mgcore.MultigridSolver(p.A, (200, 150))
    coarse = solver.hierarchy(torch.float64).coarse_solver
    assert coarse.name == "sparse LU" and coarse.bordered and coarse.grid_shape == (100, 75)
    x, info = solver.solve(torch.from_numpy(b), rtol=1e-12)
    reference = _reference(p, b)
    assert info.iterations <= 12 and np.abs(x.numpy() - reference).max() <= 1e-10 * np.abs(reference).max()
    large = mgcore.MultigridSolver(poisson((258, 258), bc="periodic", solution=None).A, (258, 258))
    coarse = large.hierarchy(torch.float64).coarse_solver
    assert math.prod(coarse.grid_shape) > DENSE_LU_POINTS
    with pytest.raises(ValueError, match=r"^grid: the coarsest grid \(129, 129\) has more than 16384 unknowns"):
        coarse.densify()
    with pytest.raises(ValueError, match=r"^grid: a periodic axis stops coarsening .* \(259, 259\)"):
        mgcore.MultigridSolver(poisson((518, 518), bc="periodic", solution=None).A, (518, 518))


@pytest.mark.parametrize("accel", [None, "cg"])
def test_a_part_nothing_grounds_beside_a_grounded_one_stops_a_b_without_solution(accel):
    """One part touches a Dirichlet face, the other (Neumann-edged) touches nothing: A is singular on the second
    only, which the null vector test (A 1 = 0 on every active point) does not see.  A b with a mean on the free
    part has no solution: the cycles ran to maxiter, diverged, or (CG) stopped at a round-off residual with the
    part's constant at 1e11; now the solve stops once the cycles are slow, saying why.  A b without that mean is
    solved."""
    shape = (40, 40)
    grounded, free = np.zeros(shape, bool), np.zeros(shape, bool)
    grounded[:12, 5:35] = True  # on the Dirichlet face x = 0
    free[20:36, 10:30] = True
    mask = grounded | free
    A = _unscreened(poisson(shape, mask=mask, mask_bc="neumann", screen=1.0, solution=None), mask)
    b = np.random.default_rng(2).standard_normal(shape) * mask
    x, info = mgcore.solve(A, b, rtol=1e-10, accel=accel)
    assert not info.converged and info.iterations <= 5
    assert info.reason.startswith("no solution: A is singular on 1 part(s)")
    b[free] -= b[free].mean()
    x, info = mgcore.solve(A, b, rtol=1e-10, accel=accel)
    assert info.converged
    x[free] -= x[free].mean()
    reference = _parts_reference(A, shape, [free], b)
    assert np.abs(x - reference).max() <= 1e-9 * np.abs(reference).max()


@pytest.mark.parametrize("shape", [(13, 14), (13, 29)])  # a dense and a sparse single-level LU
def test_a_single_level_operator_singular_on_a_free_part_is_refused(shape):
    """The same grounded and free parts on a grid that is its own coarsest: the LU met a pivot at round-off level
    (not exactly zero), and its solve, constants of 1e13 on the free part, was taken by CG for a solution (true
    relative residual 0.08-0.76).  A pivot at most null_tol of the largest is refused like a zero one."""
    grounded, free = np.zeros(shape, bool), np.zeros(shape, bool)
    grounded[:3, 2:-2] = True
    free[6:11, 3:-3] = True
    mask = grounded | free
    A = _unscreened(poisson(shape, mask=mask, mask_bc="neumann", screen=1.0, solution=None), mask)
    b = np.random.default_rng(4).standard_normal(shape) * mask
    with pytest.raises(ValueError, match=r"^A: the operator of the coarsest level \(level 0, .* is singular"):
        mgcore.solve(A, b, rtol=1e-10, accel="cg")
