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


@njit(parallel=True, cache=True)
def residual(u, f, r, c, modes):
    """``r = f - W S u`` at every point."""
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


def set_threads(count: int) -> None:
    """Run the parallel loops on ``count`` threads (at most Numba's pool)."""
    count = max(1, min(int(count), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != count:
        numba.set_num_threads(count)





# ---------------------------------------------------------------------------------------------- transfers
# A tensor-product transfer is given per axis by tables (mgcore.kernels.axis_tables): for prolongation, each
# fine index takes at most two coarse values (``p_index``, ``p_weight``, ``(n, 2)``); for restriction
# ``R = P^T / 2`` per axis, each coarse index gathers at most four fine values (``r_index``, ``r_weight``,
# ``(n_coarse, 4)``).  Unused slots carry the weight zero.


@njit(inline="always")
def _add_rows(combined, grid, b, k_index, k_weight, i_index, i_weight, mask, use_mask):
    """``combined += sum w_k w_i grid[b, k, i]`` over the table slots (rows of weight zero skipped), each row
    times ``mask[k, i]`` when ``use_mask``: the first, contiguous half of a tensor-product transfer."""
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
            if use_mask:
                keep = mask[k, i_index[s]]
                for j in range(m):
                    combined[j] += w * row[j] * keep[j]
            else:
                for j in range(m):
                    combined[j] += w * row[j]


@njit(parallel=True, cache=True)
def restrict(x, c, rp_index, rp_weight, ri_index, ri_weight, rj_index, rj_weight, first_j, mask, use_mask):
    """``c = R x`` for the grid views ``(batch, P, N, M)``; ``mask`` (``(P, N, M)``, used when ``use_mask``)
    zeroes ``x`` off the active cells first.  Per coarse row: the weighted sum of its (at most 4 x 4) fine
    rows, contiguous, then the gather along the row from that sum (in cache)."""
    nb, pc, nc, mc = c.shape
    m = x.shape[3]
    for t in prange(nb * pc * nc):
        b, kc, ic = _row_of(t, pc, nc)
        combined = np.zeros(m, dtype=x.dtype)
        _add_rows(combined, x, b, rp_index[kc], rp_weight[kc], ri_index[ic], ri_weight[ic], mask, use_mask)
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
def prolong(c, x, pp_index, pp_weight, pi_index, pi_weight, pj_index, pj_weight, first_j, mask, use_mask, add):
    """``x = P c`` (or ``x += P c`` when ``add``) for the grid views ``(batch, P, N, M)``; ``mask`` zeroes
    ``P c`` off the active cells when ``use_mask``.  Per fine row: the weighted sum of its (at most 2 x 2)
    coarse rows, then the interpolation along the row from that sum (in cache)."""
    nb, p, n, m = x.shape
    mc = c.shape[3]
    for t in prange(nb * p * n):
        b, k, i = _row_of(t, p, n)
        combined = np.zeros(mc, dtype=c.dtype)
        _add_rows(combined, c, b, pp_index[k], pp_weight[k], pi_index[i], pi_weight[i], mask, False)
        # Along the row: linear interpolation between fine first_j and first_j + 2 (mc - 1), where coarse jc
        # sits on fine first_j + 2 jc; the points beyond (faces, wraps) from the tables.
        values = np.empty(m, dtype=c.dtype)
        for j in range(first_j):
            values[j] = pj_weight[j, 0] * combined[pj_index[j, 0]] + pj_weight[j, 1] * combined[pj_index[j, 1]]
        for jc in range(mc - 1):
            values[first_j + 2 * jc] = combined[jc]
            values[first_j + 2 * jc + 1] = 0.5 * (combined[jc] + combined[jc + 1])
        for j in range(first_j + 2 * (mc - 1), m):
            values[j] = pj_weight[j, 0] * combined[pj_index[j, 0]] + pj_weight[j, 1] * combined[pj_index[j, 1]]
        out = x[b, k, i]
        if use_mask:
            keep = mask[k, i]
            for j in range(m):
                values[j] *= keep[j]
        if add:
            for j in range(m):
                out[j] += values[j]
        else:
            for j in range(m):
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


__all__ = [
    "DIRICHLET",
    "PERIODIC",
    "REFLECT",
    "gauss_seidel_colour",
    "prolong",
    "residual",
    "restrict",
    "set_threads",
    "variable_gauss_seidel",
]
