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
from mgcore.boundary import BoundaryProlongation, active_cells
from mgcore.operators import Stencil
from mgcore.smoothers import DiagonalScaling, red_black_gauss_seidel

needs_loops = pytest.mark.skipif(not kernels.available(), reason="Numba is not installed or MGCORE_KERNELS=0")


@pytest.fixture(autouse=True)
def _loops_on_small_grids(monkeypatch):
    # The loops skip arrays below kernels.MIN_POINTS; the small grids here must run them.
    monkeypatch.setattr(kernels, "MIN_POINTS", 0)


@pytest.mark.parametrize("loaded", [False, True])
def test_small_grids_keep_the_pytorch_path(monkeypatch, loaded):
    monkeypatch.setattr(kernels, "MIN_POINTS", 4096)
    monkeypatch.setattr(kernels, "SMALL_POINTS", 1024)
    A = Stencil.laplacian(2)
    if not loaded:  # a process that has not loaded the loops yet does not load them for a small grid
        monkeypatch.setattr(kernels, "_loops", None)
        assert not kernels.fits(A, torch.zeros(1, 1, 63, 63))
        assert not kernels.wanted(63 * 63)
        assert kernels._loops is None
    else:  # once loaded (a large grid ran them), the coarse levels of a large solve run them too
        assert kernels.fits(A, torch.zeros(1, 1, 64, 64)) == kernels.available()
        assert kernels.fits(A, torch.zeros(1, 1, 63, 63)) == kernels.available()
        assert not kernels.fits(A, torch.zeros(1, 1, 31, 31))
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
    # a ball: each row's active points one run (the loops then skip the mask inside it), some rows none
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape), indexing="ij")
    ball = sum((x / (0.45 * n)) ** 2 for x, n in zip(axes, shape)) < 1
    assert not ball.all() and ball.any()
    for mask in (None, active, ball):
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


def _masked_problems():
    """Masked domains whose operators have one common row (a disk, an L-shape, holes), with mixed faces."""

    def disk(shape, radius=0.4):
        grids = torch.meshgrid(*((torch.arange(n, dtype=torch.float64) + 1) / (n + 1) for n in shape), indexing="ij")
        return (sum((g - 0.5) ** 2 for g in grids) < radius**2).numpy()

    ell = ~((torch.arange(30)[:, None] > 14) & (torch.arange(27)[None, :] > 12)).numpy()
    return {
        "disk": lambda: pde.poisson((41, 38), mask=disk((41, 38)), solution=None),
        "disk, Neumann on the mask": lambda: pde.poisson(
            (41, 38), mask=disk((41, 38)), mask_bc="neumann", solution=None
        ),
        "L-shape, Neumann faces": lambda: pde.poisson((30, 27), bc="neumann", mask=ell, solution=None),
        "disk, periodic x": lambda: pde.poisson(
            (40, 37), bc=("periodic", "dirichlet"), mask=disk((40, 37), 0.3), solution=None
        ),
    }


@needs_loops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(_masked_problems()))
def test_common_row_loops_match_the_pytorch_path(name, dtype):
    problem = _masked_problems()[name]()
    shape = problem.grid_shape
    hierarchy = mgcore.build_hierarchy(problem.A.to(dtype), shape, max_coarse=50)
    generator = torch.Generator().manual_seed(3)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    for level in hierarchy.levels[:2]:  # the 5-point fine operator (red-black) and a 9-point Galerkin one
        A, grid = level.A, level.grid_shape
        assert kernels.split(A), name
        u = torch.randn(2, 1, *grid, generator=generator, dtype=dtype)
        f = torch.randn(2, 1, *grid, generator=generator, dtype=dtype)
        # the smoother's sweeps run as one compiled call (kernels.run_steps_), forward and reversed
        assert level.smoother._plan() is not None
        with kernels.disabled():
            expected = [level.smoother(u, f, sweeps=2), level.smoother(u, f, reverse=True), A.residual(u, f), A(u)]
        got = [level.smoother(u, f, sweeps=2), level.smoother(u, f, reverse=True), A.residual(u, f), A(u)]
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, rtol=0, atol=tolerance * float(e.abs().max())), name
    assert "+band" in hierarchy.levels[0].smoother.name
    assert hierarchy.levels[1].smoother.name.startswith("gs-4colour")


