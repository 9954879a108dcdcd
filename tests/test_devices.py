"""Solves on every available device against SciPy (and, on a GPU, against the CPU float64 solve).

The CUDA cases carry the ``cuda`` marker and are skipped where torch sees no CUDA device; the same cases run on
the CPU in CI, so the code they exercise is never CUDA-only.  On a GPU: ``pytest -m cuda tests/test_devices.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import mgcore
import pde
from pde.problems import diffusion

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


def _reference(problem, b: np.ndarray) -> np.ndarray:
    """spsolve; a singular matrix is bordered by its null vector, whose component the solution then lacks."""
    A = problem.to_sparse()
    z = None if problem.null_space is None else problem.null_space.numpy().reshape(-1, 1)
    if z is not None:
        A = sp.bmat([[A, sp.csr_matrix(z)], [sp.csr_matrix(z.T), None]])
    A = A.tocsc()
    pad = [] if z is None else [0.0]
    return np.stack([
        spla.spsolve(A, np.append(v.ravel(), pad))[: v.size].reshape(v.shape)
        for v in b.reshape(-1, *problem.grid_shape)
    ])


def _compatible(problem, b: np.ndarray) -> np.ndarray:
    """``b`` less its component along a singular problem's null vector (every right-hand side)."""
    if problem.null_space is None:
        return b
    z = problem.null_space.numpy()
    return b - z * (b * z).sum(axis=tuple(range(b.ndim - z.ndim, b.ndim)), keepdims=True) / z.sum()


