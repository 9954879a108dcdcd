"""Compiled CPU loops (Numba) for the hot paths of a multigrid cycle, behind the shared blocks.

In eager PyTorch a colour of red-black Gauss-Seidel is a residual on the whole grid (the centre term, then one
pass per neighbour) and a masked update: six passes over memory for half of the points, about 5 ms per sweep
at 1023^2 on a 2-core CPU.  One compiled loop over the rows reads ``u`` and ``f`` once and updates the colour
in place: about 1 ms.  On the CPU, with Numba installed, the shared smoothing block
(:func:`mgcore.blocks.residual_correction`), :meth:`mgcore.operators.Stencil.residual` and the transfer modules
hand the cases below to these loops; the results are the same up to round-off.  Every other case (a GPU,
autograd, a compiled cycle, variable stencils without a common row in four-colour sweeps and residuals) runs
the PyTorch path as before: there the loops measured no faster, as both paths are bound by reading the
coefficient arrays.

* :func:`residual` -- ``f - A u`` for a constant, axis-aligned stencil of radius 1 (5-point in 2D, 7-point in
  3D), with Dirichlet, periodic and box-scheme Neumann faces, and for a 2D variable stencil with a common row;
* :func:`gauss_seidel_colour_` -- one colour of red-black Gauss-Seidel for the same stencils, and for
  variable-coefficient axis-aligned stencils (one pass instead of one per stencil point: 3.5 against 6.6 ms
  per sweep at 1023^2 for 5-point lognormal diffusion);
* :func:`run_steps_` -- a smoother's steps (red-black or four-colour Gauss-Seidel colours, the band's point
  sets) on a 2D stencil with a common row, one step or whole sweeps in one call; and :func:`gauss_seidel_points_`,
  a set of points of any variable stencil;
* :func:`restrict` and :func:`prolong` -- the tensor-product transfers (full weighting and linear
  interpolation, face-aware or not, with a mask of active cells) in one pass, the prolongation optionally
  added straight into the iterate;
* :func:`galerkin`, :func:`coupled` and :func:`band` -- the set-up of a masked domain's hierarchy: the 2D
  Galerkin operator ``R A P`` in one pass (the interior row computed once), the active cells and the band.

A 2D variable stencil *with a common row* (:func:`split`) is one whose rows are mostly the same: the interior
of a masked domain, and its Galerkin coarse operators away from the mask.  Its loops read that row and one byte
per point marking the others, not the coefficient arrays, and sweep runs of equal marks without a test per
point: a colour of the masked 1023^2 disk costs about what the constant stencil's does (0.7-1.0 against 0.5-0.8
ms, two threads), where the plain variable loop took 2.7 ms; the four-colour smoothing of its first Galerkin
level (511^2, V(2,1)) went from 14 ms in PyTorch to 4 ms.

The first call in a fresh environment compiles the loops (a few seconds; Numba caches them on disk, so later
processes load them in a fraction of a second).  ``MGCORE_KERNELS=0`` in the environment, or
:func:`disabled`, runs the PyTorch path instead (for comparisons and tests).

Examples
--------
>>> import torch
>>> from mgcore.operators import Stencil
>>> A = Stencil.laplacian(2, h=1.0)
>>> u = torch.rand(1, 1, 65, 65, dtype=torch.float64)  # at least MIN_POINTS values
>>> f = torch.rand_like(u)
>>> with disabled():
...     reference = A.residual(u, f)
>>> bool(torch.allclose(A.residual(u, f), reference, rtol=0, atol=1e-12))
True
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MIN_POINTS",
    "SMALL_POINTS",
    "AxisTables",
    "StepPlan",
    "available",
    "axis_tables",
    "band",
    "coupled",
    "coupled_count",
    "disabled",
    "fits",
    "fits_plan",
    "fits_transfer",
    "galerkin",
    "gauss_seidel_colour_",
    "gauss_seidel_points_",
    "loaded",
    "mask_spans",
    "mirror_gap",
    "prolong",
    "residual",
    "restrict",
    "run_steps_",
    "split",
    "step_plan",
    "wanted",
    "zero_diagonal_count",
]

_enabled = os.environ.get("MGCORE_KERNELS", "1") != "0"

MIN_POINTS = 4096
"""The loops run on arrays of at least this many values (a 64^2 grid).  Smaller problems gain nothing
measurable (a whole 63^2 Poisson solve: 31 against 33 ms), while the first use in a process imports Numba and
loads the cached loops (about 0.5 s; compiling them in a fresh environment takes some 15 s, once)."""

SMALL_POINTS = 1024
"""Once the loops are loaded in a process, they run on arrays down to this many values: the coarse levels of a
large solve, where a colour step in PyTorch costs several calls of some microseconds each (a masked 1023^2
disk's 63^2 level: 2-3 ms per cycle in PyTorch, under 1 ms in the loops)."""


def _large_enough(count: int) -> bool:
    return count >= MIN_POINTS or (count >= SMALL_POINTS and bool(_loops))
_loops = None  # the compiled module, False when Numba cannot be imported, None before the first look

# Face labels to the loops' kinds (mgcore/_numba_loops.py): Dirichlet, periodic, reflecting (box scheme).
_FACE_KIND = {"dirichlet": 0, "periodic": 1, "neumann": 2}


def _load():
    global _loops
    if _loops is None:
        try:
            from mgcore import _numba_loops
        except ImportError:  # Numba is not installed (or not for this Python): the PyTorch path runs
            _loops = False
        else:
            _loops = _numba_loops
    return _loops


def available() -> bool:
    """True when the compiled loops run: Numba imports and they are not switched off.

    Examples
    --------
    >>> with disabled():
    ...     available()
    False
    """
    return _enabled and bool(_load())


def loaded() -> bool:
    """True once this process has loaded the compiled loops (the first grid of :data:`MIN_POINTS` values does:
    about 0.5 s from Numba's cache, a cost a one-shot timing includes).

    Examples
    --------
    >>> available() and loaded() or not available()
    True
    """
    return bool(_loops)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the PyTorch path inside the ``with`` block (the loops' results are the same up to round-off)."""
    global _enabled
    before = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


def _constant_form(A) -> tuple[np.ndarray, np.ndarray] | None:
    """``(c, modes)`` of the loops for a constant, axis-aligned radius-1 stencil with a centre, else None.

    ``c`` holds ``[c_0, c_-p, c_+p, c_-i, c_+i, c_-j, c_+j]`` (a 2D stencil's plane terms are zero) and
    ``modes`` one face kind per axis side, ``(3, 2)``.  Kept on the stencil, keyed by its values and faces.
    """
    values = getattr(A, "_values", None)
    if values is None or A.dim not in (2, 3):
        return None
    key = (values, A.faces)
    cached = A.__dict__.get("_kernel_form")
    if cached is not None and cached[0] == key:
        return cached[1]
    c = np.zeros(7)
    form = None
    if all(max(abs(v) for v in o) <= 1 and sum(v != 0 for v in o) <= 1 for o in A.offsets) and any(
        not any(o) for o in A.offsets
    ):
        shift = 3 - A.dim  # a 2D grid is (P=1, N, M): its axes are the loops' last two
        for o, value in zip(A.offsets, values):
            if not any(o):
                c[0] += value
            else:
                axis = next(a for a, v in enumerate(o) if v)
                c[1 + 2 * (axis + shift) + (o[axis] > 0)] += value
        modes = np.zeros((3, 2), dtype=np.int64)
        for axis, pair in enumerate(A.faces):
            modes[axis + shift] = [_FACE_KIND[kind] for kind in pair]
        form = (c, modes)
    A.__dict__["_kernel_form"] = (key, form)
    return form


def fits(A, *tensors: Tensor | None, colours: bool = False) -> bool:
    """Whether the loops apply to ``A`` and the ``(batch, channels, *grid)`` arrays ``tensors``: the loops are
    available, ``A`` is a stencil of radius 1 in 2D or 3D (constant and axis-aligned, or with variable
    coefficients of the arrays' dtype on their grid), and the arrays are contiguous CPU float32/float64 arrays
    of one dtype and grid (at least 3 points per axis) that autograd does not record.  ``colours``: also two
    colours must decouple (an even number of points on each periodic axis), as red-black Gauss-Seidel needs;
    the caller passes only axis-aligned stencils there.

    Examples
    --------
    >>> from mgcore.operators import Stencil
    >>> u = torch.zeros(1, 1, 64, 64)  # at least MIN_POINTS values
    >>> fits(Stencil.laplacian(2), u) == available()
    True
    >>> fits(Stencil.laplacian(2), u.requires_grad_())
    False
    """
    first = next((t for t in tensors if t is not None), None)
    if first is None or not _large_enough(first.numel()):
        return False
    if not available() or torch.compiler.is_compiling():
        return False  # a compiled cycle traces the PyTorch path (one graph)
    constant = _constant_form(A)
    variable = None if constant is not None else _variable_form(A)
    if constant is None and variable is None:
        return False
    if not _arrays_fit(A, None if variable is None else variable[0], first, tensors):
        return False
    if colours and any(periodic and n % 2 for periodic, n in zip(A.periodic, first.shape[2:])):
        return False
    return True


def _arrays_fit(A, coef: np.ndarray | None, first: Tensor, tensors: Sequence[Tensor | None]) -> bool:
    """The array half of :func:`fits`: ``tensors`` are contiguous CPU float32/float64 arrays shaped like
    ``first`` that autograd does not record, on a grid of ``A.dim`` axes of at least 3 points, and that of the
    variable coefficients ``coef`` (``(K, P, N, M)``) in their dtype when given."""
    shape, dtype = first.shape, first.dtype
    grid = shape[2:]
    if len(grid) != A.dim or min(grid) < 3 or dtype not in _NUMPY_DTYPE:
        return False
    if coef is not None and (grid != coef.shape[4 - A.dim :] or coef.dtype != _NUMPY_DTYPE[dtype]):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if (
            not t.is_cpu
            or t.dtype != dtype
            or t.shape != shape
            or not t.is_contiguous()
            or (grad and t.requires_grad)
        ):
            return False
    return True


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _variable_form(A) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """``(coef, offsets, periodic, centre)`` of the loops for a variable-coefficient stencil of radius 1 in 2D
    or 3D with a centre and contiguous CPU coefficients, else None: ``coef`` is ``(K, P, N, M)``, ``offsets``
    ``(K, 3)``, ``periodic`` ``(3,)``."""
    if getattr(A, "_values", 0) is not None:  # constant, or no Stencil
        return None
    # A Stencil's buffer, read without nn.Module.__getattr__ (every step asks); a parameter by the attribute.
    coefficients = A._buffers.get("coefficients")
    if coefficients is None:
        coefficients = A.coefficients
    if coefficients.requires_grad:  # trained
        return None
    # Kept on the stencil while the coefficients stay the same array: every colour step asks.
    key = (coefficients.data_ptr(), coefficients._version, coefficients.dtype, coefficients.device)
    cached = A.__dict__.get("_kernel_variable_form")
    if cached is not None and cached[0] == key:
        return cached[1]
    form = None
    if (
        A.dim in (2, 3)
        and A.radius <= 1
        and (0,) * A.dim in A.offsets
        and coefficients.device.type == "cpu"
        and coefficients.dtype in _NUMPY_DTYPE
        and coefficients.is_contiguous()
    ):
        form = _build_variable_form(A, coefficients)
    A.__dict__["_kernel_variable_form"] = (key, form)
    return form


def _build_variable_form(A, coefficients: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    shift = 3 - A.dim
    offsets = np.zeros((len(A.offsets), 3), dtype=np.int64)
    offsets[:, shift:] = np.asarray(A.offsets, dtype=np.int64)
    periodic = np.zeros(3, dtype=np.bool_)
    periodic[shift:] = A.periodic
    coef = coefficients.detach().numpy()
    coef = coef.reshape(coef.shape[0], 1, *coef.shape[1:]) if A.dim == 2 else coef
    return coef, offsets, periodic, A.offsets.index((0,) * A.dim)


SPLIT_FRACTION = 0.5
"""A variable stencil whose rows are one common row at all but this fraction of the points (edges included)
runs the common-row loops (:func:`_split_form`); others the plain variable loops."""


def _split_form(A) -> tuple | None:
    """``(coef, offsets, periodic, centre, w, irregular, d2, five, row_start, runs)`` for a 2D variable stencil
    whose rows are
    mostly one common row ``w`` (a 3x3 table: a masked domain's interior, a Galerkin operator away from the
    mask), else None.

    The loops then read ``w`` at the regular points and the coefficient arrays only at the marked ones
    (``irregular``, one byte per point: 1 on the grid's edge and at other rows, 2 at rows with their diagonal
    ``d2`` only, the points outside a masked domain): a colour of Gauss-Seidel reads ``u``, ``f`` and those
    bytes, not K coefficient arrays.  ``five``: ``w`` has no corner terms.  Kept on the stencil like
    :func:`_variable_form`.
    """
    variable = _variable_form(A)
    if variable is None or A.dim != 2:
        return None
    key = A.__dict__["_kernel_variable_form"][0]
    cached = A.__dict__.get("_kernel_split_form")
    if cached is not None and cached[0] == key:
        return cached[1]
    coef, offsets, periodic, centre = variable
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    _, _, n, m = coef.shape
    irregular = np.empty((1, n, m), dtype=np.uint8)
    candidates, d2 = _sampled_rows(coef, centre)
    if d2 is None:  # no sampled point outside a mask: the first such row in memory order, if any
        d2 = float(loops.first_diagonal_only(coef, offsets, centre))
    best = None
    for row in candidates:
        w = np.zeros((3, 3), dtype=coef.dtype)
        w[1 + offsets[:, 1], 1 + offsets[:, 2]] = row
        count = int(loops.mark_irregular(coef, offsets, w, centre, d2, irregular))
        if best is None or count < best[0]:
            best = (count, w, irregular.copy())
        if count <= n * m // 8:
            break
    form = None
    if best is not None and best[0] <= SPLIT_FRACTION * n * m:
        w = best[1]
        five = not (w[0, 0] or w[0, 2] or w[2, 0] or w[2, 2])
        form = (coef, offsets, periodic, centre, w, best[2], d2, five, *loops.mark_runs(best[2]))
    A.__dict__["_kernel_split_form"] = (key, form)
    return form


def _sampled_rows(coef: np.ndarray, centre: int, tries: int = 5) -> tuple[list[np.ndarray], float | None]:
    """From the rows (``(K,)``) at a 7 x 7 lattice of points well inside the grid: up to ``tries`` to try as the
    common row, the most frequent first (a domain's interior holds most of them; the grid's centre alone may be
    an L-shape's re-entrant corner), leaving out rows with a zero diagonal or their diagonal only; and the most
    frequent diagonal of the latter (points outside a mask), or None when none was sampled."""
    _, _, n, m = coef.shape
    rows = coef[:, 0, (n * np.arange(1, 8) // 8)[:, None], (m * np.arange(1, 8) // 8)[None, :]].reshape(len(coef), -1)
    diagonal = rows[centre]
    coupled = (np.delete(rows, centre, axis=0) != 0).any(axis=0)

    def by_frequency(values: np.ndarray) -> list[tuple[float, ...]]:
        counts: dict[tuple[float, ...], int] = {}
        for value in map(tuple, values.tolist()):  # 49 short rows: a dict beats np.unique(axis=0) tenfold
            counts[value] = counts.get(value, 0) + 1
        return sorted(counts, key=counts.__getitem__, reverse=True)  # stable: ties keep the sampled order

    keep = coupled & (diagonal != 0)
    candidates = [np.array(row, dtype=coef.dtype) for row in by_frequency(rows[:, keep].T)[:tries]]
    alone = ~coupled & (diagonal != 0)
    return candidates, by_frequency(diagonal[alone, None])[0][0] if alone.any() else None


def split(A) -> bool:
    """Whether ``A`` is a variable stencil the common-row loops run (:func:`_split_form`); the caller checked
    :func:`fits`."""
    return _split_form(A) is not None


def mirror_gap(A) -> float | None:
    """The largest ``|c_o(x) - c_{-o}(x + o)|`` of ``A`` where both points lie in the grid (periodic wraps
    included), from one compiled pass over the rows :func:`_split_form` marks: the common row is checked once,
    so a masked domain's symmetry costs a pass over its boundary rows, not a comparison of every coefficient
    array with its mirror.  None where the loops do not apply (or the common row is not symmetric: then the
    caller compares the arrays).

    Examples
    --------
    >>> from mgcore.operators import Stencil
    >>> c = Stencil.laplacian(2).coefficient_arrays((96, 96))
    >>> c[:, :40, :40] = 0.0; c[2, :40, :40] = 1.0  # a masked-out corner: its rows keep the diagonal only
    >>> mirror_gap(Stencil(Stencil.laplacian(2).offsets, c))  # its neighbours still couple to it
    1.0
    """
    if A.dim != 2 or not wanted(A.coefficients[0].numel()):
        return None
    form = _split_form(A)
    if form is None:
        return None
    coef, offsets, periodic, centre, w, irregular, _, _, row_start, runs = form
    if not np.array_equal(w, w[::-1, ::-1]):
        return None
    index = {tuple(o): k for k, o in enumerate(offsets.tolist())}
    mirror = np.array([index.get(tuple(-v for v in o), -1) for o in offsets.tolist()], dtype=np.int64)
    if (mirror < 0).any():
        return None
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    return float(loops.mirror_gap(coef, offsets, periodic, centre, mirror, w, irregular, row_start, runs))


def _grid4(t: Tensor) -> np.ndarray:
    """The loops' ``(batch, P, N, M)`` NumPy view of a contiguous ``(batch, channels, *grid)`` CPU tensor."""
    shape = t.shape
    array = t.detach().numpy() if t.requires_grad else t.numpy()  # (detach is a call of its own)
    if len(shape) == 4:
        return array.reshape(shape[0] * shape[1], 1, shape[2], shape[3])
    return array.reshape(shape[0] * shape[1], shape[2], shape[3], shape[4])


def residual(A, u: Tensor, f: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``f - A u`` (or ``A u`` when ``f`` is None, for a variable stencil) by one compiled loop, for a
    constant stencil or one with a common row (:func:`split`); ``out`` receives it when given.  The caller
    checked :func:`fits`."""
    return _residual(A, u, f, out, _NO_SQUARES)


_NO_SQUARES = np.zeros(0)


def _residual(A, u: Tensor, f: Tensor | None, out: Tensor | None, squares: np.ndarray) -> Tensor:
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    if out is None:
        out = torch.empty_like(u, memory_format=torch.contiguous_format)
    form = _constant_form(A)
    if form is not None and f is not None:
        loops.residual(_grid4(u), _grid4(f), _grid4(out), *form, squares)
        return out
    split_form = _split_form(A)
    if split_form is None:
        raise ValueError("A: the compiled residual takes a constant axis-aligned stencil of radius 1, or a "
                         "variable one with a common row")
    u4 = _grid4(u)
    loops.split_residual(u4, u4 if f is None else _grid4(f), _grid4(out), *split_form, f is not None, squares)
    return out


def residual_norms(A, u: Tensor, f: Tensor, out: Tensor) -> Tensor:
    """``out = f - A u`` as :func:`residual`, and the 2-norm of each right-hand side's residual (``(batch,)``,
    float64) from the same pass: the rows' sums of squares, added in a fixed order (the same result for any
    number of threads), over all channels of a batch entry.  The caller checked :func:`fits`."""
    rows = _grid4(out).shape[:3]  # (batch * channels, planes, rows): one sum per grid row
    squares = np.empty(math.prod(rows), dtype=np.float64)
    _residual(A, u, f, out, squares)
    return torch.from_numpy(np.sqrt(squares.reshape(out.shape[0], -1).sum(axis=1)))


def gauss_seidel_colour_(A, u: Tensor, f: Tensor, parity: int, omega: float = 1.0) -> Tensor:
    """``u += ω D^{-1}(f - A u)`` in place at the points whose index sum has ``parity`` (one colour of
    red-black Gauss-Seidel, :func:`mgcore.smoothers.red_black_gauss_seidel`), for a constant or a variable
    stencil; the caller checked :func:`fits` with ``colours=True``."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    form = _constant_form(A)
    if form is not None:
        loops.gauss_seidel_colour(_grid4(u), _grid4(f), *form, int(parity), float(omega))
        return u
    coef, offsets, periodic, centre = _variable_form(A)
    loops.variable_gauss_seidel(_grid4(u), _grid4(f), coef, offsets, periodic, centre, int(parity), float(omega))
    return u


@dataclass(frozen=True)
class StepPlan:
    """A smoother's steps as the loops read them (:func:`step_plan`): step ``s`` is the entries
    ``step_start[s]:step_start[s + 1]``; an entry is one colour of rows (``kinds == 0``, ``params`` = first row,
    row step, first column, checker) or a set of points (``kinds == 1``, ``index[index_start[e]:index_start[e +
    1]]``), with its damping ``omegas``."""

    step_start: np.ndarray
    kinds: np.ndarray
    params: np.ndarray
    omegas: np.ndarray
    index: np.ndarray
    index_start: np.ndarray
    grid: tuple[int, ...]

    def starts_with_colour(self, reverse: bool = False) -> bool:
        """Whether the first step run (the last one with ``reverse``) is one colour of rows alone: then it can
        start from a zero iterate that holds no values yet (``run_steps_(zero=True)``)."""
        s = len(self.step_start) - 2 if reverse else 0
        first, stop = int(self.step_start[s]), int(self.step_start[s + 1])
        return stop - first == 1 and int(self.kinds[first]) == 0

    @functools.cached_property  # asked by every post-smoother call of a cycle
    def settles_decoupled(self) -> bool:
        """Whether one sweep leaves every row with its diagonal only at the value ``f / a_centre`` that a step
        with ``ω = 1`` writes: the colour steps all have ``ω = 1`` and together cover the grid."""
        covered = np.zeros((2, 2), dtype=bool)  # (row parity, column parity) classes
        for kind, (first_row, row_step, first_column, checker), omega in zip(self.kinds, self.params, self.omegas):
            if kind != 0:
                continue
            if omega != 1.0:
                return False
            if row_step == 1:
                rows = [0, 1] if first_row == 0 else []
            else:
                rows = [first_row] if row_step == 2 and first_row < 2 else []
            for a in rows:
                for c in range(2):
                    if (checker == 1 and (a + c) % 2 == first_column) or (checker == 0 and c == first_column):
                        covered[a, c] = True
        return bool(covered.all())

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The grid row of each point of :attr:`index`."""
        return self.index // self.grid[1]

    @functools.cached_property
    def columns(self) -> np.ndarray:
        """The grid column of each point of :attr:`index`."""
        return self.index % self.grid[1]


def step_plan(Bs: Sequence) -> StepPlan | None:
    """The :class:`StepPlan` of the ``B`` of a smoother's steps on a 2D grid, when every one is a diagonal
    scaling of one red-black colour (``parity``), of sub-lattices whose columns step by 2 (``lattices``) or of
    a set of points (``points``), all on one grid; else None.  The plan of a single ``B`` is kept on it."""
    if len(Bs) == 1 and "_step_plan" in Bs[0].__dict__:
        return Bs[0].__dict__["_step_plan"]
    plan = _build_plan(Bs)
    if len(Bs) == 1:
        Bs[0].__dict__["_step_plan"] = plan
    return plan


def _build_plan(Bs: Sequence) -> StepPlan | None:
    kinds, params, omegas, indices, step_start = [], [], [], [], [0]
    grid = None
    for B in Bs:
        shape = getattr(B, "grid_shape", None)
        if not hasattr(B, "omega") or shape is None or len(shape) != 2 or (grid is not None and shape != grid):
            return None
        grid = shape
        if getattr(B, "parity", None) is not None:
            entries = [(0, (0, 1, int(B.parity), 1), None)]
        elif getattr(B, "lattices", None):
            if any(len(lattice) != 2 or lattice[1][1] != 2 for lattice in B.lattices):
                return None
            entries = [(0, (rows[0], rows[1], columns[0], 0), None) for rows, columns in B.lattices]
        elif getattr(B, "points", None) is not None:
            if B.points.device.type != "cpu":
                return None
            points = B.points.numpy()
            entries = [(1, (_parity_class(points, shape), 0, 0, 0), points)]
        else:
            return None
        for kind, param, index in entries:
            kinds.append(kind)
            params.append(param)
            omegas.append(float(B.omega))
            indices.append(np.zeros(0, dtype=np.int64) if index is None else index.astype(np.int64, copy=False))
        step_start.append(len(kinds))
    if grid is None:
        return None
    return StepPlan(
        step_start=np.asarray(step_start, dtype=np.int64),
        kinds=np.asarray(kinds, dtype=np.int64),
        params=np.asarray(params, dtype=np.int64).reshape(-1, 4),
        omegas=np.asarray(omegas, dtype=np.float64),
        index=np.concatenate(indices),
        index_start=np.cumsum([0, *(len(i) for i in indices)]).astype(np.int64),
        grid=grid,
    )


def _parity_class(points: np.ndarray, shape: tuple[int, int]) -> int:
    """2 when the flat grid indices ``points`` share a parity along each axis (no stencil of radius 1 couples
    two of them), 1 when they share the parity of their index sum (no five-point stencil does), else 0."""
    if points.size == 0:
        return 2
    rows, columns = points // shape[1] % 2, points % shape[1] % 2
    if (rows == rows[0]).all() and (columns == columns[0]).all():
        return 2
    return 1 if ((rows + columns) % 2 == (rows[0] + columns[0]) % 2).all() else 0


def fits_plan(A, plan: StepPlan | None, *tensors: Tensor | None) -> bool:
    """Whether :func:`run_steps_` applies: :func:`fits`, ``A`` has a common row (:func:`split`) and the plan is
    for the arrays' grid."""
    first = next((t for t in tensors if t is not None), None)
    if (
        plan is None
        or first is None
        or first.shape[2:] != plan.grid
        or not _large_enough(first.numel())  # before anything loads Numba
        or not available()
        or torch.compiler.is_compiling()
    ):
        return False
    form = _split_form(A)  # before the arrays: a constant stencil (the box rows' hot path) stops here
    return form is not None and _arrays_fit(A, form[0], first, tensors)


def run_steps_(
    A,
    u: Tensor | None,
    f: Tensor,
    plan: StepPlan,
    sweeps: int = 1,
    reverse: bool = False,
    settled: bool = False,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """``sweeps`` sweeps of the steps ``plan`` (in reverse order with ``reverse``) in place on ``u``, in one
    compiled call: the same loops, in the same order, as the steps one by one; the caller checked
    :func:`fits_plan`.

    ``u=None`` starts from zero in ``out`` (when it is a contiguous array like ``f``) or a new array; when the
    first step is one colour of rows it writes every point (no zero fill).  ``settled``: ``u`` came from a
    sweep of these steps on this ``f`` and has changed since at coupled rows only (a cycle's post-smoother: the
    prolongation is zero at decoupled rows); where :attr:`StepPlan.settles_decoupled`, the rows with their
    diagonal only then hold the values the steps would write again, and are skipped (half of a masked disk's
    grid, exactly the same iterate)."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    zero = u is None and plan.starts_with_colour(reverse)
    if u is None:
        fits_out = out is not None and out.shape == f.shape and out.dtype == f.dtype and out.is_contiguous()
        u = out if fits_out else torch.empty_like(f, memory_format=torch.contiguous_format)
        if not zero:
            u.zero_()
    form = _split_form(A)
    loops.split_steps(_grid4(u), _grid4(f), *form, plan.step_start, plan.kinds, plan.params, plan.omegas,
                      plan.index, plan.index_start, plan.rows, plan.columns, *_gathered_points(A, form, plan),
                      int(sweeps), bool(reverse), zero, bool(settled) and plan.settles_decoupled)
    return u


def _gathered_points(A, form: tuple, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
    """``(marks, coefficients)`` at the points of ``plan`` (its band): their marks of the common-row form
    ``form`` of ``A`` and their rows of ``A`` (``(E, K)``), gathered into short arrays.  A band point read from
    the grid-sized arrays costs one cache line of each of K coefficient arrays and of the marks, for a few
    points on a line: the band's steps took 2-3x as long (1023^2 disk: 0.36 against 0.13 ms per sweep).  Kept on
    ``A`` with its common-row form, for the last plan asked."""
    key = (A.__dict__["_kernel_variable_form"][0], plan)
    cached = A.__dict__.get("_kernel_gathered_points")
    if cached is not None and cached[0][0] == key[0] and cached[0][1] is plan:
        return cached[1]
    coef, irregular = form[0], form[5]
    index = plan.index
    gathered = (
        irregular.reshape(-1)[index],
        np.ascontiguousarray(coef.reshape(coef.shape[0], -1)[:, index].T),
    )
    A.__dict__["_kernel_gathered_points"] = (key, gathered)
    return gathered


def gauss_seidel_points_(A, u: Tensor, f: Tensor, index: Tensor, omega: float = 1.0) -> Tensor:
    """``u += ω D^{-1}(f - A u)`` in place at the distinct flat grid indices ``index`` (their Jacobi step), for
    a variable stencil (:func:`fits`); the band steps of :func:`mgcore.smoothers.red_black_gauss_seidel`."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    coef, offsets, periodic, centre = _variable_form(A)
    loops.point_relax(_grid4(u), _grid4(f), coef, offsets, periodic, centre, index.numpy(), float(omega))
    return u


def coupled(A, within: bool = True) -> Tensor | None:
    """Boolean grid: where a row of the variable stencil ``A`` couples to another point by a non-zero
    off-diagonal coefficient (``within``: to a point of the grid); None where the loops do not apply."""
    cached = _coupled(A)
    if cached is None:
        return None
    return (cached[1] if within else cached[2]).clone()


def coupled_count(A, within: bool = True) -> int | None:
    """How many rows :func:`coupled` marks (a count instead of a pass over the grid: every level's set-up asks
    whether all rows or none couple); None where the loops do not apply."""
    cached = _coupled(A)
    if cached is None:
        return None
    return cached[3] if within else cached[4]


def zero_diagonal_count(A) -> int | None:
    """How many rows of the variable stencil ``A`` have a zero diagonal, if the pass of :func:`coupled` counted
    them already (it does, and keeps the count with its grids); None when it has not run on these coefficients,
    or when ``A``'s coupled rows were cut from a larger stencil's (:func:`crop_coupled`) that has zero diagonals.
    Never a pass of its own: a caller without the count compares the diagonal itself."""
    if _variable_form(A) is None:
        return None
    cached = A.__dict__.get("_kernel_coupled")
    if cached is None or cached[0] != A.__dict__["_kernel_variable_form"][0]:
        return None
    return cached[5]


def _coupled(A) -> tuple | None:
    variable = _variable_form(A)
    if variable is None or not wanted(A.coefficients[0].numel()):
        return None
    # Both kinds and their counts in one pass, kept on the stencil with its loop form: a level asks for each
    # once or twice.
    key = A.__dict__["_kernel_variable_form"][0]
    cached = A.__dict__.get("_kernel_coupled")
    if cached is None or cached[0] != key:
        coef, offsets, periodic, centre = variable
        loops = _load()
        loops.set_threads(torch.get_num_threads())
        inside = torch.empty(A.grid_shape, dtype=torch.bool)
        anywhere = torch.empty(A.grid_shape, dtype=torch.bool)
        counts = loops.coupled_rows(coef, offsets, periodic, centre, _mask3(inside)[0], _mask3(anywhere)[0])
        cached = (key, inside, anywhere, int(counts[0]), int(counts[1]), int(counts[2]))
        A.__dict__["_kernel_coupled"] = cached
    return cached


def crop_coupled(whole, part, box: tuple[slice, ...]) -> None:
    """Give ``part`` (``whole`` on the sub-grid ``box``, :meth:`~mgcore.operators.Stencil.cropped`) the
    :func:`coupled` grids cut from those kept on ``whole``, instead of a pass over its coefficients.

    Valid when no row of ``box`` couples to a point of ``whole`` outside ``box`` (:mod:`mgcore.crop` leaves a
    margin of decoupled rows): then a row couples inside ``box`` exactly when it couples inside ``whole``, and
    beyond ``box``'s faces exactly when it does beyond ``whole``'s.  Nothing happens where ``whole`` has none kept.
    """
    cached = whole.__dict__.get("_kernel_coupled")
    form = whole.__dict__.get("_kernel_variable_form")
    if cached is None or form is None or cached[0] != form[0] or _variable_form(part) is None:
        return
    inside, anywhere = cached[1][box].contiguous(), cached[2][box].contiguous()
    key = part.__dict__["_kernel_variable_form"][0]
    # The part's zero diagonals are known only when the whole has none.
    zero_diagonals = 0 if cached[5] == 0 else None
    part.__dict__["_kernel_coupled"] = (key, inside, anywhere, cached[3], int(anywhere.sum()), zero_diagonals)


def band(inactive: Tensor, width: int) -> tuple[Tensor, int] | None:
    """Boolean grid: the points that are not ``inactive`` (a 2D or 3D boolean CPU grid) within ``width``
    points of an inactive one, along every axis (a box), and how many they are; None where the loops do not
    apply."""
    if inactive.dim() not in (2, 3) or inactive.device.type != "cpu" or not wanted(inactive.numel()):
        return None
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    out = torch.empty(inactive.shape, dtype=torch.bool)
    count = loops.band_of(_mask3(inactive.contiguous())[0], int(width), _mask3(out)[0])
    return out, int(count)


def galerkin(
    A, tables: Sequence[AxisTables] | None, active: Tensor | None, symmetric: bool = False
) -> tuple[Tensor, Tensor, list[bool]] | None:
    """The 2D Galerkin operator ``R A P`` of a variable stencil of radius 1 as nine coefficient arrays
    ``(9, *coarse)`` (offsets ``(-1, -1), (-1, 0), ..., (1, 1)``), with ``P`` the tensor-product
    prolongation ``tables`` times the mask ``active`` and ``R = P^T / 4``; the coarse points under which
    no active fine point lies (``(*coarse)``, bool); and whether each offset's coupling is non-zero anywhere.
    Couplings beyond a non-periodic face are zero; with ``symmetric`` (a symmetric ``A``) each coupling and its
    mirror are averaged; an empty row has the mean |diagonal| of the others on its diagonal (unless all rows
    are empty).  None where the loops do not apply (then the caller probes).  Rows away from the irregular
    ones of ``A`` (:func:`_split_form`) are computed once."""
    if (
        not tables
        or len(tables) != 2
        or any(t.first < 0 for t in tables)
        or not wanted(math.prod(t.sizes[0] for t in tables))
        or getattr(A, "dim", 0) != 2
        or A.grid_shape != tuple(t.sizes[0] for t in tables)
    ):
        return None
    variable = _variable_form(A)
    if variable is None:
        return None
    coef, offsets, periodic, _ = variable
    split_form = _split_form(A)
    n, m = A.grid_shape
    irregular = split_form[5] if split_form is not None else np.ones((1, n, m), dtype=np.uint8)
    mask = np.ones((1, n, m), dtype=np.bool_) if active is None else _mask3(active)[0]
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    coarse = tuple(t.sizes[1] for t in tables)
    out = torch.empty((9, *coarse), dtype=A.coefficients.dtype)
    empty = torch.empty(coarse, dtype=torch.bool)
    present = np.zeros(9, dtype=np.bool_)
    t0, t1 = ((t.p_index, t.p_weight, t.r_index, t.r_weight) for t in tables)
    loops.galerkin(coef, offsets, periodic, mask, t0, t1, tables[0].first, tables[1].first, irregular,
                   bool(symmetric), out.numpy(), empty.numpy(), present)
    return out, empty, present.tolist()


# ---------------------------------------------------------------------------------------------- transfers
@dataclass(frozen=True)
class AxisTables:
    """One axis of a tensor-product transfer, as the loops read it.

    ``p_index``/``p_weight`` (``(n, 2)``): the coarse points and weights each fine point interpolates;
    ``r_index``/``r_weight`` (``(n_coarse, 4)``): the fine points and weights each coarse point gathers under
    ``R = P^T / 2``.  Unused slots hold index 0 and weight 0.  ``first``: the fine index of coarse point 0;
    between the ends, coarse ``i`` sits on fine ``first + 2 i`` with plain linear interpolation and full
    weighting (:func:`axis_tables` checks it), which the loops compute without the tables.
    """

    p_index: np.ndarray
    p_weight: np.ndarray
    r_index: np.ndarray
    r_weight: np.ndarray
    first: int

    @property
    def sizes(self) -> tuple[int, int]:
        """``(fine, coarse)`` points."""
        return self.p_index.shape[0], self.r_index.shape[0]


def axis_tables(prolong_1d: Callable[[Tensor], Tensor], nc: int) -> AxisTables:
    """The :class:`AxisTables` of a 1D prolongation from ``nc`` coarse points, given as a function that
    interpolates the rows of a ``(rows, nc)`` array (the module's own rule, applied to the identity).

    Examples
    --------
    >>> from mgcore.transfers import _prolong_axis
    >>> t = axis_tables(lambda c: _prolong_axis(c, 1, 5), 2)  # coarse points on fine 1 and 3
    >>> t.p_index[:, 0].tolist(), t.p_weight[:, 0].tolist()
    ([0, 0, 0, 1, 1], [0.5, 1.0, 0.5, 1.0, 0.5])
    >>> t.r_index[0].tolist(), t.r_weight[0].tolist(), t.first
    ([0, 1, 2, 0], [0.25, 0.5, 0.25, 0.0], 1)
    """
    matrix = prolong_1d(torch.eye(nc, dtype=torch.float64)).T.numpy()  # (n, nc): fine rows, coarse columns
    n = matrix.shape[0]
    p_index = np.zeros((n, 2), dtype=np.int64)
    p_weight = np.zeros((n, 2))
    for j in range(n):
        (cols,) = np.nonzero(matrix[j])
        if len(cols) > 2:
            raise ValueError(f"prolong_1d: fine point {j} interpolates {len(cols)} coarse points; at most 2")
        p_index[j, : len(cols)] = cols
        p_weight[j, : len(cols)] = matrix[j, cols]
    r_index = np.zeros((nc, 4), dtype=np.int64)
    r_weight = np.zeros((nc, 4))
    for i in range(nc):
        (rows,) = np.nonzero(matrix[:, i])
        if len(rows) > 4:
            raise ValueError(f"prolong_1d: coarse point {i} reaches {len(rows)} fine points; at most 4")
        r_index[i, : len(rows)] = rows
        r_weight[i, : len(rows)] = matrix[rows, i] / 2
    # The loops compute the interior without the tables: check that it is plain linear interpolation there.
    first = int(np.argmax(matrix[:, 0] == 1.0))
    standard = np.zeros_like(matrix)
    for i in range(nc):
        standard[first + 2 * i, i] = 1.0
        if i + 1 < nc:
            standard[first + 2 * i + 1, [i, i + 1]] = 0.5
    inner = slice(first, first + 2 * (nc - 1) + 1)
    if nc < 2 or first + 2 * (nc - 1) >= n or not np.array_equal(matrix[inner], standard[inner]):
        first = -1  # no such interior: the loops do not run this axis last (fits_transfer)
    return AxisTables(p_index, p_weight, r_index, r_weight, first)


_PLANE = AxisTables(  # the trivial third axis of a 2D grid
    p_index=np.zeros((1, 2), dtype=np.int64),
    p_weight=np.array([[1.0, 0.0]]),
    r_index=np.zeros((1, 4), dtype=np.int64),
    r_weight=np.array([[1.0, 0.0, 0.0, 0.0]]),
    first=0,
)
_NO_MASK = np.ones((1, 1, 1), dtype=np.bool_)


def wanted(fine_points: int) -> bool:
    """Whether the loops should run a transfer onto a fine grid of ``fine_points`` points (:data:`MIN_POINTS`
    and :data:`SMALL_POINTS`, available, no compiled cycle being traced); checked before building their
    tables."""
    return _large_enough(fine_points) and available() and not torch.compiler.is_compiling()


def fits_transfer(tables: Sequence[AxisTables] | None, *tensors: Tensor | None) -> bool:
    """Whether :func:`restrict` and :func:`prolong` with ``tables`` (one per axis) apply to the
    ``(batch, channels, *grid)`` arrays: the loops are available, the grid is 2D or 3D with at least two coarse
    points on the last axis, and the arrays are contiguous CPU float32/float64 grids of one dtype that
    autograd does not record."""
    if not tables or len(tables) not in (2, 3) or tables[-1].first < 0:
        return False
    present = [t for t in tensors if t is not None]
    if not present:
        return False
    grad = torch.is_grad_enabled()
    dtype = present[0].dtype
    return all(
        t.device.type == "cpu"
        and t.dtype == dtype
        and dtype in (torch.float32, torch.float64)
        and t.ndim in (4, 5)
        and t.is_contiguous()
        and not (grad and t.requires_grad)
        for t in present
    )


def _tables4(tables: Sequence[AxisTables]) -> list[AxisTables]:
    return [_PLANE, *tables] if len(tables) == 2 else list(tables)


def _mask3(active: Tensor | None) -> tuple[np.ndarray, bool]:
    if active is None:
        return _NO_MASK, False
    if active.dtype != torch.bool or not active.is_contiguous() or active.requires_grad:
        active = active.detach().to(torch.bool).contiguous()
    mask = active.numpy()
    return (mask.reshape(1, *mask.shape) if mask.ndim == 2 else mask), True


_NO_SPANS = (np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.bool_))


def mask_spans(active: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The active span of each row of the boolean 2D or 3D CPU grid ``active``: ``(first, stop, whole)``, each
    ``(planes, rows)``: the first active column, one past the last (both 0 in a row with none), and whether
    every point between them is active.  A masked transfer (:func:`restrict`, :func:`prolong`) works on these
    spans only, without the mask inside a whole one; its owner keeps them."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    mask, _ = _mask3(active)
    first = np.empty(mask.shape[:2], dtype=np.int64)
    stop = np.empty(mask.shape[:2], dtype=np.int64)
    whole = np.empty(mask.shape[:2], dtype=np.bool_)
    loops.mask_spans(mask, first, stop, whole)
    return first, stop, whole


def _spans_of(active: Tensor | None, spans: tuple | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if active is None:
        return _NO_SPANS
    return spans if spans is not None else mask_spans(active)


def _check_grid(name: str, t: Tensor, grid: tuple[int, ...], lead: Sequence[int] | None = None) -> None:
    # The loops index without bounds checks: a grid that does not match the tables must never reach them.
    if tuple(t.shape[2:]) != grid or (lead is not None and tuple(t.shape[:2]) != tuple(lead)):
        raise ValueError(f"{name}: expected a grid of {grid}; got shape {tuple(t.shape)}")


def restrict(
    x: Tensor,
    tables: Sequence[AxisTables],
    active: Tensor | None = None,
    spans: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Tensor:
    """``R x`` with ``R = P^T / 2^d`` of the tensor-product prolongation ``tables`` (one per grid axis);
    ``active`` (a boolean grid) zeroes ``x`` off the active cells first (``spans``: its :func:`mask_spans`,
    formed here when not given).  The caller checked :func:`fits_transfer`."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    _check_grid("x", x, tuple(t.sizes[0] for t in tables))
    coarse = tuple(t.sizes[1] for t in tables)
    c = torch.empty((*x.shape[:2], *coarse), dtype=x.dtype)
    tp, ti, tj = _tables4(tables)
    mask, use_mask = _mask3(active)
    loops.restrict(
        _grid4(x), _grid4(c), tp.r_index, tp.r_weight, ti.r_index, ti.r_weight, tj.r_index, tj.r_weight,
        tj.first, mask, use_mask, *_spans_of(active, spans),
    )
    return c


def prolong(
    c: Tensor,
    tables: Sequence[AxisTables],
    *,
    out: Tensor | None = None,
    add_to: Tensor | None = None,
    active: Tensor | None = None,
    spans: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Tensor:
    """``P c`` of the tensor-product prolongation ``tables`` (into ``out`` when given), or ``add_to += P c``
    in place when ``add_to`` is given (then returned); ``active`` zeroes ``P c`` off the active cells
    (``spans``: its :func:`mask_spans`, formed here when not given).  The caller checked :func:`fits_transfer`."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    fine = tuple(t.sizes[0] for t in tables)
    _check_grid("c", c, tuple(t.sizes[1] for t in tables))
    target = add_to if add_to is not None else out
    if target is None:
        target = torch.empty((*c.shape[:2], *fine), dtype=c.dtype)
    _check_grid("add_to" if add_to is not None else "out", target, fine, c.shape[:2])
    tp, ti, tj = _tables4(tables)
    mask, use_mask = _mask3(active)
    loops.prolong(
        _grid4(c), _grid4(target), tp.p_index, tp.p_weight, ti.p_index, ti.p_weight, tj.p_index, tj.p_weight,
        tj.first, mask, use_mask, *_spans_of(active, spans), add_to is not None,
    )
    return target
