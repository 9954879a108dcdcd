"""``mgcore.solve`` and ``MultigridSolver``: batches, dtypes, input checks, failure reports, autograd."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from mgcore import (
    ConvOperator,
    MultigridSolver,
    ResidualCorrection,
    Smoother,
    Stencil,
    build_hierarchy,
    cycle,
    solve,
)

SHAPE = (63, 63)


@pytest.fixture
def poisson():
    return Stencil.laplacian(2, h=1.0 / 64)


def _rhs(*batch, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal((*batch, *shape))


def test_batched_equals_one_by_one(poisson):
    b = _rhs(2, 3)
    b[1, 2] *= 1e3  # very different scales still stop per right-hand side
    x, info = solve(poisson, b, rtol=1e-10)
    assert x.shape == b.shape and info.converged.shape == (2, 3) and info.converged.all()
    for i in range(2):
        for j in range(3):
            xi, single = solve(poisson, b[i, j], rtol=1e-10)
            assert single.iterations == info.iterations[i, j]
            np.testing.assert_allclose(x[i, j], xi, rtol=0, atol=1e-12 * np.abs(xi).max())
            history = info.residuals[i, j]
            np.testing.assert_allclose(
                history[: single.iterations + 1], single.residuals, rtol=1e-9, atol=1e-12 * history[0]
            )


def test_flat_vectors_and_torch_tensors(poisson):
    b = _rhs()
    x_grid, _ = solve(poisson, b)
    x_flat, _ = solve(poisson, b.reshape(-1), grid=SHAPE)
    assert x_flat.shape == (SHAPE[0] * SHAPE[1],)
    np.testing.assert_allclose(x_flat.reshape(SHAPE), x_grid)
    bt = torch.from_numpy(b)
    xt, _ = solve(poisson, bt)
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float64
    np.testing.assert_allclose(xt.numpy(), x_grid)


def test_inputs_are_not_modified(poisson):
    b = _rhs(seed=1)
    x0 = _rhs(seed=2)
    b_copy, x0_copy = b.copy(), x0.copy()
    x, info = solve(poisson, b, x0, rtol=1e-10)
    assert info.converged
    np.testing.assert_array_equal(b, b_copy)
    np.testing.assert_array_equal(x0, x0_copy)
    assert not np.shares_memory(x, x0)
    x0t = torch.from_numpy(x0_copy.copy())
    solve(poisson, torch.from_numpy(b), x0t, accel="cg", presmooth=1, postsmooth=1)
    np.testing.assert_array_equal(x0t.numpy(), x0_copy)


def test_zero_right_hand_sides_converge_at_zero(poisson):
    """Without x0 the first correction becomes the iterate: a right-hand side that is zero stops at x = 0 with no
    cycle, alone or next to others (which then run as they would alone), and the result never aliases b."""
    b = torch.from_numpy(_rhs(3))
    b[1] = 0.0
    b_copy = b.clone()
    x, info = solve(poisson, b, rtol=1e-10)
    torch.testing.assert_close(b, b_copy, rtol=0, atol=0)
    assert info.converged.all() and info.iterations.tolist()[1] == 0 and bool((x[1] == 0).all())
    alone, single = solve(poisson, b[0], rtol=1e-10)
    assert single.iterations == info.iterations[0]
    torch.testing.assert_close(x[0], alone, rtol=0, atol=1e-12 * float(alone.abs().max()))
    x_zero, info_zero = solve(poisson, torch.zeros(SHAPE, dtype=torch.float64))
    assert info_zero.converged and info_zero.iterations == 0 and bool((x_zero == 0).all())
    x_one, _ = solve(poisson, b[2], rtol=1e-10)
    assert x_one.data_ptr() != b[2].data_ptr() and not np.shares_memory(x_one.numpy(), b.numpy())


def test_x0_speeds_up(poisson):
    b = _rhs(seed=3)
    x, _ = solve(poisson, b, rtol=1e-6)
    _, info = solve(poisson, b, x, rtol=1e-10)
    _, cold = solve(poisson, b, rtol=1e-10)
    assert info.iterations < cold.iterations


def test_float32_reaches_float64_tolerance_by_refinement(poisson):
    b = _rhs(seed=4).astype(np.float32)
    x, info = solve(poisson, b, rtol=1e-10)
    assert x.dtype == np.float32
    assert info.converged and info.residuals[-1] <= 1e-10 * np.linalg.norm(b.astype(np.float64))
    assert "rounded from the float64 iterate" in info.reason
    # The float32 result itself is as accurate as float32 can hold.
    A = poisson.to_sparse(SHAPE)
    relative = np.linalg.norm(b.ravel() - A @ x.astype(np.float64).ravel()) / np.linalg.norm(b)
    assert relative < 1e-5


def test_pcg_and_preconditioner(poisson):
    b = _rhs(seed=5)
    x, info = solve(poisson, b, rtol=1e-10, accel="cg", presmooth=1, postsmooth=1)
    assert info.converged and info.iterations <= 10
    solver = MultigridSolver(poisson, SHAPE, presmooth=1, postsmooth=1)
    M = solver.aspreconditioner()
    A = poisson.to_sparse(SHAPE)
    iterations = []
    y, status = spla.cg(A, b.ravel(), M=M, rtol=1e-10, callback=lambda xk: iterations.append(1))
    assert status == 0 and len(iterations) <= 10
    np.testing.assert_allclose(y.reshape(SHAPE), x, atol=1e-8 * np.abs(x).max())


def test_callback_sees_every_iterate(poisson):
    seen = []
    x, info = solve(poisson, _rhs(seed=6), callback=lambda xk: seen.append(xk.copy()))
    assert len(seen) == info.iterations
    np.testing.assert_array_equal(seen[-1], x)


def test_solver_reuse_and_repr(poisson):
    solver = MultigridSolver(poisson, SHAPE)
    text = repr(solver)
    assert "level" in text and "63 x 63" in text and "operator complexity" in text
    hierarchy = solver.hierarchy()
    assert 1.0 < hierarchy.operator_complexity() < 1.5
    for seed in range(3):
        _, info = solver.solve(_rhs(seed=seed))
        assert info.converged


def test_against_pyamg_on_the_same_matrix():
    pyamg = pytest.importorskip("pyamg")
    shape = (40, 33)
    A = pyamg.gallery.poisson(shape, format="csr")
    b = _rhs(shape=shape, seed=7).ravel()
    x_amg = pyamg.ruge_stuben_solver(A).solve(b, tol=1e-12, maxiter=200)
    x, info = solve(A, b, grid=shape, rtol=1e-12)
    assert info.converged and x.shape == b.shape
    assert np.linalg.norm(x - x_amg) / np.linalg.norm(x_amg) < 1e-9


def test_sparse_matrix_that_is_not_a_stencil_is_rejected():
    import scipy.sparse as sp

    n = 36
    A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")  # 1D chain: wraps across grid rows
    with pytest.raises(ValueError, match=r"A|grid"):
        solve(A, np.ones(n), grid=(6, 6))


def test_gradient_through_a_cycle_matches_finite_differences():
    """Cycles are differentiable: d/dθ of a cycle's output w.r.t. a learned smoother and the rhs."""
    torch.manual_seed(0)
    A = Stencil.laplacian(2)
    shape = (7, 7)
    B = ConvOperator(1, 1, 3).double()

    def factory(A_level, grid_shape, level):
        return Smoother([ResidualCorrection(A_level, B)], name="learned", symmetric=False, cost=1)

    hierarchy = build_hierarchy(A, shape, smoother=factory, presmooth=1, postsmooth=1, max_coarse=1)
    weight = B.conv.weight

    f = torch.randn(1, 1, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f_: cycle(hierarchy, None, f_), (f,))
    loss = (cycle(hierarchy, torch.zeros_like(f), f.detach()) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, weight)
    eps = 1e-6
    base = weight.detach().clone()
    direction = torch.randn_like(base)
    with torch.no_grad():
        weight.copy_(base + eps * direction)
        plus = (cycle(hierarchy, torch.zeros_like(f), f.detach()) ** 2).sum()
        weight.copy_(base - eps * direction)
        minus = (cycle(hierarchy, torch.zeros_like(f), f.detach()) ** 2).sum()
        weight.copy_(base)
    finite_difference = (plus - minus) / (2 * eps)
    assert torch.isclose((grad * direction).sum(), finite_difference, rtol=1e-6)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_and_leave_inputs_alone(poisson):
    b = _rhs()
    keep = b.copy()
    cases = [
        (dict(b=np.where(np.eye(63, dtype=bool), np.nan, b)), ValueError, "b: contains NaN"),
        (dict(b=np.full(SHAPE, np.inf)), ValueError, "b: contains NaN or Inf"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(rtol=-1e-8), ValueError, "rtol"),
        (dict(maxiter=0), ValueError, "maxiter"),
        (dict(b=np.ones(SHAPE, dtype=np.int64)), TypeError, "b: expected a float32 or float64"),
        (dict(b=torch.ones(SHAPE, dtype=torch.int32)), TypeError, "b: expected dtype float32 or float64"),
        (dict(smoother="sor"), ValueError, "smoother: unknown name 'sor'"),
        (dict(cycle="X"), ValueError, "cycle: unknown cycle 'X'"),
        (dict(accel="cg", postsmooth=2), ValueError, "accel: 'cg' needs a symmetric cycle"),
        (dict(accel="gmres"), ValueError, "accel: expected None or 'cg'"),
        (dict(x0=np.ones((63, 62))), ValueError, "x0: shape"),
        (dict(b=[1.0, 2.0]), TypeError, "b: expected a numpy.ndarray or torch.Tensor"),
    ]
    for overrides, error, message in cases:
        arguments = dict(b=b, x0=None, rtol=1e-8, maxiter=10, smoother="rbgs", cycle="V", accel=None)
        arguments.update(overrides)
        rhs, x0 = arguments.pop("b"), arguments.pop("x0")
        with pytest.raises(error, match=message):
            solve(poisson, rhs, x0, **arguments)
    np.testing.assert_array_equal(b, keep)
    # A solver set up for a grid, a variable stencil and a sparse matrix all know their grid.
    with pytest.raises(ValueError, match=r"b: shape \(62, 63\) does not match the operator's grid \(63, 63\)"):
        MultigridSolver(poisson, SHAPE).solve(np.ones((62, 63)))
    variable = Stencil(poisson.offsets, poisson.coefficient_arrays(SHAPE))
    with pytest.raises(ValueError, match="b: shape"):
        solve(variable, np.ones((63, 64)))
    with pytest.raises(ValueError, match="b: shape"):
        solve(poisson.to_sparse(SHAPE), np.ones(63 * 63 - 1), grid=SHAPE)


