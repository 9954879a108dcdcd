"""Masked problems cycled on the box around their active cells (mgcore.crop): the box's rule, the same
solution as spsolve, the whole grid's residuals in every report, and the cases that keep the whole grid."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from test_boundary import _reference  # spsolve, the null space fixed by a bordered system

import mgcore
import mgcore.crop
from mgcore.boundary import active_cells, boundary_coarse_shape
from mgcore.crop import find_active_box, nesting_depth
from pde import poisson


def _points(n: int) -> np.ndarray:
    return (np.arange(n) + 1) / (n + 1)


def _ellipse(shape, centre, radii) -> np.ndarray:
    axes = np.meshgrid(*(_points(n) for n in shape), indexing="ij")
    return sum(((x - c) / r) ** 2 for x, c, r in zip(axes, centre, radii)) < 1


MASKS = {
    "disk off centre": lambda: poisson((127, 127), mask=_ellipse((127, 127), (0.3, 0.6), (0.2, 0.2)), solution=None),
    "half disk on the x = 0 face": lambda: poisson(
        (127, 127), mask=_ellipse((127, 127), (0.0, 0.5), (0.4, 0.4)), solution=None
    ),
    "L inside": lambda: poisson(
        (127, 127),
        mask=_ellipse((127, 127), (0.5, 0.45), (0.3, 0.25)) & ~_ellipse((127, 127), (0.6, 0.5), (0.15, 0.1)),
        solution=None,
    ),
    "periodic x": lambda: poisson(
        (64, 95), bc=("periodic", "dirichlet"), mask=_ellipse((64, 95), (0.5, 0.3), (0.3, 0.2)), solution=None
    ),
    "Neumann edge": lambda: poisson(
        (127, 127), mask=_ellipse((127, 127), (0.4, 0.5), (0.25, 0.3)), mask_bc="neumann", solution=None
    ),
    "3D ball": lambda: poisson((33, 33, 33), mask=_ellipse((33,) * 3, (0.5, 0.45, 0.55), (0.3,) * 3), solution=None),
}


def _box(p):
    grid = tuple(p.grid_shape)
    return find_active_box(p.A, grid, depth=nesting_depth(p.A.faces, grid, max_coarse=1000, max_levels=30))


def _rhs(p, seed: int, batch: tuple[int, ...] = ()) -> np.ndarray:
    b = np.random.default_rng(seed).standard_normal((*batch, *p.grid_shape))
    if p.null_space is not None:
        z = p.null_space.numpy()
        axes = tuple(range(b.ndim - z.ndim, b.ndim))
        b = b - z * ((b * z).sum(axis=axes, keepdims=True) / z.sum())
    return b


def _diagonal(p) -> np.ndarray:
    return p.A.diagonal(p.grid_shape).reshape(p.grid_shape).numpy()


@pytest.mark.parametrize("name", sorted(MASKS))
def test_the_box_holds_the_active_cells_and_nests(name):
    p = MASKS[name]()
    grid = tuple(p.grid_shape)
    box = _box(p)
    assert box is not None and box.fraction < 0.5
    active = active_cells(p.A, grid).numpy()
    depth = nesting_depth(p.A.faces, grid, max_coarse=1000, max_levels=30)
    for axis, (span, n, faces, labels) in enumerate(zip(box.box, grid, p.A.faces, box.faces)):
        used = np.flatnonzero(active.any(axis=tuple(a for a in range(len(grid)) if a != axis)))
        if p.A.periodic[axis]:
            assert (span.start, span.stop) == (0, n) and labels == faces  # wraps around: kept whole
            continue
        sides = ((0, span.start > 0, used[0] - span.start), (1, span.stop < n, span.stop - 1 - used[-1]))
        for side, cut, edge in sides:
            # A cut face is labelled Neumann and lies among decoupled rows the stencil cannot reach across.
            assert labels[side] == ("neumann" if cut else faces[side])
            assert edge >= (p.A.radius if cut else 0)
        # Every coarse grid keeps the box's face points where its labels put them, down to the whole grid's depth.
        size = span.stop - span.start
        for _ in range(depth):
            coarse = boundary_coarse_shape((labels,), (size,))[0]
            first = 0 if labels[0] == "neumann" else 1
            last = first + 2 * (coarse - 1)
            assert last == (size - 1 if labels[1] == "neumann" else size - 2), (name, axis, size)
            size = coarse


@pytest.mark.parametrize("name", sorted(MASKS))
def test_the_box_solution_is_spsolves_and_the_rows_outside_are_b_over_a(name):
    p = MASKS[name]()
    b = _rhs(p, 1)
    solver = mgcore.MultigridSolver(p.A, grid=p.grid_shape)
    x, info = solver.solve(b, rtol=1e-12)
    expected = _reference(p, b)
    assert info.converged and "box of the active cells" in info.method
    assert np.abs(x - expected).max() <= 1e-10 * np.abs(expected).max()
    outside = np.ones(p.grid_shape, dtype=bool)
    outside[solver.active_box] = False
    assert np.array_equal(x[outside], b[outside] / _diagonal(p)[outside])
    assert solver.hierarchy()[0].grid_shape == tuple(s.stop - s.start for s in solver.active_box)


def test_the_reports_are_the_whole_grids():
    """Every residual in info and every callback iterate covers the whole grid, the start included; b and x0
    are left as they were."""
    p = MASKS["disk off centre"]()
    A = p.to_sparse()
    b = _rhs(p, 2)
    x0 = np.random.default_rng(3).standard_normal(p.grid_shape)
    kept = b.copy(), x0.copy()
    iterates = []
    x, info = mgcore.solve(p.A, b, x0, rtol=1e-10, callback=lambda xk: iterates.append(xk))
    assert np.array_equal(b, kept[0]) and np.array_equal(x0, kept[1])
    norms = [np.linalg.norm(b.ravel() - A @ v.ravel()) for v in [x0, *iterates]]
    assert len(norms) == len(info.residuals) == info.iterations + 1
    np.testing.assert_allclose(info.residuals, norms, rtol=1e-9)
    assert np.array_equal(iterates[-1], x)
    assert info.threshold == pytest.approx(1e-10 * np.linalg.norm(b), rel=1e-12)


def test_a_right_hand_side_that_stops_at_its_start_keeps_the_start_everywhere():
    p = MASKS["disk off centre"]()
    b = _rhs(p, 4, batch=(2,))
    x0 = np.random.default_rng(5).standard_normal(b.shape)
    b[0] = p.to_sparse().dot(x0[0].ravel()).reshape(p.grid_shape)  # x0[0] solves it already
    x, info = mgcore.solve(p.A, b, x0, rtol=1e-8)
    assert info.iterations.tolist()[0] == 0 and info.iterations[1] > 0
    assert np.array_equal(x[0], x0[0])
    assert np.abs(x[1] - _reference(p, b[1])).max() <= 1e-6 * np.abs(x[1]).max()


def test_a_singular_box_finds_its_null_vector_and_projects():
    p = MASKS["Neumann edge"]()
    solver = mgcore.MultigridSolver(p.A, grid=p.grid_shape)
    assert solver.active_box is not None
    assert torch.equal(solver.null_space(), p.null_space.to(torch.float64))
    b = _rhs(p, 6) + 0.25 * p.null_space.numpy()
    with pytest.raises(ValueError, match="b: incompatible with the singular operator"):
        solver.solve(b)
    x, info = solver.solve(b, singular="project", rtol=1e-12)
    assert info.extra["removed_component"] == pytest.approx(0.25, abs=1e-12)
    expected = _reference(p, b - 0.25 * p.null_space.numpy())
    assert np.abs(x - expected).max() <= 1e-10 * np.abs(expected).max()


def test_float32_cg_fmg_and_the_preconditioner_on_the_box():
    p = MASKS["L inside"]()
    A = p.to_sparse()
    b = _rhs(p, 7)
    diagonal = _diagonal(p)
    solver = mgcore.MultigridSolver(p.A, grid=p.grid_shape, presmooth=1, postsmooth=1)
    outside = np.ones(p.grid_shape, dtype=bool)
    outside[solver.active_box] = False
    # float32: the reported rounding of the result is its whole-grid residual.
    x32, info = solver.solve(b.astype(np.float32), rtol=1e-10)
    rounded = np.linalg.norm(b.astype(np.float32).astype(np.float64).ravel() - A @ x32.astype(np.float64).ravel())
    relative = rounded / np.linalg.norm(b.astype(np.float32).astype(np.float64))
    assert info.extra["rounded_relative_residual"] == pytest.approx(relative, rel=1e-6)
    # CG preconditioned by the box's cycle.
    x, info = solver.solve(b, accel="cg", rtol=1e-12)
    assert info.converged and np.abs(x - _reference(p, b)).max() <= 1e-9 * np.abs(x).max()
    # FMG and the SciPy preconditioner solve the rows outside exactly, as a whole-grid cycle's smoothing does.
    x_fmg = solver.fmg(b)
    assert np.array_equal(x_fmg[outside], b[outside] / diagonal[outside])
    assert np.linalg.norm(b.ravel() - A @ x_fmg.ravel()) < 0.1 * np.linalg.norm(b)
    M = solver.aspreconditioner()
    z = M @ b.ravel()
    np.testing.assert_array_equal(z.reshape(b.shape)[outside], b[outside] / diagonal[outside])
    x_cg, status = spla.cg(A, b.ravel(), M=M, rtol=1e-10)
    assert status == 0 and np.linalg.norm(b.ravel() - A @ x_cg) <= 1e-10 * np.linalg.norm(b)


def test_the_box_converges_as_the_whole_grid(monkeypatch):
    """The cut faces labelled Neumann keep the coarse spaces: the same cycle count, a factor within 0.01 of the
    whole grid's (measured at 255^2: 0.023 on the grid, 0.027 on the box)."""
    mask = _ellipse((255, 255), (0.5, 0.5), (0.3, 0.35))
    p = poisson((255, 255), mask=mask, solution=None)
    b = _rhs(p, 8)
    x_box, on_box = mgcore.solve(p.A, b)
    monkeypatch.setattr(mgcore.crop, "SMALL_GRID_MAX_FRACTION", 0.0)
    p = poisson((255, 255), mask=mask, solution=None)  # a fresh stencil: the box is kept on the last one
    x_grid, on_grid = mgcore.solve(p.A, b)
    assert "box" in on_box.method and "box" not in on_grid.method
    assert on_box.iterations == on_grid.iterations
    assert abs(on_box.convergence_factor - on_grid.convergence_factor) <= 0.01
    assert np.abs(x_box - x_grid).max() <= 1e-6 * np.abs(x_grid).max()


