"""Boundary-aware coarsening: Neumann and periodic faces, masked domains and singular operators.

The fine operator of such a problem is a :class:`~mgcore.operators.Stencil` whose rows already hold the
boundary conditions (``pde.poisson(shape, bc=..., mask=...)`` builds them: variable coefficients, or a constant
stencil whose Neumann faces follow the box scheme), with the faces labelled
``"dirichlet"``, ``"neumann"`` or ``"periodic"``.  Along each axis the coarse
points are every other fine point, starting on the low face when that face is Neumann (coarse ``i`` on fine
``2 i``: the face point is an unknown of the vertex-centred scheme, so it stays one on every level) and one
point inside it otherwise (coarse ``i`` on fine ``2 i + 1``, the rule of :mod:`mgcore.transfers`); see
:func:`boundary_coarse_shape`.  The coarse operators are Galerkin ``R A P`` with transfers adapted to the faces
(a constant stencil without a mask, whose Neumann faces are the box scheme's, is rediscretised instead where
the grid nests, as the Dirichlet rectangle is: :mod:`mgcore.hierarchy`):

* Dirichlet face: a fine point between the face and the nearest coarse point interpolates the zero boundary
  value (as :class:`~mgcore.transfers.Linear`).
* Neumann face: the face points are coarse points where the number of points allows it (``n = 2^k + 1``
  points between two Neumann faces, ``n = 2^k`` with one); otherwise the fine point beyond the last coarse
  point copies that coarse value (constant extrapolation).  Either way ``P 1 = 1``.  Keeping the face points
  matters: when the coarse points drift inwards by one fine spacing per level, the coarse operators describe
  a Neumann condition at the wrong place and the V-cycle factor of pure Neumann Poisson doubles (0.12
  against 0.066 for Dirichlet at 1023^2, measured before this rule).
* Periodic axis: the fine point ``0`` interpolates between the last and the first coarse points (wrap
  around); the axis needs an even number of points to coarsen.
* Masked domain: a row without couplings (an inactive cell, an identity row) is left out of the coarse
  space: ``P`` is zero there, and a coarse point whose fine neighbourhood is all inactive gets an identity
  row of its own.

``R = P^T / 2^d`` on every level.  Since ``P`` reproduces the constants on the active cells, ``R A P`` keeps
the null space of a pure Neumann or periodic operator (Trottenberg, Oosterlee & Schüller, *Multigrid*, 2001,
sections 5.6 and 5.7: Neumann and periodic boundaries; the Galerkin property, section 7.1), and the
coarsest grid of a singular operator is solved by the pseudo-inverse (:class:`~mgcore.hierarchy.CoarseSolver`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mgcore import kernels
from mgcore.operators import Faces, Stencil, _shift_pieces, symmetrize_

__all__ = [
    "NULL_TOL",
    "BoundaryProlongation",
    "BoundaryRestriction",
    "active_cells",
    "boundary_coarse_shape",
    "boundary_galerkin",
    "check_coarsenable",
    "needs_boundary_coarsening",
    "null_vector",
]


def active_cells(A: Stencil, grid_shape: Sequence[int]) -> Tensor:
    """Boolean grid: True where the row of ``A`` couples to some other point of the grid.

    A row with its diagonal only (an inactive cell of a masked domain) is decoupled: smoothing solves it
    exactly and it takes no part in the coarse spaces.

    Examples
    --------
    >>> import torch
    >>> A = Stencil([(0, -1), (0, 0), (0, 1)], torch.tensor([[[-1.0, -1.0, 0.0]], [[2.0, 2.0, 1.0]],
    ...                                                       [[-1.0, 0.0, 0.0]]]))
    >>> active_cells(A, (1, 3)).tolist()
    [[True, True, False]]
    """
    grid_shape = tuple(int(n) for n in grid_shape)
    if A.is_constant:  # one coefficient per offset: mark where each non-zero one reaches a neighbour
        coupled = torch.zeros(grid_shape, dtype=torch.bool, device=A.coefficients.device)
        for o, value in zip(A.offsets, A._values):
            if any(o) and value != 0:
                for dst, _ in _shift_pieces(o, grid_shape, A.periodic, A.reflect):
                    coupled[dst] = True
        return coupled
    coefficients = A.coefficients
    if tuple(coefficients.shape[1:]) != grid_shape:
        raise ValueError(f"grid_shape: expected {tuple(coefficients.shape[1:])}; got {grid_shape}")
    compiled = kernels.coupled(A, within=True)  # one compiled pass on the CPU
    if compiled is not None:
        return compiled
    coupled = torch.zeros(grid_shape, dtype=torch.bool, device=coefficients.device)
    zero = (0,) * A.dim
    for k, o in enumerate(A.offsets):
        if o == zero:
            continue
        for dst, _ in _shift_pieces(o, grid_shape, A.periodic):
            coupled[dst] |= coefficients[k][dst] != 0
    return coupled


def needs_boundary_coarsening(A: Stencil, grid_shape: Sequence[int]) -> bool:
    """True when ``A`` has a Neumann or periodic face, or decoupled (masked-out) rows."""
    if not isinstance(A, Stencil):
        return False
    if A.boundary != "dirichlet":
        return True
    if A.is_constant:
        return False
    count = kernels.coupled_count(A, within=True)  # from the compiled pass, without another over the grid
    if count is not None and tuple(A.grid_shape) == tuple(int(n) for n in grid_shape):
        return count < math.prod(A.grid_shape)
    return not bool(active_cells(A, grid_shape).all())


def check_coarsenable(faces: Faces, grid_shape: Sequence[int]) -> None:
    """Refuse a periodic axis with an odd number of points (its coarse points would not wrap around).

    Examples
    --------
    >>> check_coarsenable((("periodic", "periodic"), ("dirichlet", "dirichlet")), (7, 8))
    Traceback (most recent call last):
    ...
    ValueError: grid: periodic axis 0 has 7 points; coarsening a periodic axis needs an even number ...
    """
    for axis, ((low, _), n) in enumerate(zip(faces, grid_shape)):
        if low == "periodic" and n % 2:
            raise ValueError(
                f"grid: periodic axis {axis} has {n} points; coarsening a periodic axis needs an even number "
                f"of points (best n = m 2^k with small m), got grid {tuple(grid_shape)}"
            )


def _first_coarse(low: str) -> int:
    """The fine index of coarse point 0: the face point itself on a Neumann face, else the next point."""
    return 0 if low == "neumann" else 1


def boundary_coarse_shape(faces: Faces, shape: Sequence[int]) -> tuple[int, ...]:
    """The coarse grid of the face-aware transfers: every other point from fine ``0`` (Neumann low face) or
    fine ``1`` (Dirichlet or periodic), i.e. ``(n + 1) // 2`` or ``n // 2`` points.

    Examples
    --------
    >>> boundary_coarse_shape((("neumann", "neumann"), ("dirichlet", "dirichlet")), (1025, 1023))
    (513, 511)
    >>> boundary_coarse_shape((("neumann", "dirichlet"), ("periodic", "periodic")), (1024, 64))
    (512, 32)
    """
    return tuple((int(n) + 1 - _first_coarse(low)) // 2 for n, (low, _) in zip(shape, faces))


def _fine_points(x: Tensor, axis: int, start: int, count: int) -> Tensor:
    """The view of ``count`` points of ``x`` along ``axis`` with stride 2 from ``start``."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + 2 * count - 1, 2)
    return x[tuple(index)]


