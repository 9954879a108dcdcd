"""Solving a masked problem on the box around its active cells.

A masked domain (a disk, an L-shape, a region of a picture) is stored on the whole grid: the cells outside it
are decoupled rows ``a_ii x_i = b_i`` (:func:`mgcore.boundary.active_cells`).  Smoothing solves them exactly and
they take no part in the coarse spaces, but every cycle still streams them.  When the active cells fill a small
part of the grid (a disk fills 50% of its square, the region of a seamless clone a few percent of the picture),
:class:`mgcore.MultigridSolver` cycles on a box around them instead and sets ``x_i = b_i / a_ii`` outside it:
the same linear system, split into two uncoupled blocks.

The box is the active cells' bounding box, widened by the stencil's reach so that no active row couples to a
point outside it, and labelled **Neumann on every face cut out of the grid**.  A cut face lies among decoupled
rows, so the label does not change the operator; it chooses the coarse spaces (:mod:`mgcore.boundary`): a
Neumann face keeps ``P 1 = 1`` up to the face, while a Dirichlet face would interpolate a zero that the active
cells next to it do not have.  The box's sides are then grown until they nest as far down as the whole grid's
hierarchy goes: ``m 2^K + 1`` points between two Neumann faces, ``m 2^K`` between a Neumann and a Dirichlet
face (:func:`nesting_depth`).

Measured at 1023^2 (V(1,2) red-black Gauss-Seidel, rtol 1e-8, 2-core CPU): a disk of radius 0.4 fills an
833^2 box and takes 5 cycles either way (factor 0.023 on the grid, 0.028 on the box); cut faces labelled
Dirichlet, or Neumann faces on box sides that do not nest (831, 824 points), took 12-13 cycles (factor
0.27-0.30).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mgcore import kernels
from mgcore.boundary import active_cells, boundary_coarse_shape
from mgcore.operators import Faces, Stencil

__all__ = ["ActiveBox", "find_active_box", "nesting_depth"]

MAX_FRACTION = 0.9
"""The largest share of the grid's points a box may keep on grids of :data:`LARGE_GRID` points or more."""
SMALL_GRID_MAX_FRACTION = 0.5
"""The same on smaller grids, where the passes outside the box and the copies in and out weigh more: a disk
of radius 0.4 (a box of 67% of the grid) solved 0.88x the whole grid's time at 1023^2, 0.94x at 511^2, 1.02x at
255^2 and 1.08x at 127^2; an ellipse in a box of 13% 0.55x at 255^2 and 0.69x at 127^2 (2-core CPU, medians
of 14 alternating solves)."""
LARGE_GRID = 2**17
"""See :data:`SMALL_GRID_MAX_FRACTION`."""


def nesting_depth(faces: Faces, grid_shape: Sequence[int], max_coarse: int, max_levels: int) -> int:
    """How many times the face-aware hierarchy of ``grid_shape`` coarsens (until at most ``max_coarse``
    unknowns, or ``max_levels`` levels).

    Examples
    --------
    >>> nesting_depth((("dirichlet", "dirichlet"),) * 2, (1023, 1023), max_coarse=1000, max_levels=30)
    5
    """
    shape, depth = tuple(int(n) for n in grid_shape), 0
    while math.prod(shape) > max_coarse and depth + 1 < max_levels:
        coarse = boundary_coarse_shape(faces, shape)
        if coarse == shape or min(coarse) < 2:
            break
        shape, depth = coarse, depth + 1
    return depth


def _nesting_size(size: int, low: str, high: str, depth: int) -> int:
    """The smallest side ``>= size`` that nests ``depth`` times between faces ``low`` and ``high``: every coarse
    grid again has its face points where the labels put them (:func:`mgcore.boundary.boundary_coarse_shape`)."""
    residue = {("neumann", "neumann"): 1, ("dirichlet", "dirichlet"): -1}.get((low, high), 0)
    step = 2**depth
    return size + (residue - size) % step


