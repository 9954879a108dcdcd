"""Boundary conditions of every problem builder: ``diffusion``/``lognormal_diffusion`` and
``rotated_anisotropic`` with ``bc=``, Neumann data ``flux=``; matrices and right-hand sides against
independent assemblies (cell by cell loops, Kronecker products with scipy.sparse), O(h^2) convergence of
manufactured solutions, multigrid against spsolve."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyamg
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import mgcore
import pde
from mgcore.operators import parse_faces


# ------------------------------------------------------------------------ independent assemblies
def _layout(shape, faces):
    start = [1 if low == "dirichlet" else 0 for low, _ in faces]
    intervals = [
        n if low == "periodic" else n + 1 - (low != "dirichlet") - (high != "dirichlet")
        for n, (low, high) in zip(shape, faces)
    ]
    return start, intervals


def _diffusion_by_cells(a, shape, faces, rhs, boundary, flux):
    """Matrix and right-hand side of the box scheme, assembled cell by cell: every cell gives each of its
    ``2^(d-1)`` edges along each axis ``a_cell / 2^(d-1)``; an edge to a node beyond a Dirichlet face is
    lifted, an edge along a Neumann face only gets the cell inside; the flux of a Neumann face point is the
    weight of its edges normal to the face."""
    dim = len(shape)
    start, intervals = _layout(shape, faces)
    h = 1.0 / intervals[0]
    N = math.prod(shape)
    A = sp.lil_matrix((N, N))
    f = np.zeros(shape)
    flux_weight = [np.zeros(shape) for _ in range(dim)]  # per axis: the edges normal to its faces

    def unknown(full):
        index = []
        for j, n, s, (low, _) in zip(full, shape, start, faces):
            i = j % n if low == "periodic" else j - s
            if not 0 <= i < n:
                return None
            index.append(i)
        return tuple(index)

    for cell in itertools.product(*(range(m) for m in intervals)):
        for k in range(dim):
            for corner in itertools.product(*([0] if m == k else [0, 1] for m in range(dim))):
                p_full = tuple(c + d for c, d in zip(cell, corner))
                q_full = tuple(v + (m == k) for m, v in enumerate(p_full))
                w = a[cell] / 2 ** (dim - 1)
                p, q = unknown(p_full), unknown(q_full)
                for x, y, y_full in ((p, q, q_full), (q, p, p_full)):
                    if x is None:
                        continue
                    row = np.ravel_multi_index(x, shape)
                    A[row, row] += w
                    if y is not None:
                        A[row, np.ravel_multi_index(y, shape)] -= w
                    else:
                        # A periodic axis holds one period: its node n is node 0, at x = 0.
                        point = [(v % n if lo == "periodic" else v) * h for v, n, (lo, _) in zip(y_full, shape, faces)]
                        f[x] += w * boundary(*(torch.tensor(c, dtype=torch.float64) for c in point)).item()
                    if any(faces[k][side] == "neumann" and x[k] == (0, shape[k] - 1)[side] for side in (0, 1)):
                        flux_weight[k][x] += w
    f /= h**2
    mass = np.ones(shape)
    for k, (low, high) in enumerate(faces):
        view = [1] * dim
        view[k] = -1
        m = np.ones(shape[k])
        m[0] *= 0.5 if low == "neumann" else 1.0
        m[-1] *= 0.5 if high == "neumann" else 1.0
        mass = mass * m.reshape(view)
    f += mass * rhs
    for k in range(dim):
        for side in (0, 1):
            if faces[k][side] == "neumann":
                layer = [slice(None)] * dim
                layer[k] = slice(0, 1) if side == 0 else slice(shape[k] - 1, shape[k])
                f[tuple(layer)] += flux_weight[k][tuple(layer)] * flux[k][side] / h
    return sp.csr_matrix(A) / h**2, f


DIFFUSION_CASES = [
    ((7, 9), "neumann"),
    ((8, 8), "periodic"),
    ((6, 9), ("periodic", ("neumann", "dirichlet"))),
    ((9, 6), (("dirichlet", "neumann"), "neumann")),
    ((5, 6, 4), ("neumann", "periodic", ("dirichlet", "neumann"))),
]


@pytest.mark.parametrize(("shape", "bc"), DIFFUSION_CASES)
def test_diffusion_matrix_and_rhs_equal_a_cell_by_cell_assembly(shape, bc):
    faces = parse_faces(bc, len(shape))
    _, intervals = _layout(shape, faces)
    rng = np.random.default_rng(len(shape) + shape[0])
    a = np.exp(rng.standard_normal(intervals))
    rhs = rng.standard_normal(shape)
    boundary = lambda *x: 1.0 + x[0] * x[1] - 0.5 * x[-1] ** 2  # noqa: E731
    flux = []
    for k in range(len(shape)):
        face = tuple(n for m, n in enumerate(shape) if m != k)
        flux.append(tuple(rng.standard_normal(face) if kind == "neumann" else None for kind in faces[k]))
    p = pde.diffusion(a, bc=bc, rhs=rhs, boundary=boundary, flux=flux)
    assert p.grid_shape == shape
    flux_layers = [
        [np.zeros(1) if g is None else np.expand_dims(g, k) for g in pair] for k, pair in enumerate(flux)
    ]
    A_ref, f_ref = _diffusion_by_cells(a, shape, faces, rhs, boundary, flux_layers)
    M = p.to_sparse()
    assert abs(M - A_ref).max() <= 1e-12 * abs(A_ref).max()
    assert (M != M.T).nnz == 0  # symmetric exactly
    if p.null_space is not None:  # singular: f projected onto the range (constants)
        f_ref = f_ref - f_ref.mean()
    np.testing.assert_allclose(p.f.numpy(), f_ref, rtol=1e-12, atol=1e-12 * np.abs(f_ref).max())


@pytest.mark.parametrize(
    "bc", ["neumann", ("periodic", ("neumann", "dirichlet")), (("dirichlet", "neumann"), "periodic")]
)
def test_diffusion_with_a_constant_coefficient_is_the_axis_aligned_problem(bc):
    shape = (8, 7) if bc == "neumann" else (8, 8)
    faces = parse_faces(bc, 2)
    _, intervals = _layout(shape, faces)
    p = pde.diffusion(np.full(intervals, 3.0), bc=bc)
    q = pde.poisson(shape, bc=bc, solution=None, rhs=lambda x, y: 0 * x + 1 / 3)
    assert abs(p.to_sparse() - 3.0 * q.to_sparse()).max() <= 1e-12 * abs(p.to_sparse()).max()
    np.testing.assert_allclose(p.f.numpy(), 3.0 * q.f.numpy(), rtol=1e-13, atol=1e-13)


def _rotated_kernel(eps, theta):
    return pyamg.gallery.diffusion_stencil_2d(epsilon=eps, theta=theta, type="FD")


def _shift(n, v, periodic):
    S = sp.eye(n, k=v, format="lil")
    if periodic and v:
        S[(n - 1, 0) if v > 0 else (0, n - 1)] = 1.0
    return sp.csr_matrix(S)


def _periodic_cases():
    """(shape, bc, u, u_xx, u_xy, u_yy): u periodic along the periodic axes of each grid (its period L = n h)."""
    s, c, tau = torch.sin, torch.cos, 2 * math.pi
    w = tau / 1.25  # axis 1 of (7, 10) with Dirichlet axis 0: h = 1/8, period 10 h = 1.25
    return [
        ((8, 8), "periodic", lambda x, y: s(tau * x) * c(tau * y), lambda x, y: -tau**2 * s(tau * x) * c(tau * y),
         lambda x, y: -tau**2 * c(tau * x) * s(tau * y), lambda x, y: -tau**2 * s(tau * x) * c(tau * y)),
        ((6, 9), ("periodic", "dirichlet"), lambda x, y: s(tau * x) * torch.exp(y),
         lambda x, y: -tau**2 * s(tau * x) * torch.exp(y), lambda x, y: tau * c(tau * x) * torch.exp(y),
         lambda x, y: s(tau * x) * torch.exp(y)),
        ((7, 10), ("dirichlet", "periodic"), lambda x, y: torch.exp(x) * s(w * y), lambda x, y: torch.exp(x) * s(w * y),
         lambda x, y: w * torch.exp(x) * c(w * y), lambda x, y: -(w**2) * torch.exp(x) * s(w * y)),
    ]


@pytest.mark.parametrize("case", range(3))
def test_rotated_periodic_equals_kronecker_assembly(case):
    shape, bc, u, uxx, uxy, uyy = _periodic_cases()[case]
    eps, theta = 0.2, 0.7
    faces = parse_faces(bc, 2)
    p = pde.rotated_anisotropic(shape, eps, theta, bc=bc, solution=u)
    start, intervals = _layout(shape, faces)
    h = 1.0 / intervals[0]
    kernel = _rotated_kernel(eps, theta) / h**2
    periodic = [low == "periodic" for low, _ in faces]

    def assemble(grid):
        return sp.csr_matrix(sum(
            kernel[i + 1, j + 1] * sp.kron(_shift(grid[0], i, periodic[0]), _shift(grid[1], j, periodic[1]))
            for i in (-1, 0, 1) for j in (-1, 0, 1)
        ))

    A_ref = assemble(shape)
    M = p.to_sparse()
    assert abs(M - A_ref).max() <= 1e-12 * abs(A_ref).max()
    assert (M != M.T).nnz == 0
    # f = -div(K grad u) at the grid points minus the boundary part of the operator on the grid extended by
    # the Dirichlet layers: (A_ext u_ext)[interior] - A u[interior].
    padded = [n if per else n + 2 for n, per in zip(shape, periodic)]
    axes = [(torch.arange(m, dtype=torch.float64) + (s if per else s - 1)) * h
            for m, per, s in zip(padded, periodic, start)]
    X, Y = torch.meshgrid(*axes, indexing="ij")
    inside = np.zeros(padded, dtype=bool)
    inside[tuple(slice(None) if per else slice(1, -1) for per in periodic)] = True
    u_ext = u(X, Y).numpy()
    boundary_part = (assemble(padded) @ u_ext.ravel()).reshape(padded)[inside] - A_ref @ u_ext[inside]
    C, S = math.cos(theta), math.sin(theta)
    K = [[C**2 + eps * S**2, (1 - eps) * C * S], [(1 - eps) * C * S, eps * C**2 + S**2]]
    Xi, Yi = X.numpy()[inside].reshape(shape), Y.numpy()[inside].reshape(shape)
    Xi, Yi = torch.from_numpy(Xi), torch.from_numpy(Yi)
    f_point = -(K[0][0] * uxx(Xi, Yi) + 2 * K[0][1] * uxy(Xi, Yi) + K[1][1] * uyy(Xi, Yi)).numpy()
    expected = f_point.ravel() - boundary_part
    if p.null_space is not None:
        expected = expected - expected.mean()
    else:
        assert np.abs(boundary_part).max() > 1.0  # the Dirichlet values really enter
    np.testing.assert_allclose(p.f.numpy().ravel(), expected, rtol=1e-12, atol=1e-10 * np.abs(expected).max())


def _order(errors):
    return [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]


SMOOTH_A = lambda x, y: 1 + 0.5 * torch.sin(3 * x + 1) * torch.cos(2 * y) + 0.3 * x  # noqa: E731
SMOOTH_U = lambda x, y: torch.cos(2 * x + 0.3) * torch.exp(y) + x * y  # noqa: E731
PERIODIC_A = lambda x, y: 1.5 + torch.sin(2 * math.pi * x) * torch.cos(2 * math.pi * y)  # noqa: E731


@pytest.mark.parametrize(
    ("bc", "u"),
    [
        ("neumann", SMOOTH_U),
        (("dirichlet", ("neumann", "dirichlet")), SMOOTH_U),
        ("periodic", lambda x, y: torch.sin(2 * math.pi * x) * torch.cos(2 * math.pi * y) + torch.cos(2 * math.pi * y)),
        (("periodic", "neumann"), lambda x, y: torch.sin(2 * math.pi * x) * torch.exp(y)),
    ],
)
def test_diffusion_manufactured_solutions_converge_at_second_order(bc, u):
    periodic = "periodic" in str(bc)
    errors = []
    for n in (16, 32, 64):
        shape = (n, n) if bc == "periodic" else (n, n + 3)
        p = pde.diffusion(PERIODIC_A if periodic else SMOOTH_A, shape=shape, bc=bc, solution=u)
        errors.append(p.error(p.direct_solve()))
    assert min(_order(errors)) > 1.8, (errors, _order(errors))


def test_diffusion_3d_neumann_converges_at_second_order():
    a = lambda x, y, z: 1 + x * y + 0.5 * z  # noqa: E731
    u = lambda x, y, z: torch.cos(x) * torch.exp(y) * (1 + z**2)  # noqa: E731
    errors = []
    for n in (6, 12, 24):
        p = pde.diffusion(a, shape=(n, n, n), bc=("neumann", "neumann", ("dirichlet", "neumann")), solution=u)
        errors.append(p.error(p.direct_solve()))
    assert min(_order(errors)) > 1.8, (errors, _order(errors))


@pytest.mark.parametrize("bc", ["periodic", ("periodic", "dirichlet"), ("dirichlet", "periodic")])
def test_rotated_periodic_converges_at_second_order(bc):
    errors = []
    for n in (16, 32, 64):
        shape = (n, n) if bc == "periodic" else ((n, n + 3) if bc[0] == "periodic" else (n + 3, n))
        p = pde.rotated_anisotropic(shape, 0.3, math.pi / 6, bc=bc)
        errors.append(p.error(p.direct_solve()))
    assert min(_order(errors)) > 1.8, (errors, _order(errors))


# ------------------------------------------------------------------------------------------ flux
def _partial(u, k):
    """``d u / d x_k`` of a function of coordinate tensors, by automatic differentiation."""

    def derivative(*xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        with torch.enable_grad():
            (d,) = torch.autograd.grad(u(*xs).sum(), xs[k])
        return d

    return derivative


def _negated(g):
    return lambda *xs: -g(*xs)


def _flux_of(u, faces):
    """The outward normal derivative of ``u`` on each Neumann face (None elsewhere)."""
    out = []
    for k, pair in enumerate(faces):
        d = _partial(u, k)
        out.append(tuple(g if kind == "neumann" else None for g, kind in zip((_negated(d), d), pair)))
    return out


def _minus_div_K_grad(u, K):
    """``-sum_k K_k u_kk`` of a function of coordinate tensors, by automatic differentiation."""

    def f(*xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        with torch.enable_grad():
            total = torch.zeros_like(xs[0])
            for k, weight in enumerate(K):
                (d,) = torch.autograd.grad(u(*xs).sum(), xs[k], create_graph=True)
                (dd,) = torch.autograd.grad(d.sum(), xs[k])
                total = total - weight * dd
        return total

    return f


@pytest.mark.parametrize(
    "bc", ["neumann", ("dirichlet", ("neumann", "dirichlet")), (("neumann", "dirichlet"), "periodic")]
)
@pytest.mark.parametrize("eps", [None, 0.3])
def test_flux_reproduces_the_manufactured_neumann_data(bc, eps):
    faces = parse_faces(bc, 2)
    u = SMOOTH_U if "periodic" not in str(bc) else (lambda x, y: torch.exp(x) * torch.sin(2 * math.pi * y))
    if eps is None:
        build, K = (lambda **kw: pde.poisson((9, 12), **kw)), (1.0, 1.0)
    else:
        build, K = (lambda **kw: pde.anisotropic((9, 12), eps, **kw)), (1.0, eps)
    manufactured = build(bc=bc, solution=u)
    given = build(bc=bc, solution=None, rhs=_minus_div_K_grad(u, K), boundary=u, flux=_flux_of(u, faces))
    np.testing.assert_allclose(given.f.numpy(), manufactured.f.numpy(), rtol=1e-12, atol=1e-10)


def test_flux_converges_at_second_order_and_scalar_flux_enters_as_documented():
    u = lambda x, y: torch.cos(2 * x) * torch.exp(y)  # noqa: E731
    faces = parse_faces(("neumann", ("dirichlet", "neumann")), 2)
    eps = 0.5
    errors = []
    for n in (16, 32, 64):
        rhs = _minus_div_K_grad(u, (1.0, eps))
        p = pde.anisotropic((n, n + 1), eps, bc=faces, solution=None, rhs=rhs, boundary=u, flux=_flux_of(u, faces))
        exact = u(*p.coordinates())
        errors.append(float((p.direct_solve() - exact).abs().max()))
    assert min(_order(errors)) > 1.8, (errors, _order(errors))
    # One number on every Neumann face: eps g / h times the mass of the other axis on the axis-1 high face.
    zero = pde.anisotropic((6, 7), eps, bc=faces, solution=None, rhs=lambda x, y: 0 * x)
    two = pde.anisotropic((6, 7), eps, bc=faces, solution=None, rhs=lambda x, y: 0 * x, flux=2.0)
    h = two.h
    difference = (two.f - zero.f).numpy()
    expected = np.zeros((6, 7))
    expected[0, :] += 1.0 * 2.0 / h * np.r_[1.0, np.ones(5), 0.5]  # axis 0 low (Neumann), K_0 = 1
    expected[-1, :] += 1.0 * 2.0 / h * np.r_[1.0, np.ones(5), 0.5]  # axis 0 high
    expected[:, -1] += eps * 2.0 / h * np.r_[0.5, np.ones(4), 0.5]  # axis 1 high, eps
    np.testing.assert_allclose(difference, expected, rtol=1e-13)


def test_diffusion_flux_with_a_function_coefficient_equals_the_manufactured_problem():
    bc = (("neumann", "dirichlet"), "neumann")
    faces = parse_faces(bc, 2)
    shape = (11, 12)
    manufactured = pde.diffusion(SMOOTH_A, shape=shape, bc=bc, solution=SMOOTH_U)

    def rhs(*xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        with torch.enable_grad():
            total = torch.zeros_like(xs[0])
            for k in range(2):
                (d,) = torch.autograd.grad(SMOOTH_U(*xs).sum(), xs[k], create_graph=True)
                (dq,) = torch.autograd.grad((SMOOTH_A(*xs) * d).sum(), xs[k])
                total = total - dq
        return total

    given = pde.diffusion(SMOOTH_A, shape=shape, bc=bc, rhs=rhs, boundary=SMOOTH_U, flux=_flux_of(SMOOTH_U, faces))
    np.testing.assert_allclose(given.f.numpy(), manufactured.f.numpy(), rtol=1e-12, atol=1e-10)
    assert abs(given.to_sparse() - manufactured.to_sparse()).max() == 0.0


def test_bad_boundary_input_is_refused_by_name():
    with pytest.raises(ValueError, match="bc: the rotated operator takes 'dirichlet' or 'periodic'"):
        pde.rotated_anisotropic((8, 8), 0.1, 0.5, bc="neumann")
    with pytest.raises(ValueError, match="flux: axis 1 is dirichlet on its low face, not Neumann"):
        pde.poisson((8, 8), bc=("neumann", "dirichlet"), solution=None, flux=[1.0, (2.0, None)])
    with pytest.raises(ValueError, match="flux: no face is Neumann"):
        pde.poisson((8, 8), solution=None, flux=1.0)
    with pytest.raises(ValueError, match="flux: the manufactured solution sets f and all boundary data"):
        pde.poisson((8, 8), bc="neumann", flux=1.0)
    with pytest.raises(ValueError, match="rhs: the manufactured solution sets f"):
        pde.poisson((8, 8), rhs=np.zeros((8, 8)))  # the default solution "sin" would drop rhs
    with pytest.raises(ValueError, match="boundary: the manufactured solution sets f"):
        pde.diffusion(SMOOTH_A, shape=(8, 8), solution=SMOOTH_U, boundary=SMOOTH_U)
    with pytest.raises(ValueError, match=r"flux \(axis 0, low face\): expected an array on the face points"):
        pde.poisson((8, 8), bc="neumann", solution=None, flux=[(np.ones(7), 0.0), 0.0])
    with pytest.raises(ValueError, match=r"flux \(axis 0, high face\): contains NaN"):
        pde.diffusion(np.ones((7, 7)), bc="neumann", flux=[(0.0, np.full(8, np.nan)), 0.0])
    with pytest.raises(ValueError, match="flux: expected a number"):
        pde.diffusion(np.ones((7, 7)), bc="neumann", flux="1")
    with pytest.raises(ValueError, match="solution: a manufactured solution needs the coefficient as a function"):
        pde.diffusion(np.ones((7, 7)), bc="neumann", solution=SMOOTH_U)
    with pytest.raises(ValueError, match="shape: expected the grid"):
        pde.diffusion(SMOOTH_A)
    with pytest.raises(ValueError, match=r"coefficient: \(2, 3\) cells give the grid"):
        pde.diffusion(np.ones((2, 3)), bc="periodic")
    with pytest.raises(ValueError, match="coefficient: expected finite positive values at every cell centre"):
        pde.diffusion(lambda x, y: x - 0.5, shape=(5, 5))
    with pytest.raises(ValueError, match="bc: "):
        pde.lognormal_diffusion((7, 7), 1.0, bc="robin")
    flux = np.ones(8)
    before = flux.copy()
    pde.poisson((8, 8), bc="neumann", solution=None, flux=[(flux, flux), 0.0])
    np.testing.assert_array_equal(flux, before)


# --------------------------------------------------------------------------- multigrid vs spsolve
def _spsolve(p, b):
    M = p.to_sparse().tocsc()
    if p.null_space is None:
        return spla.spsolve(M, b)
    # The same null space on both sides: pin the first unknown, then remove the constant component.
    keep = np.arange(1, b.size)
    x = np.zeros_like(b)
    x[keep] = spla.spsolve(M[keep][:, keep], b[keep])
    return x - x.mean()


MG_CASES = {
    "diffusion-neumann-odd-rect": lambda: pde.diffusion(PERIODIC_A, shape=(33, 40), bc="neumann"),
    "diffusion-periodic-mixed": lambda: pde.diffusion(
        PERIODIC_A, shape=(64, 63), bc=("periodic", ("neumann", "dirichlet"))
    ),
    "diffusion-periodic-square": lambda: pde.diffusion(PERIODIC_A, shape=(32, 32), bc="periodic"),
    "lognormal-neumann": lambda: pde.lognormal_diffusion((31, 33), 0.5, bc="neumann"),
    "diffusion-3d": lambda: pde.diffusion(lambda x, y, z: 1 + x + y * z, shape=(15, 16, 17),
                                          bc=("neumann", "periodic", ("dirichlet", "neumann"))),
    "rotated-periodic": lambda: pde.rotated_anisotropic((32, 32), 0.5, math.pi / 6, bc="periodic"),
    "rotated-periodic-dirichlet": lambda: pde.rotated_anisotropic(
        (64, 63), 0.5, math.pi / 6, bc=("periodic", "dirichlet")
    ),
    "rotated-dirichlet-periodic": lambda: pde.rotated_anisotropic((33, 40), 0.5, 1.0, bc=("dirichlet", "periodic")),
}


@pytest.mark.parametrize("name", list(MG_CASES))
def test_multigrid_agrees_with_spsolve(name):
    p = MG_CASES[name]()
    b = p.random_rhs(1, seed=3)[0, 0]
    if p.null_space is not None:
        b = b - b.mean()
    x, info = mgcore.solve(p.A, b, rtol=1e-13, maxiter=200, singular="project", max_coarse=10)
    assert info.converged and info.iterations > 1, (info.reason, info.iterations)
    reference = _spsolve(p, b.numpy().ravel())
    relative = np.linalg.norm(x.numpy().ravel() - reference) / np.linalg.norm(reference)
    assert relative < 1e-10, relative