def _prolong_axis(c: Tensor, axis: int, n: int, low: str, high: str, out: Tensor | None = None) -> Tensor:
    """Linear interpolation along ``axis`` from the coarse to ``n`` fine points, faces as above (every fine
    point is written; ``out`` receives them when given)."""
    if n < 2:
        return c if out is None else out.copy_(c)
    first = _first_coarse(low)
    nc = c.shape[axis]
    shape = list(c.shape)
    shape[axis] = n
    x = c.new_empty(shape) if out is None else out
    _fine_points(x, axis, first, nc).copy_(c)  # fine 2i + first = coarse i
    if nc > 1:  # fine 2i + first + 1, i = 0..nc-2, between coarse i and i + 1
        _fine_points(x, axis, first + 1, nc - 1).copy_(c.narrow(axis, 0, nc - 1)).add_(c.narrow(axis, 1, nc - 1))
        _fine_points(x, axis, first + 1, nc - 1).mul_(0.5)
    if first == 1:  # fine 0 lies between the face and coarse 0
        x.narrow(axis, 0, 1).copy_(c.narrow(axis, 0, 1))
        if low == "periodic":
            x.narrow(axis, 0, 1).add_(c.narrow(axis, nc - 1, 1))
        x.narrow(axis, 0, 1).mul_(0.5)
    if first + 2 * (nc - 1) < n - 1:  # fine n - 1 lies beyond the last coarse point
        x.narrow(axis, n - 1, 1).copy_(c.narrow(axis, nc - 1, 1)).mul_(1.0 if high == "neumann" else 0.5)
    return x


