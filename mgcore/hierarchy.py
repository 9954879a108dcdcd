"""The multigrid hierarchy as plain data: a list of :class:`Level` objects and a coarsest solver.

Coarse operators (``coarse_operator=``):

* ``"rediscretize"`` -- a constant, symmetric stencil of radius 1 with a non-negative row sum (``-Δ + c``) on
  a grid whose coarse grid is uniform with spacing ``2h`` up to the faces (odd sides between Dirichlet faces,
  ``2^k + 1`` points between Neumann faces, even periodic sides) is rediscretised: the second-order part
  divided by 4, ``c`` kept, the faces kept (a constant stencil's Neumann faces are the box scheme's).
* ``"galerkin"`` -- ``A_c = R A P`` computed on stencils by probing: with ``R = P^T/2^d`` and ``A`` of
  radius 1 the coarse stencil has radius 1 again, so ``3^d`` probe vectors (one per residue class of the
  coarse index mod 3) recover every coefficient of every coarse cell (Trottenberg et al. 2001,
  section 3.3; the probing idea is that of Curtis, Powell & Reid 1974).  Used for variable coefficients and
  for grids that do not nest uniformly (even sizes, axes that stop coarsening).
* ``"auto"`` (default) -- rediscretise where that is exact, Galerkin elsewhere.  A constant stencil's Galerkin
  operator on a nesting grid is again constant (:func:`constant_galerkin`).

Transfers (``interpolation=``):

* ``"linear"`` (default) -- full weighting and (bi/tri)linear interpolation, the same on every level.
* ``"operator"`` -- operator-dependent interpolation built from each level's stencil, ``R = P^T / 4``
  (:func:`mgcore.transfers.operator_dependent_transfers`), always with Galerkin coarse operators.  This
  is the choice for rough or jumping coefficients (2D, radius-1 stencils).  Levels with an even side (whose
  coarse grid does not nest uniformly) keep linear transfers, so use odd sides, ideally ``2^k - 1``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mgcore.anisotropy import (
    SemiFullWeighting,
    SemiInjection,
    SemiLinear,
    coarsened_axes,
    rediscretize_semi,
    semi_rediscretizable,
    semicoarse_shape,
)
from mgcore.boundary import (
    NULL_TOL,
    BoundaryProlongation,
    BoundaryRestriction,
    active_cells,
    boundary_coarse_shape,
    boundary_galerkin,
    check_coarsenable,
    needs_boundary_coarsening,
)
from mgcore.operators import Operator, Stencil
from mgcore.options import MultigridOptions
from mgcore.smoothers import ELONGATED, DiagonalScaling, Smoother, make_smoother
from mgcore.transfers import FullWeighting, Injection, Linear, coarse_shape, operator_dependent_transfers

__all__ = [
    "CoarseSolver",
    "Hierarchy",
    "Level",
    "SeparableSolver",
    "build_hierarchy",
    "galerkin_stencil",
    "rediscretize",
]


class Level(nn.Module):
    """One grid of the hierarchy (compare pyamg's ``Level``): plain attributes, no behaviour.

    Attributes
    ----------
    A : Operator
        The operator on this grid.
    grid_shape : tuple of int
        The grid.
    smoother : Smoother or None
        Its smoother (``None`` on the coarsest level).
    presmooth, postsmooth : int
        Sweeps before and after the coarse-grid correction; the post-smoother runs its steps in reverse.
    R, P : nn.Module or None
        Restriction to and prolongation from the next coarser level (``None`` on the coarsest).
    Pi : nn.Module or None
        State transfer Π for FAS/MgNet-style restriction; ``None`` gives the correction scheme.
    coarse_operator : str
        How ``A`` was formed: ``"given"``, ``"rediscretized"`` or ``"galerkin"``.
    coarsened_axes : tuple of int or None
        The axes ``R`` and ``P`` coarsen (all of them but for semicoarsening; ``None`` on the coarsest).

    The level also owns one workspace array shaped like its grid functions (:meth:`workspace`): the
    smoothing residual, the fine residual of the restriction and the prolonged correction are written there
    in turn, so a cycle allocates no fine-grid array (page faults dominate large allocations).
    """

    def __init__(
        self,
        A: Operator,
        grid_shape: Sequence[int],
        smoother: Smoother | None = None,
        presmooth: int = 0,
        postsmooth: int = 0,
        R: nn.Module | None = None,
        P: nn.Module | None = None,
        Pi: nn.Module | None = None,
        coarse_operator: str = "given",
        coarsened_axes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.coarsened_axes = None if coarsened_axes is None else tuple(int(a) for a in coarsened_axes)
        self.A = A
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.smoother = smoother
        self.presmooth = int(presmooth)
        self.postsmooth = int(postsmooth)
        self.R = R
        self.P = P
        self.Pi = Pi
        self.coarse_operator = coarse_operator

    def workspace(self, like: Tensor) -> Tensor:
        """The level's scratch array shaped like ``like`` (kept between calls; only for values consumed
        before the next use, and only where autograd records nothing)."""
        return self._kept("_workspace", like)

    def iterate(self, like: Tensor) -> Tensor:
        """A second kept array shaped like ``like``, for the level's iterate within a cycle (spent before the
        level runs again); the same rules as :meth:`workspace`."""
        return self._kept("_iterate", like)

    def _kept(self, name: str, like: Tensor) -> Tensor:
        buffer = self.__dict__.get(name)
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty_like(like, memory_format=torch.contiguous_format)
            self.__dict__[name] = buffer
        return buffer

    @property
    def unknowns(self) -> int:
        """Grid points on this level."""
        return math.prod(self.grid_shape)

    def nonzeros(self) -> int:
        """Non-zero entries of the matrix of ``A`` on this grid (as pyamg counts them)."""
        A = self.A
        if not isinstance(A, Stencil):
            return 0
        if A.is_constant:
            return sum(
                math.prod(max(n - abs(v), 0) for n, v in zip(self.grid_shape, o)) if c != 0 else 0
                for o, c in zip(A.offsets, A._values)
            )
        return int((A.coefficients != 0).sum())

    def extra_repr(self) -> str:
        return f"grid={self.grid_shape}"


SPARSE_LU_POINTS = 256
"""A coarsest grid of at least this many unknowns with Dirichlet faces is factorised by SciPy's sparse LU on the
CPU (a 31^2 grid: 1.3 against 12 ms for the dense LU, and 0.07 against 0.3 ms per solve)."""


class _SparseFactor:
    """A SciPy SuperLU factorisation with its CSR matrix: shared by deep copies (it is never modified; a mixed
    precision solve deep-copies the hierarchy), factorised again when unpickled (SuperLU objects do not pickle)."""

    def __init__(self, matrix) -> None:
        import scipy.sparse.linalg

        self.matrix = matrix
        self.lu = scipy.sparse.linalg.splu(matrix.tocsc())

    def __deepcopy__(self, memo) -> _SparseFactor:
        return self

    def __reduce__(self):
        return (_SparseFactor, (self.matrix,))

    def solve(self, rhs, trans: str = "N"):
        return self.lu.solve(rhs, trans=trans)


def _sparse_solve(rhs: Tensor, factor: _SparseFactor) -> Tensor:
    """``A^{-1} rhs`` for ``rhs`` ``(n, batch)``, in float64, answered in ``rhs``'s dtype."""
    return torch.from_numpy(factor.solve(rhs.detach().double().numpy())).to(rhs.dtype)


