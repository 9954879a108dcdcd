"""One options object for the hierarchy and the cycle, and one smoothing path for every smoother."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import mgcore.blocks
from mgcore import MultigridOptions, MultigridSolver, Stencil, build_hierarchy, cycle, solve
from mgcore.options import Cycle
from pde import LearnConfig, LearnedSmoother, measure_factor


def test_defaults_are_one_set_everywhere():
    """solve, MultigridSolver and build_hierarchy take their defaults from MultigridOptions alone."""
    default = MultigridOptions()
    solver = MultigridSolver(Stencil.laplacian(2), grid=(31, 31))
    assert solver.options == default
    h = build_hierarchy(Stencil.laplacian(2), (63, 63))
    assert (h[0].presmooth, h[0].postsmooth, h[0].smoother.name) == (1, 2, "rbgs")
    # Training keeps a deliberate V(2,2) and a small coarsest grid, as a value of the same object.
    assert LearnConfig().hierarchy == default.replace(presmooth=2, postsmooth=2, max_coarse=50)


def test_solve_accepts_max_coarse_and_an_options_object():
    A = Stencil.laplacian(2, h=1 / 64)
    b = np.ones((63, 63))
    x1, info1 = solve(A, b, max_coarse=10)
    x2, info2 = solve(A, b, options=MultigridOptions(max_coarse=10))
    assert np.array_equal(x1, x2) and info1.iterations == info2.iterations
    solver = MultigridSolver(A, (63, 63), max_coarse=10)
    assert solver.hierarchy()[-1].grid_shape == (3, 3)
    # Keywords override the object's fields.
    assert MultigridSolver(A, (63, 63), MultigridOptions(presmooth=1), postsmooth=3).options.label == "V(1,3) rbgs"


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"cycle": "X"}, ValueError, "cycle: unknown cycle 'X'"),
        ({"smoother": "sor"}, ValueError, "smoother: unknown name 'sor'"),
        ({"smoother": ("wjacobi", 0.8)}, ValueError, r"smoother: expected \(name, options dict\)"),
        ({"presmooth": -1}, ValueError, "presmooth: expected an integer >= 0; got -1"),
        ({"presmooth": 1.5}, TypeError, "presmooth: expected an integer >= 0; got 1.5"),
        ({"postsmooth": True}, TypeError, "postsmooth: expected an integer"),
        ({"presmooth": 0, "postsmooth": 0}, ValueError, "at least one smoothing sweep"),
        ({"coarse_operator": "rap"}, ValueError, "coarse_operator: expected one of 'auto', 'galerkin', 'rediscretize'"),
        ({"interpolation": "operator", "coarse_operator": "rediscretize"}, ValueError,
         "coarse_operator: interpolation"),
        ({"max_coarse": 0}, ValueError, "max_coarse: expected an integer >= 1; got 0"),
        ({"max_coarse": -5}, ValueError, "max_coarse: expected an integer >= 1; got -5"),
        ({"max_levels": 0}, ValueError, "max_levels: expected an integer >= 1"),
        ({"fas": "yes"}, TypeError, "fas: expected True or False"),
        ({"presweeps": 1}, TypeError, "unknown multigrid option 'presweeps'"),
    ],
)
def test_every_entry_point_rejects_the_same_bad_options(changes, error, match):
    A = Stencil.laplacian(2)
    calls = [
        lambda: MultigridOptions.resolve(None, changes),
        lambda: solve(A, np.ones((15, 15)), **changes),
        lambda: MultigridSolver(A, (15, 15), **changes),
        lambda: build_hierarchy(A, (15, 15), **changes),
        lambda: measure_factor(A, (15, 15), **changes),
    ]
    for call in calls:
        with pytest.raises(error, match=match):
            call()


def test_numpy_integers_are_accepted():
    options = MultigridOptions(presmooth=np.int64(1), max_coarse=np.int32(20))
    assert options.presmooth == 1 and type(options.presmooth) is int and options.max_coarse == 20


def test_command_line_options_come_from_the_fields():
    parser = argparse.ArgumentParser()
    MultigridOptions.add_arguments(parser)
    flags = {a.dest for a in parser._actions} - {"help"}
    assert flags == set(MultigridOptions.names())
    args = parser.parse_args(["--cycle", "F", "--max-coarse", "7", "--no-fas", "--coarse-operator", "galerkin"])
    options = MultigridOptions.from_arguments(args, MultigridOptions(postsmooth=2))
    assert options == MultigridOptions(cycle=Cycle.F, postsmooth=2, max_coarse=7, coarse_operator="galerkin")
    with pytest.raises(SystemExit):
        parser.parse_args(["--interpolation", "cubic"])


def _count_block_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = mgcore.blocks.residual_correction

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(mgcore.blocks, "residual_correction", counting)
    return calls


@pytest.mark.parametrize("smoother", ["rbgs", "wjacobi", "jacobi", "chebyshev", "learned"])
def test_every_smoother_runs_through_the_shared_block(monkeypatch, smoother):
    """Each step of every smoother, fixed or learned, is one call of mgcore.blocks.residual_correction, and
    its in-place execution (no autograd) equals the out-of-place one (autograd on) to round-off."""
    spec = LearnedSmoother(kernel_size=3) if smoother == "learned" else smoother
    A = Stencil.laplacian(2, h=1 / 32)
    h = build_hierarchy(A, (31, 31), smoother=spec, max_coarse=50)
    steps = sum(len(level.smoother.steps) * (level.presmooth + level.postsmooth) for level in h.levels[:-1])
    calls = _count_block_calls(monkeypatch)
    f = torch.randn(2, 1, 31, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = torch.randn_like(f)
    u_before, f_before = u.clone(), f.clone()
    with torch.no_grad():
        fast = cycle(h, u, f)
    assert calls[0] == steps
    assert torch.equal(u, u_before) and torch.equal(f, f_before)  # inputs untouched by the in-place path
    f_grad = f.clone().requires_grad_(True)
    recorded = cycle(h, u, f_grad)
    assert recorded.requires_grad
    recorded = recorded.detach()
    assert float((fast - recorded).abs().max()) <= 1e-13 * float(recorded.abs().max())


def test_smoother_zero_guess_and_workspace_do_not_alias_inputs():
    A = Stencil.laplacian(2)
    h = build_hierarchy(A, (15, 15), smoother="wjacobi", max_coarse=10)
    S = h[0].smoother
    f = torch.ones(1, 1, 15, 15, dtype=torch.float64)
    workspace = torch.full_like(f, 7.0)
    u = S(None, f, sweeps=3, workspace=workspace)
    assert torch.equal(f, torch.ones_like(f))
    v = S(torch.zeros_like(f), f, sweeps=3)
    assert torch.allclose(u, v, rtol=0, atol=1e-14)
    # An identity B would return f itself as the first iterate: the block copies it instead.
    step = mgcore.ResidualCorrection(A, torch.nn.Identity())
    first = step(None, f)
    assert first.data_ptr() != f.data_ptr()


def test_level_owns_the_workspace():
    h = build_hierarchy(Stencil.laplacian(2), (31, 31), max_coarse=10)
    f = torch.ones(1, 1, 31, 31, dtype=torch.float64)
    with torch.no_grad():
        cycle(h, None, f)
        first = h[0].workspace(f)
        cycle(h, None, f)
    assert h[0].workspace(f) is first  # reused between cycles
    assert not hasattr(h[0].smoother, "scratch")


def test_a_bad_coarse_operator_names_its_level():
    """A Galerkin coarse operator with a zero diagonal is reported with its level, not as the caller's A."""
    from mgcore.smoothers import make_smoother

    coefficients = torch.ones(5, 7, 7, dtype=torch.float64) * torch.tensor([-1.0, -1.0, 4.0, -1.0, -1.0])[:, None, None]
    coefficients[2, 3, 3] = 0.0
    A = Stencil([(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)], coefficients)
    with pytest.raises(ValueError, match=r"A: the coarse operator of level 2 \(grid \(7, 7\)\).*1 zero entries"):
        make_smoother("rbgs", A, (7, 7), 2)
    with pytest.raises(ValueError, match=r"^A: the diagonal has 1 zero entries"):
        make_smoother("rbgs", A, (7, 7), 0)