def _restrict_axis(x: Tensor, axis: int, nc: int, low: str, high: str) -> Tensor:
    """The transpose of :func:`_prolong_axis` divided by 2 (full weighting where no face is near)."""
    n = x.shape[axis]
    if n < 2:
        return x
    first = _first_coarse(low)
    c = _fine_points(x, axis, first, nc).mul(0.5)
    if nc > 1:
        between = _fine_points(x, axis, first + 1, nc - 1)
        c.narrow(axis, 0, nc - 1).add_(between, alpha=0.25)
        c.narrow(axis, 1, nc - 1).add_(between, alpha=0.25)
    if first == 1:
        c.narrow(axis, 0, 1).add_(x.narrow(axis, 0, 1), alpha=0.25)
        if low == "periodic":
            c.narrow(axis, nc - 1, 1).add_(x.narrow(axis, 0, 1), alpha=0.25)
    if first + 2 * (nc - 1) < n - 1:
        c.narrow(axis, nc - 1, 1).add_(x.narrow(axis, n - 1, 1), alpha=0.5 if high == "neumann" else 0.25)
    return c


class BoundaryProlongation(nn.Module):
    """Tensor-product linear interpolation that respects the face labels and a mask of active cells.

    Parameters
    ----------
    faces : tuple of (str, str)
        The face labels of the fine grid (``Stencil.faces``).
    fine_shape : tuple of int
        The fine grid.
    active : Tensor, optional
        Boolean fine grid; ``P`` is zero at inactive cells.

    Examples
    --------
    >>> import torch
    >>> P = BoundaryProlongation((("neumann", "neumann"),), (5,))  # coarse points on fine 0, 2, 4
    >>> P(torch.tensor([[[2.0, 4.0, 8.0]]]))
    tensor([[[2., 3., 4., 6., 8.]]])
    >>> BoundaryProlongation((("neumann", "neumann"),), (6,))(torch.ones(1, 1, 3)).tolist()  # constants are kept
    [[[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]]
    """

    active: Tensor | None
    zero_on_inactive = True
    """``P`` is zero at the inactive cells (every cell is active when ``active`` is None): a cycle's correction
    leaves the decoupled rows as the pre-smoother left them."""

    def __init__(self, faces: Faces, fine_shape: Sequence[int], active: Tensor | None = None) -> None:
        super().__init__()
        self.faces = tuple(faces)
        self.fine_shape = tuple(int(n) for n in fine_shape)
        self.coarse_shape = boundary_coarse_shape(self.faces, self.fine_shape)
        self.dim = len(self.fine_shape)
        # NumPy's `all` on a CPU mask: a tenth of torch's on a 1023^2 grid (every level's set-up asks).
        if active is not None and (active.numpy().all() if active.is_cpu else bool(active.all())):
            active = None
        self.register_buffer("active", None if active is None else active.clone())

    def tables(self) -> list[kernels.AxisTables] | None:
        """The compiled loops' tables of this ``P`` (:mod:`mgcore.kernels`), or None where they do not apply
        (a 1D grid, an axis of one point, or a compiled cycle, which traces the PyTorch path)."""
        if self.dim not in (2, 3) or min(self.fine_shape) < 2 or not kernels.wanted(math.prod(self.fine_shape)):
            return None
        key = (self.fine_shape, self.coarse_shape, self.faces)  # kept: each cycle asks twice per level
        cached = self.__dict__.get("_tables")
        if cached is None or cached[0] != key:
            tables = [_boundary_tables(n, nc, low, high) for n, nc, (low, high) in zip(*key)]
            cached = (key, tables)
            self.__dict__["_tables"] = cached
        return cached[1]

    def spans(self) -> tuple | None:
        """The active span of each fine row (:func:`mgcore.kernels.mask_spans`) for the compiled loops, kept
        while :attr:`active` is the same array; None without a mask."""
        active = self.active
        if active is None:
            return None
        key = (active.data_ptr(), active._version)
        cached = self.__dict__.get("_spans")
        if cached is None or cached[0] != key:
            cached = (key, kernels.mask_spans(active))
            self.__dict__["_spans"] = cached
        return cached[1]

    def forward(self, c: Tensor, fine_shape: Sequence[int] | None = None, out: Tensor | None = None) -> Tensor:
        """Interpolate ``c`` (``(N, C, *coarse)``) to the fine grid; ``out`` receives it when given."""
        if fine_shape is not None and tuple(int(n) for n in fine_shape) != self.fine_shape:
            raise ValueError(f"fine_shape: this prolongation was built for {self.fine_shape}; got {tuple(fine_shape)}")
        tables = self.tables()
        if kernels.fits_transfer(tables, c, out):  # one compiled pass on the CPU
            return kernels.prolong(c, tables, out=out, active=self.active, spans=self.spans())
        offset = c.ndim - self.dim
        x = c
        last = self.dim - 1
        for k, (n, (low, high)) in enumerate(zip(self.fine_shape, self.faces)):
            x = _prolong_axis(x, offset + k, n, low, high, out if k == last else None)
        if self.active is not None:
            x = x.mul_(self.active) if x is not c else x * self.active
        return x

    def accumulate_(self, u: Tensor, c: Tensor, workspace: Tensor | None = None) -> Tensor:
        """``u += P c`` in place (no autograd): one pass on the CPU, else through ``workspace`` (optional,
        shaped like ``u``) without allocating."""
        tables = self.tables()
        if kernels.fits_transfer(tables, u, c):
            return kernels.prolong(c, tables, add_to=u, active=self.active, spans=self.spans())
        return u.add_(self(c, self.fine_shape, out=workspace))