def test_the_box_keeps_the_callers_axes_when_lines_are_stored_last():
    """``smoother="auto"`` stores the grid with its line axis last; the box is found there and reported in the
    caller's axes."""
    mask = _ellipse((63, 63), (0.45, 0.55), (0.3, 0.3))
    A = poisson((63, 63), mask=mask, solution=None).A
    weak_y = torch.tensor([1.0 if o[1] == 0 else 0.01 for o in A.offsets], dtype=torch.float64)
    strong_x = mgcore.Stencil(A.offsets, A.coefficients * weak_y.reshape(-1, 1, 1))
    solver = mgcore.MultigridSolver(strong_x, grid=(63, 63), smoother="auto")
    assert solver.axis_order == (1, 0)
    rows, columns = np.nonzero(mask)
    box = solver.active_box
    assert box[0].start < rows.min() and rows.max() < box[0].stop - 1
    assert box[1].start < columns.min() and columns.max() < box[1].stop - 1
    b = np.random.default_rng(9).standard_normal((63, 63))
    x, info = solver.solve(b, rtol=1e-11)
    expected = spla.spsolve(strong_x.to_sparse((63, 63)).tocsc(), b.ravel()).reshape(b.shape)
    assert info.converged and np.abs(x - expected).max() <= 1e-9 * np.abs(expected).max()


