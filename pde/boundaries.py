"""Boundary conditions per face, masked domains and screened operators for the axis-aligned problems.

Discretisation: the vertex-centred finite-volume (box) scheme, which keeps the operator symmetric and second
order and keeps the coarsening rule of :mod:`mgcore.transfers`.  Along axis ``k`` with faces ``(low, high)``
and ``n`` points:

* a Dirichlet face is not an unknown (the first point is ``h`` inside it, as today); a Neumann face is (the
  first point lies on it); a periodic axis holds ``n`` points of one period, ``x_i = i h``.
* So the axis spans ``n + 1`` intervals (Dirichlet-Dirichlet), ``n`` (one Neumann face, or periodic) or
  ``n - 1`` (Neumann-Neumann); ``h = 1 / intervals`` of axis 0, the same on every axis.
* 1D operators: ``T = tridiag(-1, 2, -1) / h^2`` with the row of a Neumann point halved to ``(1, -1) / h^2``
  (the ghost point ``u_{-1} = u_1 + 2 h g`` eliminated, LeVeque 2007, section 2.12, and the row scaled by
  1/2 to make the matrix symmetric: the half box of the finite-volume scheme), circulant on a periodic axis;
  the lumped mass ``M = diag(1/2 on Neumann points, 1 elsewhere)``.
* ``A = sum_k K_k (M ⊗ ... ⊗ T_k ⊗ ... ⊗ M) + c (M ⊗ ... ⊗ M)`` (a Kronecker sum; ``c`` the screening
  coefficient), and ``f = M f(x)`` plus the boundary data: ``K_k g / h^2`` next to a Dirichlet face,
  ``K_k g_N / h`` on a Neumann face (``g_N = ∂u/∂n``, outward), each times the mass of the other axes.

Masked domains: a boolean ``mask`` of active points.  An inactive point gets an identity row (scaled like the
diagonal) whose right-hand side holds its Dirichlet value, so the solution there is that value; an active
point next to an inactive one treats it as a Dirichlet boundary value (``mask_bc="dirichlet"``) or drops the
coupling (``"neumann"``, zero flux through the staircase boundary, as in the discrete Poisson image editing
of Pérez, Gangnet & Blake 2003; with a manufactured ``solution``, that solution's own flux, the difference of its
values across the cut coupling, so it converges at O(h^2) as the other conditions do).

The operator is singular when no Dirichlet condition and no screening holds it down (pure Neumann, fully
periodic): its null vector is the constant on the active points; the right-hand side is then projected onto
the range and the exact solution shifted to zero mean (what :func:`mgcore.solve` returns).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from mgcore.operators import Stencil, constant_form, parse_faces

__all__ = ["axis_aligned_problem", "face_coordinates", "face_data", "load_mask"]


def _as_grid(value, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = torch.as_tensor(value).detach().cpu().to(torch.float64).numpy() if not isinstance(value, np.ndarray) else (
        np.asarray(value, dtype=np.float64)
    )
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}; got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return array


def _on_points(fn: Callable[..., Tensor], points: Sequence[Tensor], name: str) -> np.ndarray:
    """``fn`` of the coordinate tensors ``points`` as a float64 array shaped like them, finite; errors name
    ``name``."""
    value = torch.as_tensor(fn(*points), dtype=torch.float64)
    shape = tuple(points[0].shape)
    try:
        value = value.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"{name}: expected a function of the coordinate tensors returning values shaped {shape}; got "
            f"{tuple(value.shape)}"
        ) from None
    return _as_grid(value.detach(), shape, name)


def _check_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.dtype != np.bool_:
        raise TypeError(f"mask: expected a boolean array of active points; got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"mask: expected shape {shape} (the grid); got {array.shape}")
    if not array.any():
        raise ValueError("mask: has no active point; expected True on the points of the domain")
    return array.copy()


def _check_screen(screen, shape: tuple[int, ...]) -> np.ndarray:
    if np.isscalar(screen):
        if isinstance(screen, bool) or not isinstance(screen, (int, float, np.integer, np.floating)):
            raise TypeError(f"screen: expected a number c >= 0 or an array of them; got {screen!r}")
        c = np.full(shape, float(screen))
    else:
        c = _as_grid(screen, shape, "screen")
    wrong = ~(np.isfinite(c) & (c >= 0))
    if wrong.any():
        bad = float(c[wrong].flat[0])  # the first offending value itself (inf, nan or negative)
        raise ValueError(f"screen: expected a finite screening coefficient c >= 0 everywhere; got c = {bad}")
    return c


def _solution_values(fn: Callable[..., Tensor], axes: Sequence[Tensor], K: Sequence[float], c: np.ndarray | None):
    """``u``, ``grad u`` and ``-sum K_k u_kk`` of ``fn`` on the grid of the 1D coordinates ``axes``."""
    coords = [x.detach().clone().requires_grad_(True) for x in torch.meshgrid(*axes, indexing="ij")]
    with torch.enable_grad():
        u = torch.as_tensor(fn(*coords), dtype=torch.float64)
        u = u.expand(coords[0].shape) if u.shape != coords[0].shape else u
        if not u.requires_grad:
            zero = torch.zeros(coords[0].shape, dtype=torch.float64)
            return u.detach().clone(), [zero] * len(axes), zero.clone()
        grads = torch.autograd.grad(u.sum(), coords, create_graph=True, allow_unused=True)
        f = torch.zeros(coords[0].shape, dtype=torch.float64)
        first = []
        for k, g in enumerate(grads):
            if g is None:
                first.append(torch.zeros_like(f))
                continue
            first.append(g.detach())
            if g.requires_grad:
                (second,) = torch.autograd.grad(g.sum(), coords[k], retain_graph=True, allow_unused=True)
                if second is not None:
                    f -= float(K[k]) * second.detach()
    return u.detach(), first, f


def _builtin(solution: str, faces, lengths: Sequence[float]) -> Callable[..., Tensor]:
    """``"sin"``: ``prod_k sin(π x_k)`` (``sin(2π x_k / L_k)`` along a periodic axis); ``"mixed"`` adds
    ``exp(x) cos(y)`` (not periodic)."""
    if solution not in ("sin", "mixed"):
        raise ValueError(f"solution: expected 'sin', 'mixed', None or a callable; got {solution!r}")
    periodic = [low == "periodic" for low, _ in faces]
    if solution == "mixed" and any(periodic):
        raise ValueError("solution: 'mixed' (exp(x) cos(y)) is not periodic; use 'sin' or a callable on periodic axes")

    def u(*xs: Tensor) -> Tensor:
        value = 1.0
        for x, wrap, length in zip(xs, periodic, lengths):
            value = value * (torch.sin(2 * math.pi * x / length) if wrap else torch.sin(math.pi * x))
        if solution == "mixed":
            value = value + torch.exp(xs[0]) * torch.cos(xs[1])
        return value

    return u


def _check_no_data_with(solution, **data) -> None:
    """A manufactured ``solution`` sets ``f`` and every boundary value: data given beside it would be lost."""
    if solution is None:
        return
    for option, value in data.items():
        if value is not None:
            raise ValueError(
                f"{option}: the manufactured solution sets f and all boundary data; pass solution=None to give "
                f"{option}"
            )


def face_coordinates(
    shape: Sequence[int], start: Sequence[int], h: float, axis: int, side: int, *, ghost: bool = False
) -> tuple[Tensor, ...]:
    """The coordinates of the layer of grid points next to face ``side`` (0 low, 1 high) of ``axis``.

    Each tensor is shaped like the grid with ``axis`` of size 1 (``indexing="ij"``); the point ``i`` of axis
    ``k`` lies at ``(i + start_k) h``.  ``ghost=True`` moves the layer one step outwards along ``axis``: the
    points on a Dirichlet face (the first grid point is ``h`` inside it).

    Examples
    --------
    >>> x, y = face_coordinates((3, 4), (1, 0), 0.25, 0, 1, ghost=True)
    >>> x.flatten().tolist(), y.flatten().tolist()
    ([1.0, 1.0, 1.0, 1.0], [0.0, 0.25, 0.5, 0.75])
    """
    index = (0 if side == 0 else shape[axis] - 1) + (0 if not ghost else -1 if side == 0 else 1)
    axes = []
    for k, (n, s) in enumerate(zip(shape, start)):
        points = torch.tensor([index], dtype=torch.float64) if k == axis else torch.arange(n, dtype=torch.float64)
        axes.append((points + s) * h)
    return tuple(torch.meshgrid(*axes, indexing="ij"))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def face_data(data, faces, shape: Sequence[int], start: Sequence[int], h: float, name: str = "flux") -> list:
    """Neumann data per face as arrays on the face layers: ``out[axis][side]`` shaped like the grid with
    ``axis`` of size 1 (zeros on faces that are not Neumann).

    ``data`` is ``None`` (zero), a number or a function of the coordinate tensors (the same on every
    Neumann face; evaluated at the face points), or one entry per axis, each such a value, an array on the
    face points (the grid without that axis, or with it of size 1) or a ``(low, high)`` pair of them.  A
    non-zero entry for a face that is not Neumann is refused: its data would be lost.

    Examples
    --------
    >>> faces = (("neumann", "dirichlet"), ("periodic", "periodic"))
    >>> g = face_data([(2.0, None), None], faces, (3, 4), (0, 0), 1 / 3)
    >>> g[0][0].tolist(), float(abs(g[0][1]).max())
    ([[2.0, 2.0, 2.0, 2.0]], 0.0)
    >>> face_data([None, 1.0], faces, (3, 4), (0, 0), 1 / 3)
    Traceback (most recent call last):
    ...
    ValueError: flux: axis 1 is periodic on its low face, not Neumann; give flux for Neumann faces only
    """
    dim = len(shape)
    layer_shape = [tuple(1 if k == axis else n for k, n in enumerate(shape)) for axis in range(dim)]
    out = [[np.zeros(layer_shape[axis]), np.zeros(layer_shape[axis])] for axis in range(dim)]
    if data is None:
        return out
    expected = (
        f"expected a number, a function of the coordinates, or {dim} entries (one per axis, each a number, a "
        "function, an array on the face points or a (low, high) pair of them)"
    )
    if _is_number(data) or callable(data):
        if not any("neumann" in pair for pair in faces):
            raise ValueError(f"{name}: no face is Neumann (bc = {faces}); flux is the data of Neumann faces")
        per_face = [[data if kind == "neumann" else None for kind in pair] for pair in faces]
    elif isinstance(data, (list, tuple)) and len(data) == dim:
        per_face = []
        for entry in data:
            if isinstance(entry, (list, tuple)) and len(entry) == 2:
                per_face.append(list(entry))
            else:
                per_face.append([entry, entry])
    else:
        raise ValueError(f"{name}: {expected}; got {type(data).__name__}")
    for axis in range(dim):
        for side in (0, 1):
            value = per_face[axis][side]
            if value is None or (_is_number(value) and value == 0):
                continue
            kind = faces[axis][side]
            if kind != "neumann":
                raise ValueError(
                    f"{name}: axis {axis} is {kind} on its {('low', 'high')[side]} face, not Neumann; give "
                    f"{name} for Neumann faces only"
                )
            where = f"{name} (axis {axis}, {('low', 'high')[side]} face)"
            if _is_number(value):
                array = np.full(layer_shape[axis], float(value))
            elif callable(value):
                points = face_coordinates(shape, start, h, axis, side)
                array = torch.as_tensor(value(*points), dtype=torch.float64)
                try:
                    array = array.expand(points[0].shape)
                except RuntimeError:
                    raise ValueError(
                        f"{where}: expected values on the {tuple(points[0].shape)} face points; got shape "
                        f"{tuple(array.shape)}"
                    ) from None
                array = array.numpy()
            else:
                try:
                    array = torch.as_tensor(value).detach().cpu().to(torch.float64).numpy() if isinstance(
                        value, Tensor
                    ) else np.asarray(value, dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: {expected}; got {value!r}") from None
                without = tuple(n for k, n in enumerate(shape) if k != axis)
                if array.shape == without:
                    array = np.expand_dims(array, axis)
                if array.shape != layer_shape[axis]:
                    raise ValueError(
                        f"{where}: expected an array on the face points, shaped {without}; got {array.shape}"
                    )
            if not np.isfinite(array).all():
                raise ValueError(f"{where}: contains NaN or Inf")
            out[axis][side] = array.copy()
    return out


def axis_aligned_problem(
    shape: tuple[int, ...],
    K: Sequence[float],
    *,
    bc="dirichlet",
    mask=None,
    mask_bc: str = "dirichlet",
    screen=0.0,
    solution=None,
    rhs=None,
    boundary=None,
    flux=None,
    name: str,
    dtype: torch.dtype,
):
    """The problem ``-sum_k K_k u_kk + c u = f`` with the faces, mask and screening described above.

    ``solution`` (a callable of the coordinate tensors) manufactures ``f`` and all boundary data; otherwise
    ``rhs`` (array or callable, default 1), ``boundary`` (Dirichlet values: a callable, read on the Dirichlet
    faces and at the inactive points, or an array on the grid read at the inactive points; default 0) and
    ``flux`` (Neumann data ``g_N = ∂u/∂n``, outward; see :func:`face_data`; default 0) are used.

    Examples
    --------
    >>> p = axis_aligned_problem((4, 4), (1.0, 1.0), bc="neumann", name="n", dtype=torch.float64)
    >>> p.h, p.A.faces[0], p.null_space is not None
    (0.3333333333333333, ('neumann', 'neumann'), True)
    """
    from pde.problems import Problem

    dim = len(shape)
    faces = parse_faces(bc, dim, "bc")
    if mask_bc not in ("dirichlet", "neumann"):
        raise ValueError(f"mask_bc: expected 'dirichlet' or 'neumann'; got {mask_bc!r}")
    active = np.ones(shape, dtype=bool) if mask is None else _check_mask(mask, shape)
    c = _check_screen(screen, shape)
    start, intervals = grid_layout(shape, faces)
    h = 1.0 / intervals[0]
    inv_h2 = 1.0 / h**2
    # 1D lumped masses (1/2 on a Neumann point) and operator diagonals (1 on a Neumann point, else 2).
    masses, diagonals = [], []
    for n, (low, high) in zip(shape, faces):
        m, d = np.ones(n), np.full(n, 2.0)
        if low == "neumann":
            m[0], d[0] = 0.5, 1.0
        if high == "neumann":
            m[-1], d[-1] = 0.5, 1.0
        masses.append(m)
        diagonals.append(d)

    def along(values: np.ndarray, axis: int) -> np.ndarray:
        return _along(values, axis, dim)

    W = _tensor_mass(masses)
    W_other = [W / along(masses[k], k) for k in range(dim)]  # the mass of the axes other than k

    # Manufactured data on the grid extended by one point beyond each face (index -1 and n).
    if isinstance(solution, str):
        solution = _builtin(solution, faces, [m * h for m in intervals])
    _check_no_data_with(solution, rhs=rhs, boundary=boundary, flux=flux)
    fluxes = face_data(flux, faces, shape, start, h, "flux")
    if solution is not None:
        axes = [(torch.arange(-1, n + 1, dtype=torch.float64) + s) * h for n, s in zip(shape, start)]
        u_ext, grad_ext, f_ext = _solution_values(solution, axes, K, c)
        inner = tuple(slice(1, n + 1) for n in shape)
        exact = u_ext[inner].numpy().copy()
        f_point = f_ext[inner].numpy() + c * exact
    else:
        exact = None
        coords = [(torch.arange(n, dtype=torch.float64) + s) * h for n, s in zip(shape, start)]
        grid_coords = torch.meshgrid(*coords, indexing="ij")
        f_point = _rhs_values(rhs, grid_coords, shape)
        if boundary is not None and not callable(boundary):
            boundary_grid = _as_grid(boundary, shape, "boundary")
        elif boundary is not None:
            boundary_grid = _on_points(boundary, grid_coords, "boundary")
        else:
            boundary_grid = np.zeros(shape)

    def face_values(axis: int, side: int) -> np.ndarray:
        """Dirichlet value beyond the face, or the outward derivative on it, for the face layer of points."""
        if solution is None:
            if faces[axis][side] == "neumann":
                return fluxes[axis][side]
            if callable(boundary):
                return _on_points(boundary, face_coordinates(shape, start, h, axis, side, ghost=True), "boundary")
            return np.zeros(tuple(1 if k == axis else n for k, n in enumerate(shape)))
        index = [slice(1, n + 1) for n in shape]
        if faces[axis][side] == "dirichlet":
            index[axis] = slice(0, 1) if side == 0 else slice(shape[axis] + 1, shape[axis] + 2)
            return u_ext[tuple(index)].numpy()
        index[axis] = slice(1, 2) if side == 0 else slice(shape[axis], shape[axis] + 1)
        derivative = grad_ext[axis][tuple(index)].numpy()
        return -derivative if side == 0 else derivative

    f = W * f_point
    centre = c * W
    offsets, coefficients = [], []
    for k in range(dim):
        centre = centre + K[k] * inv_h2 * W_other[k] * along(diagonals[k], k)
    for k in range(dim):
        coupling = -K[k] * inv_h2 * W_other[k]
        for step in (-1, 1):
            o = [0] * dim
            o[k] = step
            offsets.append(tuple(o))
            coefficients.append(np.array(coupling, copy=True))
        low, high = faces[k]
        for side, kind in ((0, low), (1, high)):
            if kind == "periodic":
                continue
            layer = _face_layer(shape, k, side)
            data = face_values(k, side)
            if kind == "dirichlet":
                f[layer] += K[k] * inv_h2 * W_other[k][layer] * data
            else:
                f[layer] += K[k] / h * W_other[k][layer] * data

    # The mask: inactive neighbours are Dirichlet values (or cut off, Neumann); inactive rows are identities.
    if not active.all():
        if solution is not None:
            values = exact
        else:
            values = boundary_grid
        for index, o in enumerate(offsets):
            k = next(a for a, v in enumerate(o) if v)
            neighbour_active = np.roll(active, -o[k], axis=k)
            neighbour_value = np.roll(values, -o[k], axis=k)
            inside = np.ones(shape, dtype=bool)
            if faces[k][0] != "periodic":
                edge = [slice(None)] * dim
                edge[k] = slice(shape[k] - 1, shape[k]) if o[k] > 0 else slice(0, 1)
                inside[tuple(edge)] = False
            cut = active & inside & ~neighbour_active
            weight = -coefficients[index]
            if mask_bc == "dirichlet":
                f[cut] += weight[cut] * neighbour_value[cut]
            else:
                centre[cut] -= weight[cut]
                if solution is not None:
                    # The manufactured flux through the staircase edge: the dropped coupling stood for
                    # u(neighbour) = u(point), and the solution's own difference replaces that (zero flux
                    # otherwise), so the solution satisfies the row as it does an interior one.
                    f[cut] += weight[cut] * (neighbour_value[cut] - values[cut])
            coefficients[index][cut] = 0.0
            coefficients[index][~active] = 0.0
        identity = 2.0 * sum(K) * inv_h2
        centre[~active] = identity
        f[~active] = identity * (values[~active] if mask_bc == "dirichlet" else 0.0)
        if exact is not None and mask_bc == "neumann":
            exact = np.where(active, exact, 0.0)
    offsets.append((0,) * dim)
    coefficients.append(centre)
    order = sorted(range(len(offsets)), key=lambda i: offsets[i])
    stacked = np.stack([coefficients[i] for i in order])
    offsets = [offsets[i] for i in order]
    # A constant coefficient and screening without a mask give one stencil on every row, up to the box
    # scheme's half rows on Neumann faces, which a constant Stencil applies itself: the engine then smooths
    # without coefficient arrays and rediscretises its coarse operators.
    constant = constant_form(offsets, stacked, faces) if active.all() else None
    A = Stencil(
        offsets,
        torch.from_numpy(stacked if constant is None else constant).to(dtype),
        boundary=faces,
        grid_shape=None if constant is None else shape,
    )

    # Singular when nothing holds the constant down: no Dirichlet face or Dirichlet mask boundary reached
    # and no screening.
    null_space = None
    # A Dirichlet face holds the constant down only where the domain reaches it: a disk with Neumann conditions
    # on its edge inside a Dirichlet box is as singular as a pure Neumann box.
    grounded = bool((c[active] > 0).any()) or _touches_dirichlet_face(active, faces)
    if not active.all() and mask_bc == "dirichlet":
        grounded = True
    if mask is not None and mask_bc == "neumann":
        _check_components(A, active, faces, c)
    if not grounded:
        z = active.astype(np.float64)
        f = f - z * (f * z).sum() / z.sum()
        if exact is not None:
            exact = np.where(active, exact - exact[active].mean(), exact)
        null_space = torch.from_numpy(z).to(dtype)
    label = "custom" if solution is not None else "ones" if rhs is None else "rhs"
    bc_label = "-".join(sorted({kind for pair in faces for kind in pair}))
    return Problem(
        A=A,
        f=torch.from_numpy(f).to(dtype),
        grid_shape=shape,
        h=h,
        exact=None if exact is None else torch.from_numpy(exact).to(dtype),
        name=f"{name}-{dim}d-{'x'.join(map(str, shape))}-{bc_label}{'-masked' if mask is not None else ''}-{label}",
        mask=None if mask is None else torch.from_numpy(active),
        null_space=null_space,
        start=tuple(start),
    )


def _touches_dirichlet_face(points: np.ndarray, faces) -> bool:
    """Whether any of the boolean grid ``points`` lies on the layer next to a Dirichlet face.

    Examples
    --------
    >>> inner = np.zeros((5, 5), dtype=bool); inner[1:4, 1:4] = True
    >>> dirichlet = (("dirichlet", "dirichlet"),) * 2
    >>> _touches_dirichlet_face(inner, dirichlet), _touches_dirichlet_face(np.ones((5, 5), dtype=bool), dirichlet)
    (False, True)
    """
    for k, (low, high) in enumerate(faces):
        for index, kind in ((0, low), (points.shape[k] - 1, high)):
            if kind == "dirichlet" and bool(np.take(points, index, axis=k).any()):
                return True
    return False


def _check_components(A: Stencil, active: np.ndarray, faces, c: np.ndarray) -> None:
    """With Neumann conditions on the mask, every connected part must be held down by a Dirichlet face or
    screening, except when the domain is one connected part (then the problem is singular, one null vector).
    Parts are joined as ``A`` couples them, across periodic faces too (:func:`mgcore.boundary.null_parts`)."""
    from mgcore.boundary import null_parts

    labels, count = null_parts(A, active.shape, torch.from_numpy(active))
    labels = labels.numpy()
    if count <= 1:
        return
    free = 0
    for part in range(1, count + 1):
        where = labels == part
        free += not ((c[where] > 0).any() or _touches_dirichlet_face(where, faces))
    if free:
        raise ValueError(
            f"mask: the active points form {count} disconnected parts and {free} of them touch no Dirichlet face "
            "and have no screening; with Neumann conditions on the mask each such part is a separate singular "
            "problem (use one connected region, mask_bc='dirichlet', or screen > 0)"
        )


def load_mask(path: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """A boolean mask from an image file: active where the (grey) pixel is brighter than half.

    Row ``r``, column ``q`` of the image is grid point ``(r, q)`` (axis 0 down the rows).  ``shape``, when
    given, must match the image size.

    Examples
    --------
    >>> import os, tempfile
    >>> import matplotlib.pyplot as plt
    >>> image = np.zeros((5, 7)); image[1:4, 2:5] = 1.0
    >>> path = os.path.join(tempfile.mkdtemp(), "mask.png")
    >>> plt.imsave(path, image, cmap="gray")
    >>> int(load_mask(path).sum()), load_mask(path).shape
    (9, (5, 7))
    """
    import matplotlib.image as mpimg

    try:
        image = np.asarray(mpimg.imread(path), dtype=np.float64)
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"mask: cannot read the image file {path!r}: {error}") from None
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2) if image.shape[2] >= 3 else image[..., 0]
    if image.max() > 1.0:  # 8-bit images read as 0..255
        image = image / 255.0
    mask = image > 0.5
    if shape is not None and tuple(shape) != mask.shape:
        raise ValueError(
            f"mask: the image {path!r} is {mask.shape[0]} x {mask.shape[1]}; expected the grid {tuple(shape)}"
        )
    return mask


def grid_layout(shape: Sequence[int], faces) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(start, intervals)`` per axis: the index of the first grid point in units of ``h`` and the number
    of intervals the axis spans (``n + 1`` Dirichlet-Dirichlet, ``n`` with one Neumann face or periodic,
    ``n - 1`` Neumann-Neumann).

    Examples
    --------
    >>> grid_layout((5, 6, 7), (("dirichlet",) * 2, ("neumann", "dirichlet"), ("periodic",) * 2))
    ((1, 0, 0), (6, 6, 7))
    """
    start, intervals = [], []
    for n, (low, high) in zip(shape, faces):
        if low == "periodic":
            start.append(0)
            intervals.append(n)
        else:
            start.append(1 if low == "dirichlet" else 0)
            intervals.append(n + 1 - (low != "dirichlet") - (high != "dirichlet"))
    return tuple(start), tuple(intervals)