@needs_loops
def test_a_smoother_reads_its_steps_at_every_call():
    """The steps' operators and plan are read at each call: a step given another B, or an activation, after a
    call runs as changed (the plan is kept only for the same B modules)."""
    from mgcore.smoothers import DiagonalScaling

    problem = _masked_problems()["disk"]()
    level = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50).levels[0]
    A, grid, smoother = level.A, level.grid_shape, level.smoother
    f = torch.randn(1, 1, *grid, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    first = smoother(None, f)
    assert smoother._plan() is not None
    smoother.steps[0].B = DiagonalScaling(A, 0.5, parity=0, grid_shape=grid)  # a damped red step
    damped = smoother(None, f)
    assert not torch.equal(damped, first)
    plan = smoother._plan()
    assert plan.omegas[0] == 0.5
    with kernels.disabled():
        assert torch.allclose(damped, smoother(None, f), rtol=0, atol=1e-12 * float(damped.abs().max()))
    smoother.steps[0].post_act = torch.nn.Identity()  # an activation: the steps run one by one
    assert smoother._shared_operator() is None
    assert torch.allclose(smoother(None, f), damped, rtol=0, atol=1e-12 * float(damped.abs().max()))


@needs_loops
@pytest.mark.parametrize("name", list(_masked_problems()))
def test_a_zero_start_and_settled_decoupled_rows_change_no_value(name):
    """A zero start writes the first colour into an empty grid, and a post-smoother told that the decoupled rows
    are settled skips them: both give exactly the iterate of the plain steps, on red-black and four-colour
    levels, and so does a whole cycle."""
    problem = _masked_problems()[name]()
    hierarchy = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50, presmooth=1, postsmooth=2)
    generator = torch.Generator().manual_seed(4)
    for level in hierarchy.levels[:2]:
        A, grid, smoother = level.A, level.grid_shape, level.smoother
        plan = smoother._plan()
        assert plan.starts_with_colour() and not plan.starts_with_colour(reverse=True)  # the band's step is last
        assert plan.settles_decoupled
        f = torch.randn(2, 1, *grid, generator=generator, dtype=torch.float64)
        u = smoother(None, f)
        assert torch.equal(u, smoother(torch.zeros_like(f), f))
        # what a cycle does between its smoothers: a correction that is zero on the decoupled rows
        corrected = u + torch.randn(u.shape, generator=generator, dtype=u.dtype) * kernels.coupled(A)
        skipped = smoother(corrected, f, sweeps=2, settled=True)
        assert torch.equal(skipped, smoother(corrected, f, sweeps=2))
        # the promise broken (the decoupled rows moved) shows that the rows were skipped indeed
        moved = u + 1.0
        assert not torch.equal(smoother(moved, f, settled=True), smoother(moved, f))
    f = torch.randn(1, 1, *problem.grid_shape, generator=generator, dtype=torch.float64)
    settled = mgcore.cycle(hierarchy, None, f)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BoundaryProlongation, "zero_on_inactive", False)
        assert torch.equal(settled, mgcore.cycle(hierarchy, None, f))


@needs_loops
@pytest.mark.parametrize("name", ["box", "disk"])
def test_cycles_reuse_their_iterates_arrays_and_compute_the_same(name):
    """A cycle that writes its finest iterate into ``out`` and its coarse ones into the levels' kept arrays gives
    exactly the cycle that allocates them; a second cycle reuses the arrays and leaves the first result alone."""
    problem = pde.poisson((41, 41), solution=None) if name == "box" else _masked_problems()["disk"]()
    hierarchy = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50)
    generator = torch.Generator().manual_seed(6)
    f = torch.randn(2, 1, *problem.grid_shape, generator=generator, dtype=torch.float64)
    fresh = mgcore.cycle(hierarchy, None, f)
    out = torch.full_like(f, float("nan"))  # whatever it holds is overwritten
    assert torch.equal(mgcore.cycle(hierarchy, None, f, out=out), fresh)
    coarse = torch.empty((2, 1, *hierarchy.levels[1].grid_shape), dtype=torch.float64)
    kept = hierarchy.levels[1].iterate(coarse)
    g = torch.randn(f.shape, generator=generator, dtype=torch.float64)
    second = mgcore.cycle(hierarchy, None, g, out=torch.empty_like(f))
    assert hierarchy.levels[1].iterate(coarse) is kept
    assert torch.equal(second, mgcore.cycle(hierarchy, None, g))
    assert torch.equal(fresh, mgcore.cycle(hierarchy, None, f))