@functools.lru_cache(maxsize=256)
def _boundary_tables(n: int, nc: int, low: str, high: str) -> kernels.AxisTables:
    """The compiled loops' tables of :func:`_prolong_axis` along one axis."""
    return kernels.axis_tables(lambda c: _prolong_axis(c, 1, n, low, high), nc)


class BoundaryRestriction(nn.Module):
    """``R = P^T / 2^d`` of a :class:`BoundaryProlongation` ``P``.

    Examples
    --------
    >>> import torch
    >>> R = BoundaryRestriction(BoundaryProlongation((("neumann", "neumann"),), (5,)))
    >>> R(torch.ones(1, 1, 5))  # the row sums of P^T / 2
    tensor([[[0.7500, 1.0000, 0.7500]]])
    """

    def __init__(self, prolongation: BoundaryProlongation) -> None:
        super().__init__()
        self.faces = prolongation.faces
        self.dim = prolongation.dim
        self.fine_shape = prolongation.fine_shape
        self.prolongation = prolongation

    def forward(self, x: Tensor) -> Tensor:
        return self.restrict(x)

    def restrict(self, x: Tensor, masked: bool = True) -> Tensor:
        """``R x``; ``masked=False`` skips zeroing ``x`` on the inactive cells, for an ``x`` known to be zero
        there already (``A P c``: an inactive row of ``A`` is its diagonal alone, and ``P c`` is zero there)."""
        active = self.prolongation.active
        tables = self.prolongation.tables()
        if kernels.fits_transfer(tables, x):  # one compiled pass on the CPU
            if not masked or active is None:
                return kernels.restrict(x, tables)
            return kernels.restrict(x, tables, active, spans=self.prolongation.spans())
        if active is not None and masked:
            x = x * active  # a boolean factor: no float copy of the mask
        offset = x.ndim - self.dim
        for k, ((low, high), nc) in enumerate(zip(self.faces, self.prolongation.coarse_shape)):
            x = _restrict_axis(x, offset + k, nc, low, high)
        return x