class _SparseSolve(torch.autograd.Function):
    """``A^{-1} rhs`` by a SciPy sparse LU factor, differentiable in ``rhs`` (the gradient solves with
    ``A^T``)."""

    @staticmethod
    def forward(ctx, rhs: Tensor, factor) -> Tensor:  # rhs: (n, batch)
        ctx.factor = factor
        return _sparse_solve(rhs, factor)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return torch.from_numpy(ctx.factor.solve(grad.detach().double().numpy(), trans="T")).to(grad.dtype), None


class CoarseSolver(nn.Module):
    """Exact solve on the coarsest grid: an LU factorisation of the assembled operator.

    Differentiable in the right-hand side (``torch.linalg.lu_solve``), so cycles can be trained through.
    A singular operator (pure Neumann or periodic: it annihilates the constant on its active cells, ``|A z|``
    at most ``null_tol`` of its largest entry; :func:`build_hierarchy` scales :data:`~mgcore.boundary.NULL_TOL`
    by the square of the coarsening of the mesh width) is solved by its pseudo-inverse or a bordered LU instead,
    which returns the solution orthogonal to the null space.  On a coarse level (``level > 0``) any other
    singular operator (an LU pivot of at most ``null_tol`` of the largest) is a Galerkin ``R A P`` whose ``P`` maps
    some coarse vector to zero: it takes the pseudo-inverse (its name is then ``"pseudo-inverse"``), which gives
    the correction ``P e`` every solution gives.  The caller's own singular operator (``level == 0``: a zero or
    round-off LU pivot, or a row of zeros) is refused with a ``ValueError`` naming ``A``, the ``level`` and its
    grid.  On the CPU a stencil on :data:`SPARSE_LU_POINTS` unknowns or more is factorised sparse (SciPy's
    SuperLU; its name is then ``"sparse LU"``), a singular one as the bordered matrix; moved to another device,
    or before ``torch.compile`` traces it (:meth:`densify`), it takes the dense factors.
    """

    name = "dense LU"

    def __init__(
        self, A: Operator, grid_shape: Sequence[int], level: int = 0, *, null_tol: float = NULL_TOL
    ) -> None:
        super().__init__()
        self.grid_shape = tuple(grid_shape)
        self.level = level
        n = math.prod(self.grid_shape)
        dtype = A.coefficients.dtype if isinstance(A, Stencil) else torch.float64
        device = A.coefficients.device if isinstance(A, Stencil) else None
        self._sparse = None
        sparse = (
            isinstance(A, Stencil)
            and device.type == "cpu"
            and dtype in (torch.float32, torch.float64)
            and n >= SPARSE_LU_POINTS
        )
        self.null_tol = null_tol
        self.bordered = False
        if (
            sparse
            and A.boundary == "dirichlet"
            and A.is_constant
            and self._factor_sparse(A.to_sparse(self.grid_shape), dtype)
        ):
            return
        with torch.no_grad():
            assembled, matrix = None, None
            if isinstance(A, Stencil) and A.coefficients.device.type == "cpu" and (not A.is_constant or sparse):
                # Assembled from the coefficients: applying A to the n unit vectors reads n^2 values (a 31^2
                # coarsest grid: 1 against 7 ms), and a large constant one (a periodic axis that stops
                # coarsening early) would be a dense n^2 matrix.
                assembled = A.to_sparse(self.grid_shape)
            else:
                identity = torch.eye(n, dtype=dtype, device=device).reshape(n, 1, *self.grid_shape)
                matrix = A(identity).reshape(n, n).T.contiguous()  # column j is A e_j
            singular, zero_rows = False, False
            if isinstance(A, Stencil) and (A.boundary != "dirichlet" or not A.is_constant):
                # Neumann or periodic faces, or a mask with Neumann edges inside Dirichlet faces: singular when A
                # annihilates the constant on the active cells.
                z = active_cells(A, self.grid_shape).reshape(n).to(dtype)
                if assembled is not None:
                    magnitudes = abs(assembled)
                    scale = float(magnitudes.max())
                    residue = float(np.abs(assembled @ z.double().numpy()).max())
                    zero_rows = bool((np.asarray(magnitudes.sum(axis=1)) == 0).any())
                else:
                    scale, residue = float(matrix.abs().max()), float((matrix @ z).abs().max())
                    zero_rows = bool((matrix.abs().sum(dim=1) == 0).any())
                singular = bool(z.any()) and residue <= null_tol * scale
                # A grid of decoupled points only (a single coarse point of a singular operator): zero rows.
                singular = singular or zero_rows
                if zero_rows and level == 0:  # the caller's own operator: nothing else to blame
                    raise ValueError(
                        f"A: the operator of the coarsest level (level 0, grid {self.grid_shape}) is singular (a row "
                        "of zeros); a singular A has no unique solution: check the stencil (e.g. its diagonal and "
                        "signs) or the boundary conditions"
                    )
            if sparse and not singular and assembled is not None:
                # Variable coefficients, or Neumann or periodic faces that something grounds (a Dirichlet face, a
                # Dirichlet mask edge, screening): factorised sparse as with constant Dirichlet faces (a 27^2
                # masked coarsest grid: 3.6 -> 1.6 ms).
                if self._factor_sparse(assembled, dtype):
                    return
            if sparse and singular and not zero_rows and assembled is not None:
                # The bordered matrix [[A, z], [z^T, 0]] (below) as a sparse LU: a periodic axis that stops
                # coarsening early leaves a large coarsest grid (1000^2 periodic: 125^2), whose dense LU would be
                # 2 GB.  A null space larger than z leaves it singular: the dense path then takes the
                # pseudo-inverse.
                import scipy.sparse as sp

                column = sp.csr_matrix(z.double().numpy().reshape(-1, 1))
                if self._factor_sparse(sp.bmat([[assembled, column], [column.T, None]], format="csr"), dtype,
                                       refuse=False):
                    self.singular = self.bordered = True
                    return
            if matrix is None:
                if n > DENSE_LU_POINTS:
                    raise ValueError(
                        f"grid: the coarsest grid {self.grid_shape} (level {level}) has more than {DENSE_LU_POINTS} "
                        "unknowns and its operator no sparse LU takes (singular beyond the constant); use periodic "
                        "sides n = m 2^k with small m (e.g. 256 or 384), or a smaller max_coarse"
                    )
                matrix = torch.from_numpy(assembled.toarray()).to(dtype)
            if singular and bool(z.any()) and not zero_rows:
                # One null vector z: LU of the bordered matrix [[A, z], [z^T, 0]], whose solution is the
                # z-orthogonal solution of A x = f - (z.f / z.z) z, as the pseudo-inverse gives, at LU cost.
                bordered = torch.zeros((n + 1, n + 1), dtype=dtype, device=device)
                bordered[:n, :n] = matrix
                bordered[:n, n] = z
                bordered[n, :n] = z
                lu, pivots, status = torch.linalg.lu_factor_ex(bordered)
                # A null space larger than z (a coarse R A P whose P maps more than the constant's complement to
                # zero) leaves the bordered matrix singular too: a vanishing pivot, whose solve is round-off
                # blown up (1e34 on a 3D masked level), not a solution.
                self.bordered = not _vanishing_pivot(lu.diagonal().abs().cpu().numpy(), int(status), null_tol)
            if singular and not self.bordered:
                # Symmetric positive semi-definite: the eigen-decomposition pseudo-inverse (the tolerance
                # drops the null space, whose eigenvalues are round-off).
                lu, pivots = self._pseudo_inverse(matrix, dtype), None
            elif not singular:
                lu, pivots, status = torch.linalg.lu_factor_ex(matrix)
                magnitudes = lu.diagonal().abs().cpu().numpy()
                if level > 0 and _vanishing_pivot(magnitudes, int(status), null_tol):
                    lu, pivots = self._pseudo_inverse(matrix, dtype), None
                elif _vanishing_pivot(magnitudes, int(status), null_tol):
                    # LAPACK's info: U[i, i] (1-based) is exactly zero; or a pivot at round-off level, whose solve
                    # is round-off blown up (a part of a masked domain that nothing grounds: constants of 1e13
                    # that a CG step took for a solution).
                    where = (
                        f"U[{int(status)},{int(status)}] is zero" if int(status) > 0
                        else f"its smallest LU pivot is {float(magnitudes.min()):.1e}, the largest "
                        f"{float(magnitudes.max()):.1e}"
                    )
                    raise ValueError(
                        f"A: the operator of the coarsest level (level {level}, grid {self.grid_shape}, solved by "
                        f"dense LU) is singular ({where}); a singular A has no unique solution: check the stencil "
                        "(e.g. its diagonal and signs) or the boundary conditions"
                    )
        self.singular = singular
        self.register_buffer("lu", lu)
        self.register_buffer("pivots", pivots)

    def _pseudo_inverse(self, matrix: Tensor, dtype: torch.dtype) -> Tensor:
        """The pseudo-inverse of a singular ``matrix``, eigenvalues up to :attr:`null_tol` of the largest dropped:
        a singular operator's (its null space, round-off), or a coarse ``R A P`` that is singular although ``A``
        is not: ``P`` maps some coarse vector to zero (two coarse points of a masked domain that reach the same
        fine cells, met on 3D masks), so ``R A P`` has ``P``'s null space and every solution gives the same
        correction ``P e``, the pseudo-inverse's among them."""
        self.name = "pseudo-inverse"
        symmetric = bool(torch.equal(matrix, matrix.T))
        return torch.linalg.pinv(matrix.double(), hermitian=symmetric, rtol=self.null_tol).to(dtype)

    def _factor_sparse(self, matrix, dtype: torch.dtype, refuse: bool = True) -> bool:
        """The sparse LU of the CSR ``matrix`` (kept, for :meth:`densify`); True when it is done.  A singular
        ``matrix`` is refused on the first level (the caller's operator) unless not ``refuse``; on a coarse level
        the dense path takes it (False)."""
        try:
            factor = _SparseFactor(matrix)
        except RuntimeError:  # SuperLU: "Factor is exactly singular"
            factor = None
        vanishing = factor is None or _vanishing_pivot(np.abs(factor.lu.U.diagonal()), 0, self.null_tol)
        if (self.level > 0 or not refuse) and vanishing:
            return False
        if vanishing:  # exactly singular, or a round-off pivot whose solve is round-off blown up
            raise ValueError(
                f"A: the operator of the coarsest level (level {self.level}, grid {self.grid_shape}, solved by "
                "sparse LU) is singular; a singular A has no unique solution: check the stencil (e.g. its diagonal "
                "and signs) or the boundary conditions"
            ) from None
        self._sparse = (factor, dtype)
        self.name = "sparse LU"
        self.singular = False
        self.bordered = False
        self.register_buffer("lu", None)
        self.register_buffer("pivots", None)
        return True

    def densify(self, device: torch.device | str | None = None) -> None:
        """Replace a sparse factorisation by the dense LU on ``device`` (default the CPU): for a GPU, or a
        cycle that ``torch.compile`` traces.  Nothing to do for a dense one.  A grid beyond
        :data:`DENSE_LU_POINTS` is refused (its dense LU would not fit): a ``ValueError`` naming the grid."""
        if self._sparse is None:
            return
        if math.prod(self.grid_shape) > DENSE_LU_POINTS:
            raise ValueError(
                f"grid: the coarsest grid {self.grid_shape} has more than {DENSE_LU_POINTS} unknowns, too many for a "
                "dense LU (on a GPU, or for torch.compile); it is solved by a sparse LU on the CPU only: use "
                "periodic sides n = m 2^k with small m (e.g. 256 or 384), or eager cycles on the CPU"
            )
        factor, dtype = self._sparse
        dense = torch.from_numpy(factor.matrix.toarray()).to(dtype=dtype, device=device)
        lu, pivots, _ = torch.linalg.lu_factor_ex(dense)
        self._sparse = None
        self.name = "dense LU"
        self.lu, self.pivots = lu, pivots

    def _apply(self, fn, recurse: bool = True):
        # .to()/.double()/.float(): a sparse factor stays on the CPU (solving in float64, answering in the new
        # dtype); another device takes the dense factors there.
        out = super()._apply(fn, recurse)
        if self._sparse is not None:
            probe = fn(torch.zeros(1, dtype=self._sparse[1]))
            if probe.device.type != "cpu":
                self._sparse = (self._sparse[0], probe.dtype)
                self.densify(probe.device)
            else:
                self._sparse = (self._sparse[0], probe.dtype)
        return out

    def forward(self, f: Tensor) -> Tensor:
        batch = f.shape[: f.ndim - len(self.grid_shape)]
        if self._sparse is not None:
            rhs = f.reshape(-1, math.prod(self.grid_shape)).T  # (n, batch)
            if self.bordered:  # [[A, z], [z^T, 0]]: the z-orthogonal solution
                rhs = torch.cat([rhs, rhs.new_zeros((1, rhs.shape[1]))])
            if torch.is_grad_enabled() and rhs.requires_grad:
                u = _SparseSolve.apply(rhs.cpu(), self._sparse[0]).to(f.device)
            else:  # the solve alone: the autograd Function's own call cost more than a 31^2 solve's tenth
                u = _sparse_solve(rhs.cpu(), self._sparse[0]).to(f.device)
            if self.bordered:
                u = u[:-1]
            return u.T.reshape(*batch, *self.grid_shape).to(f.dtype)
        rhs = f.reshape(-1, math.prod(self.grid_shape)).T.to(self.lu.dtype)  # (n, batch)
        if self.pivots is None:
            u = self.lu @ rhs  # the pseudo-inverse of a singular operator
        elif self.bordered:
            padded = torch.cat([rhs, rhs.new_zeros((1, rhs.shape[1]))])
            u = torch.linalg.lu_solve(self.lu, self.pivots, padded)[:-1]
        else:
            u = torch.linalg.lu_solve(self.lu, self.pivots, rhs)
        return u.T.reshape(*batch, *self.grid_shape).to(f.dtype)