def test_cg_without_sweeps_given_takes_a_symmetric_cycle(poisson):
    """``accel="cg"`` alone, as a pyamg user writes it: the default V(1,2) is not symmetric, so CG takes V(1,1)
    (it was refused); sweeps that are given are kept, and an unsymmetric pair is refused by name."""
    b = _rhs()
    x, info = solve(poisson, b, accel="cg", rtol=1e-10)
    assert info.converged and info.iterations <= 12 and info.method == "CG preconditioned by V(1,1) rbgs"
    reference, _ = solve(poisson, b, rtol=1e-10)
    assert np.abs(x - reference).max() <= 1e-8 * np.abs(reference).max()
    assert solve(poisson, b, accel="cg", presmooth=2, postsmooth=2)[1].method == "CG preconditioned by V(2,2) rbgs"
    with pytest.raises(ValueError, match="accel: 'cg' needs a symmetric cycle"):
        solve(poisson, b, accel="cg", postsmooth=2)


@pytest.mark.parametrize("shape", [(2, 31), (31, 1), (5, 5, 2)])
def test_grids_too_small(shape):
    # The grid comes from b's shape here, so the message names b.
    with pytest.raises(ValueError, match="b: every side needs at least 3 points"):
        solve(Stencil.laplacian(len(shape)), np.ones(shape))
    with pytest.raises(ValueError, match=r"grid: every side needs at least 3 points; axis 0 has 2 \(grid \(2, 31\)\)"):
        MultigridSolver(Stencil.laplacian(2), grid=(2, 31))


