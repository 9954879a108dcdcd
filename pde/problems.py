"""Model problems: discretised elliptic PDEs on uniform vertex-centred grids.

Every constructor returns a :class:`Problem`: the stencil ``A`` of the PDE operator scaled by ``1/h^2`` (so
that the discrete solution approximates the PDE solution), the right-hand side ``f`` with the Dirichlet
boundary values already moved into it, and, for manufactured solutions, the exact solution on the grid.

Grid convention (that of :mod:`mgcore.operators` and of ``pyamg.gallery``): a grid of shape
``(n_0, ..., n_{d-1})`` holds the interior unknowns ``x_k = (i_k + 1) h``, ``i_k = 0..n_k - 1``, with one
spacing ``h = 1 / (n_0 + 1)`` in every direction.  The domain is therefore the box
``[0, (n_0 + 1) h] x ... x [0, (n_{d-1} + 1) h]``: the unit square or cube when all sides are equal, a
longer or shorter box otherwise.  Axis 0 is ``x``, axis 1 is ``y``, axis 2 is ``z``; unknowns are numbered
in C order (``numpy.arange(N).reshape(shape)``), as ``pyamg.gallery.poisson(shape)`` numbers them, so
``poisson(shape).to_sparse() * h**2`` is that matrix.

References
----------
LeVeque, *Finite Difference Methods for Ordinary and Partial Differential Equations*, SIAM 2007 (the
5/7-point Laplacian, its O(h^2) error, boundary lifting: chapters 2-3).  Trottenberg, Oosterlee &
Schüller, *Multigrid*, Academic Press 2001 (model problems; anisotropic operators in section 5.1, mixed
derivatives in chapter 7).  Greenfeld, Galun, Kimmel, Yavneh & Basri, *Learning to optimize multigrid PDE
solvers*, ICML 2019 (log-normal diffusion coefficients).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mgcore.operators import Stencil

__all__ = [
    "Problem",
    "anisotropic",
    "diffusion",
    "grid_coordinates",
    "lognormal_diffusion",
    "poisson",
    "rotated_anisotropic",
]

# Largest |log a| of a log-normal coefficient: exp(600) = 4e260 leaves room for the 1/h^2 scaling (up to
# 1e12 for a million points per side) and the sums of a 7-point stencil below the float64 limit 1.8e308.
_LOG_COEFFICIENT_LIMIT = 600.0

#: A manufactured solution: "sin", "mixed", None or a function of the coordinate tensors (see poisson).
Solution = str | Callable[..., Tensor] | None


@dataclass(eq=False)
class Problem:
    """A discretised linear PDE ``A u = f`` on a grid, with its exact solution when one is known.

    Examples
    --------
    >>> p = poisson((7, 7))
    >>> p.name, p.grid_shape, p.h
    ('poisson-2d-7x7-sin', (7, 7), 0.125)
    >>> u = p.direct_solve()
    >>> 0 < p.error(u) < 2e-2
    True
    >>> p.random_rhs(4, seed=0).shape
    torch.Size([4, 1, 7, 7])
    """

    # The discrete operator, a 2D/3D Stencil already scaled by 1/h^2 (A u approximates the PDE operator
    # applied to u).  Constant coefficients, or variable ones shaped (K, *grid_shape).
    A: Stencil
    # Right-hand side on the interior grid, shaped grid_shape (f[None, None] is the (1, 1, *grid) tensor
    # the multigrid engine takes).  Inhomogeneous Dirichlet values are already lifted into it, so the
    # discrete problem is A u = f with zero boundary.
    f: Tensor
    # Number of interior points per axis, axis 0 = x.
    grid_shape: tuple[int, ...]
    # Grid spacing, the same in every direction: 1 / (grid_shape[0] + 1).
    h: float
    # The manufactured exact PDE solution sampled on the grid (same shape and dtype as f), or None.
    exact: Tensor | None = None
    # A short label for reports, e.g. "poisson-2d-63x63-sin".
    name: str = field(default="")
    # Boolean grid of the active cells of a masked domain (None: the whole box).
    mask: Tensor | None = None
    # For a singular operator (pure Neumann or periodic, c = 0): the null vector, 1 on the active cells and 0
    # elsewhere; f is then projected onto the range and exact has zero mean over the active cells.
    null_space: Tensor | None = None
    # Index of the first grid point along each axis in units of h (x_k = (i_k + start_k) h): 1 behind a
    # Dirichlet face, 0 on a Neumann face or a periodic axis.
    start: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.grid_shape = tuple(int(n) for n in self.grid_shape)
        if not isinstance(self.A, Stencil) or self.A.dim != len(self.grid_shape):
            raise TypeError(f"A: expected a {len(self.grid_shape)}D mgcore.Stencil; got {self.A!r}")
        if tuple(self.f.shape) != self.grid_shape:
            raise ValueError(f"f: expected shape {self.grid_shape}; got {tuple(self.f.shape)}")
        if self.exact is not None and tuple(self.exact.shape) != self.grid_shape:
            raise ValueError(f"exact: expected shape {self.grid_shape}; got {tuple(self.exact.shape)}")

    @property
    def dim(self) -> int:
        """Number of grid dimensions (2 or 3)."""
        return len(self.grid_shape)

    def coordinates(self, *, padded: bool = False) -> tuple[Tensor, ...]:
        """The grid coordinates, one tensor per axis; see :func:`grid_coordinates`."""
        if self.start is not None and not padded:
            axes = [(torch.arange(n, dtype=torch.float64) + s) * self.h for n, s in zip(self.grid_shape, self.start)]
            return tuple(c.to(self.f.dtype) for c in torch.meshgrid(*axes, indexing="ij"))
        return grid_coordinates(self.grid_shape, self.h, padded=padded, dtype=self.f.dtype)

    def to_sparse(self):
        """``A`` as a SciPy CSR matrix, unknowns in C order (the numbering of ``pyamg.gallery``)."""
        return self.A.to_sparse(self.grid_shape)

    def error(self, u: Tensor | np.ndarray, norm: str = "max") -> float:
        """The discretisation error ``u - exact`` of an approximate solution ``u``.

        Parameters
        ----------
        u : Tensor or ndarray
            Shaped ``grid_shape`` or ``(..., *grid_shape)`` (e.g. ``(batch, 1, *grid)``); every leading
            index is one sample.
        norm : {"max", "l2"}
            ``"max"``: ``max |u - exact|`` over the grid.  ``"l2"``: the scaled 2-norm
            ``sqrt(h^d sum (u - exact)^2)``, which approximates the ``L2`` norm over the domain.

        Returns
        -------
        float
            The largest error over the samples.

        Examples
        --------
        >>> p = poisson((3, 3))
        >>> p.error(p.exact), p.error(p.exact + 0.5), p.error(p.exact + 0.5, norm="l2")
        (0.0, 0.5, 0.375)
        """
        if self.exact is None:
            raise ValueError(f"error: problem {self.name!r} has no exact solution")
        if norm not in ("max", "l2"):
            raise ValueError(f"norm: expected 'max' or 'l2'; got {norm!r}")
        u = torch.as_tensor(u)
        if tuple(u.shape[u.ndim - self.dim :]) != self.grid_shape or u.ndim < self.dim:
            raise ValueError(f"u: expected shape (..., *{self.grid_shape}); got {tuple(u.shape)}")
        diff = (u.to(torch.float64) - self.exact.to(torch.float64)).reshape(-1, math.prod(self.grid_shape))
        if norm == "max":
            return float(diff.abs().amax())
        return float((diff.square().sum(dim=1) * self.h**self.dim).sqrt().amax())

    def random_rhs(self, batch: int = 1, seed: int = 0, *, channels: int = 1) -> Tensor:
        """Standard normal right-hand sides shaped ``(batch, channels, *grid_shape)`` in the dtype of ``f``.

        A fixed ``seed`` gives the same tensor on every call and machine (a private ``torch.Generator``;
        the global random state is not touched).
        """
        for name, value in (("batch", batch), ("channels", channels)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}: expected a positive integer; got {value!r}")
        generator = torch.Generator().manual_seed(_check_seed(seed))
        shape = (batch, channels, *self.grid_shape)
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(self.f.dtype)

    def direct_solve(self, f: Tensor | None = None) -> Tensor:
        """Solve ``A u = f`` with a sparse LU factorisation (SciPy SuperLU); a reference for small grids.

        ``f`` defaults to the problem's right-hand side; it may carry leading batch dimensions.
        """
        import scipy.sparse.linalg as spla

        f = self.f if f is None else torch.as_tensor(f)
        if tuple(f.shape[f.ndim - self.dim :]) != self.grid_shape:
            raise ValueError(f"f: expected shape (..., *{self.grid_shape}); got {tuple(f.shape)}")
        rhs = f.detach().cpu().to(torch.float64).reshape(-1, math.prod(self.grid_shape)).numpy()
        if self.null_space is not None:
            # Singular (null vector z): pin one active unknown to zero, solve the remaining nonsingular system,
            # then remove the component along z (the solution mgcore.solve returns).  A bordered system
            # [[A, z], [z^T, 0]] would do the same but its dense border fills the LU in (minutes in 3D).
            z = self.null_space.reshape(-1).to(torch.float64).numpy()
            pin = int(np.flatnonzero(z)[0])
            keep = np.r_[0:pin, pin + 1 : z.size]
            lu = spla.splu(self.to_sparse().tocsr()[keep][:, keep].tocsc())
            u = np.zeros_like(rhs)
            for row, b in enumerate(rhs):
                u[row, keep] = lu.solve(b[keep])
            u -= np.outer(u @ z / (z @ z), z)
        else:
            lu = spla.splu(self.to_sparse().tocsc())
            u = np.stack([lu.solve(b) for b in rhs])
        return torch.from_numpy(u).reshape(f.shape).to(f.dtype)


# ---------------------------------------------------------------------------------------------- helpers
def _check_shape(shape: Sequence[int], dims: tuple[int, ...]) -> tuple[int, ...]:
    """The grid shape as a tuple of ints, each at least 3, of one of the lengths ``dims``."""
    what = " or ".join(f"{d}D" for d in dims)
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, Sequence | np.ndarray | torch.Size):
        raise ValueError(
            f"shape: expected a tuple of {' or '.join(map(str, dims))} sizes ({what}); got {shape!r}"
        )
    try:
        out = tuple(operator.index(n) for n in shape)
    except TypeError as err:
        raise ValueError(f"shape: expected integer sizes; got {shape!r}") from err
    if len(out) not in dims:
        raise ValueError(f"shape: expected a {what} grid, {' or '.join(map(str, dims))} sizes; got {shape!r}")
    if min(out) < 3:
        # Fewer than 3 points per side leaves no coarse grid below the first, and no interior stencil.
        raise ValueError(f"shape: every side needs at least 3 points; got {shape!r}")
    return out


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype; got {dtype!r}")
    return dtype


def _check_real(value: float, name: str) -> float:
    """``value`` as a finite float; bools, strings, ``None`` and arrays are refused (as ``mgcore.solve`` does).

    Examples
    --------
    >>> _check_real("pi/4", "theta")
    Traceback (most recent call last):
    ...
    TypeError: theta: expected a real number; got str 'pi/4'
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number; got {value}")
    return value


