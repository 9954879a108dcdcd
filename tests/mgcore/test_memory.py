"""``mgcore.memory``: the memory estimate of a solve and the refusal before set-up when it does not fit.

The available memory is replaced by a fixed number in these tests, so they do not depend on the machine.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import mgcore.memory
from mgcore import MultigridSolver, Stencil, build_hierarchy, kernels
from mgcore.cycles import cycle
from mgcore.memory import (
    MemoryEstimate,
    available_memory,
    check_device,
    check_memory,
    estimate_solve_memory,
    level_shapes,
)

GiB = 2**30


@pytest.fixture
def machine(monkeypatch):
    """Pretend the device has ``machine.free`` bytes free (64 GiB unless a test sets it)."""

    class Machine:
        free = 64 * GiB

    def fake(device="cpu"):
        return Machine.free

    monkeypatch.setattr(mgcore.memory, "available_memory", fake)
    return Machine


def test_level_shapes_match_build_hierarchy():
    for grid, max_coarse in (((63, 63), 100), ((100, 37), 50), ((15, 15, 15), 30), ((31, 31), 1000)):
        built = build_hierarchy(Stencil.laplacian(len(grid)), grid, max_coarse=max_coarse)
        assert level_shapes(grid, max_coarse) == [level.grid_shape for level in built.levels]


def test_level_shapes_follow_semicoarsening():
    for grid, axes, letters in (((63, 63), (0,), "x"), ((100, 37), (1,), "y"), ((15, 31, 15), (0, 2), "xz")):
        built = build_hierarchy(Stencil.laplacian(len(grid)), grid, max_coarse=30, coarsening=letters)
        assert level_shapes(grid, 30, coarsened=axes) == [level.grid_shape for level in built.levels]
    # auto on a strongly anisotropic stencil semicoarsens: the solver's estimate follows the fine level's choice
    # (an upper bound of the levels built) and covers what the hierarchy keeps.
    A = Stencil.from_kernel([[0, -1, 0], [-0.001, 2.002, -0.001], [0, -1, 0]])
    solver = mgcore.MultigridSolver(A, grid=(255, 255), smoother="auto", coarsening="auto", max_coarse=100)
    kept = sum(t.numel() * t.element_size() for t in solver.hierarchy().buffers())
    parts = solver.memory_estimate(batch=1).parts
    counted = sum(parts[k] for k in ("coarse operators", "smoothers", "transfers", "coarsest dense LU"))
    assert kept <= counted
    full = mgcore.MultigridSolver(A, grid=(255, 255), smoother="auto", coarsening="full", max_coarse=100)
    # Per level three cycle arrays: grid complexity 1.96 against 1.33, on top of the four fine solve arrays.
    assert parts["solve arrays"] > 1.2 * full.memory_estimate(batch=1).parts["solve arrays"]


@pytest.mark.parametrize(
    ("grid", "options"),
    [
        ((127, 127), {}),
        ((128, 100), {}),  # even sides: Galerkin coarse operators
        ((127, 127), {"smoother": "wjacobi", "coarse_operator": "galerkin"}),
        ((31, 31, 31), {}),  # 3D, 2 colours
        ((127, 127), {"interpolation": "operator"}),
    ],
)
def test_stored_parts_cover_the_hierarchy_buffers(grid, options):
    """The operators, smoothers, transfers and LU the estimate counts are what the hierarchy keeps (within 2x)."""
    A = Stencil.laplacian(len(grid))
    hierarchy = build_hierarchy(A, grid, max_coarse=100, **options)  # a small LU: the levels dominate
    # The smoothers' scaled masks of variable levels are formed at their first PyTorch step (the compiled CPU
    # loops need none, a GPU does): one cycle on the PyTorch path forms them all.
    with kernels.disabled(), torch.no_grad():
        cycle(hierarchy, None, torch.ones((1, 1, *grid), dtype=torch.float64))
    kept = sum(t.numel() * t.element_size() for t in hierarchy.buffers())
    parts = estimate_solve_memory(grid, stencil_points=len(A.offsets), max_coarse=100, **options).parts
    counted = sum(parts[k] for k in ("coarse operators", "smoothers", "transfers", "coarsest dense LU"))
    assert kept <= counted <= 2 * kept, (kept, counted, parts)


def test_estimate_grows_with_the_batch_and_the_coarsest_grid():
    one = estimate_solve_memory((511, 511), batch=1).total
    many = estimate_solve_memory((511, 511), batch=8).total
    # b, x, r and the update per right-hand side, and 3 cycle arrays per level for 4 cycled at once (2^20 points)
    points = sum(n * m for n, m in level_shapes((511, 511), 1000))
    assert many - one == 7 * 4 * 511 * 511 * 8 + 3 * (4 - 1) * points * 8
    lu = estimate_solve_memory((1023, 1023), max_coarse=10**9).parts["coarsest dense LU"]
    assert lu == 1023**4 * 8 + 1023**2 * 8  # the whole grid solved densely: 8 TB


def test_check_memory_refuses_with_the_estimate(machine):
    machine.free = 10 * 2**20
    estimate = estimate_solve_memory((1023, 1023), batch=1)
    with pytest.raises(MemoryError, match=r"grid: this needs about 116\.9 MiB \(smoothers 31\.9 MiB, .*\), but cpu has "
                       r"10\.0 MiB available"):
        check_memory(estimate, "cpu")
    machine.free = 200 * 2**20
    check_memory(estimate, "cpu")


def test_huge_grid_is_refused_before_anything_is_allocated(machine, monkeypatch):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the hierarchy was built before the memory check")

    monkeypatch.setattr(sys.modules["mgcore.solve"], "build_hierarchy", must_not_build)
    huge = r"grid: this needs about 2\.4 TiB .*smoothers 596\.0 GiB.*64\.0 GiB available"
    with pytest.raises(MemoryError, match=huge):
        MultigridSolver(Stencil.laplacian(2), grid=(100000, 100000))
    with pytest.raises(MemoryError, match=r"coarsest dense LU 8\.0 TiB"):
        MultigridSolver(Stencil.laplacian(2), grid=(1023, 1023), max_coarse=10**9)


def test_a_batch_too_large_is_refused_naming_b(machine):
    solver = MultigridSolver(Stencil.laplacian(2), grid=(63, 63))
    machine.free = 2**20
    b = np.broadcast_to(np.ones((63, 63)), (64, 63, 63))  # a view: the caller's batch costs nothing here
    # 64 * 4 * 63^2 float64 whole-batch arrays and 3 cycle arrays on (63^2 + 31^2) points for all 64 at once
    assert 64 * 4 * 63**2 * 8 + 3 * 64 * (63**2 + 31**2) * 8 == 15_700_992  # = 14.97 MiB
    with pytest.raises(MemoryError, match=r"b: this needs about 15\.0 MiB \(solve arrays 15\.0 MiB\)"):
        solver.solve(b)
    machine.free = 64 * GiB
    x, info = solver.solve(b[:2])
    assert info.converged.all() and x.shape == (2, 63, 63)


def test_memory_estimate_needs_a_grid():
    with pytest.raises(ValueError, match="grid: unknown until the first solve"):
        MultigridSolver(Stencil.laplacian(2)).memory_estimate()


def test_available_memory_is_read_on_this_machine():
    free = available_memory("cpu")
    assert free is None or 2**20 < free < 2**50
    assert available_memory("meta") is None


def test_estimate_str_lists_the_parts():
    estimate = MemoryEstimate({"a": 3 * 2**20, "b": 0, "c": 2**30})
    assert estimate.total == 2**30 + 3 * 2**20
    assert str(estimate) == "about 1.0 GiB (a 3.0 MiB, c 1.0 GiB)"


def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device: 'tpu' is not a torch device"):
        check_device("tpu", "--device")
    with pytest.raises(ValueError, match="device: 'mps' asked for, but this machine or torch build has no MPS"):
        if torch.backends.mps.is_available():  # pragma: no cover - Apple machines
            raise ValueError("device: 'mps' asked for, but this machine or torch build has no MPS (skipped)")
        check_device("mps")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert check_device("cuda").type == "cuda"
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="device: 'cuda:1' asked for, but torch sees no CUDA device"):
            check_device("cuda:1")