def _vanishing_pivot(pivots: np.ndarray, status: int, null_tol: float) -> bool:
    """Whether an LU factorisation met a zero pivot (``status``, LAPACK's info) or one of at most ``null_tol`` of
    the largest: ``|u_kk|`` bounds the smallest singular value of ``U``, so the matrix is singular to that
    tolerance (as :func:`mgcore.boundary.null_vector` judges the constant)."""
    return status > 0 or float(pivots.min()) <= null_tol * float(pivots.max())


SEPARABLE_MAX_SIDE = 256
"""The longest short side of a thin grid that ``auto`` solves exactly by :class:`SeparableSolver`."""


def separable(A: Operator, grid_shape: Sequence[int]) -> bool:
    """Whether :class:`SeparableSolver` solves ``A`` on ``grid_shape``: a constant, symmetric 2D stencil with
    the five points of radius 1 on the axes (or fewer) and homogeneous Dirichlet faces, on a grid of 2
    points or more a side.

    Examples
    --------
    >>> separable(Stencil.laplacian(2, h=(1.0, 0.1)), (7, 31)), separable(Stencil.laplacian(3), (7, 7, 7))
    (True, False)
    """
    if not (isinstance(A, Stencil) and A.is_constant and A.dim == 2 and len(grid_shape) == 2):
        return False
    if A.boundary != "dirichlet" or A.radius != 1 or not A.is_axis_aligned or min(grid_shape) < 2:
        return False
    values = dict(zip(A.offsets, A._values))
    return (0, 0) in values and all(values.get(o, 0.0) == values.get((-o[0], -o[1]), 0.0) for o in values)