def test_operator_on_the_meta_device_is_refused(poisson):
    with pytest.raises(ValueError, match="A: the stencil is on the 'meta' device"):
        solve(poisson.to("meta"), torch.ones(SHAPE, dtype=torch.float64))


def test_divergence_is_reported_not_raised():
    """An indefinite Helmholtz operator makes the V-cycle diverge: reported in info, x returned."""
    A = Stencil.laplacian(2, h=1 / 32)
    shifted = Stencil(A.offsets, A.coefficients - torch.tensor([0, 0, 2500.0, 0, 0], dtype=torch.float64))
    _, info = solve(shifted, _rhs(), maxiter=100)
    assert not info.converged and "diverged" in info.reason
    assert info.iterations < 100


def test_nan_is_reported():
    def broken(A, grid_shape, level):
        return Smoother(
            [ResidualCorrection(A, lambda r: r * float("nan"))], name="broken", symmetric=True, cost=1
        )

    _, info = solve(Stencil.laplacian(2), _rhs(), smoother=broken)
    assert not info.converged and "nan" in info.reason and info.iterations == 1


def test_maxiter_reason(poisson):
    _, info = solve(poisson, _rhs(), rtol=1e-12, maxiter=2)
    assert not info.converged and info.iterations == 2 and "maxiter=2 reached" in info.reason