def _colours(n: int, periodic: bool) -> int:
    """Probe colours along an axis of ``n`` coarse points: 3 (``i mod 3``) unless a periodic wrap would give
    two neighbours one colour; then the smallest divisor of ``n`` that is at least 3."""
    if not periodic or n % 3 == 0:
        return 3
    return next(m for m in range(4, n + 1) if n % m == 0) if n > 3 else max(n, 1)


def boundary_galerkin(A: Stencil, fine_shape: Sequence[int], R: nn.Module, P: nn.Module) -> Stencil:
    """The Galerkin operator ``R A P`` of a radius-1 stencil as a variable stencil on the coarse grid,
    periodic wraps included; coarse points outside the active region get an identity row.

    Examples
    --------
    >>> import torch
    >>> faces = (("neumann", "neumann"),) * 2
    >>> A = Stencil.laplacian(2)
    >>> coefficients = A.coefficient_arrays((6, 6)).clone()
    >>> coefficients[2, 0] -= 1; coefficients[2, -1] -= 1; coefficients[2, :, 0] -= 1; coefficients[2, :, -1] -= 1
    >>> N = Stencil(A.offsets, coefficients, boundary="neumann")  # the graph Laplacian: A 1 = 0
    >>> P = BoundaryProlongation(faces, (6, 6))
    >>> Ac = boundary_galerkin(N, (6, 6), BoundaryRestriction(P), P)
    >>> Ac.grid_shape, float(Ac(torch.ones(1, 1, 3, 3, dtype=torch.float64)).abs().max()) < 1e-14
    ((3, 3), True)
    """
    if A.radius > 1:
        raise ValueError("A: Galerkin coarsening on stencils needs radius 1")
    dim = A.dim
    fine_shape = tuple(int(n) for n in fine_shape)
    shape = boundary_coarse_shape(A.faces, fine_shape)
    periodic = A.periodic
    if any(p and n < 3 for p, n in zip(periodic, shape)):
        raise ValueError(f"grid: a periodic axis of {fine_shape} would coarsen to fewer than 3 points")
    dtype, device = A.coefficients.dtype, A.coefficients.device
    counts = [_colours(n, p) for n, p in zip(shape, periodic)]
    separable = isinstance(P, BoundaryProlongation) and P.fine_shape == fine_shape and P.faces == tuple(A.faces)
    candidates = list(itertools.product((-1, 0, 1), repeat=dim))
    symmetric = A.is_symmetric()
    compiled = None
    if separable and isinstance(R, BoundaryRestriction) and R.prolongation is P:
        # One compiled pass on the CPU: each coarse row from the fine rows under it, the interior row once
        # (mgcore.kernels.galerkin; a masked 1023^2 disk: 5 against 60-100 ms for the probes).
        compiled = kernels.galerkin(A, P.tables(), P.active, symmetric)
    with torch.no_grad():
        if compiled is not None:
            # Faces zeroed, for a symmetric A averaged, and the empty rows filled: as below.
            stacked, empty, present = compiled
        else:
            index = torch.meshgrid(*(torch.arange(n, device=device) for n in shape), indexing="ij")
            responses = []
            if separable:
                # P is a tensor product (times the mask of active cells), and so is each probe: P(probe) is the
                # outer product of the 1D interpolations of the colour's indicator along each axis, with no pass
                # of P over a batch of fine grids.  The 1D weights (1, 1/2, 1/4, ...) make it the same numbers
                # exactly.
                along = []
                for n, nc, m, (low, high) in zip(fine_shape, shape, counts, A.faces):
                    indicator = torch.arange(nc, device=device) % m == torch.arange(m, device=device)[:, None]
                    along.append(_prolong_axis(indicator.to(dtype), 1, n, low, high))  # (m, n)
            colours = list(itertools.product(*(range(m) for m in counts)))
            # One probe at a time through two reused fine arrays when P is separable: fresh memory costs its page
            # faults, more than the probe itself (9 probes of 1023^2: 0.18 -> 0.09-0.11 s set-up of that level).
            block_size = 1 if separable else 9
            if separable:
                fine = torch.empty((1, 1, *fine_shape), dtype=dtype, device=device)
                applied = torch.empty_like(fine)
            for start in range(0, len(colours), block_size):
                block = colours[start : start + block_size]
                if separable:
                    for j, colour in enumerate(block):
                        value = along[0][colour[0]]
                        for axis in range(1, dim - 1):
                            value = value.unsqueeze(-1) * along[axis][colour[axis]]
                        if dim == 1:
                            fine[j, 0].copy_(value)
                        else:  # the last factor written straight into the probe
                            torch.mul(value.unsqueeze(-1), along[-1][colour[-1]], out=fine[j, 0])
                        if P.active is not None:
                            fine[j, 0].mul_(P.active)
                else:
                    probes = torch.stack(
                        [
                            math.prod(((i % m) == c).to(dtype) for i, m, c in zip(index, counts, colour))
                            for colour in block
                        ]
                    ).unsqueeze(1)
                    fine = P(probes)
                if separable and isinstance(R, BoundaryRestriction) and R.prolongation is P:
                    # A P c is zero where P c is: no mask needed before R.
                    responses.append(R.restrict(A(fine, out=applied), masked=False)[:, 0])
                else:
                    responses.append(R(A(fine))[:, 0])
            Y = torch.cat(responses)  # Y[colour][i] = sum over coarse j of that colour of (RAP)_{ij}
            # On the coarse points I = s (mod m) of one residue class s the neighbour I + O has the one colour
            # (s + O) mod m, so each class copies a strided view of that colour's response (no gather).
            colour_of = {colour: j for j, colour in enumerate(colours)}
            classes = list(itertools.product(*(range(m) for m in counts)))
            stacked = torch.empty((len(candidates), *shape), dtype=dtype, device=device)
            for j, offset in enumerate(candidates):
                for residue in classes:
                    colour = tuple((r + o) % m for r, o, m in zip(residue, offset, counts))
                    points = tuple(slice(r, None, m) for r, m in zip(residue, counts))
                    stacked[j][points] = Y[colour_of[colour]][points]
            # Coarse points with no active fine point around them (R of the all-ones grid is zero there); with
            # every fine point active (no mask) there are none.
            if separable and P.active is None:
                empty = torch.zeros(shape, dtype=torch.bool, device=device)
            else:
                empty = R(torch.ones((1, 1, *fine_shape), dtype=dtype, device=device))[0, 0] == 0
        if compiled is None:
            for j, offset in enumerate(candidates):
                for axis, (o, n, p) in enumerate(zip(offset, shape, periodic)):
                    if o != 0 and not p:  # the neighbour beyond a non-periodic face is no unknown
                        stacked[j].narrow(axis, 0 if o < 0 else n - 1, 1).zero_()
            present = stacked.reshape(len(candidates), -1).any(dim=1).tolist()  # one pass for all offsets
        kept = [j for j, offset in enumerate(candidates) if offset == (0,) * dim or present[j]]
        offsets = [candidates[j] for j in kept]
        coefficients = stacked if len(kept) == len(candidates) else stacked[kept]
        centre = offsets.index((0,) * dim)
        diagonal = coefficients[centre]
        if compiled is None and bool(empty.any()) and bool((~empty).any()):
            # A coarse point all of whose fine neighbours are inactive: an identity row scaled like the rest.
            coefficients[:, empty] = 0.0
            coefficients[centre][empty] = float(diagonal[~empty].abs().mean())
    if symmetric and compiled is None:  # R = P^T / 2^d: R A P is symmetric; the probes leave round-off
        symmetrize_(offsets, coefficients, periodic)
    coarse = Stencil(offsets, coefficients, boundary=A.faces, copy=False)  # a new array: adopted, not copied
    if symmetric:
        coarse.mark_symmetric()  # averaged exactly: the next level need not compare the mirrors again
    return coarse