def test_the_whole_grid_where_a_box_would_not_pay():
    n = 63
    full = poisson((n, n), solution=None)  # no mask
    l_shape = poisson((n, n), mask=~_ellipse((n, n), (1.0, 1.0), (0.5, 0.5)), solution=None)  # fills the grid
    disk = poisson((n, n), mask=_ellipse((n, n), (0.5, 0.5), (0.3, 0.3)), solution=None)

    def factory(A, grid_shape, level):
        return mgcore.make_smoother("rbgs", A, grid_shape, level)

    assert mgcore.MultigridSolver(full.A, grid=(n, n)).active_box is None
    assert mgcore.MultigridSolver(l_shape.A, grid=(n, n)).active_box is None
    assert mgcore.MultigridSolver(disk.A, grid=(n, n)).active_box is not None
    # A box of 68% of the grid pays on large grids only (mgcore.crop.SMALL_GRID_MAX_FRACTION).
    small = poisson((127, 127), mask=_ellipse((127, 127), (0.5, 0.5), (0.4, 0.4)), solution=None)
    large = poisson((255, 515), mask=_ellipse((255, 515), (0.5, 0.5), (0.4, 0.4)), solution=None)
    assert find_active_box(small.A, (127, 127), depth=2) is None
    assert 0.5 < find_active_box(large.A, (255, 515), depth=5).fraction < 0.9
    # A smoother factory is promised the caller's grid.
    assert mgcore.MultigridSolver(disk.A, grid=(n, n), smoother=factory).active_box is None