def _check_positive(value: float, name: str) -> float:
    value = _check_real(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a finite positive number; got {value}")
    return value


def _check_seed(seed: int, name: str = "seed") -> int:
    """A seed: a non-negative integer (``numpy.random.default_rng`` and ``torch.manual_seed`` both take it).

    Examples
    --------
    >>> _check_seed(1.5)
    Traceback (most recent call last):
    ...
    TypeError: seed: expected a non-negative integer; got float 1.5
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name}: expected a non-negative integer; got {type(seed).__name__} {seed!r}")
    if seed < 0 or seed >= 2**63:
        raise ValueError(f"{name}: expected a non-negative integer below 2**63; got {seed}")
    return int(seed)


def grid_coordinates(
    shape: Sequence[int], h: float, *, padded: bool = False, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, ...]:
    """The coordinates ``x_k = (i_k + 1) h`` of the grid points, one tensor per axis (``indexing="ij"``).

    With ``padded=True`` the grid includes the boundary ring, ``shape + 2`` points per axis with
    ``x_k = i_k h``, ``i_k = 0..n_k + 1``: the layout :meth:`mgcore.Stencil.lift_boundary` reads.

    Examples
    --------
    >>> x, y = grid_coordinates((3, 2), 0.25)
    >>> x[:, 0].tolist(), y[0].tolist()
    ([0.25, 0.5, 0.75], [0.25, 0.5])
    >>> grid_coordinates((3,), 0.25, padded=True)[0].tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    start, extra = (0, 2) if padded else (1, 0)
    axes = [torch.arange(start, start + n + extra, dtype=torch.float64) * h for n in shape]
    return tuple(c.to(dtype) for c in torch.meshgrid(*axes, indexing="ij"))


def _axes(shape: Sequence[int], h: float, *, padded: bool = False) -> list[Tensor]:
    """The coordinates of :func:`grid_coordinates` as broadcastable float64 tensors, one per axis."""
    start, extra = (0, 2) if padded else (1, 0)
    out = []
    for k, n in enumerate(shape):
        view = [1] * len(shape)
        view[k] = n + extra
        out.append((torch.arange(start, start + n + extra, dtype=torch.float64) * h).reshape(view))
    return out


def _builtin_solution(solution: str, axes: Sequence[Tensor], K: np.ndarray) -> tuple[Tensor, Tensor]:
    """``u`` and ``f = -div(K grad u) = -sum_ij K_ij u_ij`` of a built-in solution, in closed form.

    ``axes`` are the coordinates as broadcastable tensors (axis ``k`` shaped ``n_k`` along dimension ``k``,
    1 elsewhere), so the sines and cosines are taken on ``n_k`` points, not on the whole grid.
    """
    dim = len(axes)
    shape = torch.broadcast_shapes(*(x.shape for x in axes))
    s = [torch.sin(math.pi * x) for x in axes]
    u = math.prod(s, start=torch.ones(shape, dtype=torch.float64))
    f = torch.zeros(shape, dtype=torch.float64)
    for i in range(dim):
        for j in range(dim):
            if K[i, j] == 0.0:
                continue
            if i == j:
                hess = -(math.pi**2) * u
            else:
                factors = [torch.cos(math.pi * axes[k]) if k in (i, j) else s[k] for k in range(dim)]
                hess = math.pi**2 * math.prod(factors, start=torch.ones(shape, dtype=torch.float64))
            f -= float(K[i, j]) * hess
    if solution == "mixed":
        # exp(x) cos(y): harmonic (Δ = 0) in 2D and 3D, so it sets non-zero Dirichlet values on every side
        # without changing f for the Laplacian; for other K its Hessian terms enter f.
        ex, cy = torch.exp(axes[0]), torch.cos(axes[1])
        harmonic = (ex * cy).expand(shape)
        u = u + harmonic
        # Hessian: u_xx = -u_yy = harmonic, u_xy = -exp(x) sin(y).
        if K[0, 0] != K[1, 1]:
            f -= float(K[0, 0] - K[1, 1]) * harmonic
        if K[0, 1] + K[1, 0] != 0.0:
            f += float(K[0, 1] + K[1, 0]) * (ex * torch.sin(axes[1]))
    return u, f


def _autograd_solution(fn: Callable[..., Tensor], coords: Sequence[Tensor], K: np.ndarray) -> Tensor:
    """``f = -sum_ij K_ij d_i d_j u`` of a user function by automatic differentiation.

    ``fn`` acts point by point on full coordinate tensors, so the gradient of ``sum(u)`` with respect to
    ``x_i`` is ``d_i u`` at every point, and the gradient of ``sum(d_i u)`` with respect to ``x_j`` is
    ``d_j d_i u``.
    """
    xs = [x.detach().clone().requires_grad_(True) for x in coords]
    with torch.enable_grad():
        u = torch.as_tensor(fn(*xs))
        f = torch.zeros(xs[0].shape, dtype=torch.float64)
        if not u.requires_grad:
            return f  # a constant: f = 0
        first = torch.autograd.grad(u.sum(), xs, create_graph=True, allow_unused=True)
        for i, gi in enumerate(first):
            if gi is None or not gi.requires_grad:
                continue  # u is at most linear in x_i
            second = torch.autograd.grad(gi.sum(), xs, retain_graph=True, allow_unused=True)
            for j, gij in enumerate(second):
                if gij is not None and K[i, j] != 0.0:
                    f -= float(K[i, j]) * gij.detach()
    return f


def _evaluate(fn: Callable[..., Tensor], coords: Sequence[Tensor], what: str) -> Tensor:
    """Call a user function on coordinate tensors and check that it returns values on the whole grid."""
    value = torch.as_tensor(fn(*coords), dtype=torch.float64)
    try:
        return value.expand(coords[0].shape).clone()
    except RuntimeError as err:
        raise ValueError(
            f"{what}: expected a function of the coordinate tensors returning values shaped "
            f"{tuple(coords[0].shape)}; got {tuple(value.shape)}"
        ) from err


def _constant_coefficient_problem(
    kernel: np.ndarray,
    K: np.ndarray,
    shape: tuple[int, ...],
    solution: Solution,
    name: str,
    dtype: torch.dtype,
    parameters: str = "",
) -> Problem:
    """Build the problem of the constant stencil ``kernel / h^2`` for ``-div(K grad u) = f``.

    ``parameters`` names the arguments the kernel was made from, for the error when it overflows.
    """
    h = 1.0 / (shape[0] + 1)
    # 1/h^2 = (n + 1)^2 exactly in floating point, so integer kernels (Poisson) give exact coefficients.
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.asarray(kernel, dtype=np.float64) * float((shape[0] + 1) ** 2)
    if not np.isfinite(scaled).all() or not np.isfinite(K).all():
        raise ValueError(
            f"{parameters or 'kernel'}: the stencil scaled by 1/h^2 = {(shape[0] + 1) ** 2} overflows float64 "
            f"(largest kernel entry {float(np.abs(kernel).max()):.3g}); use a smaller value"
        )
    # The stencil records its grid: its coefficients hold this grid's h, so a solver refuses another grid.
    A = Stencil.from_kernel(scaled, grid_shape=shape)
    if solution is None:
        f, exact, boundary = torch.ones(shape, dtype=torch.float64), None, None
    elif isinstance(solution, str):
        if solution not in ("sin", "mixed"):
            raise ValueError(f"solution: expected 'sin', 'mixed', None or a callable; got {solution!r}")
        exact, f = _builtin_solution(solution, _axes(shape, h), K)
        # "sin" vanishes on the boundary of the unit square/cube (up to sin(π) = 1e-16, not worth lifting).
        homogeneous = solution == "sin" and len(set(shape)) == 1
        boundary = None if homogeneous else _builtin_solution(solution, _axes(shape, h, padded=True), K)[0]
    elif callable(solution):
        interior = grid_coordinates(shape, h)
        exact = _evaluate(solution, interior, "solution")
        f = _autograd_solution(solution, interior, K)
        boundary = _evaluate(solution, grid_coordinates(shape, h, padded=True), "solution")
    else:
        raise TypeError(
            f"solution: expected 'sin', 'mixed', None or a callable; got {type(solution).__name__}"
        )
    if boundary is not None:
        # The boundary neighbours in A u are known values: move them to f (LeVeque 2007, sections 2.4, 3.2).
        f = A.lift_boundary(f, boundary)
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{parameters or 'solution'}: the right-hand side f = -div(K grad u) overflows float64")
    label = "ones" if solution is None else solution if isinstance(solution, str) else "custom"
    A, f = A.to(dtype), f.to(dtype)
    if not (bool(torch.isfinite(A.coefficients).all()) and bool(torch.isfinite(f).all())):
        raise ValueError(
            f"dtype: {dtype} cannot hold the problem's values (stencil coefficients up to "
            f"{float(np.abs(scaled).max()):.3g}); use torch.float64 or a milder {parameters or 'problem'}"
        )
    return Problem(
        A=A,
        f=f,
        grid_shape=shape,
        h=h,
        exact=None if exact is None else exact.to(dtype),
        name=f"{name}-{len(shape)}d-{'x'.join(map(str, shape))}-{label}",
    )


def _nonzero(screen) -> bool:
    return not (np.isscalar(screen) and not isinstance(screen, bool) and screen == 0)


def _needs_boundary_builder(bc, mask, screen, rhs, boundary) -> bool:
    """True when the problem needs :mod:`pde.boundaries` (anything but Dirichlet on a full box)."""
    return not (isinstance(bc, str) and bc == "dirichlet") or mask is not None or _nonzero(screen) or (
        rhs is not None or boundary is not None
    )


# ---------------------------------------------------------------------------------------------- problems
def poisson(
    shape: Sequence[int],
    *,
    solution: Solution = "sin",
    dtype: torch.dtype = torch.float64,
    bc="dirichlet",
    mask=None,
    mask_bc: str = "dirichlet",
    screen=0.0,
    rhs=None,
    boundary=None,
    flux=None,
) -> Problem:
    """The Poisson equation ``-Δu = f`` in 2D or 3D with the 5/7-point Laplacian (LeVeque 2007, ch. 3),
    or the screened equation ``-Δu + c u = f``, with any boundary condition per face, on a box or a masked
    domain.

    Parameters
    ----------
    shape : tuple of int
        Interior points per axis, 2 or 3 of them, each at least 3; ``h = 1 / (shape[0] + 1)`` on every axis,
        so the domain is ``[0, (n_k + 1) h]`` along axis ``k`` (the unit square/cube for equal sides).
    solution : {"sin", "mixed", None} or callable
        The manufactured exact solution (``f`` is ``-Δu``, the boundary values are ``u`` on the boundary):

        * ``"sin"``: ``u = prod_k sin(π x_k)``; zero on the boundary of the unit square/cube, non-zero on the
          far sides of a rectangular box.
        * ``"mixed"``: ``u = prod_k sin(π x_k) + exp(x) cos(y)``; the harmonic part sets non-zero Dirichlet
          values on every side, which exercises boundary lifting.
        * ``None``: ``f = 1``, zero boundary, no exact solution.
        * a callable ``u(x, y[, z])`` of float64 coordinate tensors (axis 0 first) built from differentiable
          torch operations; ``f = -Δu`` is formed by automatic differentiation.
    dtype : torch.dtype
        Dtype of the stencil, ``f`` and ``exact`` (computed in float64).
    bc : str or sequence
        Face conditions: ``"dirichlet"`` (default), ``"neumann"``, ``"periodic"``, or one per axis, each a name
        or a ``(low, high)`` pair, e.g. ``("periodic", ("neumann", "dirichlet"))``.  Discretisation (the
        vertex-centred box scheme, symmetric and second order), grid layout and data: see
        :mod:`pde.boundaries`.  With a manufactured ``solution`` the Dirichlet values and Neumann fluxes come
        from it (``"sin"`` uses ``sin(2π x / L)`` along periodic axes).
    mask : array of bool, optional
        The active points of a masked domain (grid-shaped); the others hold their Dirichlet value.
    mask_bc : {"dirichlet", "neumann"}
        The condition on the boundary of the mask.
    screen : float or array
        The coefficient ``c >= 0`` of ``-Δu + c u`` (one number, or one per grid point).
    rhs, boundary : array or callable, optional
        Without a ``solution``: ``f`` (default 1) and the Dirichlet values (a function of the coordinates,
        read on the Dirichlet faces and at the inactive points of the mask, or a grid-shaped array read at the
        inactive points; default 0).  Given beside a ``solution`` (which sets them) they are refused.
    flux : float, callable or sequence, optional
        Without a ``solution``: the Neumann data ``g_N = ∂u/∂n`` (outward normal derivative; default 0): one
        number or function of the coordinates for every Neumann face, or one entry per axis, each a number,
        a function, an array on the face points or a ``(low, high)`` pair of them (see
        :func:`pde.boundaries.face_data`).  It enters ``f`` as ``g_N / h`` times the lumped mass of the
        other axes.

    Returns
    -------
    Problem
        ``to_sparse() * h**2`` equals ``pyamg.gallery.poisson(shape)`` for Dirichlet faces; the
        discretisation error of the discrete solution is O(h^2) for smooth ``u``.  A pure Neumann or
        periodic problem is singular: ``null_space`` is set, ``f`` is projected onto the range and
        ``exact`` has zero mean.

    Examples
    --------
    >>> p = poisson((3, 3))
    >>> p.A
    Stencil(dim=2, points=5, constant, radius=1)
    >>> p.A.coefficients.tolist()
    [-16.0, -16.0, 64.0, -16.0, -16.0]
    >>> import torch
    >>> q = poisson((4, 4, 4), solution=lambda x, y, z: x * y * z + torch.sin(x))
    >>> q.error(q.direct_solve()) < 1e-3
    True
    >>> r = poisson((16, 17), bc=("periodic", ("neumann", "dirichlet")))
    >>> r.A.faces, r.h
    ((('periodic', 'periodic'), ('neumann', 'dirichlet')), 0.0625)
    >>> r.error(r.direct_solve()) < 2e-2
    True
    """
    shape = _check_shape(shape, (2, 3))
    dtype = _check_dtype(dtype)
    dim = len(shape)
    if _needs_boundary_builder(bc, mask, screen, rhs, boundary) or flux is not None:
        from pde.boundaries import axis_aligned_problem

        return axis_aligned_problem(
            shape, [1.0] * dim, bc=bc, mask=mask, mask_bc=mask_bc, screen=screen, solution=solution, rhs=rhs,
            boundary=boundary, flux=flux, name="screened" if _nonzero(screen) else "poisson", dtype=dtype,
        )
    kernel = np.zeros((3,) * dim)
    center = (1,) * dim
    kernel[center] = 2.0 * dim
    for axis in range(dim):
        for step in (0, 2):
            index = list(center)
            index[axis] = step
            kernel[tuple(index)] = -1.0
    return _constant_coefficient_problem(kernel, np.eye(dim), shape, solution, "poisson", dtype)


def anisotropic(
    shape: Sequence[int],
    eps: float,
    *,
    solution: Solution = "sin",
    dtype: torch.dtype = torch.float64,
    bc="dirichlet",
    mask=None,
    mask_bc: str = "dirichlet",
    screen=0.0,
    rhs=None,
    boundary=None,
    flux=None,
) -> Problem:
    """The anisotropic equation ``-u_xx - eps u_yy = f`` in 2D, axis 0 = ``x``, axis 1 = ``y``.

    For ``eps << 1`` the couplings along axis 1 are weak: point smoothers then fail to smooth in ``y`` and
    line smoothing or semicoarsening is needed (Trottenberg et al. 2001, section 5.1).  The stencil is
    ``pyamg.gallery.diffusion_stencil_2d(epsilon=eps, theta=0, type="FD") / h^2``.

    Parameters
    ----------
    shape : tuple of int
        Two sizes, each at least 3; ``h = 1 / (shape[0] + 1)``.
    eps : float
        The anisotropy, finite and positive.
    solution : {"sin", "mixed", None} or callable
        As in :func:`poisson`, with ``f = -u_xx - eps u_yy``.
    dtype : torch.dtype
        Dtype of the stencil and tensors.
    bc, mask, mask_bc, screen, rhs, boundary
        Boundary conditions per face, masked domain, screening and data, as in :func:`poisson`.
    flux : float, callable or sequence, optional
        Neumann data ``g_N = ∂u/∂n`` as in :func:`poisson`; it enters ``f`` as ``K_k g_N / h`` (``K = (1,
        eps)``) times the lumped mass of the other axis.

    Examples
    --------
    >>> anisotropic((3, 3), 0.01).A.coefficients.tolist()
    [-16.0, -0.16, 32.32, -0.16, -16.0]
    >>> anisotropic((8, 8), 0.1, bc="periodic").null_space is not None
    True
    """
    shape = _check_shape(shape, (2,))
    eps = _check_positive(eps, "eps")
    dtype = _check_dtype(dtype)
    if _needs_boundary_builder(bc, mask, screen, rhs, boundary) or flux is not None:
        from pde.boundaries import axis_aligned_problem

        return axis_aligned_problem(
            shape, [1.0, eps], bc=bc, mask=mask, mask_bc=mask_bc, screen=screen, solution=solution, rhs=rhs,
            boundary=boundary, flux=flux, name=f"anisotropic{eps:g}", dtype=dtype,
        )
    kernel = np.array([[0.0, -1.0, 0.0], [-eps, 2.0 * (eps + 1.0), -eps], [0.0, -1.0, 0.0]])
    return _constant_coefficient_problem(
        kernel, np.diag([1.0, eps]), shape, solution, f"anisotropic{eps:g}", dtype, "eps"
    )


def rotated_anisotropic(
    shape: Sequence[int],
    eps: float,
    theta: float,
    *,
    solution: Solution = "sin",
    dtype: torch.dtype = torch.float64,
    bc="dirichlet",
) -> Problem:
    """The rotated anisotropic equation ``-div(Q diag(1, eps) Q^T grad u) = f`` in 2D, 9-point stencil.

    ``Q`` rotates by ``theta`` from the ``x`` axis (axis 0) towards ``y`` (axis 1):

        ``-(C^2 + eps S^2) u_xx - 2 (1 - eps) C S u_xy - (eps C^2 + S^2) u_yy``,  ``C, S = cos, sin(theta)``,

    with the mixed derivative by central differences over the four diagonal neighbours (a standard test of
    multigrid robustness: Trottenberg et al. 2001, chapter 7, problems with mixed derivatives).  The stencil
    is the one of ``pyamg.gallery.diffusion_stencil_2d(epsilon=eps, theta=theta, type="FD")``, entry by entry
    and in the same orientation (its first index is axis 0), over ``h^2``, so ``to_sparse() * h**2`` equals
    ``pyamg.gallery.stencil_grid(stencil, shape)``.

    Parameters
    ----------
    shape : tuple of int
        Two sizes, each at least 3; ``h = 1 / (shape[0] + 1)``.
    eps : float
        The anisotropy, finite and positive.
    theta : float
        The rotation angle in radians, finite.
    solution : {"sin", "mixed", None} or callable
        As in :func:`poisson`, with ``f`` the rotated operator applied to ``u`` (``"sin"`` uses
        ``sin(2π x / L)`` along periodic axes).
    dtype : torch.dtype
        Dtype of the stencil and tensors.
    bc : str or sequence
        ``"dirichlet"`` (default) or ``"periodic"`` per axis, as in :func:`poisson`; a periodic axis holds
        ``n`` points of one period (``x_i = i h``) and the stencil wraps around it, every neighbour beyond
        a Dirichlet face (corners included) is a boundary value lifted into ``f``.  Fully periodic: singular,
        ``null_space`` set, ``f`` projected, ``exact`` with zero mean.  Neumann faces are refused: with the
        mixed derivative the symmetric (natural) box-scheme condition is the conormal one ``n . K grad u``,
        which mixes ``∂u/∂n`` with the tangential derivative, so ``∂u/∂n`` data cannot be imposed to second
        order in that form (use :func:`anisotropic` for axis-aligned anisotropy with Neumann faces).

    Examples
    --------
    >>> import math
    >>> p = rotated_anisotropic((3, 3), 0.5, math.pi / 4)
    >>> p.A
    Stencil(dim=2, points=9, constant, radius=1)
    >>> p.A.is_symmetric()
    True
    >>> q = rotated_anisotropic((16, 15), 0.5, math.pi / 6, bc=("periodic", "dirichlet"))
    >>> q.A.faces, q.h, q.error(q.direct_solve()) < 2e-2
    ((('periodic', 'periodic'), ('dirichlet', 'dirichlet')), 0.0625, True)
    """
    from mgcore.operators import parse_faces

    shape = _check_shape(shape, (2,))
    eps = _check_positive(eps, "eps")
    theta = _check_real(theta, "theta")
    dtype = _check_dtype(dtype)
    faces = parse_faces(bc, 2, "bc")
    if any("neumann" in pair for pair in faces):
        raise ValueError(
            f"bc: the rotated operator takes 'dirichlet' or 'periodic' faces; got {faces}: with its mixed "
            "derivative u_xy the symmetric box-scheme condition is the conormal n.K grad u, not du/dn (use "
            "anisotropic() for Neumann faces)"
        )
    C, S = math.cos(theta), math.sin(theta)
    CS, CC, SS = C * S, C**2, S**2
    # Written as pyamg.gallery.diffusion.diffusion_stencil_2d writes them, so the entries agree to the bit.
    a = 0.5 * (eps - 1) * CS
    b = -(eps * SS + CC)
    c = -a
    d = -(eps * CC + SS)
    e = 2.0 * (eps + 1)
    kernel = np.array([[a, b, c], [d, e, d], [c, b, a]])
    K = np.array([[CC + eps * SS, (1 - eps) * CS], [(1 - eps) * CS, eps * CC + SS]])
    name = f"rotated_anisotropic{eps:g}-{theta:g}"
    if any(low == "periodic" for low, _ in faces):
        return _periodic_constant_problem(kernel, K, shape, faces, solution, name, dtype)
    return _constant_coefficient_problem(kernel, K, shape, solution, name, dtype, "eps")


def _periodic_constant_problem(
    kernel: np.ndarray,
    K: np.ndarray,
    shape: tuple[int, ...],
    faces,
    solution: Solution,
    name: str,
    dtype: torch.dtype,
) -> Problem:
    """The constant stencil ``kernel / h^2`` for ``-div(K grad u) = f`` with periodic (and Dirichlet) axes.

    A periodic axis holds ``n`` points of one period, ``h = 1 / intervals`` of axis 0 as in
    :mod:`pde.boundaries`; the stencil wraps around periodic axes and every neighbour beyond a Dirichlet face
    is a boundary value of ``u`` moved into ``f`` (LeVeque 2007, sections 2.4, 3.2).
    """
    from pde.boundaries import _builtin, grid_layout

    start, intervals = grid_layout(shape, faces)
    h = 1.0 / intervals[0]
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.asarray(kernel, dtype=np.float64) * float(intervals[0] ** 2)
    if not np.isfinite(scaled).all():
        raise ValueError(f"eps: the stencil scaled by 1/h^2 = {intervals[0] ** 2} overflows float64")
    A = Stencil.from_kernel(scaled, boundary=faces, grid_shape=shape)
    axes = [(torch.arange(n, dtype=torch.float64) + s) * h for n, s in zip(shape, start)]
    coords = torch.meshgrid(*axes, indexing="ij")
    if isinstance(solution, str):
        solution = _builtin(solution, faces, [m * h for m in intervals])
    elif solution is not None and not callable(solution):
        raise TypeError(f"solution: expected 'sin', 'mixed', None or a callable; got {type(solution).__name__}")
    if solution is None:
        f, exact = torch.ones(shape, dtype=torch.float64), None
    else:
        exact = _evaluate(solution, coords, "solution")
        f = _autograd_solution(solution, coords, K)
        for o, c in zip(A.offsets, A.coefficients.tolist()):
            # Neighbours beyond a Dirichlet face are boundary values: c u(x + o h) moves to the right side.
            outside = torch.zeros(shape, dtype=torch.bool)
            for k, (v, (low, _)) in enumerate(zip(o, faces)):
                if v == 0 or low == "periodic":
                    continue
                index = torch.arange(shape[k]) + v
                view = [1] * len(shape)
                view[k] = -1
                outside |= ((index < 0) | (index >= shape[k])).reshape(view).expand(shape)
            if bool(outside.any()):
                neighbour = [x + v * h for x, v in zip(coords, o)]
                f = f - c * torch.where(outside, _evaluate(solution, neighbour, "solution"), 0.0)
    null_space = None
    if all(low == "periodic" for low, _ in faces):
        f = f - f.mean()
        exact = None if exact is None else exact - exact.mean()
        null_space = torch.ones(shape, dtype=dtype)
    label = "ones" if solution is None else "custom"
    bc_label = "-".join(sorted({kind for pair in faces for kind in pair}))
    return Problem(
        A=A.to(dtype),
        f=f.to(dtype),
        grid_shape=shape,
        h=h,
        exact=None if exact is None else exact.to(dtype),
        name=f"{name}-{len(shape)}d-{'x'.join(map(str, shape))}-{bc_label}-{label}",
        null_space=null_space,
        start=start,
    )


def diffusion(
    coefficient: Tensor | np.ndarray | Callable[..., Tensor],
    *,
    shape: Sequence[int] | None = None,
    bc="dirichlet",
    solution: Callable[..., Tensor] | None = None,
    rhs: Tensor | np.ndarray | Callable[..., Tensor] | None = None,
    boundary: Callable[..., Tensor] | None = None,
    flux=None,
    name: str = "diffusion",
    dtype: torch.dtype = torch.float64,
) -> Problem:
    """The variable-coefficient equation ``-div(a grad u) = f`` in 2D or 3D with a 5/7-point stencil.

    ``a`` is given per cell: ``coefficient[c]`` is its value on the cell between nodes ``c`` and ``c + 1``
    (boundary nodes included), so with Dirichlet faces a grid of ``n_k`` interior points per axis has
    ``n_k + 1`` cells per axis.  The flux through the edge from node ``x`` to ``x + h e_k`` uses the
    arithmetic mean ``a_e`` of the ``2^(d-1)`` cells that share the edge (2 in 2D, 4 in 3D), and

        ``(A u)(x) = sum_k [a_{x+e_k/2} (u(x) - u(x + h e_k)) + a_{x-e_k/2} (u(x) - u(x - h e_k))] / h^2``.

    This is the vertex-centred finite-volume (box) scheme: the face of the dual box around ``x`` normal to
    the edge is cut into equal parts by the ``2^(d-1)`` cells, so integrating a cell-wise constant ``a`` over
    it gives their mean.  Each edge weight appears in the rows of both its nodes, so the matrix is
    symmetric, and with ``a > 0`` it is positive semi-definite (definite with a Dirichlet face); ``a = 1``
    gives exactly :func:`poisson`.  Neumann and periodic faces follow :mod:`pde.boundaries`: a point on a
    Neumann face has half a dual box (the cells outside are missing from its averages), and a periodic axis
    wraps its cells around; see :func:`pde.boundaries.diffusion_problem`.

    Parameters
    ----------
    coefficient : array_like or callable
        Positive finite cell values, 2D or 3D, shaped by the grid and ``bc``: per axis ``n + 1`` cells
        (Dirichlet-Dirichlet), ``n`` (one Neumann face, or periodic) or ``n - 1`` (Neumann-Neumann); or a
        function ``a(x, y[, z])`` of the coordinate tensors, sampled at the cell centres (then ``shape`` is
        needed).
    shape : tuple of int, optional
        The grid, each side at least 3; with an array ``coefficient`` it follows from its shape (a value
        given must agree).
    bc : str or sequence
        Face conditions as in :func:`poisson`: ``"dirichlet"`` (default), ``"neumann"``, ``"periodic"``, or
        one per axis, each a name or a ``(low, high)`` pair.
    solution : callable, optional
        A manufactured exact solution ``u(x, y[, z])`` (differentiable torch operations): ``f = -div(a grad
        u)`` by automatic differentiation, Dirichlet values and Neumann data from ``u``.  Needs a function
        ``coefficient``.
    rhs : array_like or callable, optional
        ``f`` on the grid, or a function of the coordinate tensors.  Default 1.
    boundary : callable, optional
        Dirichlet values ``g(x, y[, z])``, evaluated on the Dirichlet faces and lifted into ``f``.  Default 0.
    flux : float, callable or sequence, optional
        Neumann data ``g_N = ∂u/∂n`` (outward), as in :func:`poisson`; it enters ``f`` as ``a g_N / h``
        times the lumped mass of the other axes, with ``a`` on the face: the function's value there, or for
        cell values the mean of the cells touching the face (exact for a cell-wise constant ``a``).
    name : str
        Label of the problem.
    dtype : torch.dtype
        Dtype of the stencil and ``f``.

    Returns
    -------
    Problem
        A variable :class:`~mgcore.Stencil`; ``exact`` from ``solution`` or ``None``.  Without a Dirichlet
        face the operator is singular: ``null_space`` is the constant, ``f`` is projected onto the range and
        ``exact`` has zero mean.

    Examples
    --------
    >>> import numpy as np
    >>> p = diffusion(np.ones((4, 5)))
    >>> p.grid_shape, p.A
    ((3, 4), Stencil(dim=2, points=5, variable on (3, 4), radius=1))
    >>> bool((p.to_sparse() != poisson((3, 4)).to_sparse()).nnz == 0)
    True
    >>> q = diffusion(np.ones((4, 4)), bc=("periodic", "neumann"))
    >>> q.grid_shape, q.null_space is not None
    ((4, 5), True)
    >>> r = diffusion(lambda x, y: 1 + x * y, shape=(15, 15), bc="neumann",
    ...               solution=lambda x, y: torch.cos(x) * torch.exp(y))
    >>> r.error(r.direct_solve()) < 1e-2
    True
    """
    from mgcore.operators import parse_faces
    from pde.boundaries import diffusion_problem, grid_layout

    dtype = _check_dtype(dtype)
    if callable(coefficient):
        if shape is None:
            raise ValueError("shape: expected the grid (2 or 3 sizes) with a function coefficient; got None")
        grid = _check_shape(shape, (2, 3))
        faces = parse_faces(bc, len(grid), "bc")
    else:
        a = torch.as_tensor(coefficient).detach().cpu().to(torch.float64).numpy()
        if a.ndim not in (2, 3):
            raise ValueError(f"coefficient: expected a 2D or 3D array of cell values; got shape {a.shape}")
        if not np.isfinite(a).all() or (a <= 0).any():
            raise ValueError("coefficient: expected finite positive values")
        faces = parse_faces(bc, a.ndim, "bc")
        # Cells per axis: n + 1 between two Dirichlet faces, one fewer per Neumann face, n on a periodic axis.
        grid = tuple(
            m if low == "periodic" else m - 1 + (low == "neumann") + (high == "neumann")
            for m, (low, high) in zip(a.shape, faces)
        )
        if min(grid) < 3:
            raise ValueError(
                f"coefficient: {a.shape} cells give the grid {grid} with bc {faces}; every grid side needs at "
                "least 3 points (with Dirichlet faces: at least 4 cells per axis)"
            )
        if shape is not None and tuple(_check_shape(shape, (2, 3))) != grid:
            raise ValueError(f"shape: {tuple(shape)} does not match the grid {grid} of the {a.shape} cell values")
        coefficient = a
    if rhs is not None and not callable(rhs):
        rhs_shape = tuple(torch.as_tensor(rhs).shape)
        if rhs_shape != grid:
            raise ValueError(f"rhs: expected shape {grid}; got {rhs_shape}")
    if grid_layout(grid, faces)[1][0] < 2:
        raise ValueError(f"shape: the grid {grid} with bc {faces} spans a single interval along axis 0")
    return diffusion_problem(
        coefficient, grid, faces, solution=solution, rhs=rhs, boundary=boundary, flux=flux, name=name, dtype=dtype
    )


def lognormal_diffusion(shape: Sequence[int], sigma: float, seed: int = 0, **kwargs) -> Problem:
    """:func:`diffusion` with ``a = exp(N(0, sigma^2))`` drawn independently per cell.

    Log-normal coefficients are the random diffusion problems on which Greenfeld et al. (ICML 2019) train
    and test learned multigrid prolongations; ``sigma`` sets how rough and high-contrast ``a`` is.

    Parameters
    ----------
    shape : tuple of int
        The grid (interior points per axis), 2D or 3D, each side at least 3; ``a`` has ``n + 1`` cells per
        axis.
    sigma : float
        Standard deviation of ``log a``; finite and non-negative (0 gives :func:`poisson`).
    seed : int
        Seed of a private ``numpy.random.Generator``: the same seed gives the same coefficients.
    **kwargs
        Passed to :func:`diffusion` (``bc``, ``rhs``, ``boundary``, ``flux``, ``dtype``, ``name``); the number
        of cells per axis follows ``bc``.

    Examples
    --------
    >>> p = lognormal_diffusion((7, 7), sigma=1.0, seed=1)
    >>> p.name, p.A.is_symmetric()
    ('lognormal_diffusion-2d-7x7-sigma1-seed1', True)
    """
    shape = _check_shape(shape, (2, 3))
    sigma = _check_real(sigma, "sigma")
    if sigma < 0:
        raise ValueError(f"sigma: expected a finite non-negative number; got {sigma}")
    seed = _check_seed(seed)
    from mgcore.operators import parse_faces
    from pde.boundaries import grid_layout

    faces = parse_faces(kwargs.get("bc", "dirichlet"), len(shape), "bc")
    rng = np.random.default_rng(seed)
    # One value per cell: n + 1 cells per axis between Dirichlet faces (the draws of earlier versions).
    log_a = sigma * rng.standard_normal(grid_layout(shape, faces)[1])
    largest = float(np.abs(log_a).max())
    if largest > _LOG_COEFFICIENT_LIMIT:
        # exp(+-709) is the end of float64; the stencil then multiplies by 1/h^2 and sums a few coefficients.
        raise ValueError(
            f"sigma: {sigma:g} draws coefficients up to exp({largest:.0f}) (seed {seed}), beyond the float64 "
            f"range this solver keeps (|log a| <= {_LOG_COEFFICIENT_LIMIT:g}); use a smaller sigma"
        )
    a = np.exp(log_a)
    kinds = sorted({kind for pair in faces for kind in pair})
    bc_label = "" if kinds == ["dirichlet"] else "-" + "-".join(kinds)
    kwargs.setdefault(
        "name", f"lognormal_diffusion-{len(shape)}d-{'x'.join(map(str, shape))}-sigma{sigma:g}-seed{seed}{bc_label}"
    )
    return diffusion(a, **kwargs)
