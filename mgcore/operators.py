"""Linear operators on grid tensors.

Every operator in mgnet maps a tensor shaped ``(batch, channels, *grid)`` to another such tensor, in 2D or
3D.  Two kinds share the one :class:`Operator` interface, so a learned operator drops in wherever a stencil
does (He & Xu 2019, section 3: the discretisation ``A`` of multigrid and the convolution ``A*`` of a CNN are
the same object):

* :class:`Stencil` -- a fixed finite-difference stencil with constant coefficients, or with one coefficient
  per cell (variable coefficients, Galerkin coarse operators).  It is applied by tensor slicing: on a 2-core
  CPU the 5-point Laplacian by slicing measured 1.1 ms at 1023^2 against 49 ms for a 1-channel ``conv2d``.
* :class:`ConvOperator` -- a trainable ``nn.Conv2d``/``nn.Conv3d``.

Grids are *vertex centred with the Dirichlet boundary eliminated*: a grid of ``n`` points per side holds the
interior unknowns ``x_i = (i + 1) h``, ``i = 0..n-1``; neighbours outside the grid are boundary values, zero
in the operator (inhomogeneous values are moved into the right-hand side by :meth:`Stencil.lift_boundary`).

Each face of the grid carries one of three labels (``Stencil(boundary=...)``): ``"dirichlet"`` and
``"neumann"`` both leave out the neighbours beyond the face (a Neumann row is built into the coefficients,
see :mod:`mgcore.boundary`; the label tells the hierarchy to keep the constants in its coarse spaces), and
``"periodic"`` (both faces of an axis) wraps the neighbours around.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mgcore import kernels
from mgcore.blocks import scratch

__all__ = ["FACE_KINDS", "ConvOperator", "Operator", "Stencil", "lattice_shape", "parse_faces", "symmetrize_"]

Offset = tuple[int, ...]
Faces = tuple[tuple[str, str], ...]

FACE_KINDS = ("dirichlet", "neumann", "periodic")
"""The boundary labels of a grid face."""


def parse_faces(boundary, dim: int, name: str = "boundary") -> Faces:
    """Per-face labels ``((low, high), ...)`` for ``dim`` axes from one label, or one per axis (a label or a
    ``(low, high)`` pair each).  A periodic axis is periodic on both faces.

    Examples
    --------
    >>> parse_faces("neumann", 2)
    (('neumann', 'neumann'), ('neumann', 'neumann'))
    >>> parse_faces(["periodic", ("neumann", "dirichlet")], 2)
    (('periodic', 'periodic'), ('neumann', 'dirichlet'))
    >>> parse_faces(("periodic", "dirichlet"), 1)
    Traceback (most recent call last):
    ...
    ValueError: boundary: axis 0 is periodic on one face only; got ('periodic', 'dirichlet')
    """
    expected = (
        f"expected one of {', '.join(map(repr, FACE_KINDS))}, or {dim} of them (one per axis, each a name or a "
        "(low, high) pair)"
    )
    if isinstance(boundary, str):
        per_axis = [boundary] * dim
    else:
        try:
            per_axis = list(boundary)
        except TypeError:
            raise ValueError(f"{name}: {expected}; got {boundary!r}") from None
        if dim == 1 and len(per_axis) == 2 and all(isinstance(v, str) for v in per_axis):
            per_axis = [tuple(per_axis)]
        if len(per_axis) != dim:
            raise ValueError(f"{name}: {expected}; got {boundary!r}")
    faces = []
    for axis, entry in enumerate(per_axis):
        pair = (entry, entry) if isinstance(entry, str) else tuple(entry)
        if len(pair) != 2 or any(not isinstance(v, str) or v not in FACE_KINDS for v in pair):
            raise ValueError(f"{name}: {expected}; got {entry!r} for axis {axis}")
        if (pair[0] == "periodic") != (pair[1] == "periodic"):
            raise ValueError(f"{name}: axis {axis} is periodic on one face only; got {pair}")
        faces.append(pair)
    return tuple(faces)


Reflect = tuple[tuple[bool, bool], ...]


def _shift_pieces(
    offset: Offset, shape: Sequence[int], periodic: Sequence[bool], reflect: Reflect | None = None
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """See :func:`_shift_pieces_cached`; the arguments are made hashable here."""
    # Under torch.compile the pieces are computed once, at tracing; Dynamo would skip the cache and warn.
    pieces = _shift_pieces_cached.__wrapped__ if torch.compiler.is_compiling() else _shift_pieces_cached
    return pieces(tuple(offset), tuple(int(n) for n in shape), tuple(bool(p) for p in periodic), reflect)


def _mirror(n: int, side: int) -> slice:
    """The point mirrored across a reflecting face (index 1 from the low face, ``n - 2`` from the high one; the
    point itself on an axis of one point)."""
    index = min(1, n - 1) if side == 0 else max(n - 2, 0)
    return slice(index, index + 1)


@functools.lru_cache(maxsize=4096)
def _shift_pieces_cached(
    offset: Offset, shape: tuple[int, ...], periodic: tuple[bool, ...], reflect: Reflect | None = None
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Slice pairs ``(dst, src)`` realising ``y[x] += c * u[x + offset]``, wrapping on periodic axes.

    A non-periodic axis leaves out the points whose neighbour lies beyond the face; a periodic axis with a
    non-zero offset gives two pieces (the bulk and the wrapped strip).  A reflecting face (``reflect[axis]``,
    ``(low, high)``; offsets of one step only) takes the point mirrored across it instead: ``u[-1] = u[1]``.
    """
    per_axis = []
    for axis, (o, n, wrap) in enumerate(zip(offset, shape, periodic)):
        if o >= 0:
            bulk = (slice(0, max(n - o, 0)), slice(o, n))
            strip = (slice(max(n - o, 0), n), slice(0, min(o, n)))
        else:
            bulk = (slice(-o, n), slice(0, max(n + o, 0)))
            strip = (slice(0, min(-o, n)), slice(max(n + o, 0), n))
        pieces = [bulk, strip] if wrap and o != 0 else [bulk]
        if reflect is not None and o != 0 and reflect[axis][int(o > 0)] and n > 0:
            side = int(o > 0)
            pieces.append((slice(0, 1) if side == 0 else slice(n - 1, n), _mirror(n, side)))
        per_axis.append(pieces)
    return [
        (tuple(p[0] for p in combo), tuple(p[1] for p in combo)) for combo in itertools.product(*per_axis)
    ]


Lattice = tuple[tuple[int, int], ...]