NULL_TOL = 1e-13
"""``A`` is singular when ``max |A z| <= NULL_TOL max |a_ii|`` (``z`` the constant on the active cells).  A row
of ``A z`` sums its ``K`` coefficients, so a singular float64 operator leaves a rounding of about ``K u |a_ii|``
(``u = 1.1e-16``, ``K <= 27``): this bound is some 30 times that.  A screening ``c`` of ``-Δ + c`` adds
``c h^2 / (2 d)`` of the diagonal: ``c = 1e-4`` on a 1023^2 grid (2.4e-11) is a non-singular operator whose
solution has a large constant part, not a singular one; below this bound the operator is singular to working
precision (condition number above 1e13)."""


def null_parts(A: Stencil, grid_shape: Sequence[int], active: Tensor) -> tuple[Tensor, int]:
    """The parts of the active points that no coupling joins, as labels ``1..K`` on the grid (0 off them).

    When ``A`` annihilates the constant on the active points (:func:`null_vector`) and they form ``K`` such
    parts, the null space is ``K``-dimensional: each part's constant, since a row of one part reaches no other
    (the pressure of separate bodies of fluid with walls around each, McAdams, Sifakis & Teran 2010).  Parts
    are joined by the stencil's offsets (radius 1: a 5-point stencil joins side neighbours, a 9-point one
    diagonal neighbours too), across periodic faces as well.  A stencil of larger radius, or a zero coupling
    between two active neighbours, is not looked at: the parts found are then unions of true ones, which the
    solve treats as today (one null vector per union).

    Examples
    --------
    >>> import torch
    >>> active = torch.tensor([[True, True, False, True]])
    >>> labels, count = null_parts(Stencil.laplacian(2), (1, 4), active)
    >>> labels.tolist(), count
    ([[1, 1, 0, 2]], 2)
    """
    import numpy as np
    from scipy import ndimage

    grid_shape = tuple(int(n) for n in grid_shape)
    mask = active.cpu().numpy().reshape(grid_shape)
    if A.radius > 1:
        return torch.from_numpy(mask.astype(np.int64)), int(mask.any())
    structure = np.zeros((3,) * len(grid_shape), dtype=bool)
    for o in A.offsets:
        structure[tuple(1 + v for v in o)] = True
        structure[tuple(1 - v for v in o)] = True  # the couplings of a symmetric pattern go both ways
    labels, count = ndimage.label(mask, structure)
    if count > 1 and any(A.periodic):
        # ndimage does not wrap around: join the parts that meet across a periodic face (a coupling of the
        # last slab to the first along that axis; the other axes rolled, which may join a corner too many).
        parent = np.arange(count + 1)

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for axis, periodic in enumerate(A.periodic):
            if not periodic:
                continue
            last = np.take(labels, [grid_shape[axis] - 1], axis=axis)
            for o in A.offsets:
                if o[axis] != -1:
                    continue
                rolled = np.roll(last, [-v for k, v in enumerate(o) if k != axis],
                                 axis=[k for k in range(len(o)) if k != axis]) if len(o) > 1 else last
                first = np.take(labels, [0], axis=axis)
                pairs = np.unique(np.stack([first.ravel(), rolled.ravel()], 1), axis=0)
                for a, b in pairs:
                    if a and b and root(a) != root(b):
                        parent[root(a)] = root(b)
        roots = np.array([root(i) for i in range(count + 1)])
        _, renumbered = np.unique(roots, return_inverse=True)  # root 0 (off the parts) stays 0
        labels, count = renumbered[labels], int(renumbered.max())
    return torch.from_numpy(labels.astype(np.int64)), int(count)