def test_a_zero_diagonal_outside_the_box_keeps_the_whole_grid_without_cutting_a_box(monkeypatch):
    """``x = b / a`` is not defined on a row outside the box whose diagonal is zero: no box, and the refusal
    comes before the box's operator is cut (a copy of its coefficients)."""
    n = 63
    disk = poisson((n, n), mask=_ellipse((n, n), (0.5, 0.5), (0.3, 0.3)), solution=None)
    centre = disk.A.offsets.index((0, 0))
    box = find_active_box(disk.A, (n, n), depth=3)
    corner = (box.box[0].start - 1, box.box[1].start - 1)  # a decoupled row just outside the box
    coefficients = disk.A.coefficients.clone()
    coefficients[(centre, *corner)] = 0.0
    A = mgcore.Stencil(disk.A.offsets, coefficients, boundary=disk.A.faces)

    def refused(*args, **kwargs):
        raise AssertionError("the box's operator was cut for a box that is refused")

    with monkeypatch.context() as patch:
        patch.setattr(mgcore.Stencil, "cropped", refused)
        assert find_active_box(A, (n, n), depth=3) is None
    coefficients[(centre, *corner)] = 2.0  # a diagonal again: the same box as the disk's
    assert find_active_box(mgcore.Stencil(disk.A.offsets, coefficients, boundary=disk.A.faces), (n, n),
                           depth=3).box == box.box


def test_a_grounded_box_takes_the_sparse_coarsest_lu_and_a_singular_one_the_bordered():
    """The box's faces are labelled Neumann; its coarsest operator is singular only when the domain is (a
    Neumann edge), so a Dirichlet-edged box keeps SuperLU."""
    grounded = mgcore.MultigridSolver(MASKS["disk off centre"]().A, grid=(127, 127))
    singular = mgcore.MultigridSolver(MASKS["Neumann edge"]().A, grid=(127, 127))
    assert grounded.hierarchy().coarse_solver.name == "sparse LU"
    coarsest = singular.hierarchy().coarse_solver
    assert coarsest.name == "sparse LU" and coarsest.singular and coarsest.bordered  # [[A, z], [z^T, 0]]


