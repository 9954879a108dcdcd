"""Fused CPU loops for the hot paths of constant stencils, behind the shared blocks.

In eager PyTorch a colour of red-black Gauss-Seidel is a residual on the whole grid (the centre term, then one
pass per neighbour) and a masked update: six passes over memory for half of the points, about 5 ms per sweep
at 1023^2 on a 2-core CPU.  One compiled loop over the rows reads ``u`` and ``f`` once and updates the colour
in place: 0.7 ms.  On the CPU, with Numba installed, the shared smoothing block
(:func:`mgcore.blocks.residual_correction`) and :meth:`mgcore.operators.Stencil.residual` hand the cases
below to these loops; the iterates are the same up to round-off, and every other case (a GPU, autograd,
variable coefficients, diagonal couplings, a compiled cycle) runs the PyTorch path as before.

* :func:`residual` -- ``f - A u`` for a constant, axis-aligned stencil of radius 1 (5-point in 2D, 7-point in
  3D), with Dirichlet, periodic and box-scheme Neumann faces;
* :func:`gauss_seidel_colour_` -- one colour of red-black Gauss-Seidel for the same stencils.

The first call in a fresh environment compiles the loops (a few seconds; Numba caches them on disk, so later
processes load them in a fraction of a second).  ``MGCORE_KERNELS=0`` in the environment, or
:func:`disabled`, runs the PyTorch path instead (for comparisons and tests).

Examples
--------
>>> import torch
>>> from mgcore.operators import Stencil
>>> A = Stencil.laplacian(2, h=1.0)
>>> u = torch.rand(1, 1, 9, 9, dtype=torch.float64)
>>> f = torch.rand_like(u)
>>> with disabled():
...     reference = A.residual(u, f)
>>> bool(torch.allclose(A.residual(u, f), reference, rtol=0, atol=1e-12))
True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["available", "disabled", "fits", "gauss_seidel_colour_", "residual"]

_enabled = os.environ.get("MGCORE_KERNELS", "1") != "0"
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
    available, ``A`` is a constant, axis-aligned stencil of radius 1 in 2D or 3D, and the arrays are
    contiguous CPU float32/float64 arrays of one dtype and grid (at least 3 points per axis) that autograd
    does not record.  ``colours``: also two colours must decouple (an even number of points on each periodic
    axis), as red-black Gauss-Seidel needs.

    Examples
    --------
    >>> from mgcore.operators import Stencil
    >>> u = torch.zeros(1, 1, 8, 8)
    >>> fits(Stencil.laplacian(2), u) == available()
    True
    >>> fits(Stencil.laplacian(2), u.requires_grad_())
    False
    """
    if not available() or torch.compiler.is_compiling() or _constant_form(A) is None:
        return False  # a compiled cycle traces the PyTorch path (one graph)
    first = next((t for t in tensors if t is not None), None)
    if first is None:
        return False
    grid = tuple(first.shape[2:])
    if len(grid) != A.dim or min(grid) < 3:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if (
            t.device.type != "cpu"
            or t.dtype not in (torch.float32, torch.float64)
            or t.dtype != first.dtype
            or tuple(t.shape) != tuple(first.shape)
            or not t.is_contiguous()
            or (grad and t.requires_grad)
        ):
            return False
    if colours and any(periodic and n % 2 for periodic, n in zip(A.periodic, grid)):
        return False
    return True


def _grid4(t: Tensor) -> np.ndarray:
    """The loops' ``(batch, P, N, M)`` NumPy view of a contiguous ``(batch, channels, *grid)`` CPU tensor."""
    shape = t.shape
    if len(shape) == 4:
        return t.detach().numpy().reshape(shape[0] * shape[1], 1, shape[2], shape[3])
    return t.detach().numpy().reshape(shape[0] * shape[1], shape[2], shape[3], shape[4])


def residual(A, u: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
    """``f - A u`` by one compiled loop (``out`` receives it when given); the caller checked :func:`fits`."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    c, modes = _constant_form(A)
    if out is None:
        out = torch.empty_like(f, memory_format=torch.contiguous_format)
    loops.residual(_grid4(u), _grid4(f), _grid4(out), c, modes)
    return out


def gauss_seidel_colour_(A, u: Tensor, f: Tensor, parity: int, omega: float = 1.0) -> Tensor:
    """``u += ω D^{-1}(f - A u)`` in place at the points whose index sum has ``parity`` (one colour of
    red-black Gauss-Seidel, :func:`mgcore.smoothers.red_black_gauss_seidel`); the caller checked
    :func:`fits` with ``colours=True``."""
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    c, modes = _constant_form(A)
    loops.gauss_seidel_colour(_grid4(u), _grid4(f), c, modes, int(parity), float(omega))
    return u