def null_vector(
    A: Stencil, grid_shape: Sequence[int], tol: float = NULL_TOL, *, active: Tensor | None = None
) -> Tensor | None:
    """The constant on the active cells when ``A`` annihilates it (pure Neumann, fully periodic), else None.

    Returned as a float64 grid ``(*grid)`` of zeros and ones; ``tol`` is relative to the largest diagonal
    (:data:`NULL_TOL`: ``A z`` vanishes to rounding; a screening ``c`` above it grounds the operator).
    ``active`` is :func:`active_cells` of ``A`` when the caller has it already.

    Examples
    --------
    >>> null_vector(Stencil.laplacian(2), (5, 5)) is None
    True
    >>> L = Stencil.laplacian(2)
    >>> float(null_vector(Stencil(L.offsets, L.coefficients, boundary="periodic"), (4, 4)).sum())
    16.0
    """
    grid_shape = tuple(int(n) for n in grid_shape)
    if active is None:
        active = active_cells(A, grid_shape)
    active = active.cpu()
    if not active.numpy().any():  # NumPy's any: a tenth of torch's on a 1023^2 grid
        return None
    with torch.no_grad():
        coefficients = A.coefficients
        if coefficients.dtype == torch.float64 and coefficients.device.type == "cpu":
            A64 = A  # no float64 copy of a float64 operator
        else:
            A64 = Stencil(A.offsets, coefficients.detach().to(torch.float64).cpu(), boundary=A.faces)
        limit = tol * _largest_magnitude(A64.diagonal(grid_shape))
        if _nonzero_on_sample_planes(A64, active, grid_shape, limit):
            return None
        z = active.to(torch.float64)
        if _largest_magnitude(A64(z.reshape(1, 1, *grid_shape))) > limit:
            return None
    return z