def symmetrize_(offsets: Sequence[Offset], coefficients: Tensor, periodic: Sequence[bool]) -> Tensor:
    """Average ``c_o(x)`` with ``c_{-o}(x + o)`` in place in the ``(K, *grid)`` coefficient arrays of a
    variable stencil (periodic wraps included); returns ``coefficients``.

    Examples
    --------
    >>> c = torch.tensor([[[-1.0, -1.0]], [[2.0, 2.0]], [[-1.2, -1.0]]], dtype=torch.float64)
    >>> symmetrize_([(0, -1), (0, 0), (0, 1)], c, (False, False))[[0, 2], 0].tolist()  # c_-1(1), c_+1(0): -1.1
    [[-1.0, -1.1], [-1.1, -1.0]]
    """
    index = {tuple(o): k for k, o in enumerate(offsets)}
    for k, o in enumerate(offsets):
        mirror = index.get(tuple(-v for v in o))
        if mirror is None or mirror < k:
            continue
        for dst, src in _shift_pieces(o, coefficients.shape[1:], periodic):
            mean = 0.5 * (coefficients[k][dst] + coefficients[mirror][src])  # a new array: then both written
            coefficients[k][dst] = mean
            coefficients[mirror][src] = mean
    return coefficients


def lattice_shape(lattice: Lattice, shape: Sequence[int]) -> tuple[int, ...]:
    """Points per axis of the sub-lattice ``x_k = start_k + step_k * i_k`` of a grid (``lattice`` holds the
    ``(start, step)`` pairs).

    Examples
    --------
    >>> lattice_shape(((0, 2), (1, 2)), (5, 5))
    (3, 2)
    """
    return tuple(len(range(start, int(n), step)) for (start, step), n in zip(lattice, shape))


def _lattice_piece(start: int, step: int, o: int, lo: int, hi: int, shift: int) -> tuple[slice, slice, slice]:
    """Lattice indices ``lo..hi`` of one axis, their neighbours ``+ o`` (shifted by ``shift`` when they wrap
    around) and their own grid points."""
    return (
        slice(lo, hi + 1),
        slice(start + o + shift + step * lo, start + o + shift + step * hi + 1, step),
        slice(start + step * lo, start + step * hi + 1, step),
    )


def _lattice_face(start: int, step: int, n: int, side: int) -> int | None:
    """The lattice index of the face point ``0`` (``side`` 0) or ``n - 1`` (``side`` 1), or None when the
    sub-lattice ``start + step i`` does not contain it."""
    m = len(range(start, n, step))
    if side == 0:
        return 0 if start == 0 and m else None
    return m - 1 if m and start + step * (m - 1) == n - 1 else None