def thin_coarsest(A: Operator, grid_shape: Sequence[int], level: int, options: MultigridOptions) -> bool:
    """Whether ``auto`` ends the hierarchy at this level with an exact :class:`SeparableSolver` solve.

    The thin grids that semicoarsening leaves under anisotropy (1023 x 255 below 1023^2 at eps = 0.001)
    coarsen by 2 only along one axis, so the levels below them cost about as much again as they do, in many
    small line solves.  Their exact solve by fast diagonalisation costs ``O(n m)`` for the short side ``m``:
    less than those levels for ``m <= SEPARABLE_MAX_SIDE``, and it makes the cycle a two-grid method there
    (measured V(1,1) at 1023^2, eps = 0.001: factor 0.008 -> 0.0001, cycle 66 -> 58 ms on the 2-core CPU).
    Only for ``smoother="auto"``, below the fine level, on grids elongated by ``ELONGATED`` or more.
    """
    return (
        options.smoother == "auto"
        and level > 0
        and len(grid_shape) == 2
        and max(grid_shape) >= ELONGATED * min(grid_shape)
        and min(grid_shape) <= SEPARABLE_MAX_SIDE
        and separable(A, grid_shape)
    )


class SeparableSolver(nn.Module):
    r"""Exact solve of a constant, symmetric, axis-aligned 2D stencil by fast diagonalisation (Lynch, Rice
    & Thomas 1964): ``A = I \otimes T_l + S_s \otimes I`` with ``S_s`` the couplings along the short axis
    (diagonalised by the discrete sine transform, ``S_s = Q \Lambda Q^T``), so ``A u = f`` splits into one
    tridiagonal system ``(T_l + \lambda_k I) \hat u_k = \hat f_k`` along the long axis per eigenvalue.

    A solve costs two products with the ``m x m`` matrix ``Q`` (``m`` the short side) and ``m`` tridiagonal
    solves of the long side: ``O(n m)`` for ``n`` unknowns, where a dense LU costs ``O(n^2)``.  The
    tridiagonal systems are factored once by LAPACK (CPU, outside autograd) and otherwise solved by cyclic
    reduction, so the solve runs on every device and is differentiable in the right-hand side.

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2, h=(1.0, 0.1))
    >>> solver = SeparableSolver(A, (6, 40))
    >>> f = torch.rand(2, 1, 6, 40, dtype=torch.float64)
    >>> float(A.residual(solver(f), f).abs().max()) < 1e-10
    True
    """

    name = "fast diagonalisation"

    def __init__(self, A: Stencil, grid_shape: Sequence[int], level: int = 0) -> None:
        super().__init__()
        if not separable(A, grid_shape):
            raise ValueError(
                "A: the separable solve needs a constant, symmetric, Dirichlet 2D stencil with its points on the "
                f"axes (radius 1); got {A!r} on {tuple(grid_shape)}"
            )
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.short = int(self.grid_shape[1] < self.grid_shape[0])  # the axis of Q; the other is the line axis
        m, n = self.grid_shape[self.short], self.grid_shape[1 - self.short]
        values = dict(zip(A.offsets, A._values))
        coupling_short = values.get(tuple(int(k == self.short) for k in range(2)), 0.0)
        coupling_long = values.get(tuple(int(k != self.short) for k in range(2)), 0.0)
        dtype, device = A.coefficients.dtype, A.coefficients.device
        # The sine modes diagonalise tridiag(c, 0, c) of size m: eigenvalues 2 c cos(j pi / (m + 1)).
        j = torch.arange(1, m + 1, dtype=torch.float64)
        Q = math.sqrt(2.0 / (m + 1)) * torch.sin(torch.outer(j, j) * (math.pi / (m + 1)))
        eigenvalues = 2.0 * coupling_short * torch.cos(j * (math.pi / (m + 1)))
        diagonal = (values[(0, 0)] + eigenvalues)[:, None].expand(m, n).contiguous()  # (m, n): one system a row
        off = torch.full((m, n), coupling_long, dtype=torch.float64)
        # The eigenvalues of A itself add those of the long axis' couplings: one near zero makes A singular.
        i = torch.arange(1, n + 1, dtype=torch.float64)
        spectrum = diagonal[:, :1] + 2.0 * coupling_long * torch.cos(i * (math.pi / (n + 1)))
        if float(spectrum.abs().min()) <= 1e-12 * float(spectrum.abs().max()):
            raise ValueError(
                f"A: the operator of the coarsest level (level {level}, grid {self.grid_shape}, solved by fast "
                "diagonalisation) is singular; a singular A has no unique solution: check the stencil (e.g. its "
                "diagonal and signs)"
            )
        self.register_buffer("Q", Q.to(dtype=dtype, device=device))
        self.register_buffer("off", off.to(dtype=dtype, device=device))  # both off-diagonals: symmetric systems
        self.register_buffer("diagonal", diagonal.to(dtype=dtype, device=device))
        self._factor()

    def _factor(self) -> None:
        """LAPACK factors of the concatenated systems (CPU float arrays only), for the current dtype."""
        from mgcore.line import _LineFactors  # imported at use: mgcore.line imports the smoothers this module does

        self._factors = None
        if self.diagonal.device.type != "cpu" or self.diagonal.dtype not in (torch.float32, torch.float64):
            return
        lower, upper = self.off.clone(), self.off.clone()
        lower[:, 0] = 0.0  # the systems do not couple to each other when concatenated
        upper[:, -1] = 0.0
        factors = _LineFactors(lower, self.diagonal, upper)
        self._factors = factors if factors.kind else None  # exactly singular in rounding: cyclic reduction

    def _apply(self, fn, recurse: bool = True):
        # .to()/.double()/.float() convert the buffers; the LAPACK factors must follow them.
        out = super()._apply(fn, recurse)
        self._factor()
        return out

    def forward(self, f: Tensor) -> Tensor:
        Q = self.Q
        short_axis = f.ndim - 2 + self.short
        # (..., n, m): the short axis last, so the transform is one matrix product.
        rhs = f.to(Q.dtype).movedim(short_axis, -1)
        transformed = (rhs @ Q).transpose(-1, -2)  # (..., m, n): one system along the long axis per row
        recording = torch.is_grad_enabled() and transformed.requires_grad
        if self._factors is not None and not recording and not torch.compiler.is_compiling():
            solved = self._factors.solve_(transformed.contiguous())
        else:
            from mgcore.line import cyclic_reduction

            solved = cyclic_reduction(self.off, self.diagonal, self.off, transformed)
        u = solved.transpose(-1, -2) @ Q.T  # Q is orthogonal: back to the grid
        return u.movedim(-1, short_axis).contiguous().to(f.dtype)


