"""Anisotropy: coupling strength per axis, semicoarsening, and the ``auto`` choice of smoother and coarsening.

Multigrid is robust for anisotropic operators when every error the smoother leaves (smooth along the
strongly coupled axes) can be represented on the coarse grid.  Two classical cures (Trottenberg, Oosterlee &
Schüller 2001, sections 5.1-5.2; Dendy's black-box multigrid; hypre's SMG/PFMG):

* relax whole lines along the strong axis (:mod:`mgcore.line`) and keep full coarsening, or
* keep point relaxation and coarsen only the strongly coupled axes (semicoarsening).

:func:`coupling_strengths` reads the strength of the couplings from a level's stencil (constant or
variable), :func:`choose` picks the smoother and the coarsened axes of that level from it, and
:class:`SemiFullWeighting` / :class:`SemiLinear` / :func:`semicoarse_shape` / :func:`rediscretize_semi` are
the transfers and coarse operators of semicoarsening.  Along each coarsened axis the rule of
:mod:`mgcore.transfers` applies (``n -> n // 2``, coarse point ``i`` on fine point ``2 i + 1``); the other
axes keep their points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mgcore.boundary import active_cells
from mgcore.operators import Stencil, _shift_pieces
from mgcore.transfers import _prolong_axis, _restrict_axis

__all__ = [
    "COARSENINGS",
    "STRONG",
    "SemiFullWeighting",
    "SemiInjection",
    "SemiLinear",
    "choose",
    "coarsened_axes",
    "coupling_strengths",
    "level_axes",
    "named_axes",
    "rediscretize_semi",
    "semicoarse_shape",
]

AXIS_NAMES = "xyz"
COARSENINGS = ("full", "auto", "x", "y", "z", "xy", "xz", "yz")
"""Values of ``MultigridOptions.coarsening``: all axes, chosen per level, or the named axes only."""

STRONG = 0.8
"""An axis whose coupling is below ``STRONG`` times the strongest one (everywhere on the grid) is weak."""


def coupling_strengths(A: Stencil) -> tuple[float, ...]:
    """Per axis, the largest ratio over the grid of the coupling along the axis to the strongest coupling.

    The coupling of point ``x`` along axis ``k`` is the sum of ``-c_o(x)`` over the offsets ``o`` with
    ``o_k != 0`` (axis and diagonal neighbours), which is ``2 a_k / h_k^2`` for ``-sum a_k u_{x_k x_k}``.
    The ratio to the largest coupling at the same point is then maximised over the points: an axis counts as
    weak only where it is weak everywhere, so line relaxation or semicoarsening is chosen only when it is
    safe everywhere.  Points next to a decoupled row (a cell outside a masked domain) are left out where
    others remain: the mask cut their couplings, not the equation (a cell one point wide along the strong axis
    keeps its weak couplings only, which made the weak axis look strong: point relaxation, 176 cycles).

    Examples
    --------
    >>> A = Stencil.from_kernel([[0, -1, 0], [-0.01, 2.02, -0.01], [0, -1, 0]])
    >>> coupling_strengths(A)
    (1.0, 0.01)
    """
    coefficients = A.coefficients
    if coefficients.ndim == 1:
        coefficients = coefficients.reshape(-1, *([1] * A.dim))
    couplings = []
    for axis in range(A.dim):
        total = torch.zeros_like(coefficients[0])
        for k, o in enumerate(A.offsets):
            if o[axis] != 0:
                total = total - coefficients[k]
        couplings.append(total.clamp_min(0.0))
    stacked = torch.stack(couplings)
    largest = stacked.max(0).values.clamp_min(torch.finfo(stacked.dtype).tiny)
    ratios = (stacked / largest).flatten(1)
    if not A.is_constant:
        whole = _whole_rows(A).reshape(-1)
        if bool(whole.any()):
            ratios = ratios[:, whole]
    return tuple(round(float(v), 12) for v in ratios.max(1).values)


def _whole_rows(A: Stencil) -> Tensor:
    """Boolean grid of a variable stencil: the points none of whose stencil neighbours is a decoupled row
    (its diagonal only: a cell outside a masked domain)."""
    decoupled = ~active_cells(A, tuple(A.coefficients.shape[1:]))
    if not bool(decoupled.any()):
        return ~decoupled
    near = decoupled.clone()
    for o in A.offsets:
        if any(o):
            for dst, src in _shift_pieces(o, tuple(decoupled.shape), A.periodic):
                near[dst] |= decoupled[src]
    return ~near


def mixed_coupling(A: Stencil) -> float:
    """The largest ``|c_(1,1) - c_(1,-1)| / c_0`` over the grid of a 2D stencil (0 for other dimensions).

    A mixed derivative ``u_xy`` (rotated anisotropy) puts opposite signs on the two diagonals; the Galerkin
    coarse operators of axis-aligned stencils put equal ones.  Lines along one axis then miss the strong
    direction, which runs between the axes.

    Examples
    --------
    >>> A = Stencil.from_kernel([[-0.2, -0.8, 0.2], [-0.3, 2.2, -0.3], [0.2, -0.8, -0.2]])
    >>> round(mixed_coupling(A), 4)
    0.1818
    """
    if A.dim != 2 or ((1, 1) not in A.offsets and (1, -1) not in A.offsets):
        return 0.0
    coefficients = A.coefficients
    diagonal = coefficients[A.center_index].abs().clamp_min(torch.finfo(coefficients.dtype).tiny)

    def entry(offset: tuple[int, int]) -> Tensor:
        return coefficients[A.offsets.index(offset)] if offset in A.offsets else torch.zeros_like(diagonal)

    return float(((entry((1, 1)) - entry((1, -1))).abs() / diagonal).max())


MIXED = 0.05
"""A 2D stencil with :func:`mixed_coupling` above ``MIXED`` gets alternating line relaxation."""


def coarsened_axes(
    coarsening: str, A: Stencil, shape: Sequence[int], *, auto_smoother: bool = True
) -> tuple[int, ...]:
    """The axes a level coarsens: all (``"full"``), the named ones (``"x"``, ``"yz"``, ...) or, for
    ``"auto"``, those chosen by :func:`choose` (with ``auto_smoother``, the smoother is chosen too) or else,
    for a given smoother, the strongly coupled axes (semicoarsening for point smoothers).  Axes with fewer
    than 2 points are never coarsened.

    Examples
    --------
    >>> A = Stencil.from_kernel([[0, -1, 0], [-0.01, 2.02, -0.01], [0, -1, 0]])
    >>> coarsened_axes("auto", A, (31, 31)), coarsened_axes("auto", A, (31, 31), auto_smoother=False)
    ((0,), (0,))
    >>> coarsened_axes("full", A, (31, 31)), coarsened_axes("y", A, (31, 31))
    ((0, 1), (1,))
    """
    dim = len(shape)
    if coarsening == "auto":
        if auto_smoother:
            axes = choose(A, shape)[1]
        else:
            strengths = coupling_strengths(A)
            axes = tuple(a for a in range(dim) if strengths[a] >= STRONG)
        return level_axes(axes, shape, then_full=True)
    return level_axes(named_axes(coarsening, dim), shape)


def named_axes(coarsening: str, dim: int) -> tuple[int, ...]:
    """The axes ``coarsening`` names: all for ``"full"``, the lettered ones for ``"x"``, ``"yz"``, ...

    Examples
    --------
    >>> named_axes("full", 3), named_axes("xz", 3)
    ((0, 1, 2), (0, 2))
    """
    if coarsening == "full":
        return tuple(range(dim))
    if coarsening not in COARSENINGS or coarsening == "auto" or any(AXIS_NAMES.index(a) >= dim for a in coarsening):
        raise ValueError(f"coarsening: expected 'full', 'auto' or axis letters of a {dim}D grid; got {coarsening!r}")
    return tuple(AXIS_NAMES.index(a) for a in coarsening)


def level_axes(axes: Sequence[int], shape: Sequence[int], *, then_full: bool = False) -> tuple[int, ...]:
    """The axes a level of ``shape`` coarsens when ``axes`` are asked for: those with 2 points or more; with
    ``then_full`` (``coarsening="auto"``), all axes once one of ``axes`` has fewer than 3 points (used up).

    Examples
    --------
    >>> level_axes((0,), (3, 63)), level_axes((0,), (1, 63)), level_axes((0,), (1, 63), then_full=True)
    ((0,), (), (1,))
    """
    if then_full and any(shape[a] < 3 for a in axes):
        axes = range(len(shape))
    return tuple(a for a in axes if shape[a] >= 2)


def line_relaxable(A: Stencil, grid_shape: Sequence[int] | None = None) -> bool:
    """Whether line relaxation (:mod:`mgcore.line`) takes ``A`` on ``grid_shape``: radius 1, and on each
    periodic axis an even number of points (the colours of lines alternate around it) and at least 3 (a line
    along it is a cyclic system).  Faces of any kind otherwise: a line's end rows are ``A``'s rows there.

    Examples
    --------
    >>> periodic = Stencil(Stencil.laplacian(2).offsets, Stencil.laplacian(2).coefficients, boundary="periodic")
    >>> line_relaxable(Stencil.laplacian(2)), line_relaxable(periodic, (8, 8)), line_relaxable(periodic, (8, 7))
    (True, True, False)
    """
    if A.radius > 1:
        return False
    return grid_shape is None or not any(p and (n % 2 or n < 3) for p, n in zip(A.periodic, grid_shape))


def choose(A: Stencil, shape: Sequence[int], coarsened: Sequence[int] | None = None) -> tuple[tuple, tuple]:
    """The ``auto`` choice for one level: ``(smoother spec, coarsened axes)``.

    With the strong axes ``S`` (:func:`coupling_strengths` at least :data:`STRONG`):

    * every axis strong: red-black Gauss-Seidel and full coarsening (isotropic problems are unchanged);
    * one strong axis: zebra line relaxation along it; on a 2D axis-aligned (5-point) stencil with
      semicoarsening of that axis (the anisotropy shrinks by 4 per level until full coarsening takes over),
      else with full coarsening (the coarse operator keeps the anisotropy, so every level relaxes the same
      lines);
    * a 2D stencil with a mixed derivative (:func:`mixed_coupling` above :data:`MIXED`): alternating zebra
      lines x, y, y, x (symmetric) and full coarsening;
    * two strong axes of three: point relaxation and semicoarsening of the strong axes (instead of plane
      relaxation: the weak axis keeps its points, so the errors point relaxation leaves, smooth in the strong
      plane, stay on the coarse grid; the anisotropy shrinks by 4 per level until full coarsening takes over).

    ``coarsened`` fixes the coarsened axes (a ``coarsening`` other than ``"auto"``); the smoother is then
    chosen for them: point relaxation when every coarsened axis is strong, else lines along the strong axis,
    or alternating lines along the strong axes when there are two.

    Examples
    --------
    >>> A = Stencil.from_kernel([[0, -0.01, 0], [-1, 2.02, -1], [0, -0.01, 0]])  # strong along y
    >>> choose(A, (31, 31))
    (('zebra-y', {}), (1,))
    >>> choose(Stencil.laplacian(3, h=(1, 1, 10)), (15, 15, 15))
    (('rbgs', {}), (0, 1))

    Where lines do not apply (:func:`line_relaxable`: an odd periodic axis) point relaxation takes their
    place, with the same coarsened axes.
    """
    spec, axes = _choose(A, shape, coarsened)
    if spec[0].startswith("zebra") and not line_relaxable(A, shape):
        spec = ("rbgs", {})
    return spec, axes


def _choose(A: Stencil, shape: Sequence[int], coarsened: Sequence[int] | None) -> tuple[tuple, tuple]:
    dim = len(shape)
    strengths = coupling_strengths(A)
    strong = tuple(a for a in range(dim) if strengths[a] >= STRONG)
    if not strong:  # no point couples to another (a coarse level of one active point): nothing for lines
        return ("rbgs", {}), tuple(range(dim)) if coarsened is None else tuple(coarsened)
    if A.radius == 1 and mixed_coupling(A) > MIXED:
        # Rotated anisotropy: the strong direction lies between the axes.  Symmetric alternating zebra lines
        # (x, y, y, x) and full coarsening (Trottenberg et al. 2001, section 7.6: alternating line smoothers
        # for mixed derivatives).
        return ("zebra-alternating", {"axes": (0, 1, 1, 0)}), tuple(range(dim)) if coarsened is None else tuple(
            coarsened
        )
    if coarsened is None:
        if len(strong) == dim or A.radius > 1:
            return ("rbgs", {}), tuple(range(dim))
        if len(strong) == 1:
            zebra = (f"zebra-{AXIS_NAMES[strong[0]]}", {})
            if dim == 2 and A.is_axis_aligned:
                # Lines along the strong axis and semicoarsening of that axis too: the smoother leaves errors
                # smooth along the lines, which the line-coarsened grid keeps; the anisotropy shrinks by 4 per
                # level until point relaxation and full coarsening take over.  Measured V(1,1) factor at
                # eps = 0.001, 255^2: 0.005 against 0.089 with full coarsening, at about 1.5 times the work per
                # cycle.  A stencil with diagonal couplings (bilinear elements) gains nothing from it (7
                # cycles against 8 at 1023^2) and keeps full coarsening, as do 3D grids (complexity 2 against
                # 8/7).
                return zebra, strong
            return zebra, tuple(range(dim))
        return ("rbgs", {}), strong
    coarsened = tuple(coarsened)
    if all(a in strong for a in coarsened) or A.radius > 1:
        return ("rbgs", {}), coarsened
    if len(strong) == 1:
        return (f"zebra-{AXIS_NAMES[strong[0]]}", {}), coarsened
    return ("zebra-alternating", {"axes": strong}), coarsened


def semicoarse_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """The coarse grid when only ``axes`` are coarsened (``n -> n // 2`` on those, with ``n >= 2``).

    Examples
    --------
    >>> semicoarse_shape((31, 31), (0,)), semicoarse_shape((7, 8, 9), (1, 2))
    ((15, 31), (7, 4, 4))
    """
    return tuple(n // 2 if k in axes and n >= 2 else n for k, n in enumerate(shape))


class _AxesTransfer(nn.Module):
    """A grid transfer acting on the coarsened ``axes`` only (the semicoarsening transfers share this)."""

    def __init__(self, dim: int, axes: Sequence[int]) -> None:
        super().__init__()
        self.dim = dim
        self.axes = tuple(int(a) for a in axes)

    def extra_repr(self) -> str:
        return "axes=" + "".join(AXIS_NAMES[a] for a in self.axes)


class SemiFullWeighting(_AxesTransfer):
    """Full weighting ``(1/4, 1/2, 1/4)`` along the coarsened axes only (``R = P^T / 2^k`` for ``k`` axes).

    Examples
    --------
    >>> import torch
    >>> R = SemiFullWeighting(2, (0,))
    >>> R(torch.arange(15.0).reshape(1, 1, 5, 3)).shape
    torch.Size([1, 1, 2, 3])
    """

    def forward(self, x: Tensor) -> Tensor:
        for axis in self.axes:
            x = _restrict_axis(x, x.ndim - self.dim + axis)
        return x


class SemiLinear(_AxesTransfer):
    """Linear interpolation along the coarsened axes only (the adjoint of :class:`SemiFullWeighting` up to
    ``2^k``).

    Examples
    --------
    >>> import torch
    >>> P = SemiLinear(2, (1,))
    >>> P(torch.ones(1, 1, 3, 2), (3, 5))[0, 0, 0].tolist()
    [0.5, 1.0, 1.0, 1.0, 0.5]
    """

    def forward(self, c: Tensor, fine_shape: Sequence[int], out: Tensor | None = None) -> Tensor:
        """Interpolate ``c`` to ``fine_shape``; ``out`` (no autograd) receives the result."""
        offset = c.ndim - self.dim
        for k, axis in enumerate(self.axes):
            last = k == len(self.axes) - 1
            c = _prolong_axis(c, offset + axis, int(fine_shape[axis]), out if last else None)
        if not self.axes and out is not None:
            return out.copy_(c)
        return c


class SemiInjection(_AxesTransfer):
    """Injection ``c_i = x_{2i+1}`` along the coarsened axes only: the FAS state transfer of semicoarsening.

    Examples
    --------
    >>> import torch
    >>> SemiInjection(2, (1,))(torch.arange(10.0).reshape(1, 1, 2, 5))[0, 0].tolist()
    [[1.0, 3.0], [6.0, 8.0]]
    """

    def forward(self, x: Tensor) -> Tensor:
        for axis in self.axes:
            n = x.shape[x.ndim - self.dim + axis]
            if n >= 2:
                x = x.narrow(x.ndim - self.dim + axis, 1, 2 * (n // 2) - 1)[
                    (..., *(slice(None, None, 2) if k == axis else slice(None) for k in range(self.dim)))
                ]
        return x.clone()


def semi_rediscretizable(A: Stencil, shape: Sequence[int], axes: Sequence[int]) -> bool:
    """True when :func:`rediscretize_semi` is exact: a constant, symmetric, axis-aligned, zero-row-sum
    Dirichlet stencil of radius 1, with odd sides of at least 3 points along the coarsened axes."""
    if not (isinstance(A, Stencil) and A.is_constant and A.radius == 1 and A.boundary == "dirichlet"):
        return False
    if not A.is_axis_aligned or any(shape[a] % 2 == 0 or shape[a] < 3 for a in axes):
        return False
    scale = float(A.coefficients.abs().max())
    return abs(float(A.coefficients.sum())) <= 1e-12 * scale * len(A.offsets) and A.is_symmetric()


def rediscretize_semi(A: Stencil, axes: Sequence[int]) -> Stencil:
    """The axis-aligned stencil on the grid with spacing doubled along ``axes``: couplings along those axes
    divided by 4, the others kept, the diagonal the negative sum (zero row sum).  The Galerkin operator of
    :class:`SemiFullWeighting` and :class:`SemiLinear` has the same couplings along the coarsened axes and the
    same total coupling along the others, spread over the weights ``(1/8, 3/4, 1/8)`` along the coarsened axes.

    Examples
    --------
    >>> A = Stencil.from_kernel([[0, -1, 0], [-0.01, 2.02, -0.01], [0, -1, 0]])
    >>> [round(v, 4) for v in rediscretize_semi(A, (0,)).coefficients.tolist()]
    [-0.25, -0.01, 0.52, -0.01, -0.25]
    """
    values = A.coefficients.clone()
    center = A.center_index
    for k, o in enumerate(A.offsets):
        if k != center and any(o[a] != 0 for a in axes):
            values[k] = values[k] / 4.0
    values[center] = 0.0
    values[center] = -values.sum()
    return Stencil(A.offsets, values)
