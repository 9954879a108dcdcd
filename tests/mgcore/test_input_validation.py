"""The entry checks of ``mgcore.solve``/``MultigridSolver``: every bad input is one error naming the parameter,
every good layout simply works, and nothing the caller owns is changed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from mgcore import MultigridSolver, Stencil, solve

GRID = (31, 31)


@pytest.fixture
def A():
    return Stencil.laplacian(2, h=1.0 / 32)


def _rhs(*batch, shape=GRID, seed=0):
    return np.random.default_rng(seed).standard_normal((*batch, *shape))


def _reference(A, b, grid=GRID):
    return spla.spsolve(A.to_sparse(grid).tocsc(), np.asarray(b, dtype=np.float64).reshape(-1)).reshape(grid)


# ---------------------------------------------------------------------------------------------- layouts
def test_negative_strides_work(A):
    b = _rhs()
    flipped = np.flipud(b)
    assert flipped.strides[0] < 0
    before = flipped.copy()
    x, info = solve(A, flipped, rtol=1e-10)
    assert info.converged
    np.testing.assert_allclose(x, _reference(A, flipped), rtol=0, atol=1e-9 * np.abs(x).max())
    np.testing.assert_array_equal(flipped, before)


@pytest.mark.parametrize(
    "make",
    [
        lambda b: np.asfortranarray(b),
        lambda b: b[:, ::-1],
        lambda b: b.astype(">f8"),  # big-endian: torch reads native byte order only
        lambda b: np.broadcast_to(b[0], GRID),  # read-only, zero stride
        lambda b: torch.from_numpy(b.copy()).T,
        lambda b: torch.from_numpy(np.stack([b, b], axis=-1))[..., 1],  # non-contiguous view
    ],
    ids=["fortran", "reversed-columns", "big-endian", "broadcast", "torch-transposed", "torch-strided"],
)
def test_memory_layouts_agree_with_spsolve(A, make):
    b = make(_rhs())
    x, info = solve(A, b, rtol=1e-10)
    assert info.converged and tuple(x.shape) == GRID
    reference = _reference(A, np.asarray(b))
    np.testing.assert_allclose(np.asarray(x), reference, rtol=0, atol=1e-9 * np.abs(reference).max())


def test_empty_batch_returns_empty_results(A):
    """As numpy.linalg.solve and scipy's spsolve do for zero right-hand sides."""
    x, info = solve(A, np.zeros((0, *GRID)))
    assert x.shape == (0, *GRID) and isinstance(x, np.ndarray)
    assert info.converged.shape == (0,) and info.iterations.shape == (0,) and info.residuals.shape == (0, 1)
    assert "empty batch" in str(info)
    xt, infot = MultigridSolver(A, GRID).solve(torch.zeros(2, 0, 31 * 31, dtype=torch.float32))
    assert isinstance(xt, torch.Tensor) and xt.shape == (2, 0, 961) and xt.dtype == torch.float32
    assert infot.converged.shape == (2, 0)