class Hierarchy(nn.Module):
    """The levels from fine (index 0) to coarse, and the coarsest solver.

    ``repr`` prints a table per level; :meth:`operator_complexity` and :meth:`grid_complexity` are the
    ratios pyamg reports.
    """

    def __init__(self, levels: Sequence[Level], coarse_solver: CoarseSolver | SeparableSolver) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.coarse_solver = coarse_solver
        # The caller's axis of each stored grid axis, when a solver stores the grid transposed (None: as given);
        # the table below then shows grids and axis letters as the caller numbers them.
        self.axis_order: tuple[int, ...] | None = None

    def axis_letters(self, axes: Sequence[int]) -> str:
        """The letters of stored grid axes as the caller numbers them (x, y, z), in that order."""
        order = self.axis_order or tuple(range(3))
        return "".join(sorted("xyz"[order[a]] for a in axes))

    def caller_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """A stored grid shape in the caller's axis order."""
        if self.axis_order is None:
            return tuple(shape)
        caller = [0] * len(shape)
        for a, n in zip(self.axis_order, shape):
            caller[a] = n
        return tuple(caller)

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index: int) -> Level:
        return self.levels[index]

    def prepare_to_trace(self, device: torch.device | str | None = None) -> None:
        """Form now what the levels build at first use (the smoothers' scales and point couplings) and take a
        sparse coarsest factorisation as a dense LU on ``device``: before ``torch.compile`` traces a cycle, so
        that its graph holds the cycle alone.  Formed inside the trace, a masked level's boundary-band scales
        came out all zero (torch 2.13, CPU): the compiled cycle then skipped the band's extra smoothing."""
        for module in self.modules():
            if isinstance(module, DiagonalScaling):
                module.materialize()
        if hasattr(self.coarse_solver, "densify"):
            self.coarse_solver.densify(device)

    def operator_complexity(self) -> float:
        """Sum of the non-zeros over all levels divided by the non-zeros of the finest level."""
        counts = [level.nonzeros() for level in self.levels]
        return sum(counts) / counts[0] if counts[0] else float("nan")

    def grid_complexity(self) -> float:
        """Sum of the unknowns over all levels divided by the unknowns of the finest level."""
        counts = [level.unknowns for level in self.levels]
        return sum(counts) / counts[0]

    def __repr__(self) -> str:
        rows = [
            f"Multigrid hierarchy: {len(self.levels)} levels, "
            f"operator complexity {self.operator_complexity():.3f}, grid complexity {self.grid_complexity():.3f}",
            "  level  grid                unknowns   nonzeros  operator                  smoother",
        ]
        # Semicoarsened hierarchies get a column naming the coarsened axes of every level.
        semi = any(
            level.coarsened_axes is not None and len(level.coarsened_axes) < len(level.grid_shape)
            for level in self.levels
        )
        if semi:
            rows[1] = f"{rows[1]:<98}  coarsened"
        for k, level in enumerate(self.levels):
            grid = " x ".join(str(n) for n in self.caller_shape(level.grid_shape))
            A = level.A
            if isinstance(A, Stencil):
                kind = f"{len(A.offsets)}-pt {'const' if A.is_constant else 'var'} {level.coarse_operator}"
            else:
                kind = type(A).__name__
            if level.smoother is None:
                smoothing = f"exact ({self.coarse_solver.name})"
            else:
                smoothing = f"{level.smoother.name} ({level.presmooth},{level.postsmooth})"
            row = f"  {k:>5}  {grid:<18} {level.unknowns:>9} {level.nonzeros():>10}  {kind:<24}  {smoothing}"
            if semi:
                axes = "" if level.coarsened_axes is None else self.axis_letters(level.coarsened_axes)
                row = f"{row:<98}  {axes}".rstrip()
            rows.append(row)
        return "\n".join(rows)