@pytest.mark.parametrize("name", sorted(MASKS))
def test_the_box_takes_its_coupled_rows_cut_from_the_grids(name):
    """kernels.crop_coupled gives the box's operator the grid's coupled rows cut to the box: the same grids and
    counts as a pass over the box's own coefficients."""
    from mgcore import kernels

    p = MASKS[name]()
    box = _box(p)
    given = box.operator.__dict__.get("_kernel_coupled")
    computed = kernels._coupled(mgcore.Stencil(box.operator.offsets, box.operator.coefficients, boundary=box.faces))
    assert given is not None and computed is not None
    assert torch.equal(given[1], computed[1]) and torch.equal(given[2], computed[2]) and given[3:] == computed[3:]


def test_a_sparse_masked_matrix_with_flat_vectors_takes_the_box():
    """The stencil recovered from a CSR matrix is the same masked operator: cycled on its box, with flat ``b``
    and ``x`` as SciPy passes them."""
    p = MASKS["disk off centre"]()
    b = _rhs(p, 3)
    solver = mgcore.MultigridSolver(p.to_sparse(), grid=p.grid_shape)
    x, info = solver.solve(b.ravel(), rtol=1e-12)
    assert solver.active_box is not None and x.shape == (b.size,)
    expected = _reference(p, b)
    assert info.converged and np.abs(x.reshape(b.shape) - expected).max() <= 1e-10 * np.abs(expected).max()


def test_cropped_refuses_a_box_it_cannot_cut():
    A = mgcore.Stencil([(0, -1), (0, 0), (0, 1)], torch.arange(18.0).reshape(3, 1, 6))
    for box in [(slice(0, 1), slice(0, 6, 2)), (slice(0, 1),), (slice(0, 1), slice(4, 2))]:
        with pytest.raises(ValueError, match=r"^box: expected 2 "):
            A.cropped(box, "neumann")
    with pytest.raises(ValueError, match=r"^box: a constant stencil"):
        mgcore.Stencil.laplacian(2).cropped((slice(0, 2), slice(0, 2)), "neumann")
    assert A.cropped((slice(None), slice(1, 3)), "neumann").coefficients[:, 0].tolist() == [[1, 2], [7, 8], [13, 14]]