def _rhs_values(rhs, grid_coords: Sequence[Tensor], shape: tuple[int, ...]) -> np.ndarray:
    """The right-hand side ``rhs`` at the grid points: 1 when absent, a function of the coordinates, or values."""
    if rhs is None:
        return np.ones(shape)
    if callable(rhs):
        return _on_points(rhs, grid_coords, "rhs")
    return _as_grid(rhs, shape, "rhs")


def _face_layer(shape: Sequence[int], axis: int, side: int) -> tuple[slice, ...]:
    """The index of the layer of grid points on the low (``side`` 0) or high (1) face of ``axis``."""
    layer = [slice(None)] * len(shape)
    layer[axis] = slice(0, 1) if side == 0 else slice(shape[axis] - 1, shape[axis])
    return tuple(layer)


def _along(values: np.ndarray, axis: int, dim: int) -> np.ndarray:
    """A 1D array of the points along ``axis`` shaped to broadcast over a ``dim``-dimensional grid."""
    view = [1] * dim
    view[axis] = -1
    return values.reshape(view)


def _tensor_mass(masses: Sequence[np.ndarray]) -> np.ndarray:
    """The lumped mass of the grid, the tensor product of the 1D masses of the axes."""
    W = np.ones(tuple(len(m) for m in masses))
    for k, m in enumerate(masses):
        W = W * _along(m, k, len(masses))
    return W


