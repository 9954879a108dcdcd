"""The compiled loops behind :mod:`mgcore.kernels` (Numba; imported only when it is installed).

Grids are viewed as ``(batch, P, N, M)`` (a 2D grid has ``P == 1``); rows of the grid run in parallel
(``prange``), and within a row the loop is a plain stride over contiguous memory.  Three families:

* constant, axis-aligned stencils of radius 1, with the coefficients ``c = [c_0, c_-p, c_+p, c_-i, c_+i, c_-j,
  c_+j]`` (centre, then the neighbour below and above along each axis) and one face kind per axis side in
  ``modes`` (``(3, 2)``): ``0`` Dirichlet (the neighbour beyond is zero), ``1`` periodic (it wraps around),
  ``2`` reflecting (the box scheme's Neumann face: the neighbour beyond is the mirrored point and the row is
  halved);
* tensor-product transfers, given per axis by tables (:class:`mgcore.kernels.AxisTables`);
* variable-coefficient stencils of radius 1 (red-black colours).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

DIRICHLET, PERIODIC, REFLECT = 0, 1, 2


@njit(inline="always")
def _below(i: int, n: int, kind: int) -> int:
    """Index of the neighbour ``i - 1`` on an axis of ``n`` points, ``-1`` when it is a Dirichlet zero."""
    if i > 0:
        return i - 1
    if kind == PERIODIC:
        return n - 1
    if kind == REFLECT:
        return 1
    return -1


@njit(inline="always")
def _above(i: int, n: int, kind: int) -> int:
    """Index of the neighbour ``i + 1``, ``-1`` when it is a Dirichlet zero."""
    if i < n - 1:
        return i + 1
    if kind == PERIODIC:
        return 0
    if kind == REFLECT:
        return n - 2
    return -1


@njit(inline="always")
def _weight(i: int, n: int, low: int, high: int) -> float:
    """The box scheme's weight of index ``i`` along one axis: one half on a reflecting face."""
    w = 1.0
    if i == 0 and low == REFLECT:
        w *= 0.5
    if i == n - 1 and high == REFLECT:
        w *= 0.5
    return w


@njit(inline="always")
def _row_terms(u, c, modes, b, k, i):
    """Row ``(b, k, i)`` of ``u``, its four neighbouring rows (the row itself, with weight zero, where a
    neighbour is a Dirichlet zero), their coefficients, and the row's box weight."""
    _, p, n, _ = u.shape
    km = _below(k, p, modes[0, 0])
    kp = _above(k, p, modes[0, 1])
    im = _below(i, n, modes[1, 0])
    ip = _above(i, n, modes[1, 1])
    row_km = u[b, km, i] if km >= 0 else u[b, k, i]
    row_kp = u[b, kp, i] if kp >= 0 else u[b, k, i]
    row_im = u[b, k, im] if im >= 0 else u[b, k, i]
    row_ip = u[b, k, ip] if ip >= 0 else u[b, k, i]
    w_km = c[1] if km >= 0 else 0.0
    w_kp = c[2] if kp >= 0 else 0.0
    w_im = c[3] if im >= 0 else 0.0
    w_ip = c[4] if ip >= 0 else 0.0
    weight = _weight(k, p, modes[0, 0], modes[0, 1]) * _weight(i, n, modes[1, 0], modes[1, 1])
    return u[b, k, i], row_km, row_kp, row_im, row_ip, w_km, w_kp, w_im, w_ip, weight


@njit(inline="always")
def _end_sum(row, c, modes, j, m):
    """``c_-j u[j-1] + c_+j u[j+1]`` at an end of a row (``j`` is 0 or ``m - 1``), with its face kinds."""
    s = 0.0
    jm = _below(j, m, modes[2, 0])
    jp = _above(j, m, modes[2, 1])
    if jm >= 0:
        s += c[5] * row[jm]
    if jp >= 0:
        s += c[6] * row[jp]
    return s


@njit(inline="always")
def _row_of(t: int, p: int, n: int) -> tuple[int, int, int]:
    """``(batch, plane, row)`` of the flat row index ``t`` of a ``(batch, P, N, M)`` grid."""
    return t // (p * n), (t // n) % p, t % n


@njit(inline="always")
def _end_point(row, row_km, row_kp, row_im, row_ip, w_km, w_kp, w_im, w_ip, weight, c, modes, j, m):
    """``(S u, W)`` at an end ``j`` (0 or ``m - 1``) of a row: the stencil sum with the faces' rules along the
    row, and the point's box weight."""
    s = c[0] * row[j] + w_km * row_km[j] + w_kp * row_kp[j] + w_im * row_im[j] + w_ip * row_ip[j]
    s += _end_sum(row, c, modes, j, m)
    return s, weight * _weight(j, m, modes[2, 0], modes[2, 1])


