"""Recover a grid :class:`~mgcore.operators.Stencil` from a SciPy sparse matrix.

A pyamg user hands over a sparse matrix ``A`` together with the grid it lives on (``grid=shape``), as
``pyamg.gallery.poisson(shape)`` or ``pyamg.gallery.stencil_grid(S, shape)`` build them.  The geometric
multigrid engine needs the stencil, so :func:`stencil_from_sparse` reads it back: the unknowns are numbered
in C (row-major) order, ``index = numpy.arange(prod(grid)).reshape(grid)`` (the numbering of
``pyamg.gallery.stencil_grid``), so the coupling of row ``x`` to column ``y`` is the stencil offset
``y - x`` of the two multi-indices.  Every stored entry is accounted for: it must be a coupling between
grid neighbours, so the stencil reassembles to exactly ``A``.

Only couplings between grid neighbours (offsets within ``max_radius`` points per axis, 1 by default: the
5/7-point and 9/27-point stencils) are accepted.  A matrix that is not a stencil on ``grid`` -- a banded
matrix whose bands wrap around a grid edge, or a grid given in the wrong order -- shows up as a coupling
between points far apart on the grid and is rejected.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence

import numpy as np
import torch

from mgcore.operators import Stencil, _shift_pieces, constant_form, parse_faces

__all__ = ["stencil_from_sparse"]

_EXPECTED = (
    "expected a matrix of the form pyamg.gallery.stencil_grid(S, grid) -- a stencil S coupling each grid "
    "point to its neighbours, unknowns numbered in C order as numpy.arange(prod(grid)).reshape(grid)"
)


def _check_grid(grid_shape: Sequence[int]) -> tuple[int, ...]:
    """The grid as a tuple of ints, or an error naming ``grid``."""
    if isinstance(grid_shape, (int, np.integer)):
        grid_shape = (grid_shape,)
    try:
        grid = tuple(operator.index(n) for n in grid_shape)
    except TypeError as err:
        raise TypeError(
            f"grid (grid_shape): expected a tuple of 1 to 3 integers; got {grid_shape!r}"
        ) from err
    if not 1 <= len(grid) <= 3 or min(grid) < 1:
        raise ValueError(f"grid (grid_shape): expected 1 to 3 positive sizes; got {grid_shape!r}")
    return grid


def stencil_from_sparse(
    matrix,
    grid_shape: Sequence[int],
    *,
    max_radius: int = 1,
    dtype: torch.dtype = torch.float64,
    check: bool = True,
    boundary=None,
) -> Stencil:
    """The :class:`~mgcore.operators.Stencil` whose matrix on ``grid_shape`` is exactly ``matrix``.

    Offsets are the multi-index differences ``col - row`` of the non-zero entries (C order), read from the flat
    differences ``col - row`` by one table look-up per entry when every axis has more than ``2 max_radius``
    points (an entry whose row has that neighbour beyond a face wrapped around the grid: not a stencil).  The
    coefficients are kept per cell, shape ``(K, *grid)``, and collapse to a constant stencil when every cell
    whose neighbour ``x + o`` lies in the grid has the same coefficient for offset ``o`` (a cell whose
    neighbour falls outside the grid has no entry, so it carries no information about that coefficient).

    Parameters
    ----------
    matrix : scipy.sparse matrix or array
        The square operator ``A`` (any sparse format; duplicates are summed, explicit zeros ignored).  Real
        entries only.
    grid_shape : tuple of int
        The grid ``grid`` of 1 to 3 dimensions with ``prod(grid) == A.shape[0]``.
    max_radius : int
        Largest accepted ``|offset|`` along any axis (1: nearest neighbours, diagonals included).
    dtype : torch.dtype
        Floating dtype of the stencil coefficients.
    check : bool
        On grids where the reading falls back to decoding every entry axis by axis (an axis of at most
        ``2 max_radius`` points, or a periodic axis other than the first), reassemble the stencil with
        :meth:`Stencil.to_sparse` and compare it with ``A`` entry for entry, the entries rounded to ``dtype``.
        Elsewhere every stored entry is matched to one coupling between grid neighbours as it is read (O(nnz),
        no second matrix), which is the same guarantee.
    boundary : str or sequence, optional
        Face labels of the grid (:func:`~mgcore.operators.parse_faces`), default Dirichlet (:func:`mgcore.solve`
        reads them from the matrix instead).  Along a periodic
        axis a coupling from the last point to the first is read as the offset ``+1`` (wrap around); the
        labels are kept on the stencil (Neumann faces tell the hierarchy to keep the constants).

    Returns
    -------
    Stencil
        Offsets in lexicographic order; constant coefficients when they are the same on every cell.

    Raises
    ------
    TypeError
        When ``matrix`` is not a SciPy sparse matrix (a dense array must be converted first, e.g.
        ``scipy.sparse.csr_array(A)``), or has complex entries.
    ValueError
        When ``A`` is not square, its size is not ``prod(grid)``, or it couples points more than
        ``max_radius`` apart (not a stencil on ``grid``).  Messages name the arguments as a pyamg-style
        caller spells them, ``A`` and ``grid``.

    Notes
    -----
    A matrix on a grid with an axis of 2 points is ambiguous: the tridiagonal matrix on grid ``(n, 2)`` is a
    genuine 9-point stencil (it couples ``(i, 1)`` to ``(i + 1, 0)``) and is accepted as one.

    Examples
    --------
    >>> import pyamg
    >>> A = pyamg.gallery.poisson((4, 5), format="csr")
    >>> S = stencil_from_sparse(A, (4, 5))
    >>> S
    Stencil(dim=2, points=5, constant, radius=1)
    >>> S.offsets, S.coefficients.tolist()
    (((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)), [-1.0, -1.0, 4.0, -1.0, -1.0])
    >>> (S.to_sparse((4, 5)) != A).nnz
    0

    A banded matrix whose bands wrap from the end of one grid row to the start of the next is refused:

    >>> import scipy.sparse as sp
    >>> stencil_from_sparse(sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(20, 20)), (4, 5))
    Traceback (most recent call last):
    ...
    ValueError: A: row 4 = grid point (0, 4) is coupled to column 5 = grid point (1, 0), offset (1, -4) ...
    """
    import scipy.sparse as sp

    if not sp.issparse(matrix):
        raise TypeError(
            f"A (matrix): expected a SciPy sparse matrix or array; got {type(matrix).__name__}.  "
            "Convert a dense array with scipy.sparse.csr_array(A)."
        )
    grid = _check_grid(grid_shape)
    faces = parse_faces("dirichlet" if boundary is None else boundary, len(grid))
    periodic = [low == "periodic" for low, _ in faces]
    if int(max_radius) != max_radius or max_radius < 1:
        raise ValueError(f"max_radius: expected a positive integer; got {max_radius!r}")
    max_radius = int(max_radius)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype; got {dtype!r}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"A (matrix): expected a square matrix; got shape {matrix.shape}")
    n = math.prod(grid)
    if matrix.shape[0] != n:
        raise ValueError(
            f"A (matrix) has {matrix.shape[0]} rows but grid (grid_shape) {grid} has {n} points; "
            "expected A.shape == (prod(grid), prod(grid))"
        )
    if np.issubdtype(matrix.dtype, np.complexfloating):
        raise TypeError("A (matrix): complex entries are not supported; expected a real matrix")
    if matrix.dtype == np.bool_ or not np.issubdtype(matrix.dtype, np.number):
        raise TypeError(f"A (matrix): expected real numeric entries; got dtype {matrix.dtype}")

    stencil = _read_constant_by_slabs(matrix, grid, periodic, faces, max_radius, dtype)
    if stencil is not None:
        return stencil
    read = _read_by_flat_offsets(matrix, grid, periodic, max_radius, dtype)
    if read is None:
        # An ambiguous grid (an axis of at most 2 max_radius points), or a matrix the reading above could not
        # account for: the reading axis by axis decides, and names the first coupling that is not a stencil's.
        read = _read_by_axes(matrix, grid, periodic, max_radius)
        verify = check
    else:
        verify = False  # every stored entry was matched to one coupling between grid neighbours
    offsets, coefficients = read
    stencil = _collapse(offsets, coefficients, grid, periodic, faces, dtype)
    if verify:
        _check_reassembly(stencil, matrix, grid, dtype)
    return stencil


def _canonical(matrix):
    """Canonical CSR copy with float64 data: sorted, duplicates summed, explicit zeros gone (the caller's
    matrix is never modified in place)."""
    import scipy.sparse as sp

    M = sp.csr_array(matrix, dtype=np.float64, copy=True)
    M.sum_duplicates()
    M.eliminate_zeros()
    M.sort_indices()
    if M.nnz == 0:
        raise ValueError("A (matrix): has no non-zero entries; expected a stencil operator")
    if not np.isfinite(M.data).all():
        raise ValueError("A (matrix): has non-finite entries")
    return M


def _read_constant_by_slabs(matrix, grid, periodic, faces, max_radius, dtype) -> Stencil | None:
    """The constant stencil of a canonical CSR ``matrix``, read from its first ``2 r + 1`` slabs and checked by
    comparing whole slabs; ``None`` when it is not (or not provably) one, and the entry-by-entry reading
    decides.

    A slab is the block of rows with one index along the first axis (``prod(grid[1:])`` rows, contiguous in
    C order).  With a constant stencil of radius ``r`` on a non-periodic first axis, the slabs ``r .. n0-1-r``
    hold the same entries shifted by one slab each, and the first and last ``r`` slabs hold those of the
    small grid of ``2 r + 1`` slabs.  So reading the stencil from that small grid (entry by entry) and
    comparing the slabs of ``A`` against it as arrays accounts for every stored entry: O(nnz) vectorised
    comparisons instead of per-entry decoding (0.21 -> 0.02 s for the 5-point matrix on 1023^2).
    """
    import scipy.sparse as sp

    r = max_radius
    k = 2 * r + 1
    n0, slab = grid[0], math.prod(grid[1:])
    if periodic[0] or n0 <= 2 * k or matrix.format != "csr":
        return None
    M = matrix if isinstance(matrix, sp.csr_array) else sp.csr_array(matrix, copy=False)
    if not M.has_canonical_format or M.data.dtype != np.float64:
        return None
    indptr, indices, data = M.indptr, M.indices, M.data
    sub = M[: k * slab, : k * slab]  # the grid of the first k slabs
    if sub.indptr[r * slab] != indptr[r * slab]:
        return None  # a row of the first r slabs couples beyond them: not a stencil of radius r
    sub_grid = (k, *grid[1:])
    read = _read_by_flat_offsets(sub, sub_grid, periodic, r, dtype)
    try:
        if read is None:  # a periodic axis after the first: decoded axis by axis, then reassembled
            stencil = _collapse(*_read_by_axes(sub, sub_grid, periodic, r), sub_grid, periodic, faces, dtype)
            _check_reassembly(stencil, sub, sub_grid, dtype)
        else:
            stencil = _collapse(*read, sub_grid, periodic, faces, dtype)
    except ValueError:  # not a stencil: the whole reading names the entry
        return None
    if not stencil.is_constant:
        return None

    def same_rows(first: int, last: int, sub_first: int, shift: int) -> bool:
        """Rows ``first*slab .. last*slab`` of ``A`` equal the sub-grid's rows from slab ``sub_first``,
        columns shifted by ``shift`` slabs."""
        lo, hi = indptr[first * slab], indptr[last * slab]
        rows = (last - first) * slab
        s_lo, s_hi = sub.indptr[sub_first * slab], sub.indptr[sub_first * slab + rows]
        return (
            s_hi - s_lo == hi - lo
            and np.array_equal(np.diff(indptr[first * slab : last * slab + 1]),
                               np.diff(sub.indptr[sub_first * slab : sub_first * slab + rows + 1]))
            and np.array_equal(data[lo:hi], sub.data[s_lo:s_hi])
            and np.array_equal(indices[lo:hi] - shift * slab, sub.indices[s_lo:s_hi])
        )

    # The first interior slab, and the last r slabs, against the sub-grid.
    if not (same_rows(r, r + 1, r, 0) and same_rows(n0 - r, n0, r + 1, n0 - k)):
        return None
    # The interior slabs repeat the first one, shifted by one slab each.
    interior = n0 - 2 * r
    lo, hi = indptr[r * slab], indptr[(n0 - r) * slab]
    per_slab = indptr[(r + 1) * slab] - lo
    if hi - lo != interior * per_slab:
        return None
    counts = np.diff(indptr[r * slab : (n0 - r) * slab + 1]).reshape(interior, slab)
    values = data[lo:hi].reshape(interior, per_slab)
    columns = indices[lo:hi].reshape(interior, per_slab)
    if not (
        (counts == counts[0]).all()
        and (values == values[0]).all()
        and (np.diff(columns, axis=0) == slab).all()
    ):
        return None
    return stencil


def _read_by_flat_offsets(matrix, grid, periodic, max_radius, dtype):
    """Offsets and coefficients ``(K, *grid)`` read in O(nnz) from the flat index differences ``col - row``.

    On a grid whose every axis has more than ``2 max_radius`` points each neighbour offset (and each periodic
    wrap of it) has its own flat difference, so one table look-up per entry names its offset.  The entry is
    that coupling only when its row lies where the neighbour is inside the grid (otherwise the flat
    difference wraps from one grid row to the next): checked on the few grid slabs where the neighbour is
    outside, which must hold zeros.  Then every stored entry is a coupling between grid neighbours, and the
    stencil reassembles to ``A`` exactly, with no second matrix built to compare.

    Returns ``None`` when this reading does not apply (a short axis) or does not account for every entry;
    the caller then reads axis by axis, which accepts or names the offending coupling.
    """
    import scipy.sparse as sp

    if min(grid) <= 2 * max_radius:
        return None
    n = math.prod(grid)
    dim = len(grid)
    strides = [math.prod(grid[k + 1 :]) for k in range(dim)]
    # Every coupling and periodic wrap of it: (offset, grid slices of the rows that have it, flat difference).
    offsets = list(itertools.product(range(-max_radius, max_radius + 1), repeat=dim))
    pieces, flat_of = [], {}
    for k, o in enumerate(offsets):
        for dst, src in _shift_pieces(o, grid, periodic):
            flat = sum((s.start - d.start) * stride for s, d, stride in zip(src, dst, strides))
            if flat in flat_of:
                return None
            flat_of[flat] = len(pieces)
            pieces.append((k, dst))
    if len(pieces) > 127:
        return None  # piece ids are stored as int8

    if matrix.format == "csr":
        M = sp.csr_array(matrix, copy=False) if not isinstance(matrix, sp.csr_array) else matrix
        if not M.has_canonical_format:  # duplicates (or unsorted rows): summed in a copy
            M = sp.csr_array(matrix, copy=True)
            M.sum_duplicates()
    else:
        M = sp.csr_array(matrix)  # a new matrix, summed and sorted
        M.sum_duplicates()
    data = M.data if M.data.dtype == np.float64 else M.data.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError("A (matrix): has non-finite entries")
    if not data.any():
        raise ValueError("A (matrix): has no non-zero entries; expected a stencil operator")
    if dtype != torch.float64 and bool((torch.from_numpy(data).to(dtype) == 0).logical_and_(
            torch.from_numpy(data) != 0).any()):
        return None  # an entry that rounds to zero in `dtype`: the stencil would not reassemble to A

    index_type = np.int32 if 2 * n + 4 < 2**31 else np.int64  # room for the shifted differences below
    rows = np.repeat(np.arange(n, dtype=index_type), np.diff(M.indptr))
    difference = M.indices.astype(index_type, copy=False) - rows
    low, high = min(flat_of), max(flat_of)
    # Ids of the pieces by flat difference, padded by one "none" (-1) at both ends for those out of range.
    table = np.full(high - low + 3, -1, dtype=np.int8)
    for flat, piece in flat_of.items():
        table[flat - low + 1] = piece
    np.subtract(difference, low - 1, out=difference)
    np.clip(difference, 0, high - low + 2, out=difference)
    piece_id = table[difference]
    del difference
    unmatched = piece_id < 0
    if unmatched.any():
        if data[unmatched].any():
            return None
        keep = ~unmatched  # explicit zeros between far-apart points carry no coupling
        piece_id, rows, data = piece_id[keep], rows[keep], data[keep]
    # Only the pieces that occur get a grid of values (a 5-point matrix: 5 of the 9 neighbour offsets).
    if len(pieces) <= 32:  # one vectorised comparison of the int8 ids per piece beats a bincount's int64 copy
        used = np.array([p for p in range(len(pieces)) if (piece_id == p).any()], dtype=np.int64)
    else:
        used = np.flatnonzero(np.bincount(piece_id, minlength=len(pieces)))
    index_type = np.int32 if len(used) * n < 2**31 else np.int64
    base = np.zeros(len(pieces), dtype=index_type)
    base[used] = np.arange(len(used), dtype=index_type) * n
    target = base[piece_id]
    target += rows
    del rows, piece_id
    values = np.zeros((len(used), n), dtype=np.float64)
    values.reshape(-1)[target] = data
    del target
    values = values.reshape(len(used), *grid)
    kept = sorted({pieces[p][0] for p in used})  # offset indices, in lexicographic order
    slot = {k: j for j, k in enumerate(kept)}
    coefficients = values if len(kept) == len(used) else np.zeros((len(kept), *grid), dtype=np.float64)
    for j, p in enumerate(used):
        k, dst = pieces[p]
        # The rows outside `dst` have their neighbour beyond a face: any entry there wrapped around the grid.
        for axis, (cut, size) in enumerate(zip(dst, grid)):
            head = (slice(None),) * axis
            if values[(j, *head, slice(0, cut.start))].any() or values[(j, *head, slice(cut.stop, size))].any():
                return None
        if coefficients is not values:
            coefficients[slot[k]][dst] += values[j][dst]
    offsets = [offsets[k] for k in kept]
    present = [j for j in range(len(offsets)) if coefficients[j].any()]  # explicit zeros are no coupling
    if len(present) < len(offsets):
        return [offsets[j] for j in present], coefficients[present]
    return offsets, coefficients


def _read_by_axes(matrix, grid, periodic, max_radius):
    """Offsets and coefficients ``(K, *grid)`` decoded axis by axis from the multi-indices of every entry; a
    coupling between points more than ``max_radius`` apart on some axis is refused, naming the entry."""
    M = _canonical(matrix)
    n = math.prod(grid)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(M.indptr))
    cols = M.indices.astype(np.int64)

    # Offset of each entry, one axis at a time (no (nnz, dim) array of multi-indices for large grids),
    # encoded as a small integer code in base 2r+1 for bincount rather than a sort.
    width = 2 * max_radius + 1
    code = np.zeros(rows.shape, dtype=np.int64)
    strides = [math.prod(grid[k + 1 :]) for k in range(len(grid))]
    for axis, (stride, size) in enumerate(zip(strides, grid)):
        diff = (cols // stride) % size - (rows // stride) % size
        if periodic[axis] and size > 2 * max_radius:
            diff = (diff + size // 2) % size - size // 2  # the shortest way around the period
        bad = np.flatnonzero(np.abs(diff) > max_radius)
        if bad.size:
            e = int(bad[0])
            r, c = int(rows[e]), int(cols[e])
            ri, ci = np.unravel_index(r, grid), np.unravel_index(c, grid)
            offset = tuple(int(a) - int(b) for a, b in zip(ci, ri))
            raise ValueError(
                f"A: row {r} = grid point {tuple(int(v) for v in ri)} is coupled to column {c} = grid point "
                f"{tuple(int(v) for v in ci)}, offset {offset} (axis {axis}), more than max_radius="
                f"{max_radius} apart; A is not a stencil on grid {grid} (a banded matrix wrapping around a "
                f"grid edge, or the wrong grid shape or ordering?): {_EXPECTED}"
            )
        code += (diff + max_radius) * width ** (len(grid) - 1 - axis)
    present = np.flatnonzero(np.bincount(code, minlength=width ** len(grid)))
    # Codes increase with the offsets in lexicographic order, as the digits are axis 0 first.
    offsets = [tuple(int(v) - max_radius for v in np.unravel_index(c, (width,) * len(grid))) for c in present]
    slot = np.full(width ** len(grid), -1, dtype=np.int64)
    slot[present] = np.arange(len(present))

    coefficients = np.zeros((len(offsets), n), dtype=np.float64)
    coefficients[slot[code], rows] = M.data
    return offsets, coefficients.reshape(len(offsets), *grid)


def _collapse(offsets, coefficients, grid, periodic, faces, dtype) -> Stencil:
    """The stencil, constant when, for each offset, the cells whose neighbour lies inside the grid agree."""
    constant = []
    for k, o in enumerate(offsets):
        inside = tuple(
            slice(None) if wrap else slice(max(-v, 0), size - max(v, 0)) for v, size, wrap in zip(o, grid, periodic)
        )
        values = coefficients[k][inside]
        first = values.flat[0]
        if not np.all(values == first):
            break
        constant.append(first)
    if any("neumann" in pair for pair in faces):
        # A constant stencil's Neumann faces are the box scheme's (mirrored neighbour, half rows): collapse only
        # when the matrix's face rows are exactly those, else keep its rows as they are.
        box = constant_form(offsets, coefficients, faces)
        if box is None:
            return Stencil(offsets, torch.from_numpy(coefficients).to(dtype), boundary=faces)
        return Stencil(offsets, torch.from_numpy(box).to(dtype), boundary=faces)
    if len(constant) == len(offsets):
        return Stencil(offsets, torch.tensor(constant, dtype=dtype), boundary=faces)
    return Stencil(offsets, torch.from_numpy(coefficients).to(dtype), boundary=faces)


def _check_reassembly(stencil: Stencil, matrix, grid, dtype) -> None:
    """Reassemble ``stencil`` and compare it with ``matrix`` entry for entry (at the precision of ``dtype``)."""
    M = _canonical(matrix)
    R = stencil.to_sparse(grid)
    R.eliminate_zeros()
    R.sort_indices()
    same = (
        R.nnz == M.nnz
        and np.array_equal(R.indptr, M.indptr)
        and np.array_equal(R.indices, M.indices)
        # Entries compared at the precision of `dtype`: a float32 stencil of a float64 matrix holds its
        # entries rounded to float32.
        and np.array_equal(R.data, torch.from_numpy(M.data).to(dtype).to(torch.float64).numpy())
    )
    if not same:
        raise ValueError(
            f"A (matrix): the stencil read from A does not reassemble to A on grid {grid}; {_EXPECTED}"
        )