@pytest.mark.parametrize("screen", [1.0, 0.0])
def test_a_neumann_edge_near_the_faces_takes_them_as_neumann(screen):
    """A square with a hole and a Neumann edge 4 points inside a 255^2 grid: too large a box to crop, and its
    coarse grids reach the Dirichlet faces on level 2, where the Dirichlet transfers interpolate zero from beyond
    them (the cycle stalled: factor 0.96-0.97, 100 cycles).  Those faces are free (no row couples across them,
    the cells beside them are not grounded), so the cycles take them as Neumann; the same edge with Dirichlet
    conditions, and the same square farther in, keep the grid as it is."""
    n, inset = 255, 4
    square = np.zeros((n, n), dtype=bool)
    square[inset:n - inset, inset:n - inset] = True
    square[n // 3:n // 2, n // 4:n // 2] = False
    p = poisson((n, n), mask=square, mask_bc="neumann", screen=screen, solution=None)
    solver = mgcore.MultigridSolver(p.A, grid=(n, n))
    assert solver.active_box == (slice(0, n), slice(0, n))
    assert solver._box.faces == (("neumann", "neumann"),) * 2 and solver._box.operator.faces != p.A.faces
    b = _rhs(p, 5)
    x, info = solver.solve(torch.from_numpy(b), rtol=1e-10)
    assert info.converged and info.iterations <= 10 and info.method.endswith("labelled Neumann")
    expected = _reference(p, b)
    assert np.abs(x.numpy() - expected).max() <= 1e-8 * np.abs(expected).max()
    grounded = poisson((n, n), mask=square, mask_bc="dirichlet", screen=screen, solution=None)
    assert mgcore.MultigridSolver(grounded.A, grid=(n, n)).active_box is None
    farther = np.zeros((n, n), dtype=bool)
    farther[8:n - 8, 8:n - 8] = True  # 8 = 2^3 points: the three coarsenings of 255^2 stay off the faces
    assert mgcore.MultigridSolver(poisson((n, n), mask=farther, mask_bc="neumann", screen=screen,
                                          solution=None).A, grid=(n, n)).active_box is None


def test_a_free_face_is_judged_by_the_rows_couplings_within_the_grid():
    """The same square reaching across the grid between two Neumann faces: the cells on those faces hold a
    coupling to beyond the face that the operator does not apply (read as zero), so their rows are judged by
    the couplings within the grid, and are not grounded (before, that coupling counted: no relabel, 100
    cycles at factor 0.96)."""
    n0, n1 = 255, 257
    square = np.zeros((n0, n1), dtype=bool)
    square[4:n0 - 4, :] = True
    square[n0 // 3:n0 // 2, n1 // 4:n1 // 2] = False
    p = poisson((n0, n1), bc=["dirichlet", "neumann"], mask=square, mask_bc="neumann", screen=1.0, solution=None)
    solver = mgcore.MultigridSolver(p.A, grid=(n0, n1))
    assert solver._box.faces == (("neumann", "neumann"), ("neumann", "neumann"))
    _, info = solver.solve(torch.from_numpy(_rhs(p, 6)), rtol=1e-10)
    assert info.converged and info.iterations <= 10


@pytest.mark.parametrize("screen", [0.01, 100.0])
def test_islands_that_merge_on_coarse_grids_are_corrected_after_each_cycle(screen):
    """36 squares with Neumann edges, 3 points apart (closer than a coarse cell): their constants are nearly
    null with weak screening, and the coarse grids, where they merge, hold only their sum.  The cycles stalled
    (factor 1.000 at c = 0.01, 100 cycles; 0.73 at c = 100); once three cycles are slow, the solve corrects the
    parts' constants after each cycle (a Galerkin correction on their indicators) and converges; CG restarts
    with the balancing preconditioner built on the same correction."""
    n = 127
    squares = np.zeros((n, n), dtype=bool)
    for i in range(6):
        for j in range(6):
            squares[10 + 18 * i:25 + 18 * i, 10 + 18 * j:25 + 18 * j] = True
    p = poisson((n, n), mask=squares, mask_bc="neumann", screen=screen, solution=None)
    solver = mgcore.MultigridSolver(p.A, grid=(n, n))
    b = _rhs(p, 8)
    x, info = solver.solve(torch.from_numpy(b), rtol=1e-10)
    assert info.converged and info.iterations <= 25
    assert solver.__dict__["_island_set"].inverse.numel() == 36 + 1
    expected = _reference(p, b)
    assert np.abs(x.numpy() - expected).max() <= 1e-8 * np.abs(expected).max()
    # CG (it took 100 iterations without converging at c = 0.01) restarts with the balancing preconditioner
    x, info = mgcore.solve(p.A, torch.from_numpy(b), grid=(n, n), rtol=1e-10, accel="cg")
    assert info.converged and info.iterations <= 25
    assert np.abs(x.numpy() - expected).max() <= 1e-8 * np.abs(expected).max()
    # a fast solve never looks for them
    disk = poisson((n, n), mask=_ellipse((n, n), (0.5, 0.5), (0.3, 0.3)), mask_bc="neumann", screen=screen,
                   solution=None)
    fast = mgcore.MultigridSolver(disk.A, grid=(n, n))
    assert fast.solve(torch.from_numpy(_rhs(disk, 9)), rtol=1e-10)[1].iterations <= 10
    assert "_island_set" not in fast.__dict__