@njit(inline="always")
def _row_squares(squares, t, row):
    """``squares[t] = sum(row ** 2)`` when ``squares`` has a slot per row (else it is empty and unused)."""
    if squares.shape[0] > 0:
        # Eight partial sums in a fixed order: one running sum waits for each addition before the next (the
        # compiler may not reorder them), which made the residual's pass with its norms 50% slower than without.
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        m = row.shape[0]
        for q in range(m // 8):
            j = 8 * q
            s0 += row[j] * row[j]
            s1 += row[j + 1] * row[j + 1]
            s2 += row[j + 2] * row[j + 2]
            s3 += row[j + 3] * row[j + 3]
            s4 += row[j + 4] * row[j + 4]
            s5 += row[j + 5] * row[j + 5]
            s6 += row[j + 6] * row[j + 6]
            s7 += row[j + 7] * row[j + 7]
        for j in range(m - m % 8, m):
            s0 += row[j] * row[j]
        squares[t] = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(parallel=True, cache=True)
def residual(u, f, r, c, modes, squares):
    """``r = f - W S u`` at every point; ``squares`` (one per row, or empty) receives each row's ``sum r^2``."""
    nb, p, n, m = u.shape
    for t in prange(nb * p * n):
        b, k, i = _row_of(t, p, n)
        row, row_km, row_kp, row_im, row_ip, w_km, w_kp, w_im, w_ip, weight = _row_terms(u, c, modes, b, k, i)
        fr = f[b, k, i]
        rr = r[b, k, i]
        c0, cjm, cjp = c[0], c[5], c[6]
        for j in (0, m - 1):
            s, w = _end_point(row, row_km, row_kp, row_im, row_ip, w_km, w_kp, w_im, w_ip, weight, c, modes, j, m)
            rr[j] = fr[j] - w * s
        if p == 1:
            for j in range(1, m - 1):
                s = c0 * row[j] + w_im * row_im[j] + w_ip * row_ip[j] + cjm * row[j - 1] + cjp * row[j + 1]
                rr[j] = fr[j] - weight * s
        else:
            for j in range(1, m - 1):
                s = c0 * row[j] + w_km * row_km[j] + w_kp * row_kp[j] + w_im * row_im[j] + w_ip * row_ip[j]
                rr[j] = fr[j] - weight * (s + cjm * row[j - 1] + cjp * row[j + 1])
        _row_squares(squares, t, rr)


@njit(parallel=True, cache=True)
def gauss_seidel_colour(u, f, c, modes, parity, omega):
    """``u += ω (f - W S u) / (W c_0)`` in place at the points whose index sum has the parity ``parity`` (one
    colour of red-black Gauss-Seidel; the points of a colour do not couple, so rows run in parallel)."""
    nb, p, n, m = u.shape
    for t in prange(nb * p * n):
        b, k, i = _row_of(t, p, n)
        row, row_km, row_kp, row_im, row_ip, w_km, w_kp, w_im, w_ip, weight = _row_terms(u, c, modes, b, k, i)
        fr = f[b, k, i]
        c0, cjm, cjp = c[0], c[5], c[6]
        start = (parity + k + i) % 2
        for j in (0, m - 1):
            if j % 2 == start:
                s, w = _end_point(row, row_km, row_kp, row_im, row_ip, w_km, w_kp, w_im, w_ip, weight, c, modes, j, m)
                row[j] += (fr[j] - w * s) * (omega / (w * c0))
        # The same update as above, rearranged for the interior: u = (1 - ω) u + ω (f / W - neighbours) / c_0.
        # Written as `while` loops: Numba compiles a stepped `range` into a loop half as fast here (1.5 against
        # 0.8 ms per sweep at 1025^2, 2 threads).
        keep = 1.0 - omega
        inv_weight = 1.0 / weight
        scale = omega / c0
        j = 2 - start  # the first interior point of the colour
        if p == 1 and keep == 0.0:  # 2D Gauss-Seidel proper: no plane neighbours, the old value is not read
            while j < m - 1:
                s = w_im * row_im[j] + w_ip * row_ip[j] + cjm * row[j - 1] + cjp * row[j + 1]
                row[j] = (fr[j] * inv_weight - s) * scale
                j += 2
        elif p == 1:
            while j < m - 1:
                s = w_im * row_im[j] + w_ip * row_ip[j] + cjm * row[j - 1] + cjp * row[j + 1]
                row[j] = keep * row[j] + (fr[j] * inv_weight - s) * scale
                j += 2
        else:
            while j < m - 1:
                s = w_km * row_km[j] + w_kp * row_kp[j] + w_im * row_im[j] + w_ip * row_ip[j]
                s += cjm * row[j - 1] + cjp * row[j + 1]
                row[j] = keep * row[j] + (fr[j] * inv_weight - s) * scale
                j += 2


_thread_state = threading.local()  # the count this Python thread last set (Numba's count is per thread too)


def set_threads(count: int) -> None:
    """Run the parallel loops on ``count`` threads (at most Numba's pool).

    Every call of a loop asks: the count last set from this thread is remembered, since asking Numba costs
    some microseconds (30 calls per cycle of a masked 1023^2 disk)."""
    if getattr(_thread_state, "count", None) == count:
        return
    wanted = max(1, min(int(count), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    _thread_state.count = count





# ---------------------------------------------------------------------------------------------- transfers
# A tensor-product transfer is given per axis by tables (mgcore.kernels.axis_tables): for prolongation, each
# fine index takes at most two coarse values (``p_index``, ``p_weight``, ``(n, 2)``); for restriction
# ``R = P^T / 2`` per axis, each coarse index gathers at most four fine values (``r_index``, ``r_weight``,
# ``(n_coarse, 4)``).  Unused slots carry the weight zero.


@njit(inline="always")
def _add_rows(combined, grid, b, k_index, k_weight, i_index, i_weight, mask, use_mask, first, stop, whole):
    """``combined += sum w_k w_i grid[b, k, i]`` over the table slots (rows of weight zero skipped), each row
    times ``mask[k, i]`` when ``use_mask`` (and then only over its active span ``first[k, i]..stop[k, i]-1``, the
    rest being zero; ``whole[k, i]``: the span is all active): the first, contiguous half of a tensor-product
    transfer."""
    m = combined.shape[0]
    for a in range(k_index.shape[0]):
        if k_weight[a] == 0.0:
            continue
        k = k_index[a]
        for s in range(i_index.shape[0]):
            w = k_weight[a] * i_weight[s]
            if w == 0.0:
                continue
            row = grid[b, k, i_index[s]]
            if use_mask and whole[k, i_index[s]]:  # every point of the span active: no mask to apply
                for j in range(first[k, i_index[s]], stop[k, i_index[s]]):
                    combined[j] += w * row[j]
            elif use_mask:
                keep = mask[k, i_index[s]]
                for j in range(first[k, i_index[s]], stop[k, i_index[s]]):
                    combined[j] += w * row[j] * keep[j]
            else:
                for j in range(m):
                    combined[j] += w * row[j]


@njit(parallel=True, cache=True)
def mask_spans(mask, first, stop, whole):
    """``first[k, i]`` and ``stop[k, i]``: the first active column of row ``(k, i)`` of ``mask`` and one past its
    last (both 0 in a row without one); ``whole[k, i]``: every point between them is active.  A masked transfer
    works on these spans only: outside them it is zero (a disk leaves half of each row out), and inside a whole
    span it needs no mask."""
    p, n, m = mask.shape
    for t in prange(p * n):
        k = t // n
        i = t % n
        row = mask[k, i]
        low = 0
        while low < m and not row[low]:
            low += 1
        high = m
        while high > low and not row[high - 1]:
            high -= 1
        if high <= low:
            low = 0
            high = 0
        first[k, i] = low
        stop[k, i] = high
        count = 0
        for j in range(low, high):
            count += row[j]
        whole[k, i] = count == high - low


@njit(parallel=True, cache=True)
def restrict(x, c, rp_index, rp_weight, ri_index, ri_weight, rj_index, rj_weight, first_j, mask, use_mask, first,
             stop, whole):
    """``c = R x`` for the grid views ``(batch, P, N, M)``; ``mask`` (``(P, N, M)``, used when ``use_mask``, with
    its rows' active spans ``first``/``stop``/``whole`` from :func:`mask_spans`) zeroes ``x`` off the active
    cells first.  Per coarse row: the weighted sum of its (at most 4 x 4) fine rows, contiguous, then the gather
    along the row from that sum (in cache)."""
    nb, pc, nc, mc = c.shape
    m = x.shape[3]
    for t in prange(nb * pc * nc):
        b, kc, ic = _row_of(t, pc, nc)
        combined = np.zeros(m, dtype=x.dtype)
        _add_rows(combined, x, b, rp_index[kc], rp_weight[kc], ri_index[ic], ri_weight[ic], mask, use_mask, first,
                  stop, whole)
        out = c[b, kc, ic]
        for jc in (0, mc - 1):  # the ends, where faces and wraps change the weights: from the tables
            out[jc] = (
                rj_weight[jc, 0] * combined[rj_index[jc, 0]]
                + rj_weight[jc, 1] * combined[rj_index[jc, 1]]
                + rj_weight[jc, 2] * combined[rj_index[jc, 2]]
                + rj_weight[jc, 3] * combined[rj_index[jc, 3]]
            )
        for jc in range(1, mc - 1):  # full weighting inside (AxisTables.first: coarse jc on fine first + 2 jc)
            j = first_j + 2 * jc
            out[jc] = 0.25 * (combined[j - 1] + combined[j + 1]) + 0.5 * combined[j]


@njit(parallel=True, cache=True)
def prolong(c, x, pp_index, pp_weight, pi_index, pi_weight, pj_index, pj_weight, first_j, mask, use_mask, first, stop,
            whole, add):
    """``x = P c`` (or ``x += P c`` when ``add``) for the grid views ``(batch, P, N, M)``; ``mask`` zeroes
    ``P c`` off the active cells when ``use_mask`` (and then the rows' active spans ``first``/``stop``/``whole``
    of :func:`mask_spans` bound the work).  Per fine row: the weighted sum of its (at most 2 x 2) coarse rows, then
    the interpolation along the row from that sum (in cache)."""
    nb, p, n, m = x.shape
    mc = c.shape[3]
    for t in prange(nb * p * n):
        b, k, i = _row_of(t, p, n)
        out = x[b, k, i]
        low, high = (first[k, i], stop[k, i]) if use_mask else (0, m)
        if use_mask and not add:
            out[:low] = 0.0
            out[high:] = 0.0
        if high <= low:
            continue
        combined = np.zeros(mc, dtype=c.dtype)
        _add_rows(combined, c, b, pp_index[k], pp_weight[k], pi_index[i], pi_weight[i], mask, False, first, stop,
                  whole)
        # Along the row: linear interpolation between fine first_j and first_j + 2 (mc - 1), where coarse jc
        # sits on fine first_j + 2 jc; the points beyond (faces, wraps) from the tables.  Only low..high-1 is
        # needed.
        values = np.empty(m, dtype=c.dtype)
        for j in range(low, min(first_j, high)):
            values[j] = pj_weight[j, 0] * combined[pj_index[j, 0]] + pj_weight[j, 1] * combined[pj_index[j, 1]]
        for jc in range(max(0, (low - first_j) // 2), min(mc - 1, (high - 1 - first_j) // 2 + 1)):
            values[first_j + 2 * jc] = combined[jc]
            values[first_j + 2 * jc + 1] = 0.5 * (combined[jc] + combined[jc + 1])
        for j in range(max(first_j + 2 * (mc - 1), low), high):
            values[j] = pj_weight[j, 0] * combined[pj_index[j, 0]] + pj_weight[j, 1] * combined[pj_index[j, 1]]
        if use_mask and not whole[k, i]:
            keep = mask[k, i]
            for j in range(low, high):
                values[j] *= keep[j]
        if add:
            for j in range(low, high):
                out[j] += values[j]
        else:
            for j in range(low, high):
                out[j] = values[j]




# ------------------------------------------------------------------------------ variable-coefficient stencils
# A radius-1 stencil with one coefficient per point and offset: ``coef`` is ``(K, P, N, M)`` and ``offsets``
# ``(K, 3)`` (a 2D stencil's plane offset is 0).  Neighbours beyond a non-periodic face are left out (their
# rows carry the boundary condition: Dirichlet, or Neumann folded into the coefficients); ``periodic`` (3,)
# wraps them around.


@njit(inline="always")
def _wrap(i: int, n: int, periodic: bool) -> int:
    """``i`` folded onto ``0..n-1`` on a periodic axis; ``-1`` when it lies beyond a non-periodic face."""
    if 0 <= i < n:
        return i
    if periodic:
        return i % n
    return -1


@njit(inline="always")
def _add_offset_row(acc, coef_row, u_row, dj, m, periodic_j, start, step, count):
    """``acc[t] += coef_row[j] u_row[j + dj]`` for ``j = start + step t``, ``t < count``, with the row's face
    rule at its ends (wrap on a periodic axis, nothing beyond a non-periodic face)."""
    if dj == 0:
        for t in range(count):
            j = start + step * t
            acc[t] += coef_row[j] * u_row[j]
        return
    # the points whose neighbour lies inside the row: j + dj in 0..m-1
    low = 0
    while low < count and start + step * low + dj < 0:
        low += 1
    high = count
    while high > low and start + step * (high - 1) + dj > m - 1:
        high -= 1
    for t in range(low, high):
        j = start + step * t
        acc[t] += coef_row[j] * u_row[j + dj]
    if periodic_j:
        for t in range(0, low):
            j = start + step * t
            acc[t] += coef_row[j] * u_row[(j + dj) % m]
        for t in range(high, count):
            j = start + step * t
            acc[t] += coef_row[j] * u_row[(j + dj) % m]


@njit(parallel=True, cache=True)
def variable_gauss_seidel(u, f, coef, offsets, periodic, centre, parity, omega):
    """``u += ω (f - A u) / c_centre`` in place at the points whose index sum has the parity ``parity`` (one
    colour of red-black Gauss-Seidel for an axis-aligned stencil).  The points of a colour do not couple
    (stride 2 along the row), so rows run in parallel and ``A u`` at them is summed offset by offset over
    contiguous rows before the update."""
    nb, p, n, m = u.shape
    for t in prange(nb * p * n):
        b, k, i = _row_of(t, p, n)
        start = (parity + k + i) % 2
        count = (m - start + 1) // 2
        acc = np.zeros(count, dtype=u.dtype)
        for q in range(offsets.shape[0]):
            kk = _wrap(k + offsets[q, 0], p, periodic[0])
            ii = _wrap(i + offsets[q, 1], n, periodic[1])
            if kk < 0 or ii < 0:
                continue
            _add_offset_row(acc, coef[q, k, i], u[b, kk, ii], offsets[q, 2], m, periodic[2], start, 2, count)
        row = u[b, k, i]
        row_f = f[b, k, i]
        diagonal = coef[centre, k, i]
        for s in range(count):
            j = start + 2 * s
            row[j] += omega * (row_f[j] - acc[s]) / diagonal[j]


# ------------------------------------------------------------------------- stencils with one common row
# A 2D variable stencil of radius 1 whose rows are mostly one and the same row, given as the 3x3 table ``w``
# (``w[1 + di, 1 + dj]``): the interior of a masked domain, or a Galerkin operator away from the mask's
# boundary.  ``irregular`` (``(1, N, M)``, uint8) marks 2 at the rows with their diagonal only and that equal to
# ``d2`` (the points outside a masked domain), 1 at the other rows that differ from ``w`` and on the grid's
# edge, 0 elsewhere.  A regular row reads ``w`` and its neighbours without any face rule (its four neighbours
# along the axes only when ``w`` has no corner terms), an irregular one its own coefficients with the face rules
# of the variable loops above: the loops read ``u``, ``f`` and one byte per point instead of K coefficient
# arrays (a colour of 5-point red-black Gauss-Seidel at 1023^2 on a disk: about the constant stencil's time).


@njit(cache=True)
def first_diagonal_only(coef, offsets, centre):
    """The diagonal of the first row (in memory order) with its diagonal only, or 0 when there is none."""
    kdim, p, n, m = coef.shape
    for k in range(p):
        for i in range(n):
            for j in range(m):
                alone = coef[centre, k, i, j] != 0
                for q in range(kdim):
                    if q != centre and coef[q, k, i, j] != 0:
                        alone = False
                        break
                if alone:
                    return coef[centre, k, i, j]
    return 0.0


@njit(parallel=True, cache=True)
def mark_irregular(coef, offsets, w, centre, d2, out):
    """Fill ``out`` (see above) for the 2D variable stencil ``coef`` (``(K, 1, N, M)``) against the common row
    ``w`` and the diagonal ``d2``; returns how many rows are marked 1."""
    kdim, _, n, m = coef.shape
    row = np.empty(kdim, dtype=coef.dtype)
    for q in range(kdim):
        row[q] = w[1 + offsets[q, 1], 1 + offsets[q, 2]]
    counts = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        # One coefficient array at a time along the row, without a branch per point (loops the compiler
        # vectorises): whether the row differs from w, and whether it couples at all.
        differs = np.zeros(m, dtype=np.uint8)
        couples = np.zeros(m, dtype=np.uint8)
        for q in range(kdim):
            values = coef[q, 0, i]
            common = row[q]
            if q == centre:
                for j in range(m):
                    differs[j] |= values[j] != common
            else:
                for j in range(m):
                    differs[j] |= values[j] != common
                    couples[j] |= values[j] != 0
        target = out[0, i]
        centres = coef[centre, 0, i]
        marked = 0
        edge = i == 0 or i == n - 1
        for j in range(m):
            alone = d2 != 0 and centres[j] == d2 and couples[j] == 0
            flag = differs[j] != 0 or edge or j == 0 or j == m - 1
            target[j] = 2 if alone else (1 if flag else 0)
            marked += flag and not alone
        counts[i] = marked
    return counts.sum()


@njit(inline="always")
def _irregular_sum(u, coef, offsets, periodic, b, k, i, j):
    """``(A u)`` at one point from its own coefficients, with the face rules (:func:`_wrap`)."""
    _, p, n, m = u.shape
    s = 0.0
    for q in range(offsets.shape[0]):
        kk = _wrap(k + offsets[q, 0], p, periodic[0])
        ii = _wrap(i + offsets[q, 1], n, periodic[1])
        jj = _wrap(j + offsets[q, 2], m, periodic[2])
        if kk >= 0 and ii >= 0 and jj >= 0:
            s += coef[q, k, i, j] * u[b, kk, ii, jj]
    return s


@njit(inline="always")
def _table(w):
    """The 3x3 table ``w`` as a tuple of nine values, row by row (held in registers: an array could alias ``u``
    and be read again after every update)."""
    return (w[0, 0], w[0, 1], w[0, 2], w[1, 0], w[1, 1], w[1, 2], w[2, 0], w[2, 1], w[2, 2])


@njit(parallel=True, cache=True)
def mark_runs(irregular):
    """The runs of equal marks along each row of ``irregular``: ``(row_start, runs)``, the runs of row ``i``
    being ``runs[row_start[i]:row_start[i + 1]]``, each ``(first, stop, mark)``.  The loops below sweep a run of
    one mark without a test per point (so the compiler vectorises the regular runs)."""
    _, n, m = irregular.shape
    counts = np.zeros(n + 1, dtype=np.int64)
    for i in prange(n):
        marks = irregular[0, i]
        c = 1
        for j in range(1, m):
            if marks[j] != marks[j - 1]:
                c += 1
        counts[i + 1] = c
    row_start = np.cumsum(counts)
    runs = np.empty((row_start[n], 3), dtype=np.int64)
    for i in prange(n):
        marks = irregular[0, i]
        r = row_start[i]
        first = 0
        for j in range(1, m + 1):
            if j == m or marks[j] != marks[first]:
                runs[r, 0] = first
                runs[r, 1] = j
                runs[r, 2] = marks[first]
                r += 1
                first = j
    return row_start, runs


@njit(parallel=True, cache=True)
def mirror_gap(coef, offsets, periodic, centre, mirror, w, irregular, row_start, runs):
    """The largest ``|c_o(x) - c_{-o}(x + o)|`` over the pairs of points of a 2D stencil with a common row ``w``
    (:func:`mark_irregular`) where both lie in the grid (wrapping on periodic axes); ``mirror[q]``: the index of
    offset ``-o_q``.  The caller checked that ``w`` itself is symmetric: a pair of regular rows (mark 0) then
    is, and the loop visits only the marked rows.  A row with its diagonal only (mark 2) has no coupling, so
    only its regular neighbours' couplings towards it count (``w``'s); a marked row (1) compares its own
    coefficients with its neighbours'."""
    kdim, _, n, m = coef.shape
    gaps = np.zeros(n, dtype=coef.dtype)
    for i in prange(n):
        gap = 0.0
        for r in range(row_start[i], row_start[i + 1]):
            mark = runs[r, 2]
            if mark == 0:
                continue
            low = runs[r, 0]
            high = runs[r, 1]
            if mark == 2:
                # Regular rows lie off the grid's edge, so a wrapped neighbour never is one: a count of the
                # zero marks along the neighbouring row (a loop the compiler vectorises) finds them.
                for q in range(kdim):
                    back = abs(w[1 - offsets[q, 1], 1 - offsets[q, 2]])
                    ni = i + offsets[q, 1]
                    if q == centre or back == 0 or ni < 0 or ni >= n:
                        continue
                    marks = irregular[0, ni]
                    regular = 0
                    for j in range(max(low + offsets[q, 2], 0), min(high + offsets[q, 2], m)):
                        regular += marks[j] == 0
                    if regular:
                        gap = max(gap, back)
                continue
            for j in range(low, high):
                for q in range(kdim):
                    if q == centre:
                        continue
                    ni = _wrap(i + offsets[q, 1], n, periodic[1])
                    nj = _wrap(j + offsets[q, 2], m, periodic[2])
                    if ni >= 0 and nj >= 0:
                        gap = max(gap, abs(coef[q, 0, i, j] - coef[mirror[q], 0, ni, nj]))
        gaps[i] = gap
    return gaps.max() if n else 0.0


@njit(inline="always")
def _views(x, low, high):
    """``x[j - 1]``, ``x[j]``, ``x[j + 1]`` for ``j`` in ``low..high-1`` as three views indexed from 0.

    Indexing the views from 0 lets the compiler drop Numba's negative-index test from ``x[j - 1]`` and
    vectorise the loops (a residual at 1023^2: 0.5 against 1.5 ms with ``j`` running from ``low``)."""
    return x[low - 1 : high - 1], x[low:high], x[low + 1 : high + 1]


@njit(inline="always")
def _regular_run(target, row_f, w, five, above, row, below, low, high, with_f):
    """``target[t] = f - (A u)`` (``with_f``) or ``(A u)`` at ``low + t``, for a run of regular points
    ``low..high-1`` of a row (rows above and below given; ``1 <= low``, ``high <= m - 1``)."""
    a_left, a_mid, a_right = _views(above, low, high)
    left, mid, right = _views(row, low, high)
    b_left, b_mid, b_right = _views(below, low, high)
    out = target[low:high]
    fr = row_f[low:high]
    for t in range(high - low):
        s = w[1] * a_mid[t] + w[3] * left[t] + w[4] * mid[t] + w[5] * right[t] + w[7] * b_mid[t]
        if not five:
            s += w[0] * a_left[t] + w[2] * a_right[t] + w[6] * b_left[t] + w[8] * b_right[t]
        out[t] = fr[t] - s if with_f else s


@njit(inline="always")
def _residual_row(u, f, out, coef, offsets, periodic, w, d2, runs, first_run, stop_run, b, i, with_f, five):
    n = u.shape[2]
    row = u[b, 0, i]
    above = u[b, 0, max(i - 1, 0)]
    below = u[b, 0, min(i + 1, n - 1)]
    target = out[b, 0, i]
    row_f = f[b, 0, i]
    for r in range(first_run, stop_run):
        low = runs[r, 0]
        high = runs[r, 1]
        mark = runs[r, 2]
        if mark == 0:
            _regular_run(target, row_f, w, five, above, row, below, low, high, with_f)
        elif mark == 2:
            for j in range(low, high):
                target[j] = row_f[j] - d2 * row[j] if with_f else d2 * row[j]
        else:
            for j in range(low, high):
                s = _irregular_sum(u, coef, offsets, periodic, b, 0, i, j)
                target[j] = row_f[j] - s if with_f else s


@njit(parallel=True, cache=True)
def split_residual(u, f, out, coef, offsets, periodic, centre, w, irregular, d2, five, row_start, runs, with_f,
                   squares):
    """``out = f - A u`` (``with_f``) or ``out = A u`` for a 2D stencil with one common row; ``squares`` (one per
    row, or empty) receives each row's ``sum out^2``."""
    nb, _, n, _ = u.shape
    ws = _table(w)
    for t in prange(nb * n):
        b = t // n
        i = t % n
        first = row_start[i]
        stop = row_start[i + 1]
        # Literal flags in each branch: the compiler drops the corner terms where there are none.
        if five and with_f:
            _residual_row(u, f, out, coef, offsets, periodic, ws, d2, runs, first, stop, b, i, True, True)
        elif five:
            _residual_row(u, f, out, coef, offsets, periodic, ws, d2, runs, first, stop, b, i, False, True)
        elif with_f:
            _residual_row(u, f, out, coef, offsets, periodic, ws, d2, runs, first, stop, b, i, True, False)
        else:
            _residual_row(u, f, out, coef, offsets, periodic, ws, d2, runs, first, stop, b, i, False, False)
        _row_squares(squares, t, out[b, 0, i])


@njit(inline="always")
def _relax_row(u, f, coef, offsets, periodic, centre, w, d2, runs, first_run, stop_run, b, i, start, omega, five,
               settled, unit):
    """One colour's points of row ``i``; ``unit`` (a literal): ``ω = 1``, where the point's own value is not
    read (``(1 - ω) u`` is zero), one load of six fewer per point."""
    n = u.shape[2]
    row = u[b, 0, i]
    above = u[b, 0, max(i - 1, 0)]
    below = u[b, 0, min(i + 1, n - 1)]
    row_f = f[b, 0, i]
    # The update rearranged as in gauss_seidel_colour: u = (1 - ω) u + ω (f - neighbours) / a_centre, with
    # `while` loops (a stepped `range` compiles into a loop half as fast).
    keep = 1.0 - omega
    scale = omega / w[4]
    scale2 = omega / d2 if d2 != 0 else 0.0
    for r in range(first_run, stop_run):
        low = runs[r, 0]
        high = runs[r, 1]
        mark = runs[r, 2]
        t = (start - low) % 2  # the first point of this colour in the run, counted from `low`
        if mark == 0:
            a_left, a_mid, a_right = _views(above, low, high)
            left, mid, right = _views(row, low, high)
            b_left, b_mid, b_right = _views(below, low, high)
            fr = row_f[low:high]
            count = high - low
            while t < count:
                s = w[1] * a_mid[t] + w[3] * left[t] + w[5] * right[t] + w[7] * b_mid[t]
                if not five:
                    s += w[0] * a_left[t] + w[2] * a_right[t] + w[6] * b_left[t] + w[8] * b_right[t]
                if unit:
                    mid[t] = (fr[t] - s) * scale
                else:
                    mid[t] = keep * mid[t] + (fr[t] - s) * scale
                t += 2
        elif mark == 2:
            if settled:  # they hold f / a_centre already, the value this step would write again
                continue
            j = low + t
            while j < high:
                row[j] = row_f[j] * scale2 if unit else keep * row[j] + row_f[j] * scale2
                j += 2
        else:
            j = low + t
            while j < high:
                s = _irregular_sum(u, coef, offsets, periodic, b, 0, i, j)
                row[j] += omega * (row_f[j] - s) / coef[centre, 0, i, j]
                j += 2


@njit(inline="always")
def _split_relax_body(u, f, coef, offsets, periodic, centre, ws, d2, five, row_start, runs, first_row, row_step,
                      first_column, checker, omega, settled):
    nb, _, n, _ = u.shape
    count = (n - first_row + row_step - 1) // row_step
    for t in prange(nb * count):
        b = t // count
        i = first_row + row_step * (t % count)
        start = (first_column + i) % 2 if checker == 1 else first_column
        # Literal flags in each branch (the compiler drops what they switch off).
        first_run = row_start[i]
        stop_run = row_start[i + 1]
        if five and omega == 1.0:
            _relax_row(u, f, coef, offsets, periodic, centre, ws, d2, runs, first_run, stop_run, b, i, start, omega,
                       True, settled, True)
        elif five:
            _relax_row(u, f, coef, offsets, periodic, centre, ws, d2, runs, first_run, stop_run, b, i, start, omega,
                       True, settled, False)
        elif omega == 1.0:
            _relax_row(u, f, coef, offsets, periodic, centre, ws, d2, runs, first_run, stop_run, b, i, start, omega,
                       False, settled, True)
        else:
            _relax_row(u, f, coef, offsets, periodic, centre, ws, d2, runs, first_run, stop_run, b, i, start, omega,
                       False, settled, False)


@njit(inline="always")
def _split_zero_start(u, f, coef, centre, ws, d2, row_start, runs, first_row, row_step, first_column, checker,
                      omega):
    """The step of one colour of rows from a zero iterate, into an ``u`` that holds no values yet: every point
    is written, the colour's points with ``ω f / a_centre`` (``f - A 0 = f``) and the others with zero, so the
    grid needs no zero fill first and no neighbour is read."""
    nb, _, n, _ = u.shape
    scale = omega / ws[4]
    scale2 = omega / d2 if d2 != 0 else 0.0
    for t in prange(nb * n):
        b = t // n
        i = t % n
        row = u[b, 0, i]
        row[:] = 0.0
        if i < first_row or (i - first_row) % row_step != 0:
            continue
        row_f = f[b, 0, i]
        start = (first_column + i) % 2 if checker == 1 else first_column
        for r in range(row_start[i], row_start[i + 1]):
            low = runs[r, 0]
            high = runs[r, 1]
            mark = runs[r, 2]
            j = low + (start - low) % 2
            if mark == 0:
                while j < high:
                    row[j] = row_f[j] * scale
                    j += 2
            elif mark == 2:
                while j < high:
                    row[j] = row_f[j] * scale2
                    j += 2
            else:
                while j < high:
                    row[j] = omega * row_f[j] / coef[centre, 0, i, j]
                    j += 2


@njit(inline="always")
def _point_of(index, t, n, m):
    """``(batch, plane, row, column)`` of entry ``t`` of the batch-major list of the flat grid indices
    ``index``."""
    count = index.shape[0]
    x = index[t % count]
    return t // count, x // (n * m), (x // m) % n, x % m


@njit(parallel=True, cache=True)
def point_relax(u, f, coef, offsets, periodic, centre, index, omega):
    """``u += ω (f - A u) / a_centre`` at the distinct flat grid indices ``index`` (a colour of the band along a
    masked domain's boundary), every residual formed before any update: the points' Jacobi step, the same as the
    whole-grid step with their mask whether or not they couple."""
    nb, _, n, m = u.shape
    count = index.shape[0]
    update = np.empty(nb * count, dtype=u.dtype)
    for t in prange(nb * count):
        b, k, i, j = _point_of(index, t, n, m)
        s = _irregular_sum(u, coef, offsets, periodic, b, k, i, j)
        update[t] = omega * (f[b, k, i, j] - s) / coef[centre, k, i, j]
    _scatter_add(u, index, update)


@njit(inline="always")
def _split_point_update(u, f, offsets, periodic, centre, ws, d2, five, coefficients, mark, b, i, j, omega):
    """``ω (f - A u) / a_centre`` at point ``(b, i, j)`` of a 2D stencil with one common row; ``mark`` and
    ``coefficients`` (its row of ``A``, offsets as ``offsets``) are the point's, gathered once per band
    (:func:`mgcore.kernels.run_steps_`): the point reads them from one short array, not one cache line of each
    of K grid-sized coefficient arrays and of the marks."""
    if mark == 0:
        above = u[b, 0, i - 1]
        row = u[b, 0, i]
        below = u[b, 0, i + 1]
        s = ws[1] * above[j] + ws[3] * row[j - 1] + ws[4] * row[j] + ws[5] * row[j + 1] + ws[7] * below[j]
        if not five:
            s += ws[0] * above[j - 1] + ws[2] * above[j + 1] + ws[6] * below[j - 1] + ws[8] * below[j + 1]
        return omega * (f[b, 0, i, j] - s) / ws[4]
    if mark == 2:
        return omega * (f[b, 0, i, j] - d2 * u[b, 0, i, j]) / d2
    _, _, n, m = u.shape
    s = 0.0
    for q in range(offsets.shape[0]):
        ii = _wrap(i + offsets[q, 1], n, periodic[1])
        jj = _wrap(j + offsets[q, 2], m, periodic[2])
        if ii >= 0 and jj >= 0:
            s += coefficients[q] * u[b, 0, ii, jj]
    return omega * (f[b, 0, i, j] - s) / coefficients[centre]


@njit(inline="always")
def _split_point_body(u, f, offsets, periodic, centre, ws, d2, five, index, rows, columns, marks, gathered, omega,
                      apart):
    """One Jacobi step at the points ``index`` (rows ``rows``, columns ``columns``, with their ``marks`` and
    ``gathered`` coefficient rows); ``apart``: no two of them couple (one colour class), so each update goes
    straight into ``u`` (the same values, without the second pass)."""
    nb = u.shape[0]
    count = index.shape[0]
    if apart:
        for t in prange(nb * count):
            b = t // count
            e = t % count
            i = rows[e]
            j = columns[e]
            u[b, 0, i, j] += _split_point_update(u, f, offsets, periodic, centre, ws, d2, five, gathered[e],
                                                 marks[e], b, i, j, omega)
        return
    update = np.empty(nb * count, dtype=u.dtype)
    for t in prange(nb * count):
        b = t // count
        e = t % count
        update[t] = _split_point_update(u, f, offsets, periodic, centre, ws, d2, five, gathered[e], marks[e], b,
                                        rows[e], columns[e], omega)
    _scatter_add(u, index, update)


@njit(parallel=True, cache=True)
def split_steps(u, f, coef, offsets, periodic, centre, w, irregular, d2, five, row_start, runs, step_start,
                kinds, params, omegas, index, index_start, rows, columns, marks, gathered, sweeps, reverse, zero,
                settled):
    """``sweeps`` sweeps of a smoother's steps on a 2D stencil with one common row, in one call: step ``s`` is
    the entries ``step_start[s]:step_start[s + 1]``, run in order, each one colour of rows (``kinds == 0``,
    ``params = (first row, row step, first column, checker)``: the rows ``first row + row step t``, and along
    each every second point from ``first column``, or with ``checker == 1`` from the point whose index sum has
    the parity ``first column``) or a set of points that is relaxed as one Jacobi step (``kinds == 1``,
    ``index[index_start[e]:index_start[e + 1]]``, distinct; ``params[e, 0]`` 2 when they share a parity on each
    axis, 1 when they share their index sum's, so that a radius-1 or a five-point stencil couples none of them),
    with its ``omegas``; ``reverse`` runs the steps in reverse order (each step's entries still in order).  The
    points' ``rows``, ``columns``, ``marks`` (of ``irregular``) and ``gathered`` coefficient rows (``(E, K)``)
    come with ``index``, entry by entry.

    ``zero``: ``u`` holds no values yet and stands for zero; the first step (one colour of rows) writes all of
    it.  ``settled``: the rows with their diagonal only already hold ``f / a_centre``; the colour steps with
    ``ω = 1`` leave them alone (they would write the same values)."""
    ws = _table(w)
    steps = step_start.shape[0] - 1
    for sweep in range(sweeps):
        for q in range(steps):
            s = steps - 1 - q if reverse else q
            for e in range(step_start[s], step_start[s + 1]):
                if zero and sweep == 0 and q == 0:
                    _split_zero_start(u, f, coef, centre, ws, d2, row_start, runs, params[e, 0], params[e, 1],
                                      params[e, 2], params[e, 3], omegas[e])
                elif kinds[e] == 0:
                    _split_relax_body(u, f, coef, offsets, periodic, centre, ws, d2, five, row_start, runs,
                                      params[e, 0], params[e, 1], params[e, 2], params[e, 3], omegas[e],
                                      settled and omegas[e] == 1.0)
                else:  # params[e, 0]: 2 if the points share a parity on each axis, 1 if only their index sum's
                    # (an odd periodic axis wraps a point onto a neighbour of its own parity)
                    odd_wrap = (periodic[1] and u.shape[2] % 2 == 1) or (periodic[2] and u.shape[3] % 2 == 1)
                    apart = not odd_wrap and (params[e, 0] == 2 or (params[e, 0] == 1 and five))
                    first, stop = index_start[e], index_start[e + 1]
                    _split_point_body(u, f, offsets, periodic, centre, ws, d2, five, index[first:stop],
                                      rows[first:stop], columns[first:stop], marks[first:stop],
                                      gathered[first:stop], omegas[e], apart)


@njit(inline="always")
def _scatter_add(u, index, update):
    """``u[b].flat[index] += update[b * count:(b + 1) * count]`` for every batch entry ``b``."""
    nb, p, n, m = u.shape
    count = index.shape[0]
    flat = u.reshape(nb, p * n * m)
    for t in prange(nb * count):
        flat[t // count, index[t % count]] += update[t]


@njit(parallel=True, cache=True)
def coupled_rows(coef, offsets, periodic, centre, within, anywhere):
    """Whether each row couples to another point by a non-zero off-diagonal coefficient: ``within`` to one on the
    grid (a neighbour beyond a non-periodic face does not count), ``anywhere`` to any; returns how many rows
    couple within and anywhere, and how many have a zero diagonal."""
    kdim, p, n, m = coef.shape
    counts = np.zeros((p * n, 3), dtype=np.int64)
    for t in prange(p * n):
        k = t // n
        i = t % n
        # One coefficient array at a time along the row (loops the compiler vectorises); only a row's two ends
        # can reach beyond a face along it.
        inside = np.zeros(m, dtype=np.uint8)
        outside = np.zeros(m, dtype=np.uint8)
        for q in range(kdim):
            if q == centre:
                continue
            values = coef[q, k, i]
            dj = offsets[q, 2]
            if _wrap(k + offsets[q, 0], p, periodic[0]) < 0 or _wrap(i + offsets[q, 1], n, periodic[1]) < 0:
                for j in range(m):
                    outside[j] |= values[j] != 0
                continue
            low = 1 if dj < 0 else 0
            high = m - 1 if dj > 0 else m
            for j in range(low, high):
                inside[j] |= values[j] != 0
            for j in (0, m - 1):
                if j < low or j >= high:
                    if _wrap(j + dj, m, periodic[2]) >= 0:
                        inside[j] |= values[j] != 0
                    else:
                        outside[j] |= values[j] != 0
        centres = coef[centre, k, i]
        rows_within = 0
        rows_anywhere = 0
        zeros = 0
        for j in range(m):
            within[k, i, j] = inside[j] != 0
            anywhere[k, i, j] = inside[j] != 0 or outside[j] != 0
            rows_within += inside[j] != 0
            rows_anywhere += inside[j] != 0 or outside[j] != 0
            zeros += centres[j] == 0
        counts[t, 0] = rows_within
        counts[t, 1] = rows_anywhere
        counts[t, 2] = zeros
    return counts[:, 0].sum(), counts[:, 1].sum(), counts[:, 2].sum()


@njit(parallel=True, cache=True)
def band_of(inactive, width, out):
    """``out``: the points that are not ``inactive`` but lie within ``width`` points (along every axis, a
    box) of an inactive one; returns how many they are.  The box is separable: a dilation along each axis in
    turn (along a row by a running count of the inactive points in the window, across rows and planes by OR-ing
    whole rows)."""
    p, n, m = inactive.shape
    marked = np.zeros(p * n, dtype=np.int64)
    along_j = np.empty((p, n, m), dtype=np.uint8)
    for t in prange(p * n):
        k = t // n
        i = t % n
        row = inactive[k, i]
        target = along_j[k, i]
        count = 0
        for j in range(min(width, m)):  # the window [j - width, j + width] before its first step
            count += row[j]
        for j in range(m):
            if j + width < m:
                count += row[j + width]
            if j - width - 1 >= 0:
                count -= row[j - width - 1]
            target[j] = count > 0
    along_i = np.empty((p, n, m), dtype=np.uint8) if p > 1 else along_j  # in 2D the last pass writes `out`
    for t in prange(p * n):  # each row is written by one iteration (in 2D the rows carry the threads)
        k = t // n
        i = t % n
        near = np.zeros(m, dtype=np.uint8)
        for ii in range(max(i - width, 0), min(i + width, n - 1) + 1):
            source = along_j[k, ii]
            for j in range(m):
                near[j] |= source[j]
        if p == 1:
            inside = inactive[k, i]
            target = out[k, i]
            count = 0  # a local sum (an array element would be stored at every step)
            for j in range(m):
                mark = near[j] != 0 and not inside[j]
                target[j] = mark
                count += mark
            marked[t] = count
        else:
            along_i[k, i] = near
    if p > 1:
        for t in prange(p * n):
            k = t // n
            i = t % n
            count = 0
            for j in range(m):
                near = False
                for kk in range(max(k - width, 0), min(k + width, p - 1) + 1):
                    near |= along_i[kk, i, j] != 0
                mark = near and not inactive[k, i, j]
                out[k, i, j] = mark
                count += mark
            marked[t] = count
    return marked.sum()


# ------------------------------------------------------------------------------------- Galerkin operators
@njit(inline="always")
def _coarse_step(d: int, nc: int, periodic: bool) -> int:
    """A coarse index difference folded onto -1, 0, 1 (around a periodic axis)."""
    if periodic:
        if d > 1:
            d -= nc
        elif d < -1:
            d += nc
    return d


@njit(inline="always")
def _galerkin_row(out, coef, offsets, periodic, active, t0, t1, ci, cj):
    """Row ``(ci, cj)`` of ``R A P`` (all nine coarse couplings, ``out[(1 + di) * 3 + 1 + dj, ci, cj]``), with
    ``P`` the tensor product of the tables ``t0``/``t1`` (``(p_index, p_weight, r_index, r_weight)`` per
    axis) times the mask ``active`` and ``R = P^T / 4``; returns whether an active fine point lies under
    ``R``'s row (else the row is empty)."""
    p0i, p0w, r0i, r0w = t0
    p1i, p1w, r1i, r1w = t1
    _, _, n, m = coef.shape
    nc0 = r0i.shape[0]
    nc1 = r1i.shape[0]
    for q in range(9):
        out[q, ci, cj] = 0.0
    reached = False
    for a in range(r0i.shape[1]):
        wa = r0w[ci, a]
        if wa == 0.0:
            continue
        x0 = r0i[ci, a]
        for c in range(r1i.shape[1]):
            wc = r1w[cj, c]
            if wc == 0.0 or not active[0, x0, r1i[cj, c]]:
                continue
            x1 = r1i[cj, c]
            reached = True
            for q in range(offsets.shape[0]):
                value = coef[q, 0, x0, x1]
                if value == 0.0:
                    continue
                y0 = _wrap(x0 + offsets[q, 1], n, periodic[1])
                y1 = _wrap(x1 + offsets[q, 2], m, periodic[2])
                if y0 < 0 or y1 < 0 or not active[0, y0, y1]:
                    continue
                weight = wa * wc * value
                for s in range(2):
                    ws = p0w[y0, s]
                    if ws == 0.0:
                        continue
                    d0 = _coarse_step(p0i[y0, s] - ci, nc0, periodic[1])
                    for v in range(2):
                        wv = p1w[y1, v]
                        if wv == 0.0:
                            continue
                        d1 = _coarse_step(p1i[y1, v] - cj, nc1, periodic[2])
                        out[(1 + d0) * 3 + 1 + d1, ci, cj] += weight * ws * wv
    return reached


@njit(parallel=True, cache=True)
def galerkin(coef, offsets, periodic, active, t0, t1, first0, first1, irregular, symmetric, out, empty, present):
    """``out`` (``(9, nc0, nc1)``) = the 2D Galerkin operator ``R A P`` of the variable stencil ``coef`` of
    radius 1 (see :func:`_galerkin_row`); ``empty[ci, cj]`` where no active fine point lies under ``R``.

    A coarse point whose fine neighbourhood (two fine points either way of its own) holds regular rows only
    (``irregular``, :func:`mark_irregular`) away from the faces has the row of every such point: it is
    computed once and copied (a masked domain's interior); one whose neighbourhood holds no active point is
    empty (outside the domain); the others are computed point by point.  Then the couplings
    beyond a non-periodic face are zeroed, with ``symmetric`` each coupling and its mirror are averaged
    (:func:`mgcore.operators.symmetrize_`: R A P is symmetric for a symmetric A, up to round-off),
    ``present[q]`` says whether coupling ``q`` is non-zero anywhere, and the empty rows (unless all are) get
    the mean |diagonal| of the others on their diagonal."""
    nc0 = out.shape[1]
    nc1 = out.shape[2]
    n = irregular.shape[1]
    m = irregular.shape[2]
    # Along each fine row y0, for the five columns around coarse column cj: clean[y0, cj], they hold regular rows
    # only; vacant[y0, cj], no active point (running counts along the row: each fine row once, not once per
    # coarse point above it).
    clean = np.zeros((n, nc1), dtype=np.bool_)
    vacant = np.zeros((n, nc1), dtype=np.bool_)
    for y0 in prange(n):
        marks = irregular[0, y0]
        cells = active[0, y0]
        marked = np.empty(m + 1, dtype=np.int64)  # marked[j]: marked points in columns 0..j-1
        present_before = np.empty(m + 1, dtype=np.int64)  # the same for active points
        marked[0] = 0
        present_before[0] = 0
        for j in range(m):
            marked[j + 1] = marked[j] + (marks[j] != 0)
            present_before[j + 1] = present_before[j] + cells[j]
        for cj in range(1, nc1 - 1):
            f1 = first1 + 2 * cj
            clean[y0, cj] = marked[f1 + 3] == marked[f1 - 2]
            vacant[y0, cj] = present_before[f1 + 3] == present_before[f1 - 2]
    # Away from the faces: a coarse point over regular rows only takes the common row; one with no active fine
    # point within two either way (outside a masked domain) is empty, R's row there being zero.
    regular = np.zeros((nc0, nc1), dtype=np.bool_)
    outside = np.zeros((nc0, nc1), dtype=np.bool_)
    for ci in prange(1, nc0 - 1):
        f0 = first0 + 2 * ci
        for cj in range(1, nc1 - 1):
            plain = True
            gone = True
            for y0 in range(f0 - 2, f0 + 3):
                plain = plain and clean[y0, cj]
                gone = gone and vacant[y0, cj]
            regular[ci, cj] = plain
            outside[ci, cj] = gone
    reference = -1
    for ci in range(nc0):
        for cj in range(nc1):
            if regular[ci, cj]:
                reference = ci * nc1 + cj
                break
        if reference >= 0:
            break
    row = np.zeros(9, dtype=out.dtype)
    if reference >= 0:
        rc0 = reference // nc1
        rc1 = reference % nc1
        _galerkin_row(out, coef, offsets, periodic, active, t0, t1, rc0, rc1)
        for q in range(9):
            row[q] = out[q, rc0, rc1]
    for ci in prange(nc0):
        flags = regular[ci]
        gone = outside[ci]
        for q in range(9):  # the common row and the empty ones, one coupling at a time along the coarse row
            value = row[q]
            target = out[q, ci]
            for cj in range(nc1):
                if flags[cj]:
                    target[cj] = value
                elif gone[cj]:
                    target[cj] = 0.0
        for cj in range(nc1):
            if flags[cj] or gone[cj]:
                empty[ci, cj] = gone[cj]
            else:
                empty[ci, cj] = not _galerkin_row(out, coef, offsets, periodic, active, t0, t1, ci, cj)
    # Couplings to points beyond a non-periodic face: no unknowns there.
    for q in range(9):
        d0 = q // 3 - 1
        d1 = q % 3 - 1
        if d0 != 0 and not periodic[1]:
            out[q, 0 if d0 < 0 else nc0 - 1, :] = 0.0
        if d1 != 0 and not periodic[2]:
            out[q, :, 0 if d1 < 0 else nc1 - 1] = 0.0
    if symmetric:
        # c_q(x) and c_{8-q}(x + d) couple the same two points; each pair is written by one x, so the rows run
        # in parallel for one q at a time.
        for q in range(4):
            d0 = q // 3 - 1
            d1 = q % 3 - 1
            for ci in prange(nc0):
                y0 = _wrap(ci + d0, nc0, periodic[1])
                if y0 < 0:
                    continue
                row = out[q, ci]
                mirror = out[8 - q, y0]
                for cj in (0, nc1 - 1):  # the ends with the face rules, the rest without a test per point
                    y1 = _wrap(cj + d1, nc1, periodic[2])
                    if y1 >= 0:
                        mean = 0.5 * (row[cj] + mirror[y1])
                        row[cj] = mean
                        mirror[y1] = mean
                for cj in range(1, nc1 - 1):
                    # Written only where the two differ (rows off the mask's boundary agree already).
                    if row[cj] != mirror[cj + d1]:
                        mean = 0.5 * (row[cj] + mirror[cj + d1])
                        row[cj] = mean
                        mirror[cj + d1] = mean
    # Whether each coupling is non-zero somewhere: a scan that stops at the first such row.
    for q in prange(9):
        found = False
        for ci in range(nc0):
            count = 0
            for cj in range(nc1):
                count += out[q, ci, cj] != 0.0
            if count:
                found = True
                break
        present[q] = found
    empties = np.zeros(nc0, dtype=np.int64)
    for ci in prange(nc0):
        for cj in range(nc1):
            empties[ci] += empty[ci, cj]
    # A coarse point with no active fine point under it gets an identity row scaled like the others (their mean
    # |diagonal|), unless every point is empty.
    count = empties.sum()
    if 0 < count < nc0 * nc1:
        sums = np.zeros(nc0, dtype=np.float64)
        for ci in prange(nc0):
            for cj in range(nc1):
                if not empty[ci, cj]:
                    sums[ci] += abs(out[4, ci, cj])
        scale = sums.sum() / (nc0 * nc1 - count)
        for ci in prange(nc0):
            for cj in range(nc1):
                if empty[ci, cj]:
                    out[4, ci, cj] = scale


__all__ = [
    "DIRICHLET",
    "PERIODIC",
    "REFLECT",
    "band_of",
    "coupled_rows",
    "first_diagonal_only",
    "galerkin",
    "gauss_seidel_colour",
    "mark_irregular",
    "mark_runs",
    "mask_spans",
    "point_relax",
    "prolong",
    "residual",
    "restrict",
    "set_threads",
    "split_residual",
    "split_steps",
    "variable_gauss_seidel",
]