@needs_loops
@pytest.mark.parametrize("level", [0, 1])
def test_band_steps_of_one_colour_update_in_place_to_the_same_values(level):
    """A band step whose points share a colour (no two couple) adds each update straight into ``u``: exactly
    the values of the Jacobi step through a buffer, on the five-point fine level and a nine-point coarse one."""
    import dataclasses

    problem = _masked_problems()["disk"]()
    hierarchy = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50)
    A, smoother = hierarchy.levels[level].A, hierarchy.levels[level].smoother
    band = [step.B for step in smoother.steps if getattr(step.B, "points", None) is not None]
    plan = kernels.step_plan(band)
    assert list(plan.params[:, 0]) == [1 if level == 0 else 2] * len(band)
    through_buffer = dataclasses.replace(plan, params=plan.params * 0)
    generator = torch.Generator().manual_seed(8)
    u = torch.randn(2, 1, *A.grid_shape, generator=generator, dtype=torch.float64)
    f = torch.randn_like(u)
    assert torch.equal(kernels.run_steps_(A, u.clone(), f, plan), kernels.run_steps_(A, u.clone(), f, through_buffer))


@needs_loops
def test_band_steps_read_the_coefficients_as_they_are_now():
    """The band points' coefficient rows are gathered into a short array once and kept; coefficients changed in
    place are gathered again, so the steps still match the PyTorch path."""
    problem = _masked_problems()["disk, Neumann on the mask"]()
    level = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50).levels[1]
    A, smoother = level.A, level.smoother
    f = torch.randn(1, 1, *level.grid_shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    before = smoother(None, f)
    with torch.no_grad():
        A.coefficients[:, 3:9].mul_(1.5)  # rows near the mask (its band) and inside, not a common multiple
    changed = smoother(None, f)
    with kernels.disabled():
        expected = smoother(None, f)
    assert not torch.allclose(changed, before)
    assert torch.allclose(changed, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))


def test_which_plans_settle_the_decoupled_rows():
    problem = _masked_problems()["disk"]()
    A, grid = problem.A, problem.grid_shape
    rbgs = red_black_gauss_seidel(A, grid)
    assert kernels.step_plan([step.B for step in rbgs.steps]).settles_decoupled
    assert not kernels.step_plan([rbgs.steps[0].B]).settles_decoupled  # red alone leaves black rows
    damped = DiagonalScaling(A, 0.8, parity=0, grid_shape=grid)
    black = rbgs.steps[1].B
    assert not kernels.step_plan([damped, black]).settles_decoupled  # ω = 0.8 does not write f / a again
    assert kernels.step_plan([damped, black]).starts_with_colour()