def _axis_span(first: int, last: int, n: int, faces: tuple[str, str], depth: int):
    """The box along one axis, ``(start, stop, (low, high))``, or ``None`` to keep the whole axis.

    ``first``/``last`` bound the points the box must hold.  A cut side is labelled Neumann; a side that reaches
    the grid's face keeps that face's label.  Tries cutting both sides, then one, and keeps the first that
    nests within the grid."""
    low, high = faces
    for cut_low, cut_high in ((first > 0, last < n - 1), (False, last < n - 1), (first > 0, False)):
        if not (cut_low or cut_high):
            continue
        labels = ("neumann" if cut_low else low, "neumann" if cut_high else high)
        start, stop = (first if cut_low else 0), (last + 1 if cut_high else n)
        size = _nesting_size(stop - start, *labels, depth)
        if size >= n:
            continue
        grow = size - (stop - start)
        if cut_low and cut_high:  # widen both ways, inside the grid
            start = min(max(start - grow // 2, 0), n - size)
        elif cut_low:
            start = n - size
        return start, start + size, labels
    return None


@dataclass(frozen=True)
class ActiveBox:
    """The box of a grid that holds a masked operator's active cells, and how the rest is solved.

    Outside the box every row is decoupled, ``a_ii x_i = b_i``; inside it the operator is the grid's own,
    cut to the box (:attr:`operator`, :meth:`~mgcore.operators.Stencil.cropped`).

    Examples
    --------
    >>> import torch
    >>> from mgcore import Stencil
    >>> L = Stencil.laplacian(2)
    >>> grid = (63, 63)
    >>> inside = torch.zeros(grid, dtype=torch.bool)
    >>> inside[20:30, 40:50] = True
    >>> c = L.coefficient_arrays(grid).clone()
    >>> for k, offset in enumerate(L.offsets):  # cut the couplings that cross the square's edge
    ...     if any(offset):
    ...         c[k] *= inside & torch.roll(inside, [-o for o in offset], (0, 1))
    >>> box = find_active_box(Stencil(L.offsets, c), grid, depth=3)
    >>> box.box, box.faces
    ((slice(17, 34, None), slice(37, 54, None)), (('neumann', 'neumann'), ('neumann', 'neumann')))
    >>> box.shape, round(box.fraction, 3)  # 17 = 2 * 2^3 + 1 points nest three times between Neumann faces
    ((17, 17), 0.073)
    """

    box: tuple[slice, ...]  # the kept part of the grid (start, stop per axis)
    faces: Faces  # the box's face labels: Neumann on the cut faces, the grid's own elsewhere
    grid_shape: tuple[int, ...]  # the whole grid
    diagonal: Tensor  # (*grid_shape) the operator's diagonal, read outside the box: x = b / a there
    operator: Stencil  # the operator on the box (Stencil.cropped)

    @property
    def shape(self) -> tuple[int, ...]:
        """The box's grid."""
        return tuple(s.stop - s.start for s in self.box)

    @property
    def fraction(self) -> float:
        """The box's share of the grid's points."""
        return math.prod(self.shape) / math.prod(self.grid_shape)

    def slabs(self) -> list[tuple[slice, ...]]:
        """Disjoint slabs of the grid that together are everything outside the box: along each axis in turn, the
        parts before and after the box, within the box's extent on the axes before it."""
        return _slabs(self.box, self.grid_shape)

    def inside(self, x: Tensor) -> Tensor:
        """The box of ``x`` shaped ``(batch, 1, *grid)``, as a contiguous copy."""
        return x[(slice(None), slice(None), *self.box)].contiguous()

    def outside(self, x: Tensor) -> list[Tensor]:
        """Views of ``x`` shaped ``(batch, 1, *grid)`` on each of :meth:`slabs`."""
        return [x[(slice(None), slice(None), *s)] for s in self.slabs()]

    def solve_outside(self, b: Tensor) -> list[Tensor]:
        """``x = b / a`` on each of :meth:`slabs` (``b`` shaped ``(batch, 1, *grid)``), in float64."""
        a = self.diagonal.to(device=b.device, dtype=torch.float64)
        return [part / a[s] for s, part in zip(self.slabs(), self.outside(b))]

    def outside_squares(self, b: Tensor, x: Sequence[Tensor] | None = None) -> Tensor:
        """``sum (b - a x)^2`` outside the box per right-hand side (``b`` shaped ``(batch, 1, *grid)``, ``x``
        per slab as :meth:`outside` gives it, ``None``: zero), in float64."""
        a = self.diagonal.to(device=b.device, dtype=torch.float64)
        total = torch.zeros(b.shape[0], dtype=torch.float64, device=b.device)
        for k, (s, part) in enumerate(zip(self.slabs(), self.outside(b))):
            r = part.to(torch.float64)
            if x is not None:
                r = torch.addcmul(r, a[s], x[k].to(torch.float64), value=-1.0)
            # A norm reduces without a grid of squares (these slabs can be most of the grid).
            total += torch.linalg.vector_norm(r, dim=tuple(range(1, r.ndim))).square()
        return total

    def expand(self, x: Tensor, outside: Sequence[Tensor]) -> Tensor:
        """The whole grid: ``x`` (the box, ``(batch, 1, *box)``) inside and ``outside`` (per slab) around it."""
        full = x.new_empty((*x.shape[:2], *self.grid_shape))
        full[(slice(None), slice(None), *self.box)] = x
        for s, values in zip(self.slabs(), outside):
            full[(slice(None), slice(None), *s)] = values
        return full


def find_active_box(
    A: Stencil, grid_shape: Sequence[int], *, depth: int, max_fraction: float | None = None
) -> ActiveBox | None:
    """The box to cycle a masked operator on, or ``None`` when it would keep more than ``max_fraction`` of the
    grid (default :data:`MAX_FRACTION`, or :data:`SMALL_GRID_MAX_FRACTION` below :data:`LARGE_GRID` points), or
    ``A`` is not a masked, variable stencil.

    The box holds the active cells (:func:`~mgcore.boundary.active_cells`) and ``A.radius`` more points on each
    cut side (so no active row reaches outside it), grown to sides that nest ``depth`` times
    (:func:`nesting_depth`).  Periodic axes are kept whole (their couplings wrap around).  Rows outside with a
    zero diagonal keep the whole grid too (``b / a`` would not be defined).  An axis kept whole, or every axis
    when the box would be too large, relabels its free Dirichlet sides Neumann (:func:`_free_faces`); the box is
    then the whole grid with those labels, and ``None`` only where no label changes.
    """
    grid_shape = tuple(int(n) for n in grid_shape)
    if A.is_constant or tuple(A.coefficients.shape[1:]) != grid_shape or depth < 1:
        return None
    if max_fraction is None:
        max_fraction = MAX_FRACTION if math.prod(grid_shape) >= LARGE_GRID else SMALL_GRID_MAX_FRACTION
    # Kept on the stencil while its coefficients stay the same (as mgcore.kernels keeps its loop forms): a
    # solve of the same A again finds the box, and the box's operator with what the set-up cached on it.
    key = (A.coefficients.data_ptr(), A.coefficients._version, grid_shape, depth, max_fraction)
    cached = A.__dict__.get("_active_box")
    if cached is not None and cached[0] == key:
        return cached[1]
    found = _find(A, grid_shape, depth, max_fraction)
    A.__dict__["_active_box"] = (key, found)
    return found


def _find(A: Stencil, grid_shape: tuple[int, ...], depth: int, max_fraction: float) -> ActiveBox | None:
    active = active_cells(A, grid_shape).cpu().numpy()  # NumPy: its any() along an axis takes a tenth of torch's
    if active.all() or not active.any():
        return None
    box, faces, used_spans = [], [], []
    for axis, n in enumerate(grid_shape):
        others = tuple(a for a in range(len(grid_shape)) if a != axis)
        used = np.flatnonzero(active.any(axis=others) if others else active)
        used_spans.append((int(used[0]), int(used[-1])))
        first, last = int(used[0]) - A.radius, int(used[-1]) + A.radius
        span = None if A.periodic[axis] else _axis_span(max(first, 0), min(last, n - 1), n, A.faces[axis], depth)
        if span is None:
            box.append(slice(0, n))
            faces.append(_free_faces(A, active, axis, used_spans[-1], depth))
        else:
            box.append(slice(span[0], span[1]))
            faces.append(span[2])
    if math.prod(s.stop - s.start for s in box) > max_fraction * math.prod(grid_shape):
        # Too large a box to pay for its copies: the whole grid, its free faces relabelled as below.
        box = [slice(0, n) for n in grid_shape]
        faces = [_free_faces(A, active, axis, used_spans[axis], depth) for axis in range(len(grid_shape))]
    if all(span == slice(0, n) for span, n in zip(box, grid_shape)) and tuple(faces) == tuple(A.faces):
        return None  # the whole grid as it is
    box = tuple(box)
    diagonal = A.diagonal(grid_shape).reshape(grid_shape)
    # Before the box's operator is cut (a copy of its coefficients): a zero diagonal outside refuses the box.
    if kernels.zero_diagonal_count(A) != 0 and _zero_outside(diagonal, _slabs(box, grid_shape)):
        return None  # counted with the active cells
    found = ActiveBox(box, tuple(faces), grid_shape, diagonal, A.cropped(box, faces))
    kernels.crop_coupled(A, found.operator, found.box)  # the box's active cells, cut from the grid's
    return found


def _free_faces(
    A: Stencil, active: np.ndarray, axis: int, used: tuple[int, int], depth: int
) -> tuple[str, str]:
    """The labels of an axis kept whole: ``A``'s own, except that a Dirichlet side is labelled Neumann when it
    is free, i.e. no row couples across it (the first ``A.radius`` planes are inactive, so the operator is the
    same under either label), the active cells nearest to it are not grounded (their rows sum to at most
    :data:`FREE_ROW_SUM` of their diagonal, couplings beyond the grid's other faces left out: a Neumann mask
    edge, weak screening) and they come within ``2^depth`` points of it (farther, the ``depth`` coarsenings never
    bring them next to it: a 255^2 square 8 points in took 8 cycles as it was, 4 points in stalled).

    The coarse grids of those cells reach the face on some level; the Dirichlet transfers there interpolate zero
    from beyond it (``P 1 = 1/2`` beside the face), so the coarse spaces lose the nearly constant errors of an
    ungrounded region and the cycle stalls (a square with a Neumann edge 4 points from the faces of a 511^2 grid:
    factor 0.94, 100 cycles).  A Neumann label keeps ``P 1 = 1`` up to the face, as on a box's cut faces (8-9
    cycles, factor 0.06-0.08: the sizes of a Dirichlet grid do not nest between Neumann faces).  A grounded
    region (a Dirichlet mask edge) keeps the label: there the nesting matters more (12 against 27 cycles)."""
    labels = list(A.faces[axis])
    if A.periodic[axis]:
        return A.faces[axis]
    n = active.shape[axis]
    for side, (label, plane) in enumerate(zip(labels, (used[0], used[1]))):
        margin = plane if side == 0 else n - 1 - plane  # inactive planes between the face and the active cells
        if label != "dirichlet" or margin < A.radius or margin >= 2**depth:
            continue
        if ungrounded(A, active, axis, plane):
            labels[side] = "neumann"
    return labels[0], labels[1]


def ungrounded(A: Stencil, active: np.ndarray, axis: int, plane: int) -> bool:
    """Whether the active rows of the variable stencil ``A`` on the plane ``plane`` of ``axis`` (some, and all of
    them off the plane's own edges) sum to at most :data:`FREE_ROW_SUM` of their diagonal, their couplings beyond
    the grid's faces left out (read as zero): a Neumann face or mask edge, or weak screening, not a Dirichlet
    edge.  ``active`` is :func:`~mgcore.boundary.active_cells` as a NumPy grid."""
    index = [slice(None)] * active.ndim
    index[axis] = plane
    on = active[tuple(index)]
    if not on.any():
        return False
    coefficients = A.coefficients[(slice(None), *index)].detach().cpu().double().numpy().copy()  # (K, *plane)
    others = [b for b in range(A.dim) if b != axis]
    for k, offset in enumerate(A.offsets):
        if offset[axis] and not A.periodic[axis] and not 0 <= plane + offset[axis] < active.shape[axis]:
            coefficients[k] = 0.0
        for position, b in enumerate(others):
            if offset[b] and not A.periodic[b]:
                edge = [slice(None)] * len(others)
                edge[position] = slice(0, 1) if offset[b] < 0 else slice(-1, None)
                coefficients[(k, *edge)] = 0.0
    # The plane's own edges lie on the other axes' faces, which ground them where those are Dirichlet: they
    # say nothing about this face.
    inner = on.copy()
    for position, b in enumerate(others):
        if not A.periodic[b] and inner.shape[position] > 2:
            edge = [slice(None)] * len(others)
            edge[position] = [0, -1]
            inner[tuple(edge)] = False
    if inner.any():
        on = inner
    row_sums = np.abs(coefficients.sum(axis=0))[on]
    diagonal = np.abs(coefficients[A.offsets.index((0,) * A.dim)])[on]
    return bool((row_sums <= FREE_ROW_SUM * diagonal).all())


FREE_ROW_SUM = 1e-3
"""An active row whose sum is at most this share of its diagonal is not grounded (:func:`_free_faces`): a
Neumann mask edge sums to the screening ``c h^2``, a Dirichlet mask edge to a coupling (a quarter of the
diagonal of the five-point Laplacian)."""


def _slabs(box: tuple[slice, ...], grid_shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """:meth:`ActiveBox.slabs` of ``box`` in a grid of ``grid_shape``."""
    pieces = []
    for axis, span in enumerate(box):
        n = grid_shape[axis]
        for part in (slice(0, span.start), slice(span.stop, n)):
            if part.stop > part.start:
                pieces.append((*box[:axis], part, *(slice(None),) * (len(box) - axis - 1)))
    return pieces


def _zero_outside(diagonal: Tensor, slabs: Sequence[tuple[slice, ...]]) -> bool:
    """Whether a row on the ``slabs`` outside the box has a zero diagonal (then ``x = b / a`` is not defined
    there)."""
    if diagonal.device.type == "cpu":  # NumPy's all() tests the values themselves, without a grid of booleans
        values = diagonal.numpy()
        return not all(values[s].all() for s in slabs)
    return any(bool((diagonal[s] == 0).any()) for s in slabs)