def _largest_magnitude(t: Tensor) -> float:
    """``max |t|`` from one pass (``aminmax``), without forming ``|t|``."""
    low, high = torch.aminmax(t)
    return max(-float(low), float(high))


def _nonzero_on_sample_planes(A: Stencil, active: Tensor, grid_shape: tuple[int, ...], limit: float) -> bool:
    """Whether ``|A z|`` (``z`` = 1 on the ``active`` points) exceeds ``limit`` on one of eight planes across
    axis 0, each plane's values formed from the plane and its neighbours alone (``A`` applied to that slab, the
    plane in its middle).  A grounded operator (a Dirichlet mask edge or face, screening) shows it on almost any
    plane through the domain, so :func:`null_vector` rejects it without applying ``A`` to the whole grid (a
    1023^2 disk: 3 -> 1 ms of a 85 ms solve); only a "no" needs the whole grid."""
    n, radius = grid_shape[0], A.radius
    if A.is_constant or n < 8 * (2 * radius + 1):
        return False
    faces = (("dirichlet", "dirichlet"), *A.faces[1:])  # the slab's own ends: nothing beyond them is read
    for i in sorted({radius + round(k * (n - 1 - 2 * radius) / 7) for k in range(8)}):
        rows = slice(i - radius, i + radius + 1)
        slab = Stencil(A.offsets, A.coefficients[:, rows], boundary=faces)
        z = active[rows].to(torch.float64).reshape(1, 1, 2 * radius + 1, *grid_shape[1:])
        if _largest_magnitude(slab(z)[0, 0, radius]) > limit:
            return True
    return False