def rediscretize(A: Stencil) -> Stencil:
    """The same stencil on the grid of spacing ``2h``, faces kept: its second-order part divided by 4, its
    zeroth-order part (the row sum ``c`` of a screened ``-Δ + c``) kept: ``(A - c) / 4 + c``.

    Examples
    --------
    >>> screened = Stencil.from_kernel([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], boundary="periodic")
    >>> coarse = rediscretize(screened)
    >>> coarse.coefficients.tolist(), coarse.boundary
    ([-0.25, -0.25, 2.0, -0.25, -0.25], 'periodic')
    """
    shift = float(A.coefficients.sum())  # c: zero for a pure second-order stencil
    coefficients = A.coefficients / 4.0
    coefficients[A.center_index] += 0.75 * shift
    return Stencil(A.offsets, coefficients, boundary=A.faces)


def _rediscretizable(A: Operator, shape: Sequence[int]) -> bool:
    """A constant, symmetric stencil of radius 1 with a non-negative row sum (``-Δ + c``, ``c >= 0``) whose
    coarse grid (:func:`mgcore.boundary.boundary_coarse_shape`) is uniform with spacing ``2h`` up to the faces:
    a Neumann face point stays a coarse point, a Dirichlet face is a coarse boundary, a periodic axis is even.
    (A constant stencil's Neumann faces are the box scheme's, so its coarse grid gets the same box scheme.)"""
    if not (isinstance(A, Stencil) and A.is_constant and A.radius == 1 and (0,) * A.dim in A.offsets):
        return False
    if not _nests(A, shape):
        return False
    scale = float(A.coefficients.abs().max())
    return float(A.coefficients.sum()) >= -1e-12 * scale * len(A.offsets) and A.is_symmetric()


def _nests(A: Stencil, shape: Sequence[int]) -> bool:
    """Whether the coarse grid of ``shape`` is uniform with spacing ``2h`` up to ``A``'s faces."""
    for n, (low, high) in zip(shape, A.faces):
        if low == "periodic":
            if n % 2 or n < 6:
                return False
            continue
        first = 0 if low == "neumann" else 1  # the fine index of coarse point 0
        last = n - 1 if high == "neumann" else n  # the high face: a point, or the boundary beyond the last one
        if n < 3 or (last - first) % 2:
            return False
    return True