def _cell_average(n: int, cells: int, s: int, periodic: bool) -> np.ndarray:
    """The ``n x cells`` matrix averaging the cells next to each grid point along one axis: ``1/2`` for each
    of the (up to) two cells the point touches; a point on a Neumann face touches one (the half box)."""
    S = np.zeros((n, cells))
    for i in range(n):
        for j in (i + s - 1, i + s):
            if periodic:
                S[i, j % cells] += 0.5
            elif 0 <= j < cells:
                S[i, j] += 0.5
    return S


def _divergence_form_values(solution, coefficient, points: Sequence[Tensor]):
    """``u``, ``grad u`` and ``f = -div(a grad u)`` of the callables ``solution`` and ``coefficient`` at the
    points of the coordinate tensors ``points``, by automatic differentiation."""
    coords = [x.detach().clone().requires_grad_(True) for x in points]
    shape = coords[0].shape
    with torch.enable_grad():
        u = torch.as_tensor(solution(*coords), dtype=torch.float64).expand(shape)
        a = torch.as_tensor(coefficient(*coords), dtype=torch.float64).expand(shape)
        f = torch.zeros(shape, dtype=torch.float64)
        grads = [torch.zeros(shape, dtype=torch.float64) for _ in coords]
        if u.requires_grad:
            first = torch.autograd.grad(u.sum(), coords, create_graph=True, allow_unused=True)
            for k, g in enumerate(first):
                if g is None:
                    continue
                grads[k] = g.detach()
                q = a * g  # the flux component a u_k
                if q.requires_grad:
                    (dq,) = torch.autograd.grad(q.sum(), coords[k], retain_graph=True, allow_unused=True)
                    if dq is not None:
                        f -= dq.detach()
    return u.detach(), grads, f


