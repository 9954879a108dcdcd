"""Line relaxation: Gauss-Seidel by lines, each line solved exactly by a batched tridiagonal solve.

For anisotropic operators (``-u_xx - eps u_yy`` with ``eps << 1``: strong couplings along one axis) point
smoothers do not damp the error that oscillates along the weak axis and is smooth along the strong one;
solving for whole lines along the strong axis at once does (Trottenberg, Oosterlee & Schüller 2001,
sections 5.1-5.2).  Every line smoother here is a :class:`~mgcore.smoothers.Smoother` whose steps are the
shared residual-correction block ``u <- u + B (f - A u)``; only ``B`` differs:

* **zebra** order (:class:`LineSolve`): one step per colour of lines; ``B r = E (E^T A E)^{-1} E^T r``
  where ``E`` selects the colour's lines.  Lines of one colour do not couple (every other line in 2D; a
  checkerboard of lines in 3D, or four colours for 27-point stencils), so ``E^T A E`` is block diagonal with
  one tridiagonal block per line: the *line part* of the stencil (its offsets along the line's axis; for a
  9-point stencil the three entries of the middle row).
* **lexicographic** order (:class:`LexicographicLineSolve`, 2D): one step with ``B = (D + L)^{-1}``, ``D`` the
  block diagonal of line parts and ``L`` the couplings to the lines before; applying ``B`` is block forward
  substitution, one line after the other, which is exactly one line Gauss-Seidel sweep.

The tridiagonal systems of all lines are solved together by cyclic reduction (:func:`cyclic_reduction`) or
the Thomas algorithm (:func:`thomas`), written in torch so they run batched on the CPU and the GPU and
are differentiable.  The line matrices do not change between sweeps, so by default (``method="factored"``)
they are factored once, when the smoother is built, and a sweep does only the two substitutions: the lines
of one colour are one tridiagonal system (a line's first point has no coupling to the previous line's last),
factored by LAPACK as ``L D L^T`` (``pttrf``, symmetric positive definite line parts) or with partial
pivoting (``gttrf``) and solved by ``pttrs``/``gttrs`` (Golub & Van Loan 2013, sections 4.3.6 and 4.3.9).
That path serves CPU float32/float64 arrays outside autograd; on other devices, or when autograd records, the
factored smoother solves by cyclic reduction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mgcore.anisotropy import line_relaxable
from mgcore.blocks import ResidualCorrection, scratch
from mgcore.operators import Operator, Stencil, lattice_shape
from mgcore.smoothers import Smoother

__all__ = [
    "LINE_METHODS",
    "LINE_SMOOTHERS",
    "LexicographicLineSolve",
    "LineSolve",
    "alternating_zebra",
    "cyclic_reduction",
    "line_gauss_seidel",
    "thomas",
    "tridiagonal_solve",
]

AXIS_NAMES = "xyz"  # axis 0 = x, axis 1 = y, axis 2 = z, as in pde.problems


# ---------------------------------------------------------------------------------------------- solvers
def _broadcast(lower: Tensor, diagonal: Tensor, upper: Tensor, rhs: Tensor) -> tuple[Tensor, ...]:
    """The three diagonals and the right-hand side broadcast to one shape, in the right-hand side's dtype."""
    shape = torch.broadcast_shapes(lower.shape, diagonal.shape, upper.shape, rhs.shape)
    return tuple(t.to(rhs.dtype).expand(shape) for t in (lower, diagonal, upper, rhs))