@needs_loops
@pytest.mark.parametrize("name", ["constant", *_masked_problems()])
def test_residual_norms_come_from_the_residual_pass(name):
    """One pass gives the residual and each right-hand side's norm: the PyTorch residual and norm, on a constant
    stencil and on common-row ones, and the same bits on one thread as on two."""
    A = Stencil.laplacian(2) if name == "constant" else _masked_problems()[name]().A
    grid = (33, 30) if name == "constant" else A.grid_shape
    generator = torch.Generator().manual_seed(5)
    u = torch.randn(3, 1, *grid, generator=generator, dtype=torch.float64)
    f = torch.randn_like(u)
    out = torch.empty_like(u)
    norms = A.residual_norms(u, f, out)
    with kernels.disabled():
        expected = A.residual(u, f)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14 * float(expected.abs().max()))
    torch.testing.assert_close(norms, expected.flatten(1).norm(dim=1), rtol=1e-13, atol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(A.residual_norms(u, f, torch.empty_like(u)), norms)
    finally:
        torch.set_num_threads(threads)
    # two channels: one norm per batch entry, over both
    u2, f2 = u[:2].reshape(1, 2, *grid), f[:2].reshape(1, 2, *grid)
    torch.testing.assert_close(A.residual_norms(u2, f2, torch.empty_like(u2)), expected[:2].norm().reshape(1),
                               rtol=1e-13, atol=0)


@needs_loops
def test_common_row_form_finds_the_row_and_marks_the_others():
    problem = _masked_problems()["disk"]()
    A = problem.A
    _, _, _, centre, w, irregular, d2, five, row_start, runs = kernels._split_form(A)
    assert five and w[1, 1] == float(A.coefficients[centre].max()) and d2 != 0
    assert set(irregular.reshape(-1).tolist()) == {0, 1, 2}
    # every row marked 0 is the common row, every row marked 2 the diagonal d2 alone
    rows = A.coefficients.reshape(len(A.offsets), -1)
    marks = torch.from_numpy(irregular.reshape(-1).astype("int64"))
    table = torch.tensor([w[1 + o[0], 1 + o[1]] for o in A.offsets], dtype=torch.float64)
    assert torch.equal(rows[:, marks == 0], table[:, None].expand(-1, int((marks == 0).sum())))
    assert bool((rows[centre, marks == 2] == d2).all())
    # the runs cover each row once, in order
    n, m = problem.grid_shape
    for i in (0, n // 2, n - 1):
        row_runs = runs[row_start[i] : row_start[i + 1]]
        assert row_runs[0, 0] == 0 and row_runs[-1, 1] == m and (row_runs[1:, 0] == row_runs[:-1, 1]).all()
    # no common row: a random field keeps the plain variable loops
    assert not kernels.split(_variable(2, ("dirichlet", "dirichlet"), (9, 10), torch.Generator().manual_seed(1)))


@needs_loops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [*_masked_problems(), "random field on a disk"])
def test_galerkin_loop_matches_the_probes(name, dtype):
    from mgcore.boundary import BoundaryProlongation, BoundaryRestriction, active_cells, boundary_galerkin

    problem = _masked_problems()["disk" if name.startswith("random") else name]()
    A, shape = problem.A, problem.grid_shape
    if name.startswith("random"):  # no common row: every coarse row point by point
        field = 1 + torch.rand(A.coefficients.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        A = Stencil(A.offsets, A.coefficients * field, boundary=A.faces)
    A = A.to(dtype)
    for _ in range(2):
        P = BoundaryProlongation(A.faces, shape, active_cells(A, shape))
        R = BoundaryRestriction(P)
        assert kernels.galerkin(A, P.tables(), P.active) is not None
        coarse = boundary_galerkin(A, shape, R, P)
        with kernels.disabled():
            probed = boundary_galerkin(A, shape, R, P)
        assert coarse.offsets == probed.offsets
        scale = float(probed.coefficients.abs().max())
        tolerance = 1e-13 if dtype == torch.float64 else 1e-5
        assert torch.allclose(coarse.coefficients, probed.coefficients, rtol=0, atol=tolerance * scale), name
        A, shape = coarse, coarse.grid_shape


@needs_loops
@pytest.mark.parametrize("name", ["disk", "random field"])
def test_compiled_point_steps_are_the_points_jacobi_step(name):
    from mgcore.blocks import residual_correction
    from mgcore.smoothers import DiagonalScaling, boundary_band

    A = _masked_problems()["disk"]().A
    if name == "random field":  # the plain variable loop (no common row)
        field = 1 + torch.rand(A.coefficients.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        A = Stencil(A.offsets, A.coefficients * field, boundary=A.faces)
    assert kernels.split(A) == (name == "disk")
    shape = A.grid_shape
    band = boundary_band(A, shape)  # neighbouring band points couple: the step is Jacobi at them
    generator = torch.Generator().manual_seed(8)
    u = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
    f = torch.randn(2, 1, *shape, generator=generator, dtype=torch.float64)
    index = torch.nonzero(band.reshape(-1)).squeeze(1)
    got = residual_correction(A, DiagonalScaling(A, 0.8, points=index), u, f)
    with kernels.disabled():
        expected = residual_correction(A, DiagonalScaling(A, 0.8, band.to(torch.float64)), u, f)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))


@needs_loops
@pytest.mark.parametrize("name", list(_masked_problems()))
def test_active_cells_and_band_match_the_pytorch_path(name):
    from mgcore.boundary import active_cells
    from mgcore.smoothers import boundary_band

    A = _masked_problems()[name]().A
    shape = A.grid_shape
    active, band = active_cells(A, shape), boundary_band(A, shape)
    with kernels.disabled():
        assert torch.equal(active, active_cells(A, shape))
        assert torch.equal(band, boundary_band(A, shape))
        assert kernels.coupled_count(A) is None
    assert 0 < int(band.sum()) < int(active.sum()) < active.numel()
    # the counts from the same pass: coupled within the grid, and to any neighbour (beyond a face too)
    assert kernels.coupled_count(A, within=True) == int(active.sum())
    assert kernels.coupled_count(A, within=False) == int(kernels.coupled(A, within=False).sum())


@needs_loops
@pytest.mark.parametrize("shape", [(40, 37), (9, 12, 11)])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_the_band_loop_is_the_box_dilation(shape, width):
    """The compiled band (running counts along rows, OR-ed rows across) against the dilation written out: every
    point within ``width`` of an inactive one along every axis, the inactive ones excluded; random inactive
    points, some on the grid's edges."""
    inactive = torch.rand(shape, generator=torch.Generator().manual_seed(width)) < 0.03
    inactive[(0,) * len(shape)] = True
    inactive[tuple(n - 1 for n in shape)] = True
    near = torch.zeros_like(inactive)
    for index in inactive.nonzero().tolist():
        near[tuple(slice(max(i - width, 0), i + width + 1) for i in index)] = True
    band, count = kernels.band(inactive, width)
    assert torch.equal(band, near & ~inactive)
    assert count == int((near & ~inactive).sum())


@pytest.mark.parametrize("selection", ["parity", "lattices", "points"])
def test_a_step_without_a_mask_scales_its_own_points(selection):
    from mgcore.smoothers import DiagonalScaling

    A = _variable(2, ("dirichlet", "dirichlet"), (7, 6), torch.Generator().manual_seed(9))
    mask = torch.zeros(7, 6, dtype=torch.float64)
    if selection == "parity":
        B = DiagonalScaling(A, 0.7, parity=1)
        mask[(torch.arange(7)[:, None] + torch.arange(6)[None, :]) % 2 == 1] = 1.0
    elif selection == "lattices":
        B = DiagonalScaling(A, 0.7, lattices=[((0, 2), (1, 2)), ((1, 2), (0, 2))])
        mask[0::2, 1::2] = 1.0
        mask[1::2, 0::2] = 1.0
    else:
        B = DiagonalScaling(A, 0.7, points=torch.tensor([0, 9, 41]))
        mask.view(-1)[[0, 9, 41]] = 1.0
    assert B.scale is None  # formed at the first PyTorch step
    ones = torch.ones(1, 1, 7, 6, dtype=torch.float64)
    assert torch.allclose(B(ones)[0, 0], 0.7 * mask / A.coefficients[A.center_index], rtol=1e-15, atol=0)


def test_a_smoothers_steps_run_in_one_call_only_where_each_is_a_colour_lattice_or_point_set():
    from mgcore.blocks import residual_corrections
    from mgcore.smoothers import chebyshev, weighted_jacobi

    A = _masked_problems()["disk"]().A
    shape = A.grid_shape
    assert red_black_gauss_seidel(A, shape)._plan() is not None
    assert weighted_jacobi(A, shape)._plan() is None  # a whole-grid step: one step at a time
    assert chebyshev(A, shape)._plan() is None
    three = pde.poisson((9, 8, 7), bc="neumann", solution=None).A
    assert red_black_gauss_seidel(three, (9, 8, 7))._plan() is None  # 3D: the steps one by one
    # the sequence equals its steps one by one, in order and reversed, and leaves its inputs alone
    smoother = red_black_gauss_seidel(A, shape)
    generator = torch.Generator().manual_seed(11)
    u = torch.randn(1, 1, *shape, generator=generator, dtype=torch.float64)
    f = torch.randn(1, 1, *shape, generator=generator, dtype=torch.float64)
    before = u.clone()
    for reverse in (False, True):
        got = residual_corrections(A, [s.B for s in smoother.steps], u, f, sweeps=2, reverse=reverse,
                                   plan=smoother._plan())
        expected = u
        for _ in range(2):
            for step in (list(smoother.steps)[::-1] if reverse else smoother.steps):
                expected = step(expected, f)
        assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    assert torch.equal(u, before)


def test_point_buffers_follow_the_step_once_formed():
    from mgcore.smoothers import DiagonalScaling

    A = _variable(2, ("dirichlet", "dirichlet"), (7, 6), torch.Generator().manual_seed(12))
    B = DiagonalScaling(A, 0.7, points=torch.tensor([3, 9, 20]))
    neighbours, _ = B.couplings  # formed at the first PyTorch use
    assert tuple(neighbours.shape) == (5, 3)  # five stencil points at three points
    B.to(torch.float32)
    assert B.point_scale.dtype == torch.float32 and B.point_weights.dtype == torch.float32


def test_a_small_masked_solve_does_not_load_the_loops(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_POINTS", 4096)
    monkeypatch.setattr(kernels, "_loops", None)
    mask = torch.ones(15, 15, dtype=torch.bool)
    mask[4:8, 4:8] = False
    problem = pde.poisson((15, 15), mask=mask.numpy(), solution=None)
    _, info = mgcore.solve(problem.A, torch.ones(15, 15, dtype=torch.float64), rtol=1e-8)
    assert info.converged and kernels._loops is None


def _mirror_gap_reference(A: Stencil) -> float:
    """``max |c_o(x) - c_{-o}(x + o)|`` over the pairs in the grid, from shifted slices in PyTorch."""
    from mgcore.operators import _shift_pieces

    index = {o: k for k, o in enumerate(A.offsets)}
    gap = 0.0
    for k, o in enumerate(A.offsets):
        a, b = A.coefficients[k], A.coefficients[index[tuple(-v for v in o)]]
        for dst, src in _shift_pieces(o, a.shape, A.periodic):
            if a[dst].numel():
                gap = max(gap, float((a[dst] - b[src]).abs().max()))
    return gap


def _asymmetric_copies(A: Stencil) -> dict[str, Stencil]:
    """``A`` (symmetric, with a common row) with one kind of asymmetric pair each."""
    marks, d2 = kernels._split_form(A)[5][0], kernels._split_form(A)[6]
    n, m = marks.shape
    centre = A.offsets.index((0, 0))
    regular = torch.from_numpy(marks == 0)
    surrounded = regular[1:-1, 1:-1].clone()  # regular rows whose eight neighbours are regular too
    for di, dj in itertools.product((0, 1, 2), repeat=2):
        surrounded &= regular[di : di + n - 2, dj : dj + m - 2]
    inner = tuple(int(v) + 1 for v in torch.nonzero(surrounded)[0])
    copies = {}
    for label in ("boundary row", "decoupled row", "edge pair"):
        c = A.coefficients.clone()
        if label == "boundary row":  # one coupling of a row the pass marks
            c[(centre - 1, *torch.nonzero(torch.from_numpy(marks == 1))[n // 2].tolist())] += 1e-3
        elif label == "decoupled row":  # a row left out of the domain (marked 2) whose regular neighbours
            c[:, inner[0], inner[1]] = 0.0  # keep their couplings to it
            c[centre, inner[0], inner[1]] = d2
        else:  # a pair along the first row, across the periodic face where there is one
            c[0 if A.periodic[0] else len(A.offsets) - 1][0, m // 2] += 0.25
        copies[label] = Stencil(A.offsets, c, boundary=A.faces)
    return copies


@needs_loops
@pytest.mark.parametrize("name", list(_masked_problems()))
def test_the_mirror_pass_finds_every_asymmetric_pair(name):
    problem = _masked_problems()[name]()
    hierarchy = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50)
    for A in (problem.A, hierarchy.levels[1].A):  # 5-point, and a 9-point Galerkin operator
        assert kernels.mirror_gap(A) == _mirror_gap_reference(A) == 0.0 and A.is_symmetric()
        for label, B in _asymmetric_copies(A).items():
            expected = _mirror_gap_reference(B)
            assert expected > 0 and kernels.mirror_gap(B) == pytest.approx(expected, rel=1e-12), (name, label)
            assert not B.is_symmetric(), (name, label)
    # a common row that is not symmetric leaves the comparison to the arrays
    coefficients = problem.A.coefficients.clone()
    coefficients[-1] *= 1.5
    B = Stencil(problem.A.offsets, coefficients, boundary=problem.A.faces)
    assert kernels.mirror_gap(B) is None and not B.is_symmetric()


@needs_loops
def test_zero_diagonals_are_counted_by_the_coupled_pass_and_refused_alike():
    problem = _masked_problems()["disk"]()
    coefficients = problem.A.coefficients.clone()
    centre = problem.A.offsets.index((0, 0))
    coefficients[centre, 20, 3:6] = 0.0  # three rows with nothing on the diagonal
    A = Stencil(problem.A.offsets, coefficients)
    assert kernels.zero_diagonal_count(A) is None  # never a pass of its own
    kernels.coupled(A)
    assert kernels.zero_diagonal_count(A) == 3
    with pytest.raises(ValueError, match=r"^A: the diagonal has 3 zero entries"):
        DiagonalScaling(A, 1.0, grid_shape=problem.grid_shape)  # from the count
    A.coefficients[centre, 20, 3:6] = 1.0  # new coefficients: the count no longer holds
    assert kernels.zero_diagonal_count(A) is None
    DiagonalScaling(A, 1.0, grid_shape=problem.grid_shape)
    kernels.coupled(A)
    assert kernels.zero_diagonal_count(A) == 0


@needs_loops
def test_the_common_row_is_found_by_one_marking_pass_on_an_l_shape(monkeypatch):
    """The grid's centre is the L-shape's re-entrant corner on the coarse levels: the candidate rows come from
    a lattice of points, the most frequent first, so one marking pass finds the common row."""
    x = (torch.arange(95, dtype=torch.float64) + 1) / 96
    mask = ~((x[:, None] > 0.5) & (x[None, :] > 0.5))
    problem = pde.poisson((95, 95), mask=mask.numpy(), solution=None)
    hierarchy = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50)
    loops = kernels._load()
    passes = []
    marking = loops.mark_irregular
    monkeypatch.setattr(loops, "mark_irregular", lambda *args: passes.append(1) or marking(*args))
    for level in hierarchy.levels[:2]:  # (95, 95) and (47, 47); on smaller grids the edges pass 1/8 of the rows
        passes.clear()
        level.A.__dict__.pop("_kernel_split_form", None)
        assert kernels.split(level.A) and len(passes) == 1, level.grid_shape


@needs_loops
@pytest.mark.parametrize("name", list(_masked_problems()))
def test_the_marks_follow_their_definition(name):
    """The common-row form's marks against NumPy: 2 where the row is its diagonal ``d2`` alone, 1 where it
    differs from the common row or lies on the grid's edge, else 0; and the coupled rows against PyTorch."""
    import numpy as np

    problem = _masked_problems()[name]()
    hierarchy = mgcore.build_hierarchy(problem.A, problem.grid_shape, max_coarse=50)
    for A in (problem.A, hierarchy.levels[1].A):
        _, _, _, centre, w, irregular, d2, *_ = kernels._split_form(A)
        rows = A.coefficients.numpy()
        common = np.array([w[1 + o[0], 1 + o[1]] for o in A.offsets])
        couples = (np.delete(rows, centre, axis=0) != 0).any(axis=0)
        alone = (d2 != 0) & (rows[centre] == d2) & ~couples
        edge = np.zeros(rows.shape[1:], dtype=bool)
        edge[[0, -1], :] = edge[:, [0, -1]] = True
        differs = (rows != common[:, None, None]).any(axis=0) | edge
        assert np.array_equal(irregular[0], np.where(alone, 2, np.where(differs, 1, 0))), name
        with kernels.disabled():
            expected = active_cells(A, A.grid_shape)
        assert torch.equal(kernels.coupled(A), expected)
        assert kernels.zero_diagonal_count(A) == int((A.coefficients[centre] == 0).sum())