def constant_galerkin(A: Stencil, shape: Sequence[int]) -> Stencil | None:
    """``R A P`` of a constant stencil with the face-aware transfers, as a constant stencil with the same faces,
    or None where it is not one.

    On a grid that nests up to the faces (:func:`_nests`) the Galerkin operator is translation invariant:
    the same stencil in every row, with the box scheme's half rows on Neumann faces (a Neumann face is a
    mirror, and linear interpolation commutes with the mirror).  It is therefore computed once, on a small grid
    with the same faces, and checked there row for row against the constant stencil it should be: set-up then
    costs nothing on the fine grid, and every coarse level keeps the constant path.

    Examples
    --------
    >>> A = Stencil.from_kernel([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], boundary="neumann")
    >>> coarse = constant_galerkin(A, (1025, 1025))
    >>> coarse.is_constant, len(coarse.offsets), coarse.boundary
    (True, 9, 'neumann')
    """
    if not (isinstance(A, Stencil) and A.is_constant and A.radius == 1 and _nests(A, shape)):
        return None
    small = []
    for low, high in A.faces:  # the smallest sides that nest with an interior coarse point
        if low == "periodic":
            small.append(12)
        else:
            small.append(9 if (low == "neumann") == (high == "neumann") else 10)
    P = BoundaryProlongation(A.faces, small, active_cells(A, small))
    exact = boundary_galerkin(A, small, BoundaryRestriction(P), P)
    coarse_shape_small = exact.grid_shape
    centre = exact.coefficients[(slice(None), *(n // 2 for n in coarse_shape_small))].clone()
    candidate = Stencil(exact.offsets, centre, boundary=A.faces)
    difference = abs(candidate.to_sparse(coarse_shape_small) - exact.to_sparse()).max()
    if difference > 1e-12 * float(centre.abs().max()):
        return None
    return candidate


def galerkin_stencil(
    A: Stencil,
    fine_shape: Sequence[int],
    chunk: int = 9,
    *,
    R: nn.Module | None = None,
    P: nn.Module | None = None,
    coarse: Sequence[int] | None = None,
) -> Stencil:
    """The Galerkin coarse operator ``R A P`` as a variable stencil.

    Parameters
    ----------
    A : Stencil
        Fine operator of radius 1.
    fine_shape : tuple of int
        The fine grid.
    chunk : int
        Probe vectors applied at once (bounds the memory: ``chunk`` fine-grid arrays).
    R, P : nn.Module, optional
        Restriction and prolongation whose coarse point ``i`` couples only to fine points ``2i + 1 + o``,
        ``|o| <= 1`` (so ``R A P`` has radius 1 again); default full weighting and linear interpolation.
    coarse : tuple of int, optional
        The coarse grid of ``R`` and ``P`` (default ``coarse_shape(fine_shape)``; semicoarsening passes its
        own, with the uncoarsened axes kept).

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2)
    >>> Ac = galerkin_stencil(A, (7, 7))
    >>> Ac.grid_shape, len(Ac.offsets)
    ((3, 3), 9)
    >>> 16 * Ac.coefficients[:, 1, 1]  # the interior 9-point stencil [-1 -2 -1; -2 12 -2; -1 -2 -1] / 16
    tensor([-1., -2., -1., -2., 12., -2., -1., -2., -1.], dtype=torch.float64)
    """
    if A.radius > 1:
        raise ValueError("A: Galerkin coarsening on stencils needs radius 1")
    dim = A.dim
    fine_shape = tuple(fine_shape)
    shape = coarse_shape(fine_shape) if coarse is None else tuple(int(n) for n in coarse)
    R = FullWeighting(dim) if R is None else R
    P = Linear(dim) if P is None else P
    dtype, device = A.coefficients.dtype, A.coefficients.device
    index = torch.meshgrid(*(torch.arange(n, device=device) for n in shape), indexing="ij")
    colours = list(itertools.product(range(3), repeat=dim))
    probes_out = []
    with torch.no_grad():
        for start in range(0, len(colours), chunk):
            block = colours[start : start + chunk]
            probes = torch.stack(
                [
                    math.prod(((i % 3) == c).to(dtype) for i, c in zip(index, colour))
                    for colour in block
                ]
            ).unsqueeze(1)  # (chunk, 1, *coarse)
            probes_out.append(R(A(P(probes, fine_shape)))[:, 0])
        Y = torch.cat(probes_out)  # (3^d, *coarse): Y[c][i] = sum over j in colour c of (RAP)_{ij}
        offsets, coefficients = [], []
        for offset in itertools.product((-1, 0, 1), repeat=dim):
            target = [i + o for i, o in zip(index, offset)]
            inside = math.prod(((t >= 0) & (t < n)).to(dtype) for t, n in zip(target, shape))
            colour_id = sum(((t % 3) * 3 ** (dim - 1 - k)) for k, t in enumerate(target))
            values = torch.gather(Y, 0, colour_id.unsqueeze(0)).squeeze(0) * inside
            if bool((values != 0).any()):
                offsets.append(offset)
                coefficients.append(values)
    # Round-off from the probes is cleaned so symmetric operators stay exactly symmetric.
    coefficients = torch.stack(coefficients)
    stencil = Stencil(offsets, coefficients)
    return stencil.symmetrized() if A.is_symmetric() else stencil


_PERIODIC_COARSEST = 4096  # largest coarsest grid forced by a periodic axis that cannot coarsen further
DENSE_LU_POINTS = 16384
"""The largest coarsest grid a dense LU takes (2 GiB in float64); beyond it the CPU's sparse LU only."""
SPARSE_COARSEST_POINTS = 65536
"""The largest coarsest grid a periodic axis that stops coarsening may leave on the CPU (SciPy's sparse LU: a
1000^2 periodic grid stops at 125^2, factorised in about 0.05 s)."""


def build_hierarchy(
    A: Stencil,
    grid_shape: Sequence[int],
    options: MultigridOptions | None = None,
    **overrides,
) -> Hierarchy:
    """Coarsen ``A`` on ``grid_shape`` until at most ``max_coarse`` unknowns remain.

    Parameters
    ----------
    A : Stencil
        The fine-grid operator.
    grid_shape : tuple of int
        The fine grid (each side at least 3).
    options : MultigridOptions, optional
        The smoother, sweeps, coarse operators, transfers, ``max_coarse``, ``max_levels`` and ``fas`` (see
        :class:`~mgcore.options.MultigridOptions`; ``fas=True`` gives every level the state transfer
        Π = injection, as in FAS and MgNet, He & Xu 2019, eq. (3.6)).
    **overrides
        Any :class:`~mgcore.options.MultigridOptions` field by name, applied on top of ``options``.

    Examples
    --------
    >>> h = build_hierarchy(Stencil.laplacian(2), (63, 63), max_coarse=100)
    >>> [level.grid_shape for level in h.levels]
    [(63, 63), (31, 31), (15, 15), (7, 7)]
    >>> round(h.grid_complexity(), 3)
    1.311
    >>> h
    Multigrid hierarchy: 4 levels, operator complexity 1.304, grid complexity 1.311
      level  grid                unknowns   nonzeros  operator                  smoother
          0  63 x 63                 3969      19593  5-pt const given          rbgs (1,2)
          1  31 x 31                  961       4681  5-pt const rediscretized  rbgs (1,2)
          2  15 x 15                  225       1065  5-pt const rediscretized  rbgs (1,2)
          3  7 x 7                     49        217  5-pt const rediscretized  exact (dense LU)
    """
    options = MultigridOptions.resolve(options, overrides)
    grid_shape = tuple(int(n) for n in grid_shape)
    dim = len(grid_shape)
    coarse_operator, interpolation = options.coarse_operator, options.interpolation
    if interpolation == "operator":
        if dim != 2 or A.radius > 1:
            raise ValueError(f"interpolation: 'operator' needs a 2D stencil of radius 1; got {A!r} on {grid_shape}")
    # Neumann or periodic faces, or masked-out cells: face-aware transfers and Galerkin coarse operators
    # (mgcore.boundary).
    boundary = needs_boundary_coarsening(A, grid_shape)
    if boundary:
        if interpolation == "operator" or (coarse_operator == "rediscretize" and not _rediscretizable(A, grid_shape)):
            raise ValueError(
                "interpolation, coarse_operator: Neumann, periodic and masked operators are coarsened with linear "
                "face-aware transfers and Galerkin operators (rediscretised: constant stencils on grids that nest "
                f"up to the faces); got interpolation={interpolation!r}, coarse_operator={coarse_operator!r}"
            )
        if options.coarsening not in ("full", "auto"):
            raise ValueError(
                "coarsening: Neumann, periodic and masked operators are coarsened on every axis; got "
                f"coarsening={options.coarsening!r}"
            )
        if math.prod(grid_shape) > options.max_coarse:
            check_coarsenable(A.faces, grid_shape)
    levels: list[Level] = []
    how = "given"
    shape = grid_shape
    while True:
        # The coarsened axes of this level: all of them, or (semicoarsening) those of `options.coarsening`.
        # The face-aware transfers coarsen every axis, so boundary problems take full coarsening ("auto" too).
        coarsening = "full" if boundary and options.coarsening == "auto" else options.coarsening
        axes = coarsened_axes(coarsening, A, shape, auto_smoother=options.smoother == "auto")
        semi = len(axes) < dim
        if semi:
            next_shape = semicoarse_shape(shape, axes)
        else:
            next_shape = boundary_coarse_shape(A.faces, shape) if boundary else coarse_shape(shape)
        last = (
            math.prod(shape) <= options.max_coarse or next_shape == shape or len(levels) + 1 >= options.max_levels
        )
        thin = not last and thin_coarsest(A, shape, len(levels), options)
        last = last or thin
        if boundary and not last and any(p and (n % 2 or n < 6) for p, n in zip(A.periodic, shape)):
            # A periodic axis coarsens while it is even and keeps at least 3 coarse points; the grid where it
            # stops is the coarsest, so it may exceed max_coarse: up to _PERIODIC_COARSEST for a dense LU, up to
            # SPARSE_COARSEST_POINTS on the CPU, where SciPy's sparse LU takes it.
            cpu = A.coefficients.device.type == "cpu" and A.coefficients.dtype in (torch.float32, torch.float64)
            limit = SPARSE_COARSEST_POINTS if cpu else _PERIODIC_COARSEST
            if math.prod(shape) > max(options.max_coarse, limit):
                raise ValueError(
                    f"grid: a periodic axis stops coarsening (odd, or fewer than 6 points) on the grid {shape} "
                    f"(level {len(levels)}), which has more than max({options.max_coarse}, {limit}) unknowns for "
                    f"the {'sparse' if cpu else 'dense'} coarsest solve; use periodic sides n = m 2^k with small m "
                    f"(e.g. 256 or 384); got grid {grid_shape}"
                )
            last = True
        if last:
            levels.append(Level(A, shape, coarse_operator=how))
            break
        operator_dependent = interpolation == "operator" and all(n >= 3 and n % 2 == 1 for n in shape)
        if operator_dependent:
            R, P = operator_dependent_transfers(A.offsets, A.coefficients, shape)
        elif boundary:
            P = BoundaryProlongation(A.faces, shape, active_cells(A, shape))
            R = BoundaryRestriction(P)
        elif semi:
            R, P = SemiFullWeighting(dim, axes), SemiLinear(dim, axes)
        else:
            R, P = FullWeighting(dim), Linear(dim)
        levels.append(
            Level(
                A,
                shape,
                smoother=make_smoother(options.smoother, A, shape, len(levels), coarsened_axes=axes),
                presmooth=options.presmooth,
                postsmooth=options.postsmooth,
                R=R,
                P=P,
                Pi=SemiInjection(dim, axes) if options.fas and semi else Injection(dim) if options.fas else None,
                coarse_operator=how,
                coarsened_axes=axes,
            )
        )
        if semi:
            # Rediscretised along the coarsened axes where that is exact, else Galerkin R A P.
            if coarse_operator != "galerkin" and semi_rediscretizable(A, shape, axes):
                A, how = rediscretize_semi(A, axes), "rediscretized"
            elif coarse_operator == "rediscretize":
                raise ValueError(
                    "coarse_operator='rediscretize' with semicoarsening needs a constant, symmetric, zero-row-sum, "
                    f"axis-aligned stencil of radius 1 on a grid with odd coarsened sides; got {A!r} on {shape}"
                )
            else:
                A, how = galerkin_stencil(A, shape, R=R, P=P, coarse=next_shape), "galerkin"
        elif operator_dependent:
            A, how = galerkin_stencil(A, shape, R=R, P=P), "galerkin"
        elif coarse_operator == "rediscretize" or (coarse_operator == "auto" and _rediscretizable(A, shape)):
            if not _rediscretizable(A, shape):
                raise ValueError(
                    "coarse_operator='rediscretize' needs a constant, symmetric stencil of radius 1 with a "
                    "non-negative row sum, on a grid that nests up to the faces (odd sides between Dirichlet faces, "
                    f"2^k + 1 points between Neumann faces, even periodic sides); got {A!r} on {shape}"
                )
            A, how = rediscretize(A), "rediscretized"
        elif boundary:
            constant = constant_galerkin(A, shape)
            A, how = (boundary_galerkin(A, shape, R, P) if constant is None else constant), "galerkin"
        else:
            A, how = galerkin_stencil(A, shape), "galerkin"
        shape = next_shape
    if thin:
        return Hierarchy(levels, SeparableSolver(levels[-1].A, levels[-1].grid_shape, len(levels) - 1))
    # A screening's share of the diagonal grows with the square of the mesh width (4x per full coarsening), a
    # singular operator's rounding stays near 1e-15: the coarsest grid is singular exactly when the fine one is
    # (null_vector's NULL_TOL there).
    growth = (math.prod(levels[0].grid_shape) / math.prod(levels[-1].grid_shape)) ** (2 / len(levels[0].grid_shape))
    return Hierarchy(
        levels,
        CoarseSolver(levels[-1].A, levels[-1].grid_shape, len(levels) - 1, null_tol=NULL_TOL * growth),
    )