# ---------------------------------------------------------------------------------------------- devices
def test_meta_device_is_refused_by_name(A):
    with pytest.raises(ValueError, match="device: 'meta' tensors hold no values"):
        solve(A, _rhs(), device="meta")
    with pytest.raises(ValueError, match="b: a tensor on the 'meta' device holds no values"):
        solve(A, torch.zeros(GRID, dtype=torch.float64, device="meta"))
    assert A.coefficients.device.type == "cpu"  # the caller's stencil did not move


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "device: 'tpu' is not a torch device"), (3, "device: expected a device name")],
)
def test_malformed_devices(A, device, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MultigridSolver(A, GRID, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_error(A):
    with pytest.raises(ValueError, match="device: 'cuda' asked for, but torch sees no CUDA device"):
        solve(A, _rhs(), device="cuda")


def test_the_callers_stencil_is_never_converted_in_place(A):
    solver = MultigridSolver(A, GRID)
    single = solver.operator(torch.float32, torch.device("cpu"))
    assert single.coefficients.dtype == torch.float32
    assert A.coefficients.dtype == torch.float64 and solver.A is A


# ---------------------------------------------------------------------------------------------- operators
@pytest.mark.parametrize("factorisation", ["dense", "sparse"])
def test_a_singular_coarsest_operator_is_named(monkeypatch, factorisation):
    """A centred first difference along axis 0 is skew-symmetric of odd size per column: singular."""
    import mgcore.hierarchy

    monkeypatch.setattr(mgcore.hierarchy, "SPARSE_LU_POINTS", 10**9 if factorisation == "dense" else 256)
    skew = Stencil.from_kernel([[0, -1, 0], [0, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"A: the operator of the coarsest level \(level 0, grid \(31, 31\)") as err:
        solve(skew, np.ones(GRID))
    if factorisation == "dense":
        assert "is singular (U[931,931] is zero)" in str(err.value)
    else:
        assert "solved by sparse LU) is singular" in str(err.value)


def test_a_problem_stencil_refuses_another_grid():
    """The coefficients of pde.poisson((31, 31)).A hold h = 1/32: a 30 x 31 b would be solved with a wrong h."""
    A = Stencil.laplacian(2, h=1 / 32, grid_shape=GRID)
    with pytest.raises(ValueError, match=r"b: shape \(30, 31\) does not match the operator's grid \(31, 31\)"):
        solve(A, np.ones((30, 31)))
    with pytest.raises(ValueError, match=r"grid: \(63, 63\) does not match the stencil's grid \(31, 31\)"):
        solve(A, np.ones((63, 63)), grid=(63, 63))
    x, info = solve(A, np.ones(GRID))
    assert info.converged and x.shape == GRID
    assert A.to_sparse().shape == (961, 961)  # the recorded grid is the default of to_sparse too


def test_grid_shape_hint_is_checked():
    with pytest.raises(ValueError, match="grid_shape: expected 2 positive sizes"):
        Stencil.laplacian(2, grid_shape=(5,))
    variable = Stencil([(0, 0)], torch.ones(1, 4, 5))
    assert variable.grid_shape == (4, 5)
    with pytest.raises(ValueError, match=r"grid_shape: \(5, 4\) does not match the coefficients' grid \(4, 5\)"):
        Stencil([(0, 0)], torch.ones(1, 4, 5), grid_shape=(5, 4))


# ---------------------------------------------------------------------------------------------- callback
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("accel", [None, "cg"])
def test_the_callback_gets_a_copy(A, kind, accel):
    b = _rhs()
    b = torch.from_numpy(b) if kind == "torch" else b
    solver = MultigridSolver(A, GRID, presmooth=1, postsmooth=1, max_coarse=10)  # real cycles, not one LU
    x_plain, info_plain = solver.solve(b, accel=accel, rtol=1e-10)
    kept = []

    def vandal(xk):
        kept.append(xk)
        xk.fill(0) if kind == "numpy" else xk.zero_()

    x, info = solver.solve(b, accel=accel, rtol=1e-10, callback=vandal)
    assert info.converged and info.iterations == info_plain.iterations >= 3
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x_plain))
    assert len(kept) == info.iterations and all(float(np.abs(np.asarray(k)).max()) == 0.0 for k in kept)


def test_a_converted_stencil_applies_its_converted_values():
    """``Stencil.to(float32)`` once kept applying the float64 values while ``to_sparse`` showed rounded ones."""
    A = Stencil.from_kernel([[0, -1, 0], [-0.169, 338.338, -0.169], [0, -1, 0]]).to(torch.float32).double()
    x = np.random.default_rng(0).standard_normal((12, 3))
    applied = A(torch.from_numpy(x)[None, None])[0, 0].numpy().ravel()
    assert np.abs(applied - A.to_sparse((12, 3)) @ x.ravel()).max() < 1e-12