@functools.lru_cache(maxsize=4096)
def _lattice_pieces(
    offset: Offset, shape: tuple[int, ...], periodic: tuple[bool, ...], lattice: Lattice,
    reflect: Reflect | None = None,
) -> list[tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """Slice triples ``(dst, src, row)`` realising ``y[i] += c[x_i] * u[x_i + offset]`` on the sub-lattice
    points ``x_i = start + step * i`` of ``lattice``: ``dst`` indexes ``y`` (lattice coordinates), ``src``
    the grid ``u`` and ``row`` the grid of coefficients.  Neighbours beyond a non-periodic face are left out;
    on a periodic axis they wrap around (a piece of their own); across a reflecting face (``reflect``, as in
    :func:`_shift_pieces_cached`) they are the mirrored point."""
    per_axis = []
    for axis, (o, n, wrap, (start, step)) in enumerate(zip(offset, shape, periodic, lattice)):
        m = len(range(start, n, step))
        # Lattice indices i whose neighbour start + step i + o lies in 0..n-1.
        first = -((start + o) // step) if start + o < 0 else 0
        last = min(m - 1, (n - 1 - start - o) // step)
        pieces = []
        if first <= last:
            pieces.append(_lattice_piece(start, step, o, first, last, 0))
        if wrap and o != 0:
            if first > 0:  # neighbours below 0 wrap to the high end
                pieces.append(_lattice_piece(start, step, o, 0, min(first, m) - 1, n))
            if last < m - 1:  # neighbours beyond n - 1 wrap to the low end
                pieces.append(_lattice_piece(start, step, o, max(last + 1, 0), m - 1, -n))
        if reflect is not None and o != 0 and reflect[axis][int(o > 0)]:
            side = int(o > 0)
            face = _lattice_face(start, step, n, side)
            if face is not None:
                grid = slice(start + step * face, start + step * face + 1)
                pieces.append((slice(face, face + 1), _mirror(n, side), grid))
        per_axis.append(pieces)
    return [tuple(tuple(p[j] for p in combo) for j in range(3)) for combo in itertools.product(*per_axis)]


def constant_form(offsets: Sequence[Offset], coefficients: np.ndarray, boundary) -> np.ndarray | None:
    """The coefficients ``(K,)`` of the constant :class:`Stencil` equal to the variable one ``(offsets,
    coefficients (K, *grid), boundary)``, or None when there is none.

    Couplings beyond a non-periodic face are ignored (a variable stencil leaves them out); on Neumann faces the
    rows must be the box scheme's, as a constant stencil applies them (mirrored neighbour, half rows).

    Examples
    --------
    >>> A = Stencil.from_kernel([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], boundary="neumann")
    >>> constant_form(A.offsets, A.coefficient_arrays((5, 6)).numpy(), "neumann").tolist()
    [-1.0, -1.0, 4.0, -1.0, -1.0]
    >>> constant_form(A.offsets, Stencil.laplacian(2).coefficient_arrays((5, 6)).numpy(), "neumann") is None
    True
    """
    coefficients = np.asarray(coefficients)
    grid = coefficients.shape[1:]
    faces = parse_faces(boundary, len(grid))
    neumann = any("neumann" in pair for pair in faces)
    if neumann and max(max(abs(v) for v in o) for o in offsets) > 1:
        return None
    centre = coefficients[(slice(None), *(n // 2 for n in grid))].copy()
    expected = Stencil(offsets, torch.from_numpy(centre), boundary=faces).coefficient_arrays(grid).numpy()
    given = coefficients.copy()
    for k, o in enumerate(offsets):
        for axis, ((low, _), v) in enumerate(zip(faces, o)):
            if v and low != "periodic":
                index = [slice(None)] * len(grid)
                index[axis] = slice(0, abs(v)) if v < 0 else slice(grid[axis] - v, grid[axis])
                given[k][tuple(index)] = 0.0
                expected[k][tuple(index)] = 0.0
    return centre if np.array_equal(expected, given) else None


class Operator(nn.Module):
    """A linear map on grid tensors shaped ``(batch, channels, *grid)``.

    Subclasses implement :meth:`forward`.  ``dim`` is the number of grid dimensions (2 or 3).
    """

    dim: int

    lattices: tuple[Lattice, ...] | None = None
    """Stride sub-lattices (``(start, step)`` per axis) outside which ``B r`` is zero, and on each of which
    ``B r`` depends on ``r`` there only, or None.  A ``B`` that sets them also implements
    :meth:`lattice_buffer` and :meth:`accumulate_lattice_`; the shared block
    :func:`mgcore.blocks.residual_correction` then forms ``f - A u`` on those points only (a colour of
    multicolour Gauss-Seidel, a colour of zebra lines), not on the whole grid."""

    points: Tensor | None = None
    """Flat grid indices (C order) outside which ``B r`` is zero, and at which ``B r`` depends on ``r`` there
    only, or None: a ``B`` acting on a scattered set of points (the band along a masked domain's boundary).  Such
    a ``B`` also implements :meth:`accumulate_points_` and keeps ``A``'s couplings of those points
    (:meth:`Stencil.point_couplings`) as ``couplings``; the shared block then forms ``f - A u`` at those points
    only."""

    def accumulate_points_(self, u: Tensor, r: Tensor) -> Tensor:
        """``u += B r`` at :attr:`points`, given the residual ``r`` there, shaped ``(batch * channels, P)``."""
        raise NotImplementedError(f"{type(self).__name__} declares points but no accumulate_points_")

    def lattice_buffer(self, k: int, f: Tensor, workspace: Tensor | None) -> Tensor:
        """An array shaped like ``f`` on lattice ``k`` (over ``workspace`` when it fits) for its residual."""
        return scratch(workspace, f, (*f.shape[:2], *lattice_shape(self.lattices[k], f.shape[2:])))

    def accumulate_lattice_(self, k: int, u: Tensor, r: Tensor) -> Tensor:
        """``u += B r`` on lattice ``k``, given the residual ``r`` there (no autograd; may overwrite ``r``)."""
        raise NotImplementedError(f"{type(self).__name__} declares lattices but no accumulate_lattice_")

    def residual(self, u: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
        """Return ``f - A u`` (into ``out`` when given and autograd is not recording)."""
        y = self(u)
        if out is None or y.requires_grad or f.requires_grad:
            return f - y
        return torch.sub(f, y, out=out)

    def accumulate_(self, y: Tensor, x: Tensor) -> Tensor:
        """``y += A x`` in place (no autograd); subclasses avoid the temporary where they can."""
        return y.add_(self(x))


def _shift_slices(offset: Offset, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(dst, src)`` with ``y[dst] += c * u[src]`` realising ``y[x] += c * u[x + offset]``.

    Points whose neighbour ``x + offset`` falls outside the grid are left out: that neighbour is a
    (homogeneous) Dirichlet boundary value.
    """
    dst, src = [], []
    for o, n in zip(offset, shape):
        if o >= 0:
            dst.append(slice(0, max(n - o, 0)))
            src.append(slice(o, n))
        else:
            dst.append(slice(-o, n))
            src.append(slice(0, max(n + o, 0)))
    return tuple(dst), tuple(src)


class Stencil(Operator):
    r"""A fixed stencil operator, constant or variable coefficient, in 2D or 3D.

    ``(A u)[x] = sum_k c_k(x) u[x + o_k]`` over the offsets ``o_k``; neighbours outside the grid are
    zero (homogeneous Dirichlet).

    Parameters
    ----------
    offsets : sequence of tuple of int
        The stencil offsets ``o_k``, each a tuple of ``dim`` integers.
    coefficients : array_like
        Shape ``(K,)`` for constant coefficients, or ``(K, *grid)`` with one coefficient per cell (the
        coefficient of row ``x``).  ``K == len(offsets)``.
    boundary : str or sequence
        The face labels (see :func:`parse_faces`): ``"dirichlet"`` (default), ``"neumann"``, ``"periodic"``,
        or one per axis, each a label or a ``(low, high)`` pair.  Periodic axes wrap the neighbours around;
        Dirichlet faces leave them out.  Variable coefficients carry a Neumann condition in their face rows, and
        a Neumann face leaves the neighbours beyond it out too.  A *constant* stencil (radius 1) on a Neumann
        face follows the vertex-centred box scheme (:mod:`pde.boundaries`): the neighbour beyond the face is the
        mirrored point (``u[-1] = u[1]``, the ghost point of a zero normal derivative) and the row is halved
        once per Neumann face it lies on (the half box), which keeps the matrix symmetric: the operator is
        ``W S`` with ``S`` the reflected stencil and ``W`` those weights (LeVeque 2007, section 2.12).
    grid_shape : tuple of int, optional
        The grid a *constant* stencil was discretised for (its coefficients carry that grid's ``h``), so
        that a solver can refuse a right-hand side on another grid; ``None`` (default): the stencil fits
        any grid.  Variable coefficients always know their grid; a value given must then match it.
    copy : bool
        Copy ``coefficients`` (default), or adopt the tensor itself when the caller hands it over and keeps no
        other use of it.

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2, h=1.0)
    >>> A
    Stencil(dim=2, points=5, constant, radius=1)
    >>> u = torch.zeros(1, 1, 3, 3, dtype=torch.float64); u[0, 0, 1, 1] = 1.0
    >>> A(u)[0, 0]
    tensor([[ 0., -1.,  0.],
            [-1.,  4., -1.],
            [ 0., -1.,  0.]], dtype=torch.float64)
    """

    coefficients: Tensor

    def __init__(
        self,
        offsets: Sequence[Sequence[int]],
        coefficients: Tensor | np.ndarray | Sequence[float],
        *,
        boundary: str = "dirichlet",
        grid_shape: Sequence[int] | None = None,
        copy: bool = True,
    ) -> None:
        super().__init__()
        offsets = [tuple(int(v) for v in o) for o in offsets]
        if not offsets:
            raise ValueError("offsets: expected at least one stencil offset")
        dim = len(offsets[0])
        if dim not in (1, 2, 3) or any(len(o) != dim for o in offsets):
            raise ValueError(f"offsets: expected tuples of 1, 2 or 3 integers, all the same length; got {offsets}")
        if len(set(offsets)) != len(offsets):
            raise ValueError("offsets: each offset may appear only once")
        coefficients = torch.as_tensor(coefficients)
        if not (coefficients.is_floating_point()):
            coefficients = coefficients.to(torch.get_default_dtype())
        if coefficients.ndim not in (1, 1 + dim) or coefficients.shape[0] != len(offsets):
            raise ValueError(
                f"coefficients: expected shape ({len(offsets)},) or ({len(offsets)}, *grid) with a {dim}D grid; "
                f"got {tuple(coefficients.shape)}"
            )
        faces = parse_faces(boundary, dim)
        if grid_shape is not None:
            grid_shape = tuple(int(n) for n in grid_shape)
            if len(grid_shape) != dim or min(grid_shape) < 1:
                raise ValueError(f"grid_shape: expected {dim} positive sizes; got {grid_shape}")
            if coefficients.ndim != 1 and grid_shape != tuple(coefficients.shape[1:]):
                raise ValueError(
                    f"grid_shape: {grid_shape} does not match the coefficients' grid {tuple(coefficients.shape[1:])}"
                )
        self._grid_hint: tuple[int, ...] | None = grid_shape
        self.dim = dim
        self.offsets: tuple[Offset, ...] = tuple(offsets)
        self.faces: Faces = faces
        self.periodic: tuple[bool, ...] = tuple(low == "periodic" for low, _ in faces)
        kinds = {kind for pair in faces for kind in pair}
        # One word when every face agrees ("dirichlet", "neumann", "periodic"), else "mixed".
        self.boundary = kinds.pop() if len(kinds) == 1 else "mixed"
        # The reflecting (box-scheme Neumann) faces of a constant stencil, (low, high) per axis; None if none.
        reflect = tuple((low == "neumann", high == "neumann") for low, high in faces)
        self.reflect: Reflect | None = reflect if coefficients.ndim == 1 and any(map(any, reflect)) else None
        if self.reflect is not None and max(max(abs(v) for v in o) for o in offsets) > 1:
            raise ValueError("boundary: Neumann faces of a constant stencil need radius 1 (the box scheme)")
        # A copy, so that the caller's array is never shared; copy=False adopts a tensor the caller hands over
        # (a coarse operator just computed: copying 9 arrays of a 511^2 level cost 3-5 ms of set-up).
        self.register_buffer("coefficients", coefficients.detach().clone() if copy else coefficients.detach())
        # Constant coefficients are kept as Python floats as well: `add_(x, alpha=c)` then needs no
        # broadcast tensor, and no device synchronisation happens at apply time.
        self._values: tuple[float, ...] | None = (
            tuple(float(v) for v in coefficients.tolist()) if coefficients.ndim == 1 else None
        )

    def _apply(self, fn, recurse: bool = True):
        # .to()/.float()/.double() convert the coefficient buffer; the Python floats used at apply time must
        # follow, or a float32 stencil would apply its float64 values while to_sparse() shows rounded ones.
        out = super()._apply(fn, recurse)
        if self.coefficients.ndim == 1 and self.coefficients.device.type != "meta":
            self._values = tuple(float(v) for v in self.coefficients.tolist())
        return out

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_kernel(cls, kernel: Tensor | np.ndarray | Sequence, **kwargs) -> Stencil:
        """Build a constant stencil from a dense kernel of odd size ``(2r+1,) * dim``.

        Examples
        --------
        >>> Stencil.from_kernel([[0, -1, 0], [-1, 4, -1], [0, -1, 0]]).offsets
        ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0))
        """
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim not in (1, 2, 3) or any(s % 2 == 0 for s in kernel.shape):
            raise ValueError(f"kernel: expected odd sizes in 1 to 3 dimensions; got shape {kernel.shape}")
        center = tuple(s // 2 for s in kernel.shape)
        offsets, values = [], []
        for index in itertools.product(*(range(s) for s in kernel.shape)):
            if kernel[index] != 0.0:
                offsets.append(tuple(i - c for i, c in zip(index, center)))
                values.append(kernel[index])
        return cls(offsets, torch.tensor(values, dtype=torch.float64), **kwargs)

    @classmethod
    def laplacian(
        cls,
        dim: int,
        h: float | Sequence[float] = 1.0,
        dtype: torch.dtype = torch.float64,
        *,
        grid_shape: Sequence[int] | None = None,
    ) -> Stencil:
        """The (2*dim+1)-point negative Laplacian ``-Δ_h`` with spacing ``h`` (one number or one per axis);
        ``grid_shape`` optionally records the grid it is meant for (see :class:`Stencil`).

        Examples
        --------
        >>> Stencil.laplacian(3).coefficients.tolist()
        [-1.0, -1.0, -1.0, 6.0, -1.0, -1.0, -1.0]
        """
        if dim not in (1, 2, 3):
            raise ValueError(f"dim: expected 1, 2 or 3; got {dim}")
        spacing = [float(h)] * dim if np.isscalar(h) else [float(v) for v in h]
        if len(spacing) != dim or min(spacing) <= 0:
            raise ValueError(f"h: expected a positive spacing or {dim} of them; got {h}")
        offsets, values = [], []
        for axis in range(dim):
            o = [0] * dim
            o[axis] = -1
            offsets.append(tuple(o))
            values.append(-1.0 / spacing[axis] ** 2)
        offsets.append((0,) * dim)
        values.append(sum(2.0 / s**2 for s in spacing))
        for axis in reversed(range(dim)):
            o = [0] * dim
            o[axis] = 1
            offsets.append(tuple(o))
            values.append(-1.0 / spacing[axis] ** 2)
        return cls(offsets, torch.tensor(values, dtype=dtype), grid_shape=grid_shape)

    # ------------------------------------------------------------------ properties
    @property
    def is_constant(self) -> bool:
        """True when every cell has the same coefficients."""
        return self.coefficients.ndim == 1

    @property
    def grid_shape(self) -> tuple[int, ...] | None:
        """The grid of a variable stencil, or the one a constant stencil was built for (``grid_shape=``);
        ``None`` for a constant stencil that fits any grid.

        Examples
        --------
        >>> Stencil.laplacian(2).grid_shape is None, Stencil.laplacian(2, grid_shape=(7, 7)).grid_shape
        (True, (7, 7))
        """
        if self.is_constant:
            return getattr(self, "_grid_hint", None)
        return tuple(self.coefficients.shape[1:])

    @property
    def radius(self) -> int:
        """The largest ``|o|`` component over the offsets."""
        return max(max(abs(v) for v in o) for o in self.offsets)

    @property
    def center_index(self) -> int:
        """Index of the zero offset in :attr:`offsets` (the diagonal)."""
        zero = (0,) * self.dim
        if zero not in self.offsets:
            raise ValueError("this stencil has no diagonal entry")
        return self.offsets.index(zero)

    def diagonal(self, grid_shape: Sequence[int] | None = None) -> Tensor:
        """The diagonal: a 0-d tensor (constant) or one shaped ``(1, 1, *grid)`` (variable, or constant with
        Neumann faces on ``grid_shape``, whose face rows are halved).

        Examples
        --------
        >>> Stencil.from_kernel([-1.0, 2.0, -1.0], boundary="neumann").diagonal((4,)).tolist()
        [[[1.0, 2.0, 2.0, 1.0]]]
        """
        if self.reflect is not None:
            if grid_shape is None:
                raise ValueError("grid_shape: the diagonal of a constant stencil with Neumann faces needs the grid")
            grid_shape = tuple(int(n) for n in grid_shape)
            if min(grid_shape) < 2:  # a side of one point folds couplings onto the diagonal
                c = self.coefficient_arrays(grid_shape)[self.center_index]
                return c.reshape((1, 1, *c.shape))
            c = self.coefficients[self.center_index].expand(1, 1, *grid_shape).clone()
            self._halve_faces(c, None, [(0, 1, n) for n in grid_shape])
            return c
        c = self.coefficients[self.center_index]
        return c if self.is_constant else c.reshape((1, 1, *c.shape))

    @property
    def is_axis_aligned(self) -> bool:
        """True when every off-diagonal offset lies on an axis (5-point in 2D, 7-point in 3D): two colours
        then decouple Gauss-Seidel (red-black)."""
        return all(sum(1 for v in o if v != 0) <= 1 for o in self.offsets)

    def cropped(self, box: Sequence[slice], boundary) -> Stencil:
        """The variable stencil on the sub-grid ``box`` (a ``slice(start, stop)`` per axis) with the face labels
        ``boundary``: the rows of ``box``, their coefficients copied contiguously.

        A coupling that reaches outside the box is read as ``boundary`` says (zero beyond a Dirichlet or
        Neumann face of a variable stencil); the rows are the grid's own where such couplings are zero
        (:mod:`mgcore.crop` keeps them so).  Exact symmetry (:meth:`mark_symmetric`) carries over, as every pair
        of points in the box is a pair of the grid, unless a cut axis is labelled periodic.

        Examples
        --------
        >>> import torch
        >>> A = Stencil([(0, -1), (0, 0), (0, 1)], torch.arange(18.0).reshape(3, 1, 6))
        >>> A.cropped((slice(0, 1), slice(2, 5)), "neumann").coefficients.tolist()
        [[[2.0, 3.0, 4.0]], [[8.0, 9.0, 10.0]], [[14.0, 15.0, 16.0]]]
        """
        if self.is_constant:
            raise ValueError("box: a constant stencil has no grid of its own to crop")
        grid = tuple(self.coefficients.shape[1:])
        given = tuple(box)
        if len(given) != self.dim or any(not isinstance(span, slice) or span.step not in (None, 1) for span in given):
            raise ValueError(f"box: expected {self.dim} slices of step 1 of the grid {grid}; got {given}")
        box = tuple(slice(*span.indices(n)[:2]) for span, n in zip(given, grid))
        if any(span.stop <= span.start for span in box):
            raise ValueError(f"box: expected {self.dim} non-empty slices of the grid {grid}; got {given}")
        values = self.coefficients[(slice(None), *box)].contiguous()
        shared = values.data_ptr() == self.coefficients.data_ptr()  # the whole grid: contiguous() returned it
        cropped = Stencil(self.offsets, values, boundary=boundary, copy=shared)
        whole = [span.stop - span.start == n for span, n in zip(box, grid)]
        exact = self.__dict__.get("_exactly_symmetric") == (
            self.coefficients.data_ptr(), self.coefficients._version, self.periodic
        )
        if exact and all(w or not p for w, p in zip(whole, cropped.periodic)):
            cropped.mark_symmetric()
        return cropped

    def permute_axes(self, order: Sequence[int]) -> Stencil:
        """The same operator on the grid whose axis ``a`` is this stencil's axis ``order[a]`` (the grid
        transposed by ``order``, as ``Tensor.permute``): offsets, variable coefficients and face labels follow.

        Examples
        --------
        >>> A = Stencil.from_kernel([[0, -1, 0], [-0.01, 2.02, -0.01], [0, -1, 0]])  # strong along axis 0
        >>> B = A.permute_axes((1, 0))
        >>> dict(zip(B.offsets, B.coefficients.tolist()))[(0, 1)]  # strong along axis 1 now
        -1.0
        """
        order = tuple(int(a) for a in order)
        if sorted(order) != list(range(self.dim)):
            raise ValueError(f"order: expected a permutation of 0..{self.dim - 1}; got {order}")
        moved = [tuple(o[a] for a in order) for o in self.offsets]
        rank = sorted(range(len(moved)), key=moved.__getitem__)  # lexicographic again
        coefficients = self.coefficients[rank]
        if not self.is_constant:
            coefficients = coefficients.permute(0, *(1 + a for a in order)).contiguous()
        hint = None if self._grid_hint is None else tuple(self._grid_hint[a] for a in order)
        return Stencil([moved[k] for k in rank], coefficients, boundary=[self.faces[a] for a in order],
                       grid_shape=hint)

    def is_symmetric(self, tol: float = 1e-12) -> bool:
        """True when the matrix is symmetric: ``c_o(x) == c_{-o}(x + o)`` wherever both lie in the grid
        (within ``tol`` times the largest coefficient).  The answer is kept until the coefficients change (a
        hierarchy asks once per level).  A 2D variable stencil with a common row on the CPU (a masked domain)
        is checked by one compiled pass over its other rows (:func:`mgcore.kernels.mirror_gap`); otherwise
        each coefficient array is compared with its mirror."""
        key = (tol, self.coefficients.data_ptr(), self.coefficients._version, self.periodic)
        if self.__dict__.get("_exactly_symmetric") == key[1:]:
            return True
        cached = self.__dict__.get("_symmetric")
        if cached is not None and cached[0] == key:
            return cached[1]
        answer = self._compare_mirrors(tol)
        self.__dict__["_symmetric"] = (key, answer)
        return answer

    def mark_symmetric(self) -> None:
        """Record that the coefficients, as they are now, are exactly symmetric (after
        :func:`symmetrize_`), so that :meth:`is_symmetric` answers without comparing them.

        Examples
        --------
        >>> import torch
        >>> c = torch.tensor([[[-1.0, -1.0]], [[2.0, 2.0]], [[-1.2, -1.0]]], dtype=torch.float64)
        >>> S = Stencil([(0, -1), (0, 0), (0, 1)], symmetrize_([(0, -1), (0, 0), (0, 1)], c, (False, False)))
        >>> S.mark_symmetric(); S.is_symmetric()
        True
        """
        self.__dict__["_exactly_symmetric"] = (self.coefficients.data_ptr(), self.coefficients._version, self.periodic)

    def _compare_mirrors(self, tol: float) -> bool:
        scale = None
        if not self.is_constant:
            gap = kernels.mirror_gap(self)  # one compiled pass over the marked rows (2D, CPU)
            if gap is not None:
                if gap == 0.0:
                    return True
                low, high = torch.aminmax(self.coefficients)
                return gap <= tol * (max(abs(float(low)), abs(float(high))) or 1.0)
        index = {o: k for k, o in enumerate(self.offsets)}
        for k, o in enumerate(self.offsets):
            mirror = index.get(tuple(-v for v in o))
            if mirror is None:
                return False
            if mirror < k:
                continue  # the pair was compared from the other side
            a, b = self.coefficients[k], self.coefficients[mirror]
            if self.is_constant:
                pairs = [(a, b)]
            else:
                pairs = [(a[dst], b[src]) for dst, src in _shift_pieces(o, a.shape, self.periodic)]
            for x, y in pairs:
                if x.numel() == 0 or torch.equal(x, y):  # exact (one pass), as for most assembled operators
                    continue
                if scale is None:
                    low, high = torch.aminmax(self.coefficients)
                    scale = max(abs(float(low)), abs(float(high))) or 1.0
                if float((x - y).abs().max()) > tol * scale:
                    return False
        return True

    def symmetrized(self) -> Stencil:
        """Average ``c_o(x)`` with ``c_{-o}(x+o)`` (periodic wraps included): exact symmetry for a stencil
        whose coefficients carry round-off, such as a Galerkin operator computed by probing.

        Examples
        --------
        >>> A = Stencil([(0, -1), (0, 0), (0, 1)], torch.tensor([[[-1.0, -1.0]], [[2.0, 2.0]], [[-1.2, -1.0]]]))
        >>> A.is_symmetric(), A.symmetrized().is_symmetric()
        (False, True)
        """
        coefficients = self.coefficients.clone()
        symmetrize_(self.offsets, coefficients, self.periodic)
        return Stencil(self.offsets, coefficients, boundary=self.faces)

    def extra_repr(self) -> str:
        kind = "constant" if self.is_constant else f"variable on {self.grid_shape}"
        extra = "" if self.boundary == "dirichlet" else f", {self.boundary}"
        return f"dim={self.dim}, points={len(self.offsets)}, {kind}, radius={self.radius}{extra}"

    def __repr__(self) -> str:
        return f"Stencil({self.extra_repr()})"

    # ------------------------------------------------------------------ application
    def _check_grid(self, u: Tensor) -> None:
        if u.ndim != self.dim + 2:
            raise ValueError(
                f"u: expected a tensor shaped (batch, channels, *grid) with a {self.dim}D grid; "
                f"got shape {tuple(u.shape)}"
            )
        if not self.is_constant and tuple(u.shape[2:]) != self.grid_shape:
            raise ValueError(f"u: grid {tuple(u.shape[2:])} does not match the stencil's grid {self.grid_shape}")

    def forward(self, u: Tensor, out: Tensor | None = None) -> Tensor:
        """Apply the stencil to ``u`` shaped ``(batch, channels, *grid)``; ``out`` (optional) receives it."""
        self._check_grid(u)
        if not self.is_constant and kernels.fits(self, u, out) and kernels.split(self):
            return kernels.residual(self, u, None, out)
        return self._accumulate(u, None, out)

    def _accumulate(self, u: Tensor, f: Tensor | None, out: Tensor | None) -> Tensor:
        """``A u`` (``f is None``) or ``f - A u``, accumulated slice by slice into one output array.

        A fresh (or given) output is written in place through slices; the input is never touched, so
        autograd records the slice updates and differentiates through them.  The residual form starts from
        ``f - c_0 u`` in one operation, saving a pass over the grid against ``f - (A u)``.
        """
        shape = u.shape[2:]
        center = self.center_index if (0,) * self.dim in self.offsets else None
        sign = 1.0 if f is None else -1.0
        if center is not None:
            c0 = self._values[center] if self._values is not None else self.coefficients[center]
            if f is None:
                y = torch.mul(u, c0, out=out) if out is not None else torch.mul(u, c0)
            elif self._values is not None:
                y = torch.sub(f, u, alpha=c0, out=out) if out is not None else torch.sub(f, u, alpha=c0)
            else:
                y = torch.addcmul(f, c0, u, value=-1.0) if out is None else torch.addcmul(f, c0, u, value=-1.0, out=out)
        elif f is None:
            y = torch.zeros_like(u) if out is None else out.zero_()
        else:
            y = f.clone() if out is None else out.copy_(f)
        for k, o in enumerate(self.offsets):
            if k == center:
                continue
            for dst, src in _shift_pieces(o, shape, self.periodic, self.reflect):
                ydst = y[(..., *dst)]
                if self._values is not None:
                    ydst.add_(u[(..., *src)], alpha=sign * self._values[k])
                else:
                    ydst.addcmul_(self.coefficients[k][dst], u[(..., *src)], value=sign)
        if self.reflect is not None:
            self._halve_faces(y, f, [(0, 1, n) for n in shape])
        return y

    def _halve_faces(
        self, y: Tensor, f: Tensor | None, lattice: Sequence[tuple[int, int, int]], factor: float = 0.5
    ) -> None:
        """The box scheme's half rows on the reflecting faces: ``y = S u`` becomes ``W S u`` and ``y = f - S u``
        becomes ``f - W S u``, in place, on the face points of the sub-lattice ``(start, step, n)`` per axis
        that ``y`` and ``f`` hold; a point on two faces is halved twice (a corner's quarter box).  With
        ``f=None`` and ``factor=2`` it divides by ``W`` instead."""
        for axis, ((low, high), (start, step, n)) in enumerate(zip(self.reflect, lattice)):
            for side, reflecting in ((0, low), (1, high)):
                face = _lattice_face(start, step, n, side) if reflecting else None
                if face is None or (side == 1 and low and n == 1):
                    continue
                index = (..., *(slice(face, face + 1) if a == axis else slice(None) for a in range(self.dim)))
                if f is None:
                    y[index].mul_(factor)
                else:
                    y[index].mul_(0.5).add_(f[index], alpha=0.5)

    def accumulate_(self, y: Tensor, x: Tensor) -> Tensor:
        """``y += A x`` in place, slice by slice, without a temporary grid array (no autograd).

        Examples
        --------
        >>> import torch
        >>> y = torch.ones(1, 1, 3, dtype=torch.float64)
        >>> Stencil.laplacian(1).accumulate_(y, torch.ones_like(y))
        tensor([[[2., 1., 2.]]], dtype=torch.float64)
        """
        self._check_grid(x)
        if self.reflect is not None:  # the half rows scale the whole sum of a face row
            return y.add_(self._accumulate(x, None, None))
        for k, o in enumerate(self.offsets):
            for dst, src in _shift_pieces(o, x.shape[2:], self.periodic):
                ydst = y[(..., *dst)]
                if self._values is not None:
                    ydst.add_(x[(..., *src)], alpha=self._values[k])
                else:
                    ydst.addcmul_(self.coefficients[k][dst], x[(..., *src)])
        return y

    def residual(self, u: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
        """Return ``f - A u`` in one array (``out`` when given and autograd is not recording)."""
        if self._records(u, f):
            return f - self(u)
        self._check_grid(u)
        if self._compiled_residual(u, f, out):
            return kernels.residual(self, u, f, out)
        return self._accumulate(u, f, out)

    def _records(self, u: Tensor, f: Tensor) -> bool:
        """Whether autograd records ``f - A u``."""
        return torch.is_grad_enabled() and (u.requires_grad or f.requires_grad or self.coefficients.requires_grad)

    def _compiled_residual(self, u: Tensor, f: Tensor, out: Tensor | None) -> bool:
        """Whether one compiled pass on the CPU (mgcore.kernels) forms ``f - A u``: constant stencils, and
        variable ones with a common row."""
        return kernels.fits(self, u, f, out) and (self.is_constant or kernels.split(self))

    def residual_norms(self, u: Tensor, f: Tensor, out: Tensor) -> Tensor:
        """``out = f - A u`` for ``(batch, channels, *grid)`` arrays, and the 2-norm of each batch entry's residual
        (``(batch,)``, float64): from the same pass where the compiled loops apply (a solver's stopping test
        then reads no extra grid), else after it.

        Examples
        --------
        >>> u, f = torch.zeros(2, 1, 3, 3, dtype=torch.float64), torch.ones(2, 1, 3, 3, dtype=torch.float64)
        >>> Stencil.laplacian(2).residual_norms(u, f, torch.empty_like(f)).tolist()
        [3.0, 3.0]
        """
        if not self._records(u, f):
            self._check_grid(u)
            if self._compiled_residual(u, f, out):
                return kernels.residual_norms(self, u, f, out)
        r = self.residual(u, f, out=out)
        if r is not out:  # autograd recorded it: a new array
            out.copy_(r)
        return out.flatten(1).norm(dim=1).to(torch.float64)

    def residual_on(self, u: Tensor, f: Tensor, lattice: Lattice, out: Tensor | None = None) -> Tensor:
        """``f - A u`` at the points of a sub-lattice only (no autograd), shaped ``(batch, channels, *m)``.

        ``lattice`` holds one ``(start, step)`` pair per axis: the points ``x_k = start_k + step_k i_k``
        (:func:`lattice_shape` gives ``m``).  A colour of Gauss-Seidel or of zebra lines needs the residual on
        its own points only; this forms it there, not on the whole grid.  ``out`` (any strides) receives it.

        Examples
        --------
        >>> import torch
        >>> A = Stencil.laplacian(2)
        >>> u, f = torch.rand(1, 1, 5, 6, dtype=torch.float64), torch.rand(1, 1, 5, 6, dtype=torch.float64)
        >>> r = A.residual_on(u, f, ((1, 2), (0, 2)))
        >>> tuple(r.shape), bool(torch.allclose(r, A.residual(u, f)[..., 1::2, 0::2], rtol=0, atol=1e-14))
        ((1, 1, 2, 3), True)
        """
        self._check_grid(u)
        shape = tuple(u.shape[2:])
        lattice = tuple((int(start), int(step)) for start, step in lattice)
        points = (..., *(slice(start, None, step) for start, step in lattice))
        f_points, u_points = f[points], u[points]
        center = self.center_index if (0,) * self.dim in self.offsets else None
        coefficients = None if self._values is not None else self._lattice_coefficients(lattice)
        if center is None:
            y = f_points.clone() if out is None else out.copy_(f_points)
        elif self._values is not None:
            c0 = self._values[center]
            y = torch.sub(f_points, u_points, alpha=c0, **({} if out is None else {"out": out}))
        else:
            c0 = coefficients[center]
            y = (
                torch.addcmul(f_points, c0, u_points, value=-1.0)
                if out is None
                else torch.addcmul(f_points, c0, u_points, value=-1.0, out=out)
            )
        for k, o in enumerate(self.offsets):
            if k == center:
                continue
            for dst, src, _ in _lattice_pieces(o, shape, self.periodic, lattice, self.reflect):
                ydst = y[(..., *dst)]
                if self._values is not None:
                    ydst.sub_(u[(..., *src)], alpha=self._values[k])
                else:
                    ydst.addcmul_(coefficients[k][dst], u[(..., *src)], value=-1.0)
        if self.reflect is not None:
            self._halve_faces(y, f_points, [(start, step, n) for (start, step), n in zip(lattice, shape)])
        return y

    def point_couplings(self, points: Tensor, grid_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The couplings of the grid points with flat (C order) indices ``points``: the flat indices of their
        neighbours and the coefficients, both ``(K, P)``; a neighbour beyond a non-periodic face has
        coefficient 0 (and its own point as index), a periodic one wraps around.

        Examples
        --------
        >>> import torch
        >>> neighbours, weights = Stencil.laplacian(1).point_couplings(torch.tensor([0, 2]), (5,))
        >>> neighbours.tolist(), weights.tolist()
        ([[0, 1], [0, 2], [1, 3]], [[0.0, -1.0], [2.0, 2.0], [-1.0, -1.0]])
        """
        if self.reflect is not None:
            raise ValueError("A: point couplings of a constant stencil with Neumann faces are not supported")
        grid_shape = tuple(int(n) for n in grid_shape)
        points = points.to(torch.long)
        index = torch.unravel_index(points, grid_shape)
        neighbours, weights = [], []
        for k, o in enumerate(self.offsets):
            inside = torch.ones_like(points, dtype=torch.bool)
            flat = torch.zeros_like(points)
            for i, v, n, wrap in zip(index, o, grid_shape, self.periodic):
                j = i + v
                if wrap:
                    j = j % n
                else:
                    inside &= (j >= 0) & (j < n)
                flat = flat * n + j.clamp(0, n - 1)
            values = self.coefficients[k] if self.is_constant else self.coefficients[k].reshape(-1)[points]
            weights.append(torch.where(inside, values, torch.zeros((), dtype=self.coefficients.dtype)))
            neighbours.append(torch.where(inside, flat, points))
        return torch.stack(neighbours), torch.stack(weights).detach()

    def residual_at(self, u: Tensor, f: Tensor, points: Tensor, couplings: tuple[Tensor, Tensor]) -> Tensor:
        """``f - A u`` at the flat grid indices ``points`` only (no autograd), shaped ``(batch * channels, P)``;
        ``couplings`` from :meth:`point_couplings`.  ``u`` and ``f`` must be contiguous.

        Examples
        --------
        >>> import torch
        >>> A = Stencil.laplacian(2)
        >>> u, f = torch.rand(1, 1, 4, 5, dtype=torch.float64), torch.rand(1, 1, 4, 5, dtype=torch.float64)
        >>> points = torch.tensor([0, 7, 19])
        >>> r = A.residual_at(u, f, points, A.point_couplings(points, (4, 5)))
        >>> bool(torch.allclose(r, A.residual(u, f).reshape(1, -1)[:, points]))
        True
        """
        neighbours, weights = couplings
        rows = u.shape[0] * u.shape[1]
        gathered = u.reshape(rows, -1)[:, neighbours]  # (rows, K, P)
        return f.reshape(rows, -1).index_select(1, points) - (gathered * weights).sum(1)

    def _lattice_coefficients(self, lattice: Lattice) -> Tensor:
        """The coefficients at the points of ``lattice``, ``(K, *m)``, as a contiguous copy kept while the
        coefficients stay the same array: strided reads of the whole-grid arrays would touch every other row
        (9-point Gauss-Seidel with 4 colours: 30% of a sweep, single-thread CPU)."""
        key = (lattice, self.coefficients.data_ptr(), self.coefficients._version, self.coefficients.dtype)
        cache = self.__dict__.setdefault("_lattice_copies", {})
        if lattice not in cache or cache[lattice][0] != key:
            points = (slice(None), *(slice(start, None, step) for start, step in lattice))
            cache[lattice] = (key, self.coefficients.detach()[points].contiguous())
        return cache[lattice][1]

    def lift_boundary(self, f: Tensor, boundary_values: Tensor) -> Tensor:
        """Move inhomogeneous Dirichlet values into the right-hand side.

        Parameters
        ----------
        f : Tensor
            Right-hand side on the interior grid, shaped ``(..., *grid)``.
        boundary_values : Tensor
            Values on the grid padded by ``radius`` points on every side, shaped ``(..., *(n + 2 r))``;
            only its points outside the interior are read.

        Returns
        -------
        Tensor
            ``f - sum_k c_k(x) g(x + o_k)`` over the neighbours ``x + o_k`` that lie on the boundary.

        Examples
        --------
        >>> import torch
        >>> A = Stencil.laplacian(1)
        >>> g = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0], dtype=torch.float64)  # u(0) = 1, u(1) = 2
        >>> A.lift_boundary(torch.zeros(3, dtype=torch.float64), g)
        tensor([1., 0., 2.], dtype=torch.float64)
        """
        r = self.radius
        shape = f.shape[f.ndim - self.dim :]
        g = torch.as_tensor(boundary_values, dtype=f.dtype, device=f.device).clone()
        expected = tuple(n + 2 * r for n in shape)
        if tuple(g.shape[g.ndim - self.dim :]) != expected:
            raise ValueError(f"boundary_values: expected a padded grid {expected}; got {tuple(g.shape)}")
        interior = tuple(slice(r, r + n) for n in shape)
        g[(..., *interior)] = 0.0
        result = f.clone()
        for k, o in enumerate(self.offsets):
            window = tuple(slice(r + v, r + v + n) for v, n in zip(o, shape))
            c = self.coefficients[k].to(f.dtype)
            result -= c * g[(..., *window)]
        return result

    # ------------------------------------------------------------------ conversions
    def coefficient_arrays(self, grid_shape: Sequence[int]) -> Tensor:
        """Coefficients broadcast to ``(K, *grid_shape)`` (a copy for constant stencils)."""
        grid_shape = tuple(grid_shape)
        if self.is_constant:
            arrays = self.coefficients.reshape(-1, *([1] * len(grid_shape))).expand(-1, *grid_shape).clone()
            if self.reflect is not None:
                self._fold_faces(arrays, grid_shape)
            return arrays
        if grid_shape != self.grid_shape:
            raise ValueError(f"grid_shape: expected {self.grid_shape}; got {grid_shape}")
        return self.coefficients.clone()

    def _fold_faces(self, arrays: Tensor, grid_shape: tuple[int, ...]) -> None:
        """The box scheme in coefficient form, in place: on a reflecting face the coefficient of the neighbour
        beyond it moves to the mirrored neighbour, then the face row is halved (once per face)."""
        index = {o: k for k, o in enumerate(self.offsets)}
        for axis, ((low, high), n) in enumerate(zip(self.reflect, grid_shape)):
            for side, reflecting in ((0, low), (1, high)):
                if not reflecting:
                    continue
                face = 0 if side == 0 else n - 1
                rows = (*(slice(face, face + 1) if a == axis else slice(None) for a in range(self.dim)),)
                outward = -1 if side == 0 else 1
                mirrored = 1 if n > 1 else 0
                for k, o in enumerate(self.offsets):
                    if o[axis] != outward:
                        continue
                    target = index.get(tuple(outward * -mirrored if a == axis else v for a, v in enumerate(o)))
                    if target is None:
                        raise ValueError(f"A: the mirror of offset {o} across a Neumann face is not in the stencil")
                    arrays[target][rows] += arrays[k][rows]
                    arrays[k][rows] = 0.0
        self._halve_faces(arrays, None, [(0, 1, n) for n in grid_shape])

    def to_sparse(self, grid_shape: Sequence[int] | None = None):
        """The matrix as a SciPy CSR matrix, unknowns numbered in C (row-major) order as pyamg does.

        Examples
        --------
        >>> Stencil.laplacian(2).to_sparse((2, 2)).toarray()
        array([[ 4., -1., -1.,  0.],
               [-1.,  4.,  0., -1.],
               [-1.,  0.,  4., -1.],
               [ 0., -1., -1.,  4.]])
        """
        import scipy.sparse as sp

        if grid_shape is None:
            if self.grid_shape is None:
                raise ValueError("grid_shape: required for a constant stencil")
            grid_shape = self.grid_shape
        grid_shape = tuple(int(n) for n in grid_shape)
        coeffs = self.coefficient_arrays(grid_shape).detach().cpu().numpy().astype(np.float64)
        index = np.arange(math.prod(grid_shape)).reshape(grid_shape)
        rows, cols, vals = [], [], []
        for k, o in enumerate(self.offsets):
            for dst, src in _shift_pieces(o, grid_shape, self.periodic):
                v = coeffs[k][dst].ravel()
                keep = v != 0.0
                rows.append(index[dst].ravel()[keep])
                cols.append(index[src].ravel()[keep])
                vals.append(v[keep])
        n = index.size
        matrix = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
        matrix.sort_indices()
        return matrix


class ConvOperator(Operator):
    """A trainable convolution with the :class:`Operator` interface (``A*``, ``B*``, ``R*``, ``Π*`` of MgNet).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output grid tensors.
    kernel_size : int
        Odd kernel size; padding ``kernel_size // 2`` keeps the grid (stride 1) or halves it (stride 2).
    dim : {2, 3}
        Grid dimensions.
    stride : int
        2 for a restriction-like strided convolution.
    bias : bool
        MgNet uses none.
    groups : int
        Passed to ``nn.Conv2d``/``nn.Conv3d`` (depthwise operators use ``groups=channels``).

    Examples
    --------
    >>> import torch
    >>> A = ConvOperator(4, 8, kernel_size=3)
    >>> A(torch.zeros(2, 4, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    >>> ConvOperator(4, 4, stride=2)(torch.zeros(2, 4, 16, 16)).shape
    torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dim: int = 2,
        stride: int = 1,
        bias: bool = False,
        groups: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim: expected 2 or 3; got {dim}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected a positive odd integer; got {kernel_size}")
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim = dim
        self.conv = conv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if padding is None else padding,
            bias=bias,
            groups=groups,
        )

    @property
    def weight(self) -> Tensor:
        """The convolution kernel ``(out_channels, in_channels / groups, *kernel)``."""
        return self.conv.weight

    def forward(self, u: Tensor) -> Tensor:
        return self.conv(u)