def _disk(n: int) -> np.ndarray:
    x = (np.arange(n) + 1) / (n + 1)
    X, Y = np.meshgrid(x, x, indexing="ij")
    return (X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.4**2


def _cases():
    rng = np.random.default_rng(0)
    lognormal = pde.lognormal_diffusion((31, 31), 1.0, seed=0)
    learned = pde.LearnedSmoother(kernel_size=3)
    return {
        "2d": (pde.poisson((33, 30)), {}, rng.standard_normal((33, 30))),
        "3d": (pde.poisson((13, 10, 11)), {}, rng.standard_normal((13, 10, 11))),
        "batched": (pde.poisson((31, 31)), {}, rng.standard_normal((3, 31, 31))),
        "variable": (lognormal, {}, rng.standard_normal((31, 31))),
        "operator_interpolation": (lognormal, {"interpolation": "operator"}, rng.standard_normal((31, 31))),
        "learned": (pde.poisson((31, 31)), {"smoother": learned, "postsmooth": 2}, rng.standard_normal((31, 31))),
        "pcg": (pde.poisson((31, 31)), {"presmooth": 1, "postsmooth": 1, "accel": "cg"},
                rng.standard_normal((31, 31))),
        "float32_refinement": (pde.poisson((31, 31)), {"cycle_dtype": torch.float32}, rng.standard_normal((31, 31))),
        # auto: zebra lines, semicoarsening, and the exact fast-diagonalisation solve of the thin 127 x 31 grid.
        "anisotropic_auto": (pde.anisotropic((127, 127), 0.001), {"smoother": "auto", "coarsening": "auto"},
                             rng.standard_normal((127, 127))),
        # Constant stencils with box-scheme Neumann faces (mirrored neighbours, half rows), and periodic ones.
        "neumann_screened": (pde.poisson((33, 33), bc="neumann", screen=1.0), {}, rng.standard_normal((33, 33))),
        "periodic_screened": (pde.poisson((32, 32), bc="periodic", screen=1.0), {}, rng.standard_normal((32, 32))),
        "diffusion_jump": (diffusion(np.where(np.arange(32)[:, None] < 15, 1.0, 100.0) * np.ones((32, 32))), {},
                           rng.standard_normal((31, 31))),
        # Singular (the constants): pure Neumann, fully periodic in 3D, a Neumann-edged disk; the right-hand
        # sides are made compatible below.
        "neumann_singular": (pde.poisson((33, 30), bc="neumann", solution=None), {}, rng.standard_normal((2, 33, 30))),
        "periodic_3d": (pde.poisson((16, 8, 12), bc="periodic", solution=None), {}, rng.standard_normal((16, 8, 12))),
        "mixed": (pde.poisson((32, 21), bc=("periodic", ("neumann", "dirichlet")), solution=None), {},
                  rng.standard_normal((32, 21))),
        "disk": (pde.poisson((63, 63), mask=_disk(63), solution=None), {}, rng.standard_normal((63, 63))),
        "neumann_disk": (pde.poisson((63, 63), bc="neumann", mask=_disk(63), solution=None), {},
                         rng.standard_normal((63, 63))),
        "disk_pcg": (pde.poisson((63, 63), mask=_disk(63), solution=None), {"accel": "cg"},
                     rng.standard_normal((63, 63))),
        # Zebra lines on periodic and Neumann faces: cyclic lines (Sherman-Morrison) along the periodic x.
        "aniso_periodic_lines": (pde.anisotropic((64, 63), 0.01, bc=("periodic", "neumann"), solution=None),
                                 {"smoother": "auto"}, rng.standard_normal((64, 63))),
        "screened_field": (pde.poisson((31, 31), screen=np.linspace(0.0, 50.0, 961).reshape(31, 31), solution=None),
                           {"cycle_dtype": torch.float32}, rng.standard_normal((31, 31))),
    }


CASES = _cases()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_solve_on_device_matches_scipy_and_cpu(device, case):
    problem, options, b = CASES[case]
    b = _compatible(problem, b)
    options = dict(options)
    accel = options.pop("accel", None)
    bt = torch.from_numpy(b).to(device)
    x, info = mgcore.solve(problem.A.to(device), bt, rtol=1e-12, maxiter=60, accel=accel, max_coarse=50, **options)
    assert np.all(info.converged)
    assert x.device.type == device and x.dtype == torch.float64
    reference = _reference(problem, b).reshape(b.shape)
    x = x.cpu().numpy()
    assert np.abs(x - reference).max() <= 1e-10 * np.abs(reference).max()
    if device != "cpu":
        x_cpu, _ = mgcore.solve(problem.A, torch.from_numpy(b), rtol=1e-12, maxiter=60, accel=accel, max_coarse=50,
                                **options)
        assert np.abs(x - x_cpu.numpy()).max() <= 1e-12 * np.abs(reference).max()


@pytest.mark.parametrize("device", DEVICES)
def test_fmg_on_device_reaches_discretisation_accuracy(device):
    problem = pde.poisson((127, 127))
    solver = mgcore.MultigridSolver(problem.A.to(device), (127, 127))
    x = solver.fmg(problem.f.to(device))
    exact_discrete = torch.from_numpy(_reference(problem, problem.f.numpy()).reshape(127, 127))
    # FMG's algebraic error is below the discretisation error (Trottenberg et al. 2001, section 2.6).
    assert problem.error(x.cpu()) <= 1.1 * problem.error(exact_discrete)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compiled_cycles_on_a_masked_domain_equal_eager_ones_on_the_gpu():
    """The CPU twin is tests/mgcore/test_boundary.py::test_compiled_cycles_on_masked_domains_equal_eager_ones."""
    problem = pde.poisson((255, 255), bc="neumann", mask=_disk(255), solution=None)
    b = torch.from_numpy(_compatible(problem, np.random.default_rng(1).standard_normal((255, 255)))).cuda()
    A = problem.A.cuda()
    eager, eager_info = mgcore.solve(A, b, rtol=1e-10)
    x, info = mgcore.solve(A, b, rtol=1e-10, compile=True)
    assert "band" in info.method and info.iterations == eager_info.iterations
    assert float((x - eager).abs().max()) <= 1e-12 * float(eager.abs().max())
