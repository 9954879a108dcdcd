"""Grid transfers: restriction ``R``, prolongation ``P`` and the state transfer ``Π``.

Coarsening rule (any grid size, any aspect ratio).  Along an axis with ``n >= 2`` points the coarse grid
has ``n // 2`` points and coarse point ``i`` sits on fine point ``2 i + 1``; an axis with one point is not
coarsened.  For ``n = 2^k - 1`` (or any odd ``n``) the coarse grid is again uniform with spacing ``2h``; for
even ``n`` the last coarse point lies next to the boundary, and the coarse operator is formed by Galerkin
``R A P`` so that it stays consistent (see :mod:`mgcore.hierarchy`).

``R`` is full weighting and ``P`` (bi/tri)linear interpolation with ``R = P^T / 2^d`` on every grid
(Trottenberg, Oosterlee & Schüller, *Multigrid*, 2001, section 2.3).  The transfers act on tensors shaped
``(batch, channels, *grid)`` one axis at a time, by slicing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvProlongation",
    "ConvRestriction",
    "FullWeighting",
    "Injection",
    "Linear",
    "coarse_shape",
    "cubic_interpolate",
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
        for axis in range(x.ndim - self.dim, x.ndim):
            x = _restrict_axis(x, axis)
        return x


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
        offset = c.ndim - self.dim
        last = len(fine_shape) - 1
        for k, n in enumerate(fine_shape):
            c = _prolong_axis(c, offset + k, int(n), out if k == last else None)
        return c


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
    uniformly (even ``n``) fall back to linear interpolation.

    Examples
    --------
    >>> import torch
    >>> c = torch.tensor([[[0.25, 0.5, 0.75]]], dtype=torch.float64) ** 3  # x^3 at x = 1/4, 1/2, 3/4
    >>> cubic_interpolate(c, (7,), 1)[0, 0, 2].item() == 0.375 ** 3
    True
    """
    offset = c.ndim - dim
    for k, n in enumerate(fine_shape):
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
