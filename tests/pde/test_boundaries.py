"""Boundary conditions per face, masks and screening in pde: matrices against an independent assembly
(Kronecker sums of 1D operators built with scipy.sparse), O(h^2) convergence, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pde import poisson
from pde.boundaries import load_mask


def _one_d(n: int, low: str, high: str) -> tuple[sp.csr_matrix, np.ndarray, int]:
    """The 1D operator h^2 T, the lumped mass diagonal and the number of intervals, assembled directly."""
    if low == "periodic":
        T = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tolil()
        T[0, n - 1] = T[n - 1, 0] = -1.0
        return T.tocsr(), np.ones(n), n
    T = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tolil()
    mass = np.ones(n)
    if low == "neumann":
        T[0, 0], mass[0] = 1.0, 0.5
    if high == "neumann":
        T[n - 1, n - 1], mass[-1] = 1.0, 0.5
    intervals = n + 1 - (low != "dirichlet") - (high != "dirichlet")
    return T.tocsr(), mass, intervals


def _kron_all(factors) -> sp.csr_matrix:
    out = factors[0]
    for f in factors[1:]:
        out = sp.kron(out, f)
    return sp.csr_matrix(out)


def _independent(shape, faces, K=None, c=0.0, mask=None, mask_bc="dirichlet"):
    dim = len(shape)
    K = [1.0] * dim if K is None else K
    parts = [_one_d(n, lo, hi) for n, (lo, hi) in zip(shape, faces)]
    h = 1.0 / parts[0][2]
    A = sp.csr_matrix((math.prod(shape),) * 2)
    for k in range(dim):
        factors = [parts[k][0] if m == k else sp.diags(parts[m][1]) for m in range(dim)]
        A = A + K[k] / h**2 * _kron_all(factors)
    W = _kron_all([sp.diags(p[1]) for p in parts])
    A = A + sp.diags(np.broadcast_to(c, shape).ravel()) @ W
    if mask is not None:
        a = mask.ravel()
        A = A.tolil()
        cross = sp.csr_matrix(A)[a][:, ~a]
        A = sp.csr_matrix(A)
        keep = sp.diags(a.astype(float))
        A = keep @ A @ keep
        if mask_bc == "neumann":
            lost = np.zeros(a.size)
            lost[a] = np.asarray(cross.sum(axis=1)).ravel()
            A = A + sp.diags(lost)
        A = A + sp.diags((~a) * 2.0 * sum(K) / h**2)
    return sp.csr_matrix(A)


FACES = {
    "dirichlet": (("dirichlet", "dirichlet"),) * 2,
    "neumann": (("neumann", "neumann"),) * 2,
    "periodic": (("periodic", "periodic"),) * 2,
    "mixed": (("periodic", "periodic"), ("neumann", "dirichlet")),
    "mixed2": (("dirichlet", "neumann"), ("neumann", "neumann")),
}


@pytest.mark.parametrize("name", list(FACES))
@pytest.mark.parametrize("shape", [(6, 6), (8, 5), (7, 10)])
def test_matrix_equals_kronecker_assembly(name, shape):
    faces = FACES[name]
    if faces[0][0] == "periodic" and shape[0] % 2:
        shape = (shape[0] + 1, shape[1])
    p = poisson(shape, bc=[faces[0], faces[1]])
    M = p.to_sparse()
    expected = _independent(shape, faces)
    assert abs(M - expected).max() <= 1e-12 * abs(expected).max()
    assert (M != M.T).nnz == 0  # symmetric exactly


def test_matrix_3d_screened_and_masked():
    faces = (("neumann", "neumann"), ("periodic", "periodic"), ("dirichlet", "neumann"))
    c = np.random.default_rng(0).uniform(0, 3, (5, 6, 4))
    p = poisson((5, 6, 4), bc=faces, screen=c)
    expected = _independent((5, 6, 4), faces, c=c)
    assert abs(p.to_sparse() - expected).max() <= 1e-12 * abs(expected).max()
    mask = np.random.default_rng(1).uniform(size=(9, 8)) > 0.3
    for mask_bc in ("dirichlet", "neumann"):
        faces2 = FACES["mixed"]
        # Dirichlet faces keep every part of the mask held down; Neumann on the mask needs that.
        q = poisson((8, 9), bc="dirichlet", mask=mask.T.copy(), mask_bc=mask_bc)
        expected = _independent((8, 9), FACES["dirichlet"], mask=mask.T.copy(), mask_bc=mask_bc)
        assert abs(q.to_sparse() - expected).max() <= 1e-12 * abs(expected).max(), mask_bc
    q = poisson((8, 9), bc=faces2, mask=mask.T.copy(), screen=1.0)
    expected = _independent((8, 9), faces2, c=1.0, mask=mask.T.copy())
    assert abs(q.to_sparse() - expected).max() <= 1e-12 * abs(expected).max()


def _disk(shape, start, h):
    axes = [(np.arange(n) + s) * h for n, s in zip(shape, start)]
    X = np.meshgrid(*axes, indexing="ij")
    return sum((x - 0.5) ** 2 for x in X) < 0.35**2


ORDER_CASES = {
    "neumann": dict(bc="neumann"),
    "periodic": dict(bc="periodic"),
    "mixed": dict(bc=("periodic", ("neumann", "dirichlet"))),
    "screened": dict(bc="neumann", screen=5.0),
    "masked": dict(mask="disk"),
    # zero flux through the staircase edge but for the solution's own: singular, projected, zero mean
    "masked, Neumann edge": dict(mask="disk", mask_bc="neumann"),
    "neumann3d": dict(bc="neumann", dim=3),
}


@pytest.mark.parametrize("name", list(ORDER_CASES))
def test_second_order_convergence(name):
    case = dict(ORDER_CASES[name])
    dim = case.pop("dim", 2)
    sizes = (8, 16, 32) if dim == 3 else (16, 32, 64)
    errors = []
    for n in sizes:
        shape = (n,) * dim
        if case.get("mask") == "disk":
            h = 1.0 / (n + 1)
            p = poisson(shape, mask=_disk(shape, (1, 1), h), mask_bc=case.get("mask_bc", "dirichlet"),
                        solution=lambda x, y: torch.exp(x) * torch.sin(2 * y))
        else:
            p = poisson(shape, **case)
        errors.append(p.error(p.direct_solve()))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert min(orders) > 1.8, (errors, orders)


def test_singular_problem_is_projected_and_zero_mean():
    p = poisson((12, 12), bc="neumann")
    assert p.null_space is not None and float(p.f.sum()) == pytest.approx(0.0, abs=1e-9)
    assert abs(float(p.exact.mean())) < 1e-14
    u = p.direct_solve()
    assert abs(float(u.mean())) < 1e-12
    assert poisson((12, 12), bc="neumann", screen=1.0).null_space is None
    assert poisson((12, 12), bc=("periodic", ("neumann", "dirichlet"))).null_space is None


def test_a_neumann_edged_domain_is_singular_unless_it_reaches_a_dirichlet_face():
    """Dirichlet faces hold the constant down only where the domain touches them: a disk with Neumann conditions
    on its edge inside a Dirichlet box is singular (its constants are the null space), a region that reaches
    the box's edge is not."""
    x = (np.arange(31) + 1) / 32
    X, Y = np.meshgrid(x, x, indexing="ij")
    disk = (X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.3**2
    p = poisson((31, 31), mask=disk, mask_bc="neumann")
    assert p.A.faces == (("dirichlet", "dirichlet"),) * 2
    assert p.null_space is not None and torch.equal(p.null_space.bool(), torch.from_numpy(disk))
    assert abs(float(p.f[p.null_space.bool()].sum())) < 1e-9 * float(p.f.abs().sum())  # projected
    reaching = disk | (np.arange(31)[:, None] < 16) & (np.abs(np.arange(31) - 15)[None, :] < 2)  # a strip to y = 0
    assert poisson((31, 31), mask=reaching, mask_bc="neumann").null_space is None


def test_bad_input_is_rejected():
    mask = np.ones((8, 8), dtype=bool)
    with pytest.raises(ValueError, match="mask: has no active point"):
        poisson((8, 8), mask=np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="mask: expected shape"):
        poisson((8, 9), mask=mask)
    with pytest.raises(TypeError, match="mask: expected a boolean"):
        poisson((8, 8), mask=mask.astype(float))
    with pytest.raises(ValueError, match=r"screen: .*c >= 0"):
        poisson((8, 8), screen=-1.0)
    with pytest.raises(ValueError, match=r"screen: .*c >= 0 everywhere; got c = inf$"):  # the value given
        poisson((8, 8), screen=float("inf"))
    c = np.ones((8, 8))
    c[3, 3] = -0.5
    before = c.copy()
    with pytest.raises(ValueError, match=r"screen: .* got c = -0\.5$"):
        poisson((8, 8), screen=c)
    np.testing.assert_array_equal(c, before)
    with pytest.raises(ValueError, match="bc: "):
        poisson((8, 8), bc="robin")
    with pytest.raises(ValueError, match="bc: axis 1 is periodic on one face only"):
        poisson((8, 8), bc=("dirichlet", ("periodic", "neumann")))
    with pytest.raises(ValueError, match="solution: 'mixed'"):
        poisson((8, 8), bc="periodic", solution="mixed")
    two_parts = np.zeros((8, 8), dtype=bool)
    two_parts[1:3, 1:3] = two_parts[5:7, 5:7] = True
    with pytest.raises(ValueError, match="mask: the active points form 2 disconnected parts"):
        poisson((8, 8), bc="neumann", mask=two_parts, mask_bc="neumann")
    unchanged = mask.copy()
    poisson((8, 8), mask=mask)
    np.testing.assert_array_equal(mask, unchanged)


def test_load_mask(tmp_path):
    import matplotlib.pyplot as plt

    image = np.zeros((6, 9))
    image[2:5, 1:7] = 1.0
    path = tmp_path / "m.png"
    plt.imsave(path, image, cmap="gray")
    mask = load_mask(str(path))
    np.testing.assert_array_equal(mask, image > 0.5)
    with pytest.raises(ValueError, match="mask: the image"):
        load_mask(str(path), (9, 6))
    with pytest.raises(ValueError, match="mask: cannot read"):
        load_mask(str(tmp_path / "missing.png"))


def test_cli_bc_mask_screen(tmp_path, capsys):
    import matplotlib.pyplot as plt

    from mgnet.cli import main

    assert main(["solve", "--shape", "32", "31", "--bc", "periodic", "neumann:dirichlet", "--screen", "2",
                 "--max-coarse", "20"]) == 0
    assert "converged         True" in capsys.readouterr().out
    x = np.linspace(0, 1, 30)
    X, Y = np.meshgrid(x, x, indexing="ij")
    path = tmp_path / "disk.png"
    plt.imsave(path, ((X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.16).astype(float), cmap="gray")
    assert main(["solve", "--mask", str(path), "--max-coarse", "20"]) == 0
    out = capsys.readouterr().out
    assert "on 30 x 30" in out and "masked" in out
    assert main(["solve", "--shape", "33", "33", "--bc", "periodic"]) == 2
    assert "grid: periodic axis 0 has 33 points" in capsys.readouterr().err
    assert main(["solve", "--screen", "-1"]) == 2
    assert "screen:" in capsys.readouterr().err
    assert main(["solve", "--mask", str(tmp_path / "none.png")]) == 2
    assert "mask: cannot read" in capsys.readouterr().err
    # The image's size is the grid: a --shape that differs is refused, one that agrees is accepted.
    assert main(["solve", "--mask", str(path), "--shape", "31", "30"]) == 2
    assert capsys.readouterr().err == (
        f"mgnet solve: --shape: 31 30 differs from the --mask image {str(path)!r}, which is 30 x 30 pixels (its "
        "size is the grid); omit --shape or give 30 30\n"
    )
    assert main(["solve", "--mask", str(path), "--shape", "30", "30", "--max-coarse", "20"]) == 0
    assert "on 30 x 30" in capsys.readouterr().out


def test_cli_memory_check_takes_the_mask_images_size(tmp_path, capsys, monkeypatch):
    """The memory check comes before the problem is built, for the grid of the image (not the default 255^2)."""
    import matplotlib.pyplot as plt

    import mgcore.memory
    import pde.cli
    from mgnet.cli import main

    path = tmp_path / "large.png"
    plt.imsave(path, np.ones((1200, 1100)), cmap="gray")

    def forbidden(*args, **kwargs):
        raise AssertionError("the problem was built before the memory check")

    monkeypatch.setattr(pde.cli, "_problem", forbidden)
    # enough for a 255^2 solve (about 40 MB), not for 1200 x 1100
    monkeypatch.setattr(mgcore.memory, "available_memory", lambda device="cpu": 100 * 2**20)
    assert main(["solve", "--mask", str(path)]) == 2
    assert capsys.readouterr().err.startswith("mgnet solve: --mask: this needs about ")