def test_compiled_cycle_equals_eager_and_reports_compile_time_apart():
    """compile=True runs each cycle as one torch.compile graph (here on the CPU): the same iterates to
    round-off, the compile time in info.compile_seconds and paid once per shape."""
    import time

    A = Stencil.laplacian(2, h=1 / 16)
    b = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 15, 15)))
    eager, eager_info = solve(A, b, rtol=1e-12, max_coarse=50)
    solver = MultigridSolver(A, (15, 15), max_coarse=50, compile=True)
    start = time.perf_counter()
    x, info = solver.solve(b, rtol=1e-12)
    wall = time.perf_counter() - start
    assert info.compile_seconds > 0 and info.solve_seconds + info.compile_seconds <= wall
    assert np.array_equal(info.iterations, eager_info.iterations)
    assert float((x - eager).abs().max()) <= 1e-13 * float(eager.abs().max())
    _, again = solver.solve(b, rtol=1e-12)
    assert again.compile_seconds == 0.0
    with pytest.raises(TypeError, match="compile: expected True or False"):
        MultigridSolver(A, (15, 15), compile="yes")


def test_in_place_projection_equals_the_projection():
    from mgcore.solve import _orthogonal, _orthogonal_

    generator = torch.Generator().manual_seed(0)
    z = (torch.rand(6, 7, generator=generator) < 0.7).to(torch.float64)
    x = torch.randn(3, 1, 6, 7, generator=generator, dtype=torch.float64)
    expected = _orthogonal(x, z)
    y = x.clone()
    assert _orthogonal_(y, z) is y
    assert float((y - expected).abs().max()) < 1e-15
    assert float((y * z).flatten(1).sum(1).abs().max()) < 1e-13
    assert _orthogonal_(x, None) is x
    x32 = x.float()  # another dtype: projected through a float64 copy, still in place
    assert _orthogonal_(x32, z) is x32 and float((x32.double() - expected).abs().max()) < 1e-6


def test_sparse_coarsest_lu_equals_the_dense_one_and_differentiates(monkeypatch):
    import copy

    import mgcore.hierarchy as hierarchy_module
    import pde
    from mgcore.hierarchy import CoarseSolver

    mask = np.ones((19, 17), dtype=bool)
    mask[3:8, 4:9] = False  # decoupled rows: identity rows of a masked domain
    A = pde.poisson((19, 17), mask=mask, solution=None).A
    f = torch.randn(2, 1, 19, 17, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    monkeypatch.setattr(hierarchy_module, "SPARSE_LU_POINTS", 10**9)
    dense = CoarseSolver(A, (19, 17))
    monkeypatch.setattr(hierarchy_module, "SPARSE_LU_POINTS", 1)
    sparse = CoarseSolver(A, (19, 17))
    assert (dense.name, sparse.name) == ("dense LU", "sparse LU")
    expected = dense(f)
    assert torch.allclose(sparse(f), expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    # differentiable in the right-hand side: the gradient of <w, A^{-1} f> is A^{-T} w
    leaf = f.clone().requires_grad_()
    weights = torch.randn_like(f)
    (sparse(leaf) * weights).sum().backward()
    dense_leaf = f.clone().requires_grad_()
    (dense(dense_leaf) * weights).sum().backward()
    assert torch.allclose(leaf.grad, dense_leaf.grad, rtol=0, atol=1e-12 * float(dense_leaf.grad.abs().max()))
    # a deep copy converted to float32 keeps the sparse factors and answers in float32; densify on request
    single = copy.deepcopy(sparse).to(torch.float32)
    assert single.name == "sparse LU" and single(f.float()).dtype == torch.float32
    assert torch.allclose(single(f.float()).double(), expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    sparse.densify()
    assert sparse.name == "dense LU"
    assert torch.allclose(sparse(f), expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    # a singular operator is refused, naming A
    with pytest.raises(ValueError, match="A: the operator of the coarsest level"):
        CoarseSolver(Stencil(A.offsets, torch.zeros_like(A.coefficients)), (19, 17))