def cyclic_reduction(lower: Tensor, diagonal: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """Solve the tridiagonal systems ``lower_i x_{i-1} + diagonal_i x_i + upper_i x_{i+1} = rhs_i`` along the
    last axis, all at once, by cyclic reduction (Hockney 1965; Golub & Van Loan 2013, section 4.3.9).

    Each reduction eliminates the even-indexed unknowns from the odd-indexed equations, halving the system
    (``n -> n // 2``: the same rule as the coarsening of :mod:`mgcore.transfers`), so a solve takes
    ``log2 n`` vectorised steps.  ``lower[..., 0]`` and ``upper[..., -1]`` are ignored (there is no neighbour).
    The coefficients broadcast against ``rhs``.  No pivoting: meant for diagonally dominant systems (the line
    parts of M-matrices).  Differentiable (no in-place operations).

    Examples
    --------
    >>> import torch
    >>> n = 7
    >>> lower, diagonal, upper = -torch.ones(n), 2 * torch.ones(n), -torch.ones(n)
    >>> x = cyclic_reduction(lower, diagonal, upper, torch.ones(2, n, dtype=torch.float64))
    >>> x[0].tolist()  # -x'' = 1 with h = 1: x_i = (i + 1)(n - i) / 2
    [3.5, 6.0, 7.5, 8.0, 7.5, 6.0, 3.5]
    """
    a, b, c, d = _broadcast(lower, diagonal, upper, rhs)
    n = d.shape[-1]
    # Drop the couplings to points outside (the zero Dirichlet boundary of a line).
    zero = torch.zeros_like(d[..., :1])
    a = torch.cat([zero, a[..., 1:]], -1)
    c = torch.cat([c[..., :-1], zero], -1)
    return _reduce(a, b, c, d, n)


def _reduce(a: Tensor, b: Tensor, c: Tensor, d: Tensor, n: int) -> Tensor:
    if n == 1:
        return d / b
    if n % 2 == 0:  # one trivial equation x_n = 0 makes the length odd: odd i then has both neighbours
        zero = torch.zeros_like(d[..., :1])
        a, c, d = (torch.cat([v, zero], -1) for v in (a, c, d))
        b = torch.cat([b, torch.ones_like(zero)], -1)
    m = n // 2
    # Equations i = 1, 3, ...: eliminate x_{i-1} (equation i-1) and x_{i+1} (equation i+1).
    left = (a[..., 1::2] / b[..., 0:-1:2])
    right = (c[..., 1::2] / b[..., 2::2])
    a_odd = -left * a[..., 0:-1:2]
    c_odd = -right * c[..., 2::2]
    b_odd = b[..., 1::2] - left * c[..., 0:-1:2] - right * a[..., 2::2]
    d_odd = d[..., 1::2] - left * d[..., 0:-1:2] - right * d[..., 2::2]
    x_odd = _reduce(a_odd, b_odd, c_odd, d_odd, m)
    # Back substitution for the even unknowns 0, 2, ..., 2m (neighbours x_{-1} = x_{2m+1} = 0).
    zero = torch.zeros_like(x_odd[..., :1])
    x_left = torch.cat([zero, x_odd], -1)
    x_right = torch.cat([x_odd, zero], -1)
    x_even = (d[..., 0::2] - a[..., 0::2] * x_left - c[..., 0::2] * x_right) / b[..., 0::2]
    pairs = torch.stack([x_even[..., :m], x_odd], -1).flatten(-2)
    return torch.cat([pairs, x_even[..., m:]], -1)[..., :n]


def thomas(lower: Tensor, diagonal: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """The same solve as :func:`cyclic_reduction` by the Thomas algorithm (Gaussian elimination without
    pivoting, Golub & Van Loan 2013, section 4.3.6): ``2 n`` sequential steps, each vectorised over all lines.

    Examples
    --------
    >>> import torch
    >>> n = 7
    >>> lower, diagonal, upper = -torch.ones(n), 2 * torch.ones(n), -torch.ones(n)
    >>> x = thomas(lower, diagonal, upper, torch.ones(n, dtype=torch.float64))
    >>> bool(torch.allclose(x, cyclic_reduction(lower, diagonal, upper, torch.ones(n, dtype=torch.float64))))
    True
    """
    a, b, c, d = _broadcast(lower, diagonal, upper, rhs)
    n = d.shape[-1]
    # Lists of columns, stacked at the end: no in-place writes, so autograd differentiates through it.
    inverse = [1.0 / b[..., 0]]
    c_prime = [c[..., 0] * inverse[0]]
    y = [d[..., 0] * inverse[0]]
    for i in range(1, n):
        inverse.append(1.0 / (b[..., i] - a[..., i] * c_prime[i - 1]))
        c_prime.append(c[..., i] * inverse[i])
        y.append((d[..., i] - a[..., i] * y[i - 1]) * inverse[i])
    x = [y[n - 1]]
    for i in range(n - 2, -1, -1):
        x.append(y[i] - c_prime[i] * x[-1])
    return torch.stack(x[::-1], -1)


TRIDIAGONAL_SOLVERS = {"cyclic_reduction": cyclic_reduction, "thomas": thomas}
LINE_METHODS = ("factored", *TRIDIAGONAL_SOLVERS)
"""The ``method`` values of the line smoothers: ``"factored"`` (LAPACK factors computed once, see the module
notes) or a solver of :data:`TRIDIAGONAL_SOLVERS` run on every sweep."""


class _LineFactors:
    """LAPACK factors of the lines of one colour, concatenated into one tridiagonal system.

    ``pttrf`` (``L D L^T``) when the system is symmetric and positive definite, else ``gttrf`` (LU with
    partial pivoting); ``None`` as a whole when the system is exactly singular (the caller then solves by
    cyclic reduction, as before).
    """

    def __init__(self, lower: Tensor, diagonal: Tensor, upper: Tensor) -> None:
        from scipy.linalg import lapack

        prefix = "d" if diagonal.dtype == torch.float64 else "s"
        a, b, c = (v.detach().contiguous().reshape(-1).numpy() for v in (lower, diagonal, upper))
        self.size = b.size
        self.kind = ""
        if b.size > 1 and np.array_equal(a[1:], c[:-1]):
            d, e, info = getattr(lapack, prefix + "pttrf")(b, c[:-1])
            if info == 0:
                self.kind, self.factors = "pt", (d, e)
                self.routine = prefix + "pttrs"  # a name, not the routine: the factors deep-copy and pickle
                return
        dl, d, du, du2, ipiv, info = getattr(lapack, prefix + "gttrf")(a[1:], b, c[:-1])
        if info == 0:
            self.kind, self.factors = "gt", (dl, d, du, du2, ipiv)
            self.routine = prefix + "gttrs"

    def solve_(self, rhs: Tensor) -> Tensor:
        """Overwrite ``rhs`` (contiguous, ``(..., *lines, n)``, on the CPU) with the solution."""
        from scipy.linalg import lapack

        b = rhs.numpy().reshape(-1, self.size).T  # Fortran order: one column per right-hand side
        x, info = getattr(lapack, self.routine)(*self.factors, b, overwrite_b=True)
        if info != 0:  # pragma: no cover - LAPACK only reports an illegal argument here
            raise RuntimeError(f"LAPACK {self.kind}trs failed with info={info}")
        if not np.shares_memory(x, b):  # pragma: no cover - f2py copied b after all
            rhs.copy_(torch.from_numpy(x.T.reshape(rhs.shape)))
        return rhs


def tridiagonal_solve(lower: Tensor, diagonal: Tensor, upper: Tensor, rhs: Tensor, method: str = "cyclic_reduction"):
    """Batched tridiagonal solve along the last axis by ``method`` (``"cyclic_reduction"`` or ``"thomas"``).

    Examples
    --------
    >>> import torch
    >>> tridiagonal_solve(torch.zeros(3), torch.full((3,), 2.0), torch.zeros(3), torch.ones(3), "thomas")
    tensor([0.5000, 0.5000, 0.5000])
    """
    if method not in TRIDIAGONAL_SOLVERS:
        raise ValueError(f"method: expected one of {sorted(TRIDIAGONAL_SOLVERS)}; got {method!r}")
    return TRIDIAGONAL_SOLVERS[method](lower, diagonal, upper, rhs)


SINGULAR_PIVOT = 1e-10
"""A line whose elimination meets a pivot below this share of its row's largest entry counts as singular."""


def relax_singular_lines(
    lower: Tensor, diagonal: Tensor, upper: Tensor, cyclic: bool = False
) -> tuple[tuple[Tensor, Tensor, Tensor], int]:
    """The line parts with every singular line (along the last axis) replaced by its diagonal, and how many.

    A line block ``E^T A E`` of an operator that is only semidefinite can be singular: a Galerkin level whose
    ``P`` reaches the same fine cells from two coarse points (a thin part of a masked domain) holds blocks such
    as ``[[a, a], [a, a]]``, and a line solve there divides by zero.  Those lines are relaxed point by point
    instead (``B`` = the inverse diagonal on them), which is defined wherever the diagonal is; the other lines
    keep their exact solves.  Detected by elimination without pivoting, vectorised over the lines (``n`` steps
    for lines of ``n`` points); ``cyclic`` lines (a periodic line axis) also by the Sherman-Morrison denominator
    of :class:`_Cyclic`.

    Examples
    --------
    >>> import torch
    >>> lower = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    >>> diagonal = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    >>> (l, d, u), count = relax_singular_lines(lower, diagonal, lower.roll(-1, -1))
    >>> count, l.tolist(), u.tolist()
    (1, [[0.0, 0.0], [0.0, -1.0]], [[0.0, 0.0], [-1.0, 0.0]])
    """
    n = diagonal.shape[-1]
    a, b, c = (torch.broadcast_to(v, diagonal.shape).detach().to("cpu", torch.float64).reshape(-1, n).numpy()
               for v in (lower, diagonal, upper))
    # Strictly diagonally dominant lines are regular (Gershgorin): Poisson-type lines, which couple across
    # too, all are.  Only the others are eliminated.
    doubtful = np.flatnonzero(~(np.abs(a) + np.abs(c) < np.abs(b)).all(axis=1))
    if doubtful.size == 0:
        return (lower, diagonal, upper), 0
    a, b, c = a[doubtful], b[doubtful], c[doubtful]
    scale = np.maximum(np.abs(b), np.abs(a) + np.abs(c))
    singular = np.zeros(b.shape[0], dtype=bool)
    if cyclic and n >= 3:
        # The corner couplings make the block cyclic: its pivots are those of the plain part plus the
        # Sherman-Morrison denominator, computed by _Cyclic (an n-step solve, as below).
        lines = _Cyclic(*(torch.from_numpy(v) for v in (a, b, c)))
        a, b, c = (v.numpy() for v in lines.parts)
        denominator = 1.0 / lines.scale.numpy()[:, 0]
        singular |= ~(np.abs(denominator) > SINGULAR_PIVOT)
    with np.errstate(divide="ignore", invalid="ignore"):
        pivot = b[:, 0].copy()
        for i in range(n):
            if i:
                pivot = b[:, i] - a[:, i] * c[:, i - 1] / pivot
            singular |= ~(np.abs(pivot) > SINGULAR_PIVOT * scale[:, i])
    count = int(singular.sum())
    if not count:
        return (lower, diagonal, upper), 0
    keep = np.ones(math.prod(diagonal.shape[:-1]), dtype=bool)
    keep[doubtful[singular]] = False
    keep = torch.from_numpy(keep).to(diagonal.device).reshape(*diagonal.shape[:-1], 1)
    lower, upper = (torch.broadcast_to(v, diagonal.shape) * keep for v in (lower, upper))
    return (lower, diagonal, upper), count


class _Cyclic:
    """Cyclic tridiagonal lines (a periodic line axis) by the Sherman-Morrison formula (Press et al.,
    Numerical Recipes, 3rd ed. 2007, section 2.7.2): ``T = T' + w v^T`` with ``T'`` tridiagonal, so
    ``T^{-1} d = y - z (v^T y) / (1 + v^T z)`` with ``T' y = d`` and ``T' z = w``.

    ``lower[..., 0]`` couples a line's first point to its last, ``upper[..., -1]`` its last to its first.
    With ``gamma = -diagonal[..., 0]``: ``w = (gamma, 0, ..., 0, upper_last)``, ``v = (1, 0, ..., 0,
    lower_first / gamma)``, and ``T'`` is ``T`` without the corners, its first diagonal entry less ``gamma``
    and its last less ``lower_first * upper_last / gamma``: diagonally dominant when ``T`` is.  :attr:`parts`
    are ``T'``'s diagonals, which every solver here (factored, cyclic reduction, Thomas) takes as they are;
    :meth:`correct` turns a solve with ``T'`` into one with ``T``.

    Examples
    --------
    >>> import torch
    >>> n = 6
    >>> T = 2.5 * torch.eye(n, dtype=torch.float64) - torch.roll(torch.eye(n, dtype=torch.float64), 1, 0)
    >>> T = T - torch.roll(torch.eye(n, dtype=torch.float64), -1, 0)  # periodic: T[0, n-1] = T[n-1, 0] = -1
    >>> d = torch.arange(n, dtype=torch.float64)
    >>> lines = _Cyclic(-torch.ones(n, dtype=torch.float64), 2.5 * torch.ones(n, dtype=torch.float64),
    ...                 -torch.ones(n, dtype=torch.float64))
    >>> x = lines.correct(cyclic_reduction(*lines.parts, d))
    >>> bool(torch.allclose(T @ x, d, rtol=0, atol=1e-13))
    True
    """

    def __init__(self, lower: Tensor, diagonal: Tensor, upper: Tensor) -> None:
        if diagonal.shape[-1] < 3:
            raise ValueError(f"grid_shape: a periodic line axis needs at least 3 points; got {diagonal.shape[-1]}")
        gamma = -diagonal[..., :1]
        first, last = lower[..., :1], upper[..., -1:]
        lower, diagonal, upper = lower.clone(), diagonal.clone(), upper.clone()
        lower[..., :1] = 0.0
        upper[..., -1:] = 0.0
        diagonal[..., :1] -= gamma
        diagonal[..., -1:] -= first * last / gamma
        w = torch.zeros_like(diagonal)
        w[..., :1] = gamma
        w[..., -1:] = last
        self.parts = (lower, diagonal, upper)
        self.z = cyclic_reduction(lower, diagonal, upper, w)
        self.v_last = first / gamma
        self.scale = 1.0 / (1.0 + self.z[..., :1] + self.v_last * self.z[..., -1:])

    def correct(self, y: Tensor) -> Tensor:
        """``T^{-1} d`` from ``y = T'^{-1} d`` (along the last axis); a new array."""
        return _uncorner(y, self.z, self.v_last, self.scale)


def _uncorner(y: Tensor, z: Tensor, v_last: Tensor, scale: Tensor, in_place: bool = False) -> Tensor:
    """The Sherman-Morrison step of :class:`_Cyclic` from its vectors (kept as buffers by the line solves)."""
    correction = z * ((y[..., :1] + v_last * y[..., -1:]) * scale)
    return y.sub_(correction) if in_place else y - correction


def _register_lines(module: torch.nn.Module, parts: Sequence[Tensor], cyclic: bool, suffix: str) -> int:
    """Keep line parts on ``module`` as buffers ``lower<suffix>``, ``diagonal<suffix>``, ``upper<suffix>`` (moved
    by ``.to()``): singular lines relaxed by points (:func:`relax_singular_lines`, whose count is returned), and
    cyclic ones as :class:`_Cyclic` keeps them, with its vectors as ``cyclic_z<suffix>`` and so on."""
    parts, relaxed = relax_singular_lines(*parts, cyclic=cyclic)
    if cyclic:
        lines = _Cyclic(*parts)
        parts = lines.parts
        for name in ("z", "v_last", "scale"):
            module.register_buffer(f"cyclic_{name}{suffix}", getattr(lines, name))
    for name, value in zip(("lower", "diagonal", "upper"), parts):
        module.register_buffer(f"{name}{suffix}", value)
    return relaxed


# ---------------------------------------------------------------------------------------------- line parts
def _check_line_stencil(A: Stencil, axis: int, grid_shape: Sequence[int]) -> None:
    if not isinstance(A, Stencil):
        raise TypeError(f"A: line relaxation needs a Stencil; got {type(A).__name__}")
    if A.radius > 1:
        raise ValueError(f"A: line relaxation needs a stencil of radius 1; got {A!r}")
    if not 0 <= axis < A.dim:
        raise ValueError(f"axis: expected 0 <= axis < {A.dim}; got {axis}")
    if not line_relaxable(A, grid_shape):
        raise ValueError(
            "grid_shape: line relaxation needs an even number of points on each periodic axis (the colours of "
            f"lines alternate around it) and at least 3 on a periodic line axis; got {tuple(grid_shape)} with "
            f"periodic axes {[a for a, p in enumerate(A.periodic) if p]}"
        )


def line_part(A: Stencil, axis: int, grid_shape: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The tridiagonal line part of ``A`` along ``axis``: the coefficients of the offsets ``-e_axis``, ``0``
    and ``+e_axis``, each shaped ``grid_shape`` (broadcast for constant stencils), with the couplings that
    leave the grid set to zero.  On a periodic ``axis`` they wrap instead: a line's first ``lower`` entry
    couples it to its last point and its last ``upper`` entry to its first (a cyclic system).  Rows on the
    Neumann faces of the box scheme are those :meth:`~mgcore.operators.Stencil.coefficient_arrays` gives
    (the mirrored neighbour's coefficient folded in, the face rows halved).

    Examples
    --------
    >>> lower, diagonal, upper = line_part(Stencil.laplacian(2), 1, (2, 3))
    >>> lower.tolist(), upper.tolist()
    ([[0.0, -1.0, -1.0], [0.0, -1.0, -1.0]], [[-1.0, -1.0, 0.0], [-1.0, -1.0, 0.0]])
    """
    grid_shape = tuple(int(n) for n in grid_shape)
    coefficients = A.coefficients
    if not A.is_constant and tuple(coefficients.shape[1:]) != grid_shape:
        raise ValueError(f"grid_shape: expected {tuple(coefficients.shape[1:])}; got {grid_shape}")
    folded = A.coefficient_arrays(grid_shape) if A.reflect is not None else None
    parts = []
    for step in (-1, 0, 1):
        offset = tuple(step if k == axis else 0 for k in range(A.dim))
        if offset not in A.offsets:
            values = torch.zeros(grid_shape, dtype=coefficients.dtype, device=coefficients.device)
        elif folded is not None:
            values = folded[A.offsets.index(offset)]
        elif A.is_constant:  # only the three line coefficients are spread over the grid
            values = coefficients[A.offsets.index(offset)].expand(grid_shape).clone()
        else:
            values = coefficients[A.offsets.index(offset)].clone()
        if step != 0 and not A.periodic[axis]:  # the neighbour of the first (last) point is no unknown
            values.narrow(axis, 0 if step < 0 else grid_shape[axis] - 1, 1).zero_()
        parts.append(values)
    if bool((parts[1] == 0).any()):
        raise ValueError("A: the diagonal has zero entries; line relaxation needs a non-zero diagonal")
    return parts[0], parts[1], parts[2]


def _line_colours(A: Stencil, axis: int) -> list[list[tuple[int, ...]]]:
    """Colours of lines along ``axis`` that do not couple, each a list of parity classes of the other axes.

    Two colours (the parity of the sum of the other indices) when the stencil couples only along the axes;
    otherwise one colour per parity class (``2^(d-1)``).  In 2D both rules give the zebra (odd and even lines).
    """
    classes = list(itertools.product((0, 1), repeat=A.dim - 1))
    if A.is_axis_aligned or A.dim == 2:
        return [[q for q in classes if sum(q) % 2 == c] for c in (0, 1)]
    return [[q] for q in classes]


def _class_index(axis: int, dim: int, parity: Sequence[int]) -> tuple[slice, ...]:
    """Grid slices of the lines along ``axis`` whose other indices have ``parity``."""
    other = iter(parity)
    return tuple(slice(None) if k == axis else slice(next(other), None, 2) for k in range(dim))


class LineSolve(Operator):
    """``B r = E (E^T A E)^{-1} E^T r``: exact solves on the lines along ``axis`` of the given parity classes.

    The zebra steps of line Gauss-Seidel (the lines of one colour do not couple, so ``E^T A E`` is the line
    parts of those lines).  The line parts are taken once, at construction, from ``A``; with
    ``method="factored"`` they are factored then too (see the module notes).

    Parameters
    ----------
    A : Stencil
        A stencil of radius 1 (5/9-point in 2D, 7/27-point in 3D; constant or variable; any faces: lines along a
        periodic axis are cyclic systems, solved with a Sherman-Morrison correction).
    axis : int
        The axis along which the lines run.
    grid_shape : tuple of int
        The grid.
    classes : sequence of tuple of int, optional
        Parity classes of the other axes' indices whose lines are solved (default: all lines).
    method : {"factored", "cyclic_reduction", "thomas"}
        ``"factored"``: LAPACK factors computed here, substitutions per solve (CPU, outside autograd; cyclic
        reduction otherwise); or the tridiagonal solver run on every solve.

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2)
    >>> B = LineSolve(A, axis=0, grid_shape=(5, 4), classes=[(0,)])
    >>> B
    LineSolve(axis=0 (x), lines=2 of 4, method=factored)
    >>> r = torch.ones(1, 1, 5, 4, dtype=torch.float64)
    >>> B(r)[0, 0, :, 1].tolist()  # odd-index lines are not touched
    [0.0, 0.0, 0.0, 0.0, 0.0]
    >>> C = LineSolve(A, axis=0, grid_shape=(5, 4), classes=[(0,)], method="cyclic_reduction")
    >>> bool(torch.allclose(B(r), C(r), rtol=1e-14, atol=0))  # the same solves, up to round-off
    True
    """

    def __init__(
        self,
        A: Stencil,
        axis: int,
        grid_shape: Sequence[int],
        classes: Sequence[Sequence[int]] | None = None,
        method: str = "factored",
    ) -> None:
        super().__init__()
        _check_line_stencil(A, axis, grid_shape)
        if method not in LINE_METHODS:
            raise ValueError(f"method: expected one of {sorted(LINE_METHODS)}; got {method!r}")
        self.dim = A.dim
        self.axis = int(axis)
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.method = method
        self.cyclic = bool(A.periodic[self.axis])
        if classes is None:
            classes = list(itertools.product((0, 1), repeat=A.dim - 1))
        self.classes = [tuple(int(v) for v in q) for q in classes]
        # The box scheme's Neumann faces halve the face rows: its lines differ, like a variable stencil's.
        same_lines = A.is_constant and A.reflect is None
        if same_lines:
            # Every line holds the same system: one line's diagonals, shape (n,), broadcast over the lines (and
            # factored once, each line a right-hand side of that one factorisation).
            one_line = tuple(self.grid_shape[self.axis] if k == self.axis else 1 for k in range(self.dim))
            lower, diagonal, upper = (v.reshape(-1) for v in line_part(A, self.axis, one_line))
        else:
            lower, diagonal, upper = line_part(A, self.axis, self.grid_shape)
        self.lines = 0
        self.point_lines = 0  # singular lines, relaxed point by point (relax_singular_lines)
        for k, q in enumerate(self.classes):
            index = _class_index(self.axis, self.dim, q)
            lines_per_part = math.prod(
                len(range(self.grid_shape[a])[s]) for a, s in enumerate(index) if a != self.axis
            )
            self.lines += lines_per_part
            # The line axis moved last and made contiguous: the solver slices along it.
            part = (
                (lower, diagonal, upper)
                if same_lines
                else [v[index].movedim(self.axis, -1).contiguous() for v in (lower, diagonal, upper)]
            )
            relaxed = _register_lines(self, part, self.cyclic, f"_{k}")
            self.point_lines += relaxed * (lines_per_part if same_lines else 1)
        self._factor()
        if self.axis == self.dim - 1:
            # Lines along the last (contiguous) axis: the shared block forms the residual on the class's lines
            # only (a zebra step 7.6 -> 5.4 ms at 1023^2, single-thread CPU).  Lines across it would need that
            # residual written transposed, which costs more than the whole residual and one gathering copy
            # (13.0 against 9.9 ms), so those keep the whole-grid form.
            self.lattices = tuple(self._lattice(q) for q in self.classes)

    def _lattice(self, q: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """The points of the lines of parity class ``q``: every point along the line axis, every other one
        (from the class's parity) along the others."""
        parity = iter(q)
        return tuple((0, 1) if a == self.axis else (next(parity), 2) for a in range(self.dim))

    def lattice_buffer(self, k: int, f: Tensor, workspace: Tensor | None) -> Tensor:
        """Scratch for the residual on class ``k``'s lines, laid out line by line (the line axis last, as the
        solver reads it) and returned in grid order."""
        axis = f.ndim - self.dim + self.axis
        shape = (*f.shape[:2], *lattice_shape(self.lattices[k], f.shape[2:]))
        lines = scratch(workspace, f, (*shape[:axis], *shape[axis + 1 :], shape[axis]))
        return lines.movedim(-1, axis)  # the same memory, in grid order

    def accumulate_lattice_(self, k: int, u: Tensor, r: Tensor) -> Tensor:
        """Solve class ``k``'s lines for the residual ``r`` on them (overwritten) and add the solution to ``u``."""
        axis = u.ndim - self.dim + self.axis
        solution = self.solve_lines(k, r.movedim(axis, -1), overwrite=True)
        u[(..., *(slice(start, None, step) for start, step in self.lattices[k]))].add_(solution.movedim(-1, axis))
        return u

    def _factor(self) -> None:
        """LAPACK factors of every class's lines, for the buffers' current dtype and device (none off the CPU)."""
        self._factors: list[_LineFactors | None] | None = None
        diagonal = self.diagonal_0
        if self.method != "factored" or diagonal.device.type != "cpu":
            return
        if diagonal.dtype not in (torch.float32, torch.float64) or diagonal.requires_grad:
            return
        factors = []
        for k in range(len(self.classes)):
            lower, diagonal, upper = self._line_parts(k)
            if diagonal.numel() < 2:  # no line, or a single unknown: cyclic reduction divides by the diagonal
                factors.append(None)
                continue
            lines = _LineFactors(lower, diagonal, upper)
            factors.append(lines if lines.kind else None)
        self._factors = factors

    def _apply(self, fn, recurse: bool = True):
        # .to()/.double()/.float() convert the line parts; the factors must follow them.
        out = super()._apply(fn, recurse)
        self._factor()
        return out

    def _line_parts(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(getattr(self, f"{name}_{k}") for name in ("lower", "diagonal", "upper"))

    def extra_repr(self) -> str:
        total = self.grid_shape and int(torch.Size(self.grid_shape).numel() // self.grid_shape[self.axis])
        points = f" ({self.point_lines} singular, by points)" if self.point_lines else ""
        return (
            f"axis={self.axis} ({AXIS_NAMES[self.axis]}), lines={self.lines} of {total}{points}, method={self.method}"
        )

    def __repr__(self) -> str:
        return f"LineSolve({self.extra_repr()})"

    def solve_lines(self, k: int, rhs: Tensor, *, overwrite: bool = False) -> Tensor:
        """Solve the lines of class ``k`` for ``rhs`` shaped ``(..., *lines, n)`` (line axis last, as the class's
        lines are laid out: the other axes in order, each every other index of the class's parity).

        ``overwrite=True`` lets a contiguous ``rhs`` receive the solution (the factored path then allocates
        nothing); otherwise ``rhs`` is left as it is.
        """
        if rhs.numel() == 0:  # a class without lines (a side of one point)
            return rhs if overwrite else rhs.clone()
        factors = self._factors[k] if self._factors is not None else None
        usable = (
            factors is not None
            and not torch.compiler.is_compiling()  # LAPACK through NumPy does not trace: cyclic reduction does
            and rhs.device.type == "cpu"
            and rhs.dtype == self.diagonal_0.dtype
            and not (torch.is_grad_enabled() and rhs.requires_grad)
        )
        if usable:
            if not (overwrite and rhs.is_contiguous()):
                rhs = rhs.contiguous() if not rhs.is_contiguous() else rhs.clone()
            solution = factors.solve_(rhs)
            return self._wrap(k, solution, in_place=True) if self.cyclic else solution
        method = "cyclic_reduction" if self.method == "factored" else self.method
        lower, diagonal, upper = self._line_parts(k)
        solution = TRIDIAGONAL_SOLVERS[method](lower, diagonal, upper, rhs)
        return self._wrap(k, solution, in_place=False) if self.cyclic else solution

    def _wrap(self, k: int, y: Tensor, in_place: bool) -> Tensor:
        """The cyclic lines' solution from the solve with their corners left out (:class:`_Cyclic`)."""
        z, v_last, scale = (getattr(self, f"cyclic_{name}_{k}") for name in ("z", "v_last", "scale"))
        return _uncorner(y, z, v_last, scale, in_place)

    def _solve_class(self, k: int, r: Tensor) -> tuple[tuple, Tensor]:
        index = (..., *_class_index(self.axis, self.dim, self.classes[k]))
        axis = r.ndim - self.dim + self.axis
        rhs = r[index].movedim(axis, -1)
        x = self.solve_lines(k, rhs)
        return index, x.movedim(-1, axis)

    def forward(self, r: Tensor) -> Tensor:
        if tuple(r.shape[r.ndim - self.dim :]) != self.grid_shape:
            raise ValueError(f"r: grid {tuple(r.shape[r.ndim - self.dim:])} does not match {self.grid_shape}")
        y = torch.zeros_like(r)
        for k in range(len(self.classes)):
            index, x = self._solve_class(k, r)
            y[index] = x
        return y

    def accumulate_(self, y: Tensor, x: Tensor) -> Tensor:
        """``y += B x`` in place, touching only the solved lines (no autograd)."""
        for k in range(len(self.classes)):
            index, solution = self._solve_class(k, x)
            y[index].add_(solution)
        return y


class LexicographicLineSolve(Operator):
    """``B = (D + L)^{-1}``: one lexicographic line Gauss-Seidel sweep as one residual-correction step (2D).

    ``D`` holds the line parts along ``axis``; ``L`` the couplings of each line to the lines before it in
    the sweep (increasing index along the other axis, or decreasing with ``backward=True``, where ``L``
    becomes the upper part ``U``).  Applying ``B`` is block forward substitution: the lines are solved one
    after the other (each a tridiagonal solve over the batch), so a sweep takes as many sequential solves as
    there are lines; zebra order (:class:`LineSolve`) solves half of them at once.

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2)
    >>> B = LexicographicLineSolve(A, axis=0, grid_shape=(4, 3))
    >>> B
    LexicographicLineSolve(axis=0 (x), sweep along y, forward)
    """

    def __init__(
        self,
        A: Stencil,
        axis: int,
        grid_shape: Sequence[int],
        backward: bool = False,
        method: str = "cyclic_reduction",
    ) -> None:
        super().__init__()
        _check_line_stencil(A, axis, grid_shape)
        if A.dim != 2:
            raise ValueError(f"A: lexicographic line relaxation is for 2D stencils; got dim={A.dim} (use zebra)")
        if method not in TRIDIAGONAL_SOLVERS:
            raise ValueError(f"method: expected one of {sorted(TRIDIAGONAL_SOLVERS)}; got {method!r}")
        self.dim = 2
        self.axis = int(axis)
        self.sweep_axis = 1 - self.axis
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.backward = bool(backward)
        self.method = method
        # Everything with the line axis last: (lines, n).
        parts = [v.movedim(self.axis, -1).contiguous() for v in line_part(A, self.axis, self.grid_shape)]
        self.cyclic = bool(A.periodic[self.axis])
        self.point_lines = _register_lines(self, parts, self.cyclic, "")
        # Couplings to the previous line of the sweep: offsets with sweep component -1 (+1 backward).
        step = 1 if self.backward else -1
        coefficients = A.coefficient_arrays(self.grid_shape).movedim(1 + self.axis, -1)  # (K, lines, n)
        self._previous: list[tuple[int, int]] = []
        for k, o in enumerate(A.offsets):
            if o[self.sweep_axis] == step:
                self._previous.append((len(self._previous), o[self.axis]))
                self.register_buffer(f"previous_{len(self._previous) - 1}", coefficients[k].contiguous())

    def extra_repr(self) -> str:
        order = "backward" if self.backward else "forward"
        return f"axis={self.axis} ({AXIS_NAMES[self.axis]}), sweep along {AXIS_NAMES[self.sweep_axis]}, {order}"

    def __repr__(self) -> str:
        return f"LexicographicLineSolve({self.extra_repr()})"

    def forward(self, r: Tensor) -> Tensor:
        if tuple(r.shape[-2:]) != self.grid_shape:
            raise ValueError(f"r: grid {tuple(r.shape[-2:])} does not match {self.grid_shape}")
        rt = r.movedim(r.ndim - 2 + self.axis, -1)  # (..., lines, n)
        lines = rt.shape[-2]
        order = range(lines - 1, -1, -1) if self.backward else range(lines)
        solved: dict[int, Tensor] = {}
        previous = None
        for j in order:
            rhs = rt[..., j, :]
            if previous is not None:
                for k, shift in self._previous:
                    c = getattr(self, f"previous_{k}")[j]
                    # y_j[i] -= c[i] * y_prev[i + shift], the neighbour outside the line being zero (or, on a
                    # periodic line axis, the one at the other end).
                    if shift == 0:
                        shifted = previous
                    elif self.cyclic:
                        shifted = torch.roll(previous, -shift, -1)
                    elif shift > 0:
                        shifted = torch.cat([previous[..., shift:], torch.zeros_like(previous[..., :shift])], -1)
                    else:
                        shifted = torch.cat([torch.zeros_like(previous[..., :-shift]), previous[..., :shift]], -1)
                    rhs = rhs - c * shifted
            previous = TRIDIAGONAL_SOLVERS[self.method](self.lower[j], self.diagonal[j], self.upper[j], rhs)
            if self.cyclic:
                previous = _uncorner(previous, self.cyclic_z[j], self.cyclic_v_last[j], self.cyclic_scale[j])
            solved[j] = previous
        y = torch.stack([solved[j] for j in range(lines)], -2)
        return y.movedim(-1, r.ndim - 2 + self.axis)


# ---------------------------------------------------------------------------------------------- smoothers
def _axis_of(axis: int | str, dim: int) -> int:
    if isinstance(axis, str):
        if axis not in AXIS_NAMES[:dim]:
            raise ValueError(f"axis: expected one of {list(AXIS_NAMES[:dim])} or 0..{dim - 1}; got {axis!r}")
        return AXIS_NAMES.index(axis)
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < dim:
        raise ValueError(f"axis: expected an integer 0..{dim - 1} or one of {list(AXIS_NAMES[:dim])}; got {axis!r}")
    return axis


def line_gauss_seidel(
    A: Stencil,
    grid_shape: Sequence[int],
    level: int = 0,
    *,
    axis: int | str = 0,
    order: str = "zebra",
    symmetric: bool = False,
    method: str = "factored",
) -> Smoother:
    """Line Gauss-Seidel with lines along ``axis``, in ``"zebra"`` or ``"lexicographic"`` order.

    Zebra: one residual-correction step per colour of lines (:class:`LineSolve`); the sweep is symmetric
    (reversed colours give the adjoint sweep), so V-cycles with it precondition CG.  Lexicographic (2D): one
    step ``B = (D + L)^{-1}`` (:class:`LexicographicLineSolve`); ``symmetric=True`` adds the backward sweep
    ``(D + U)^{-1}`` (symmetric line Gauss-Seidel), whose reversal is again the adjoint.

    ``method`` is the line solver (:data:`LINE_METHODS`): by default the zebra lines are factored once, here;
    the lexicographic sweep solves one line at a time and takes ``"factored"`` as cyclic reduction.

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2)
    >>> S = line_gauss_seidel(A, (7, 7), axis="y")
    >>> S
    Smoother(zebra-y, steps=2, cost=3, symmetric)
    >>> line_gauss_seidel(A, (7, 7), order="lexicographic", symmetric=True)
    Smoother(line-x-symmetric, steps=2, cost=4, symmetric)
    """
    axis = _axis_of(axis, len(grid_shape))
    grid_shape = tuple(int(n) for n in grid_shape)
    if method not in LINE_METHODS:
        raise ValueError(f"method: expected one of {sorted(LINE_METHODS)}; got {method!r}")
    if order == "zebra":
        steps = [
            ResidualCorrection(A, LineSolve(A, axis, grid_shape, classes, method=method))
            for classes in _line_colours(A, axis)
        ]
        # Each step forms the whole residual (one application of A); the colours together solve every line
        # once (counted as about one more application).
        return Smoother(steps, name=f"zebra-{AXIS_NAMES[axis]}", symmetric=True, cost=len(steps) + 1)
    if order == "lexicographic":
        method = "cyclic_reduction" if method == "factored" else method
        steps = [ResidualCorrection(A, LexicographicLineSolve(A, axis, grid_shape, method=method))]
        if symmetric:
            backward = LexicographicLineSolve(A, axis, grid_shape, backward=True, method=method)
            steps.append(ResidualCorrection(A, backward))
        name = f"line-{AXIS_NAMES[axis]}" + ("-symmetric" if symmetric else "")
        return Smoother(steps, name=name, symmetric=symmetric, cost=2 * len(steps))  # residual + all lines
    raise ValueError(f"order: expected 'zebra' or 'lexicographic'; got {order!r}")


def alternating_zebra(
    A: Stencil,
    grid_shape: Sequence[int],
    level: int = 0,
    *,
    axes: Sequence[int | str] | None = None,
    method: str = "factored",
) -> Smoother:
    """Alternating zebra line relaxation: zebra lines along each of ``axes`` in turn (default all: x then y,
    then z in 3D).  Robust for 2D anisotropy in any axis direction with full coarsening (Trottenberg et al.
    2001, section 5.2.2); symmetric.

    Examples
    --------
    >>> alternating_zebra(Stencil.laplacian(2), (7, 7))
    Smoother(zebra-xy, steps=4, cost=6, symmetric)
    """
    dim = len(grid_shape)
    axes = tuple(range(dim)) if axes is None else tuple(_axis_of(a, dim) for a in axes)
    if not axes:
        raise ValueError("axes: expected at least one axis")
    steps, cost = [], 0.0
    for axis in axes:
        sweep = line_gauss_seidel(A, grid_shape, level, axis=axis, method=method)
        steps += list(sweep.steps)
        cost += sweep.cost
    name = "zebra-" + "".join(AXIS_NAMES[a] for a in axes)
    return Smoother(steps, name=name, symmetric=True, cost=cost)


def _registered(builder, **fixed):
    def build(A: Stencil, grid_shape: Sequence[int], level: int = 0, **options) -> Smoother:
        return builder(A, grid_shape, level, **{**fixed, **options})

    build.__doc__ = f"{builder.__name__} with {fixed}."
    return build


LINE_SMOOTHERS = {
    **{f"line-{a}": _registered(line_gauss_seidel, axis=a, order="lexicographic") for a in "xy"},
    **{f"line-{a}-symmetric": _registered(line_gauss_seidel, axis=a, order="lexicographic", symmetric=True)
       for a in "xy"},
    **{f"zebra-{a}": _registered(line_gauss_seidel, axis=a, order="zebra") for a in "xyz"},
    "zebra-alternating": alternating_zebra,
}
"""The line smoothers by name (registered in :data:`mgcore.smoothers.SMOOTHERS`)."""