def diffusion_problem(
    coefficient,
    shape: tuple[int, ...],
    faces,
    *,
    solution=None,
    rhs=None,
    boundary=None,
    flux=None,
    name: str,
    dtype: torch.dtype,
):
    """The problem ``-div(a grad u) = f`` by the box scheme with the faces ``faces`` (already parsed).

    ``coefficient`` is an array of cell values shaped like :func:`grid_layout`'s intervals, or a function
    ``a(x, ...)`` sampled at the cell centres.  The flux through the dual-box face between two neighbours
    along axis ``k`` is the mean of the ``2^(d-1)`` cells sharing their edge, or half of the one cell inside
    for points on a Neumann face of another axis (their dual box is cut in half there); with ``a = K`` this
    is :func:`axis_aligned_problem`.  Boundary data: ``a g / h^2`` next to a Dirichlet face with that edge's
    weight ``a``, and ``a_face g_N / h`` times the mass of the other axes on a Neumann face, where
    ``a_face`` is ``a`` at the face point for a function, the mean of the cells touching the face for an
    array (exact for a cell-wise constant ``a``).  ``solution`` (a function, with a function ``coefficient``)
    manufactures ``f`` and all boundary data.
    """
    from pde.problems import Problem

    dim = len(shape)
    start, intervals = grid_layout(shape, faces)
    h = 1.0 / intervals[0]
    scale = float(intervals[0] ** 2)  # 1/h^2, exact
    periodic = [low == "periodic" for low, _ in faces]
    if callable(coefficient):
        centres = [(torch.arange(m, dtype=torch.float64) + 0.5) * h for m in intervals]
        grid = torch.meshgrid(*centres, indexing="ij")
        values = torch.as_tensor(coefficient(*grid), dtype=torch.float64)
        try:
            values = values.expand(tuple(intervals))
        except RuntimeError:
            raise ValueError(
                f"coefficient: expected a function of the coordinates returning the {tuple(intervals)} cell "
                f"values; got shape {tuple(values.shape)}"
            ) from None
        a = values.numpy().copy()
        if not np.isfinite(a).all() or (a <= 0).any():
            raise ValueError("coefficient: expected finite positive values at every cell centre")
    else:
        a = np.asarray(coefficient, dtype=np.float64)
    averages = [_cell_average(n, m, s, p) for n, m, s, p in zip(shape, intervals, start, periodic)]
    masses = [S.sum(axis=1) for S in averages]

    def along(values: np.ndarray, axis: int) -> np.ndarray:
        return _along(values, axis, dim)

    W = _tensor_mass(masses)

    # edge[k]: the weights of the edges along axis k, one per cell along k and per grid point on the others.
    edge = []
    for k in range(dim):
        e = a
        for m in range(dim):
            if m != k:
                e = np.moveaxis(np.tensordot(averages[m], e, axes=([1], [m])), 0, m)
        edge.append(e)

    def cells_beside(k: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Per grid point: the weight of its edge towards ``step`` along ``k`` (0 where no cell lies) and
        whether that edge is inside the domain (a cell exists there)."""
        j = np.arange(shape[k]) + start[k] + (0 if step > 0 else -1)
        if periodic[k]:
            j = j % intervals[k]
        exists = (j >= 0) & (j < intervals[k])
        weights = np.take(edge[k], np.clip(j, 0, intervals[k] - 1), axis=k) * along(exists.astype(float), k)
        return weights, exists

    offsets, coefficients = [], []
    centre = np.zeros(shape)
    for k in range(dim):
        for step in (-1, 1):
            weights, _ = cells_beside(k, step)
            centre = centre + weights
            o = [0] * dim
            o[k] = step
            offsets.append(tuple(o))
            coupling = -weights
            if not periodic[k]:  # a neighbour beyond the last point is a Dirichlet value, not an unknown
                layer = [slice(None)] * dim
                layer[k] = slice(0, 1) if step < 0 else slice(shape[k] - 1, shape[k])
                coupling[tuple(layer)] = 0.0
            coefficients.append(coupling * scale)
    offsets.append((0,) * dim)
    coefficients.append(centre * scale)
    order = sorted(range(len(offsets)), key=lambda i: offsets[i])
    A = Stencil(
        [offsets[i] for i in order],
        torch.from_numpy(np.stack([coefficients[i] for i in order])).to(dtype),
        boundary=faces,
    )

    points = [(torch.arange(n, dtype=torch.float64) + s) * h for n, s in zip(shape, start)]
    if solution is not None:
        if not callable(coefficient):
            raise ValueError(
                "solution: a manufactured solution needs the coefficient as a function a(x, y[, z]) (f = "
                "-div(a grad u) is formed from it); got an array of cell values"
            )
        _check_no_data_with(solution, rhs=rhs, boundary=boundary, flux=flux)
        grid_coords = torch.meshgrid(*points, indexing="ij")
        exact_t, _, f_t = _divergence_form_values(solution, coefficient, grid_coords)
        exact, f_point = exact_t.numpy().copy(), f_t.numpy()
    else:
        exact = None
        grid_coords = torch.meshgrid(*points, indexing="ij")
        f_point = _rhs_values(rhs, grid_coords, shape)
    if boundary is not None and not callable(boundary):
        raise TypeError(f"boundary: expected a function of the coordinates; got {type(boundary).__name__}")
    fluxes = face_data(flux, faces, shape, start, h, "flux")

    f = W * f_point
    for k in range(dim):
        if periodic[k]:
            continue
        W_other = W / along(masses[k], k)
        for side, kind in enumerate(faces[k]):
            layer = _face_layer(shape, k, side)
            if kind == "dirichlet":
                data = solution if solution is not None else boundary
                if data is None:
                    continue
                ghost = face_coordinates(shape, start, h, k, side, ghost=True)
                g = _on_points(data, ghost, "solution" if solution is not None else "boundary")
                weights, _ = cells_beside(k, -1 if side == 0 else 1)
                f[layer] += weights[layer] * scale * g
                continue
            on_face = face_coordinates(shape, start, h, k, side)
            if solution is not None:
                _, grads, _ = _divergence_form_values(solution, coefficient, on_face)
                g = (-grads[k] if side == 0 else grads[k]).numpy().reshape(on_face[0].shape)
            else:
                g = fluxes[k][side]
            if callable(coefficient):
                a_face = _on_points(coefficient, on_face, "coefficient") * W_other[layer]
            else:
                a_face, _ = cells_beside(k, 1 if side == 0 else -1)
                a_face = a_face[layer]
            f[layer] += a_face / h * g

    null_space = None
    if not any("dirichlet" in pair for pair in faces):
        f = f - f.mean()
        if exact is not None:
            exact = exact - exact.mean()
        null_space = torch.ones(shape, dtype=dtype)
    if not np.isfinite(f).all():
        raise ValueError("rhs: the right-hand side is not finite (NaN or Inf in rhs, boundary, flux or solution)")
    return Problem(
        A=A,
        f=torch.from_numpy(f).to(dtype),
        grid_shape=shape,
        h=h,
        exact=None if exact is None else torch.from_numpy(exact).to(dtype),
        name=name,
        null_space=null_space,
        start=start,
    )
