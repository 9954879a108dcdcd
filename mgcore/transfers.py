"""Grid transfers: restriction ``R``, prolongation ``P`` and the state transfer ``Π``.

Coarsening rule (any grid size, any aspect ratio).  Along an axis with ``n >= 2`` points the coarse grid
has ``n // 2`` points and coarse point ``i`` sits on fine point ``2 i + 1``; an axis with one point is not
coarsened.  For ``n = 2^k - 1`` (or any odd ``n``) the coarse grid is again uniform with spacing ``2h``; for
even ``n`` the last coarse point lies next to the boundary, and the coarse operator is formed by Galerkin
``R A P`` so that it stays consistent (see :mod:`mgcore.hierarchy`).

By default ``R`` is full weighting and ``P`` (bi/tri)linear interpolation with ``R = P^T / 2^d`` on every
grid (Trottenberg, Oosterlee & Schüller, *Multigrid*, 2001, section 2.3); they act on tensors shaped
``(batch, channels, *grid)`` one axis at a time, by slicing.  For rough or jumping coefficients,
:func:`operator_dependent_transfers` builds ``P`` from the stencil itself (Alcouffe, Brandt, Dendy & Painter
1981; Dendy 1982), again with ``R = P^T / 2^d``; :class:`WeightedProlongation` and
:class:`WeightedRestriction` apply any such per-point 3^d-weight transfer.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgcore import kernels
from mgcore.operators import _shift_slices

__all__ = [
    "ConvProlongation",
    "ConvRestriction",
    "FullWeighting",
    "Injection",
    "Linear",
    "WeightedProlongation",
    "WeightedRestriction",
    "coarse_shape",
    "cubic_interpolate",
    "operator_dependent_transfers",
]


def coarse_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The coarse grid of ``shape`` under the rule above.

    Examples
    --------
    >>> coarse_shape((1023, 1023)), coarse_shape((10, 7)), coarse_shape((3, 1))
    ((511, 511), (5, 3), (1, 1))
    """
    return tuple(n // 2 if n >= 2 else n for n in shape)


def _stride_view(x: Tensor, axis: int, start: int, count: int) -> Tensor:
    """The view ``x[..., start : start + 2 * count : 2, ...]`` along ``axis``."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + 2 * count - 1, 2) if count > 0 else slice(0, 0)
    return x[tuple(index)]


def _restrict_axis(x: Tensor, axis: int) -> Tensor:
    """Full weighting ``c_i = (x_{2i} + 2 x_{2i+1} + x_{2i+2}) / 4`` along ``axis`` (zero outside)."""
    n = x.shape[axis]
    if n < 2:
        return x
    nc = n // 2
    c = _stride_view(x, axis, 1, nc).mul(0.5)
    c.add_(_stride_view(x, axis, 0, nc), alpha=0.25)
    right = (n - 1) // 2  # coarse points whose right neighbour 2i+2 lies inside the grid
    if right > 0:
        c.narrow(axis, 0, right).add_(_stride_view(x, axis, 2, right), alpha=0.25)
    return c


def _prolong_axis(c: Tensor, axis: int, n: int, out: Tensor | None = None) -> Tensor:
    """Linear interpolation along ``axis`` from ``n // 2`` coarse points to ``n`` fine points."""
    if n < 2:
        return c if out is None else out.copy_(c)
    nc = n // 2
    if c.shape[axis] != nc:
        raise ValueError(f"coarse grid has {c.shape[axis]} points along axis {axis}; expected {nc} for {n}")
    shape = list(c.shape)
    shape[axis] = n
    x = c.new_empty(shape) if out is None else out
    _stride_view(x, axis, 1, nc).copy_(c)  # fine 2i+1 = coarse i
    even = _stride_view(x, axis, 0, (n + 1) // 2)  # fine 2i = (c_{i-1} + c_i) / 2, zero boundary
    n_even = (n + 1) // 2
    even.narrow(axis, 0, min(nc, n_even)).copy_(c.narrow(axis, 0, min(nc, n_even))).mul_(0.5)
    if n_even > nc:  # odd n: the last even point has only its left coarse neighbour
        even.narrow(axis, nc, 1).copy_(c.narrow(axis, nc - 1, 1)).mul_(0.5)
    if nc > 1:
        even.narrow(axis, 1, nc - 1).add_(c.narrow(axis, 0, nc - 1), alpha=0.5)
    return x


class FullWeighting(nn.Module):
    """Full-weighting restriction ``R = P^T / 2^d`` in any dimension.

    Examples
    --------
    >>> import torch
    >>> R = FullWeighting(1)
    >>> R(torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]]))
    tensor([[[2., 4.]]])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        grid = tuple(x.shape[x.ndim - self.dim :])
        tables = _tables(grid)
        if kernels.fits_transfer(tables, x):  # one compiled pass on the CPU
            return kernels.restrict(x, tables)
        for axis in range(x.ndim - self.dim, x.ndim):
            x = _restrict_axis(x, axis)
        return x


@functools.lru_cache(maxsize=256)
def _linear_tables(n: int) -> kernels.AxisTables:
    """The compiled loops' tables of :func:`_prolong_axis` onto ``n`` fine points (``n >= 2``)."""
    return kernels.axis_tables(lambda c: _prolong_axis(c, 1, n), n // 2)


def _tables(fine_shape: Sequence[int]) -> list[kernels.AxisTables] | None:
    """The tables of the tensor-product transfers on ``fine_shape``; None where an axis has one point, or the
    loops do not run (a compiled cycle traces the PyTorch path)."""
    if len(fine_shape) not in (2, 3) or min(fine_shape) < 2 or not kernels.wanted(math.prod(fine_shape)):
        return None
    return [_linear_tables(int(n)) for n in fine_shape]


class Linear(nn.Module):
    """(Bi/tri)linear prolongation ``P`` onto a fine grid of shape ``fine_shape``.

    Examples
    --------
    >>> import torch
    >>> P = Linear(1)
    >>> P(torch.tensor([[[2.0, 4.0]]]), (5,))
    tensor([[[1., 2., 3., 4., 2.]]])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, c: Tensor, fine_shape: Sequence[int], out: Tensor | None = None) -> Tensor:
        """Interpolate ``c`` to ``fine_shape``; ``out`` (no autograd) receives the result without allocating."""
        fine_shape = tuple(int(n) for n in fine_shape)
        tables = self._compiled_tables(c, fine_shape, out)
        if tables is not None:
            return kernels.prolong(c, tables, out=out)
        offset = c.ndim - self.dim
        last = len(fine_shape) - 1
        for k, n in enumerate(fine_shape):
            c = _prolong_axis(c, offset + k, int(n), out if k == last else None)
        return c

    def _compiled_tables(
        self, c: Tensor, fine_shape: tuple[int, ...], *arrays: Tensor | None
    ) -> list[kernels.AxisTables] | None:
        """The tables with which the compiled loops interpolate ``c`` onto ``fine_shape``
        (:mod:`mgcore.kernels`), or None where they do not."""
        if len(fine_shape) != self.dim or tuple(c.shape[2:]) != coarse_shape(fine_shape):
            return None
        tables = _tables(fine_shape)
        return tables if kernels.fits_transfer(tables, c, *arrays) else None

    def accumulate_(self, u: Tensor, c: Tensor, workspace: Tensor | None = None) -> Tensor:
        """``u += P c`` in place (no autograd): one pass on the CPU, else through ``workspace`` (optional,
        shaped like ``u``) without allocating.

        Examples
        --------
        >>> import torch
        >>> u = torch.ones(1, 1, 5)
        >>> Linear(1).accumulate_(u, torch.tensor([[[2.0, 4.0]]]))
        tensor([[[2., 3., 4., 5., 3.]]])
        """
        fine_shape = tuple(u.shape[2:])
        tables = self._compiled_tables(c, fine_shape, u)
        if tables is not None:
            return kernels.prolong(c, tables, add_to=u)
        return u.add_(self(c, fine_shape, out=workspace))


class Injection(nn.Module):
    """Injection ``c_i = x_{2i+1}``: the state transfer Π of FAS on nested vertex-centred grids.

    Examples
    --------
    >>> import torch
    >>> Injection(1)(torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]]))
    tensor([[[2., 4.]]])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        for axis in range(x.ndim - self.dim, x.ndim):
            n = x.shape[axis]
            if n >= 2:
                x = _stride_view(x, axis, 1, n // 2)
        return x.clone()


def _cubic_axis(c: Tensor, axis: int, n: int) -> Tensor:
    """Cubic interpolation along ``axis`` for odd ``n`` (uniform nesting), linear otherwise."""
    nc = n // 2 if n >= 2 else n
    if n < 2 or n % 2 == 0 or nc < 3:
        return _prolong_axis(c, axis, n)
    # Coarse values with the zero boundary on both sides: p_0 = 0, p_{j+1} = c_j, p_{nc+1} = 0.
    pad = [0, 0] * (c.ndim - 1 - axis) + [1, 1]
    p = F.pad(c, pad)
    shape = list(c.shape)
    shape[axis] = n
    x = c.new_empty(shape)
    _stride_view(x, axis, 1, nc).copy_(c)
    # Fine point 2i lies midway between p_i and p_{i+1}, i = 0..nc.  Interior midpoints use the
    # symmetric 4-point rule (-1, 9, 9, -1)/16; the two next to the boundary use the one-sided
    # rule (5, 15, -5, 1)/16 on the four nearest points.
    even = _stride_view(x, axis, 0, nc + 1)

    def seg(start: int, count: int) -> Tensor:
        return p.narrow(axis, start, count)

    m = nc - 1  # interior midpoints i = 1..nc-1 use p_{i-1}, p_i, p_{i+1}, p_{i+2}
    mid = (seg(1, m) + seg(2, m)).mul_(9.0 / 16.0).sub_((seg(0, m) + seg(3, m)).mul_(1.0 / 16.0))
    even.narrow(axis, 1, m).copy_(mid)
    first = seg(0, 1) * (5 / 16) + seg(1, 1) * (15 / 16) - seg(2, 1) * (5 / 16) + seg(3, 1) * (1 / 16)
    last = (
        seg(nc + 1, 1) * (5 / 16) + seg(nc, 1) * (15 / 16) - seg(nc - 1, 1) * (5 / 16) + seg(nc - 2, 1) * (1 / 16)
    )
    even.narrow(axis, 0, 1).copy_(first)
    even.narrow(axis, nc, 1).copy_(last)
    return x


def cubic_interpolate(c: Tensor, fine_shape: Sequence[int], dim: int) -> Tensor:
    """Tensor-product cubic interpolation for full multigrid (FMG).

    Cubic interpolation of the coarse solution keeps FMG at discretisation accuracy for second-order
    problems with one V-cycle per level (Trottenberg et al. 2001, section 2.6).  Axes that do not nest
    uniformly (even ``n``) fall back to linear interpolation; axes of the fine size already (kept by
    semicoarsening) are left as they are.

    Examples
    --------
    >>> import torch
    >>> c = torch.tensor([[[0.25, 0.5, 0.75]]], dtype=torch.float64) ** 3  # x^3 at x = 1/4, 1/2, 3/4
    >>> cubic_interpolate(c, (7,), 1)[0, 0, 2].item() == 0.375 ** 3
    True
    """
    offset = c.ndim - dim
    for k, n in enumerate(fine_shape):
        if c.shape[offset + k] != int(n):  # an axis semicoarsening kept needs no interpolation
            c = _cubic_axis(c, offset + k, int(n))
    return c


class ConvRestriction(nn.Module):
    """Trainable restriction: a stride-2 convolution aligned with the vertex-centred coarsening rule.

    Coarse point ``i`` is the kernel's centre on fine point ``2i + 1``; initialised to full weighting.

    Examples
    --------
    >>> import torch
    >>> R = ConvRestriction(1, dim=2)
    >>> x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    >>> torch.allclose(R.to(torch.float64)(x), FullWeighting(2)(x))
    True
    """

    def __init__(self, channels: int, *, dim: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size != 3:
            raise ValueError(f"kernel_size: only 3 is aligned with the coarsening rule; got {kernel_size}")
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim = dim
        self.conv = conv(channels, channels, kernel_size, stride=2, padding=0, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            w1 = torch.tensor([0.25, 0.5, 0.25])
            kernel = w1
            for _ in range(dim - 1):
                kernel = kernel.unsqueeze(-1) * w1
            for ch in range(channels):
                self.conv.weight[ch, ch] = kernel

    def forward(self, x: Tensor) -> Tensor:
        # An even axis needs one zero (boundary) point on its right for the last coarse point.
        pad = []
        for n in reversed(x.shape[2:]):
            pad += [0, 1 if n % 2 == 0 else 0]
        return self.conv(F.pad(x, pad) if any(pad) else x)


class ConvProlongation(nn.Module):
    """Trainable prolongation: a stride-2 transposed convolution, initialised to linear interpolation.

    Examples
    --------
    >>> import torch
    >>> P = ConvProlongation(1, dim=2).to(torch.float64)
    >>> c = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    >>> torch.allclose(P(c, (9, 9)), Linear(2)(c, (9, 9)))
    True
    """

    def __init__(self, channels: int, *, dim: int = 2) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if dim == 2 else nn.ConvTranspose3d
        self.dim = dim
        self.conv = conv(channels, channels, 3, stride=2, padding=0, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            w1 = torch.tensor([0.5, 1.0, 0.5])
            kernel = w1
            for _ in range(dim - 1):
                kernel = kernel.unsqueeze(-1) * w1
            for ch in range(channels):
                self.conv.weight[ch, ch] = kernel

    def forward(self, c: Tensor, fine_shape: Sequence[int]) -> Tensor:
        # The transposed convolution yields 2 nc + 1 points; an even fine axis drops the last one.
        x = self.conv(c)
        index = tuple(slice(0, int(n)) for n in fine_shape)
        return x[(..., *index)]


def _weighted_views(
    fine_shape: Sequence[int], coarse: Sequence[int], offset: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(fine, coarse)`` pairing fine point ``2 i + 1 + o`` with coarse point ``i`` where it is inside."""
    fine_index, coarse_index = [], []
    for n, m, o in zip(fine_shape, coarse, offset):
        count = m if 2 * (m - 1) + 1 + o < n else m - 1  # an even axis has no fine point 2m for o = +1
        start = 1 + o
        fine_index.append(slice(start, start + 2 * count - 1, 2) if count > 0 else slice(0, 0))
        coarse_index.append(slice(0, count))
    return tuple(fine_index), tuple(coarse_index)


class WeightedProlongation(nn.Module):
    """Prolongation with its own weights at every coarse point: fine point ``2 i + 1 + o`` receives
    ``weights[o][i] * c[i]`` for each offset ``o`` in ``{-1, 0, 1}^d``.

    Linear interpolation is the case of constant weights ``prod_k (1 - |o_k| / 2)``;
    :func:`operator_dependent_transfers` computes them from a stencil.

    Parameters
    ----------
    weights : Tensor
        Shape ``(3,) * d + coarse_shape``: ``weights[o + 1]`` is the weight of offset ``o``.
    fine_shape : tuple of int
        The fine grid; every axis must coarsen (``n >= 2``).

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([0.5, 1.0, 0.5]).reshape(3, 1).expand(3, 2)  # linear interpolation, 2 coarse points
    >>> WeightedProlongation(w, (5,))(torch.tensor([[[2.0, 4.0]]]), (5,))
    tensor([[[1., 2., 3., 4., 2.]]])
    """

    weights: Tensor

    def __init__(self, weights: Tensor, fine_shape: Sequence[int]) -> None:
        super().__init__()
        fine_shape = tuple(int(n) for n in fine_shape)
        dim = len(fine_shape)
        if any(n < 2 for n in fine_shape):
            raise ValueError(f"fine_shape: every axis must have at least 2 points to coarsen; got {fine_shape}")
        expected = (3,) * dim + coarse_shape(fine_shape)
        if tuple(weights.shape) != expected:
            raise ValueError(
                f"weights: expected shape {expected} for fine grid {fine_shape}; got {tuple(weights.shape)}"
            )
        self.dim = dim
        self.fine_shape = fine_shape
        self.register_buffer("weights", weights.detach().clone())
        self._views = {
            o: _weighted_views(fine_shape, expected[dim:], o) for o in itertools.product((-1, 0, 1), repeat=dim)
        }

    def forward(self, c: Tensor, fine_shape: Sequence[int] | None = None, out: Tensor | None = None) -> Tensor:
        """Interpolate ``c`` (shape ``(N, C, *coarse)``) to the fine grid; ``out`` receives it (no autograd)."""
        if fine_shape is not None and tuple(int(n) for n in fine_shape) != self.fine_shape:
            raise ValueError(f"fine_shape: this prolongation was built for {self.fine_shape}; got {tuple(fine_shape)}")
        shape = (*c.shape[: c.ndim - self.dim], *self.fine_shape)
        x = c.new_zeros(shape) if out is None else out.zero_()
        weights = self.weights.to(c.dtype)
        for o, (fine_index, coarse_index) in self._views.items():
            w = weights[tuple(v + 1 for v in o)][coarse_index]
            x[(..., *fine_index)].addcmul_(w, c[(..., *coarse_index)])
        return x


class WeightedRestriction(nn.Module):
    """The restriction ``R = P^T / 2^d`` of a :class:`WeightedProlongation` ``P`` (same weights).

    The factor ``2^-d`` keeps the Galerkin operator ``R A P`` scaled like the operator rediscretised on the
    grid of spacing ``2h`` (it is full weighting when ``P`` is linear interpolation).

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([0.5, 1.0, 0.5]).reshape(3, 1).expand(3, 2)
    >>> R = WeightedRestriction(WeightedProlongation(w, (5,)))
    >>> R(torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]]))
    tensor([[[2., 4.]]])
    """

    def __init__(self, prolongation: WeightedProlongation) -> None:
        super().__init__()
        self.dim = prolongation.dim
        self.fine_shape = prolongation.fine_shape
        self.register_buffer("weights", prolongation.weights * 2.0**-prolongation.dim)
        self._views = prolongation._views

    def forward(self, x: Tensor) -> Tensor:
        """Restrict ``x`` (shape ``(N, C, *fine)``) to the coarse grid."""
        if tuple(x.shape[x.ndim - self.dim :]) != self.fine_shape:
            raise ValueError(f"x: expected a grid {self.fine_shape}; got {tuple(x.shape[x.ndim - self.dim:])}")
        shape = (*x.shape[: x.ndim - self.dim], *self.weights.shape[self.dim :])
        c = x.new_zeros(shape)
        weights = self.weights.to(x.dtype)
        for o, (fine_index, coarse_index) in self._views.items():
            w = weights[tuple(v + 1 for v in o)][coarse_index]
            c[(..., *coarse_index)].addcmul_(w, x[(..., *fine_index)])
        return c


def _shifted(a: Tensor, offset: Sequence[int]) -> Tensor:
    """``b[x] = a[x + offset]`` with zero where ``x + offset`` leaves the grid."""
    b = torch.zeros_like(a)
    dst, src = _shift_slices(tuple(offset), a.shape)
    b[dst] = a[src]
    return b


def operator_dependent_transfers(
    offsets: Sequence[Sequence[int]], coefficients: Tensor, fine_shape: Sequence[int]
) -> tuple[WeightedRestriction, WeightedProlongation]:
    """Operator-dependent ("black box") transfers of a 2D stencil of radius 1: ``(R, P)`` with ``R = P^T / 4``.

    Linear interpolation averages across a jump of the coefficient, so the coarse-grid correction fails
    near rough or discontinuous coefficients; interpolating with the stencil's own weights makes the
    flux, not the solution, continuous (Alcouffe, Brandt, Dendy & Painter, SIAM J. Sci. Stat. Comput. 2,
    1981; Dendy, J. Comput. Phys. 48, 1982; Trottenberg et al. 2001, section 7.7).  With ``a_o(x)`` the
    stencil coefficient of offset ``o`` at ``x`` (zero where ``x + o`` is a boundary point):

    * a fine point on a coarse row (between coarse points in ``x``) collapses the stencil along ``y`` and
      takes ``w_{±1} = -sum_t a_{(±1, t)} / sum_t a_{(0, t)}``; the same with the axes swapped on a coarse
      column;
    * a fine point in a coarse cell solves its own equation ``(A P c)(x) = 0`` for its value, given the
      coarse corners and the four edge points just interpolated.

    For the 5-point Laplacian and its Galerkin coarse operators this is exactly bilinear interpolation.

    Parameters
    ----------
    offsets : sequence of tuple of int
        Stencil offsets (2D, radius 1; missing offsets count as zero).
    coefficients : Tensor
        Shape ``(K,)`` or ``(K, *fine_shape)``, as :class:`mgcore.operators.Stencil` stores them.
    fine_shape : tuple of int
        The fine grid: two odd sides of at least 3 points (so the coarse grid nests uniformly).

    Returns
    -------
    R : WeightedRestriction
    P : WeightedProlongation

    Raises
    ------
    ValueError
        If the stencil is not 2D of radius 1, or a collapsed diagonal is not positive (the stencil is not
        diffusion-like, so these weights are undefined; use linear interpolation).

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import Stencil
    >>> A = Stencil.laplacian(2)
    >>> R, P = operator_dependent_transfers(A.offsets, A.coefficients, (7, 7))
    >>> c = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    >>> torch.allclose(P(c, (7, 7)), Linear(2)(c, (7, 7))), torch.allclose(R(P(c)), FullWeighting(2)(P(c)))
    (True, True)
    """
    offsets = [tuple(int(v) for v in o) for o in offsets]
    fine_shape = tuple(int(n) for n in fine_shape)
    if len(fine_shape) != 2 or any(len(o) != 2 or max(abs(v) for v in o) > 1 for o in offsets):
        raise ValueError(
            f"offsets, fine_shape: operator-dependent transfers need a 2D stencil of radius 1; got offsets {offsets} "
            f"on {fine_shape}"
        )
    if any(n < 3 or n % 2 == 0 for n in fine_shape):
        # On an even axis the last coarse point lies next to the boundary (spacing h, not 2h); collapsing the
        # stencil there mistakes the Dirichlet connection for a coupling, and the next Galerkin operator gets
        # positive off-diagonals.  Build the hierarchy's even levels with linear transfers instead.
        raise ValueError(f"fine_shape: operator-dependent transfers need odd sides >= 3; got {fine_shape}")
    dtype = coefficients.dtype if coefficients.is_floating_point() else torch.float64
    coefficients = torch.as_tensor(coefficients, dtype=dtype)
    if coefficients.ndim == 1:
        coefficients = coefficients.reshape(-1, 1, 1).expand(-1, *fine_shape)
    ones = torch.ones(fine_shape, dtype=dtype, device=coefficients.device)
    a = {o: torch.zeros_like(ones) for o in itertools.product((-1, 0, 1), repeat=2)}
    for o, values in zip(offsets, coefficients):
        a[o] = values * _shifted(ones, o)  # matrix entries only: a neighbour on the boundary is not an unknown
    column = {s: a[(s, -1)] + a[(s, 0)] + a[(s, 1)] for s in (-1, 0, 1)}  # collapsed along y
    row = {s: a[(-1, s)] + a[(0, s)] + a[(1, s)] for s in (-1, 0, 1)}  # collapsed along x
    denominators = {"x": column[0], "y": row[0], "cell": a[(0, 0)]}
    wx = {s: -column[s] / column[0] for s in (-1, 1)}  # at points between coarse points along x
    wy = {s: -row[s] / row[0] for s in (-1, 1)}  # at points between coarse points along y
    weights = torch.zeros((3, 3, *coarse_shape(fine_shape)), dtype=dtype, device=coefficients.device)
    for dx, dy in itertools.product((-1, 0, 1), repeat=2):
        # Fine point p = (2I+1+dx, 2J+1+dy) sees its coarse point (I, J) in direction s = -(dx, dy).
        sx, sy = -dx, -dy
        kind = "x" if dy == 0 else "y" if dx == 0 else "cell"
        fine_index, coarse_index = _weighted_views(fine_shape, weights.shape[2:], (dx, dy))
        if (dx, dy) != (0, 0) and bool((denominators[kind][fine_index] <= 0).any()):
            raise ValueError(
                f"coefficients: the collapsed stencil has a non-positive diagonal at some point between coarse "
                f"points ({kind}), so operator-dependent interpolation is undefined; use linear interpolation"
            )
        if dx == 0 and dy == 0:
            field = ones
        elif dy == 0:
            field = wx[sx]
        elif dx == 0:
            field = wy[sy]
        else:
            # p solves its own row: a_c u_p = -(a_s * 1 + a_(sx,0) u_(p+(sx,0)) + a_(0,sy) u_(p+(0,sy))).
            field = -(
                a[(sx, sy)] + a[(sx, 0)] * _shifted(wy[sy], (sx, 0)) + a[(0, sy)] * _shifted(wx[sx], (0, sy))
            ) / a[(0, 0)]
        weights[dx + 1, dy + 1][coarse_index] = field[fine_index]
    P = WeightedProlongation(weights, fine_shape)
    return WeightedRestriction(P), P
