"""``mgcore.solve``: geometric multigrid with SciPy's calling convention.

``solve(A, b, x0=None, *, rtol, atol, maxiter, ...) -> (x, info)`` as in ``scipy.sparse.linalg``, and a
reusable :class:`MultigridSolver` (set up once, solve many times) in the manner of pyamg's
``MultilevelSolver``.  Right-hand sides may carry leading batch dimensions; each is solved with its own
stopping test and convergence record.
"""

from __future__ import annotations

import copy
import math
import re
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mgcore.anisotropy import choose, coarsened_axes
from mgcore.boundary import NULL_TOL, BoundaryProlongation, active_cells, null_parts, null_vector
from mgcore.crop import ActiveBox, find_active_box, nesting_depth, ungrounded
from mgcore.cycles import cycle, fmg
from mgcore.hierarchy import Hierarchy, build_hierarchy
from mgcore.memory import check_device, check_memory, estimate_solve_memory
from mgcore.operators import Stencil
from mgcore.options import CG_SWEEPS, MultigridOptions

__all__ = ["MultigridSolver", "SolveInfo", "solve"]

_DIVERGENCE = 1e8  # a residual this many times the initial one is called divergence
# A batch of small grids is cycled in chunks of about this many points: 64 right-hand sides at 255^2 took
# 0.73 s in chunks of 16 (8 MB per float64 array) against 1.52 s in one piece (2 cores), as each chunk's
# arrays stay in cache between the operations of a cycle.
_CHUNK_POINTS = 2**20


@dataclass
class SolveInfo:
    """What happened in a solve.

    For a single right-hand side the fields are scalars and ``residuals`` has shape
    ``(iterations + 1,)``; for a batch they are arrays over the batch shape and ``residuals`` has shape
    ``(*batch, most_iterations + 1)``, padded with NaN after each right-hand side stopped.
    """

    converged: bool | np.ndarray
    """Whether ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` was reached."""
    iterations: int | np.ndarray
    """Cycles (or CG iterations) taken."""
    residuals: np.ndarray
    """``||b - A x_k||_2`` for ``k = 0..iterations`` (in float64)."""
    convergence_factor: float | np.ndarray
    """Mean reduction per iteration after the first: ``(r_k / r_1)^(1/(k-1))``; ``r_1/r_0`` if ``k = 1``."""
    reason: str | np.ndarray
    """Why it stopped, in words."""
    threshold: float | np.ndarray = 0.0
    """The residual norm that counted as converged, ``max(rtol ||b||, atol)``."""
    method: str = ""
    """The cycle, smoother and acceleration used."""
    setup_seconds: float = 0.0
    """Hierarchy construction time (0 when reused)."""
    solve_seconds: float = 0.0
    """Time in the iteration."""
    compile_seconds: float = 0.0
    """Time spent compiling the cycle in this call (``compile=True``), apart from set-up and solve: paid once
    per hierarchy and right-hand-side shape."""
    extra: dict = field(default_factory=dict)

    def table(self, index: int | tuple[int, ...] | None = None) -> str:
        """A per-iteration table of residuals and reduction factors (``index`` picks one of a batch)."""
        residuals = self.residuals if index is None else self.residuals[index]
        if residuals.ndim != 1:
            raise ValueError("index: pick one right-hand side of the batch, e.g. info.table(0)")
        lines = [" iter      residual   relative   factor", " ----  ------------  ---------  -------"]
        r0 = residuals[0]
        previous = None
        for k, r in enumerate(residuals):
            if k > 0 and np.isnan(r):  # padding after this right-hand side stopped
                break
            factor = "" if previous in (None, 0.0) else f"{r / previous:7.4f}"
            relative = r / r0 if r0 else float("nan")
            lines.append(f" {k:>4}  {r:12.4e}  {relative:9.2e}  {factor}")
            previous = r
        return "\n".join(lines)

    def __str__(self) -> str:
        if np.ndim(self.converged) == 0:
            return (
                f"{'converged' if self.converged else 'NOT converged'} in {self.iterations} iterations "
                f"({self.method}); factor {self.convergence_factor:.4f}; {self.reason}"
            )
        if np.size(self.converged) == 0:
            return f"an empty batch of shape {np.shape(self.converged)}: nothing to solve ({self.method})"
        done = int(np.sum(self.converged))
        return (
            f"{done}/{np.size(self.converged)} right-hand sides converged ({self.method}); "
            f"iterations {int(np.min(self.iterations))}..{int(np.max(self.iterations))}; "
            f"factor up to {float(np.nanmax(self.convergence_factor)):.4f}"
        )


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>= 0' if allow_zero else '> 0'}; got {value}")
    return value


def _operator_from(A, grid: Sequence[int] | None, boundary=None) -> tuple[Stencil, tuple[int, ...] | None]:
    """Accept a Stencil, or a SciPy sparse matrix with ``grid=shape`` (and its face labels ``boundary``)."""
    if isinstance(A, Stencil):
        if A.coefficients.device.type == "meta":
            raise ValueError("A: the stencil is on the 'meta' device, which holds no values; move it to cpu or cuda")
        if boundary is not None:
            raise ValueError("boundary: only for a sparse A; a Stencil carries its own face labels (Stencil.faces)")
        grid_shape = A.grid_shape
        if grid is not None:
            grid = tuple(int(n) for n in grid)
            if grid_shape is not None and grid != grid_shape:
                raise ValueError(f"grid: {grid} does not match the stencil's grid {grid_shape}")
            grid_shape = grid
        return A, grid_shape
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        sp = None
    if sp is not None and sp.issparse(A):
        if grid is None:
            raise ValueError(
                "grid: a sparse matrix needs grid=shape, the grid its unknowns live on (C order), e.g. grid=(n, n)"
            )
        from mgcore.sparse import stencil_from_sparse

        grid = tuple(int(n) for n in grid)
        if boundary is not None:
            return stencil_from_sparse(A, grid, boundary=boundary), grid
        return _inferred_faces(A, grid), grid
    raise TypeError(
        f"A: expected an mgcore.Stencil or a scipy.sparse matrix with grid=shape; got {type(A).__name__}"
    )


def _inferred_faces(A, grid: tuple[int, ...]) -> Stencil:
    """The stencil of a sparse ``A`` given without face labels, labelled as its rows say: periodic along an
    axis that a coupling wraps around (from the last point to the first), Neumann on a face whose active rows
    are not grounded (they sum to zero, :func:`mgcore.crop.ungrounded`), Dirichlet elsewhere.  A pyamg user
    passes the matrix alone; with Dirichlet labels on a Neumann matrix the coarse spaces lose the constants at
    the faces and the cycle stalled (a pure Neumann 65^2 matrix: 100 cycles, relative residual 2.5e-5), and a
    periodic one was refused."""
    from mgcore.sparse import stencil_from_sparse

    try:
        stencil = stencil_from_sparse(A, grid)
    except ValueError as error:
        wrapped = _wrapped_axes(A, grid)
        if not wrapped:
            raise
        faces = ["periodic" if axis in wrapped else "dirichlet" for axis in range(len(grid))]
        try:
            stencil = stencil_from_sparse(A, grid, boundary=faces)
        except ValueError:
            raise error from None
    if stencil.is_constant or len(grid) != stencil.dim:
        return stencil
    active = active_cells(stencil, grid).cpu().numpy()
    faces = [list(pair) for pair in stencil.faces]
    for axis, n in enumerate(grid):
        for side, plane in enumerate((0, n - 1)):
            if faces[axis][side] == "dirichlet" and ungrounded(stencil, active, axis, plane):
                faces[axis][side] = "neumann"
    if [tuple(pair) for pair in faces] == list(stencil.faces):
        return stencil
    return Stencil(stencil.offsets, stencil.coefficients, boundary=[tuple(pair) for pair in faces])


def _wrapped_axes(A, grid: tuple[int, ...]) -> set[int]:
    """The axes along which some entry of ``A`` couples a grid point with index 0 to the one with index
    ``n - 1`` at the same place along the other axes: a periodic wrap."""
    if min(grid) < 3:
        return set()
    coo = A.tocoo()
    rows = np.stack(np.unravel_index(coo.row, grid))  # (dim, nnz)
    columns = np.stack(np.unravel_index(coo.col, grid))
    wrapped = set()
    for axis, n in enumerate(grid):
        others = [b for b in range(len(grid)) if b != axis]
        # The same point along the other axes: a banded matrix that runs from the end of one grid line into
        # the next (a 1D chain on a 2D grid) is not a wrap.
        same = np.all(rows[others] == columns[others], axis=0) if others else np.ones(coo.nnz, bool)
        if (same & (np.abs(rows[axis] - columns[axis]) == n - 1) & (coo.data != 0)).any():
            wrapped.add(axis)
    return wrapped


class MultigridSolver:
    """A geometric multigrid solver, set up once and used for many solves.

    A masked operator (decoupled rows outside its domain) whose active cells fill a small part of the grid is
    cycled on the box around them (:attr:`active_box`); ``x`` and the reports cover the whole grid.

    Parameters
    ----------
    A : Stencil or scipy.sparse matrix
        The operator.  A sparse matrix needs ``grid`` and must be a stencil on that grid (as
        ``pyamg.gallery.poisson`` and ``stencil_grid`` build them); the stencil is recovered and checked.
    grid : tuple of int, optional
        The grid.  Optional for a constant stencil: the first right-hand side then sets it.
    boundary : str or sequence, optional
        Face labels of a sparse ``A`` (``"neumann"``, ``"periodic"``, per axis or face, see
        :func:`mgcore.operators.parse_faces`): Neumann faces make the coarse spaces keep the constants, and
        periodic couplings wrap around.  Default: as the matrix's rows say, periodic along an axis a coupling
        wraps around, Neumann on a face whose rows sum to zero, else Dirichlet.
    options : MultigridOptions, optional
        Cycle type, smoother (``"rbgs"``, ``"wjacobi"``, ``"jacobi"``, ``"chebyshev"``, a
        ``(name, options)`` pair, or a callable ``(A, grid_shape, level) -> Smoother`` such as a learned
        smoother), sweeps, coarse operators, transfers (``interpolation="operator"`` for rough coefficients
        in 2D) and ``max_coarse``; see :class:`~mgcore.options.MultigridOptions`.
    device : str or torch.device, optional
        Where to run; default: where the right-hand side lives.
    cycle_dtype : torch.dtype, optional
        Precision of the cycles; default: that of ``b``.  ``torch.float32`` with float64 ``b`` is mixed
        precision: cycles in float32 (half the memory traffic), residuals and the iterate in float64, so the
        float64 tolerance is still reached (iterative refinement; Carson & Higham 2018).
    compile : bool
        Run each cycle as one ``torch.compile``-d graph (fused kernels; the cycle traces without graph breaks).
        Off by default: on a 2-core CPU it measured slower than the eager cycle (37 ms against 14 ms at
        1023^2) and compiling costs tens of seconds per hierarchy and shape; the time is reported apart in
        ``info.compile_seconds``.
    **overrides
        Any :class:`~mgcore.options.MultigridOptions` field by name (``presmooth=1``, ``cycle="W"``, ...),
        applied on top of ``options``.

    Examples
    --------
    >>> import numpy as np
    >>> from mgcore import Stencil
    >>> solver = MultigridSolver(Stencil.laplacian(2), grid=(63, 63))
    >>> b = np.ones((63, 63))
    >>> x, info = solver.solve(b, rtol=1e-10)
    >>> info.converged, info.iterations <= 12
    (True, True)
    >>> mixed = MultigridSolver(Stencil.laplacian(2), grid=(63, 63), cycle_dtype=torch.float32)
    >>> x32, info32 = mixed.solve(b, rtol=1e-10)
    >>> info32.converged, x32.dtype, bool(np.abs(x32 - x).max() < 1e-8 * np.abs(x).max())
    (True, dtype('float64'), True)
    """

    def __init__(
        self,
        A,
        grid: Sequence[int] | None = None,
        options: MultigridOptions | None = None,
        *,
        device: str | torch.device | None = None,
        cycle_dtype: torch.dtype | None = None,
        compile: bool = False,  # noqa: A002 - the name torch users know (torch.compile, timm's --torchcompile)
        boundary=None,
        **overrides,
    ) -> None:
        self.options = MultigridOptions.resolve(options, overrides)
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected True or False; got {compile!r}")
        self.compile = compile
        self._compiled: dict[tuple, Callable[[Tensor], Tensor]] = {}
        self.A, self.grid = _operator_from(A, grid, boundary)
        if cycle_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"cycle_dtype: expected None, torch.float32 or torch.float64; got {cycle_dtype!r}")
        self.cycle_dtype = cycle_dtype
        # A Stencil is a torch object with a device, and b must live there too; a sparse matrix follows b.
        self._device_bound = isinstance(A, Stencil)
        self.device = check_device(device) if device is not None else None
        if self.grid is not None:
            _check_grid(self.grid)
        self._hierarchies: dict[tuple, Hierarchy] = {}
        self._operators: dict[tuple, Stencil] = {}
        self._stored: _Storage | None = None
        self.setup_seconds = 0.0
        if self.grid is not None:  # set up now, in float64 on the CPU or the given device
            self.hierarchy(torch.float64, self.device or self.A.coefficients.device)

    # ------------------------------------------------------------------ set-up
    def _storage(self) -> tuple[Stencil, tuple[int, ...], tuple[int, ...] | None]:
        """The operator and the grid the cycles run on (transposed by :attr:`axis_order`, cut to
        :attr:`active_box`), and :attr:`axis_order`."""
        stored = self._layout_of_grid()
        return stored.cycled, stored.cycled_shape, stored.order

    def _layout_of_grid(self) -> _Storage:
        """How the grid is stored for the cycles, worked out once per grid."""
        if self._stored is None or self._stored.grid != self.grid:
            order = _line_axis_last(self.A, self.grid, self.options)
            if order is None:
                whole, shape = self.A, self.grid
            else:
                whole, shape = self.A.permute_axes(order), tuple(self.grid[a] for a in order)
            box = None
            # A smoother factory is called with the caller's grid, as documented: it gets the whole grid.
            if not callable(self.options.smoother) and not whole.is_constant:
                o = self.options
                box = find_active_box(whole, shape, depth=nesting_depth(whole.faces, shape, o.max_coarse, o.max_levels))
            cycled, cycled_shape = (whole, shape) if box is None else (box.operator, box.shape)
            self._stored = _Storage(self.grid, order, whole, shape, box, cycled, cycled_shape)
        return self._stored

    @property
    def _box(self) -> ActiveBox | None:
        return None if self.grid is None else self._layout_of_grid().box

    @property
    def active_box(self) -> tuple[slice, ...] | None:
        """The part of the grid the cycles run on, as slices of the caller's axes; ``None`` for the whole grid.

        A masked operator whose active cells fit a box of at most 90% of the grid (50% on grids of fewer than
        2^17 points) is cycled on that box; its decoupled rows outside are solved directly, ``x = b / a``
        (:mod:`mgcore.crop`).  ``x``, ``info`` and the callback's iterate always cover the whole grid, and the
        residuals reported are the whole grid's.  A "box" may also be the whole grid, when the active cells
        come near a Dirichlet face without reaching it and are not grounded there (a Neumann mask edge): the
        cycles then take that face as Neumann (``mgcore.crop._free_faces``; the operator is the same).

        Examples
        --------
        >>> import numpy as np
        >>> from mgcore import Stencil
        >>> L = Stencil.laplacian(2)
        >>> grid = (127, 127)
        >>> x = (torch.arange(127) + 1) / 128
        >>> disk = (x[:, None] - 0.5) ** 2 + (x[None, :] - 0.5) ** 2 < 0.3**2
        >>> c = L.coefficient_arrays(grid).clone()
        >>> for k, offset in enumerate(L.offsets):  # Dirichlet on the disk's edge: no coupling across it
        ...     if any(offset):
        ...         c[k] *= disk & torch.roll(disk, [-o for o in offset], (0, 1))
        >>> solver = MultigridSolver(Stencil(L.offsets, c), grid=grid)
        >>> solver.active_box  # 81 = 5 * 2^4 + 1 points nest four times between Neumann faces
        (slice(23, 104, None), slice(23, 104, None))
        >>> x, info = solver.solve(np.ones(grid))
        >>> info.converged, x.shape, float(x[0, 0])  # outside the disk: 4 x = 1
        (True, (127, 127), 0.25)
        """
        box = self._box
        if box is None:
            return None
        order = self._stored.order or tuple(range(len(box.box)))
        spans = [slice(None)] * len(order)
        for axis, span in zip(order, box.box):
            spans[axis] = span
        return tuple(spans)

    def _box_words(self) -> str:
        """``"the 833 x 833 box of the active cells"`` (the caller's axes), for ``repr`` and ``info.method``; a
        box that is the whole grid says which faces it labels Neumann."""
        box = self._box
        if all(span.stop - span.start == n for span, n in zip(box.box, box.grid_shape)):
            return "the whole grid, its faces beside no grounded active cell labelled Neumann"
        sizes = (span.stop - span.start for span in self.active_box)
        return f"the {' x '.join(map(str, sizes))} box of the active cells"

    @property
    def axis_order(self) -> tuple[int, ...] | None:
        """How the cycles store the grid: stored axis ``a`` is the caller's axis ``axis_order[a]``; ``None`` when
        stored as given.

        Line relaxation solves lines laid out contiguously, and forms a colour's residual on its own lines only
        when they run along the last (contiguous) axis.  When ``smoother="auto"`` relaxes lines along another
        axis, the solver stores the grid with that axis last: ``b`` and ``x0`` are transposed once on entry and
        ``x`` once on return (measured at 1023^2, lines along x: 0.44 -> 0.29 s for a solve, single-thread).
        :meth:`hierarchy` is built on the stored grid; its table shows the caller's axes.

        Examples
        --------
        >>> from mgcore import Stencil
        >>> A = Stencil.from_kernel([[0, -0.001, 0], [-1, 2.002, -1], [0, -0.001, 0]])  # strong along y: as is
        >>> MultigridSolver(A, grid=(31, 31), smoother="auto").axis_order is None
        True
        >>> MultigridSolver(A.permute_axes((1, 0)), grid=(31, 31), smoother="auto").axis_order  # along x
        (1, 0)
        """
        return None if self.grid is None else self._storage()[2]

    def hierarchy(self, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Hierarchy:
        """The hierarchy in ``dtype`` on ``device`` (built on first use, then cached)."""
        if self.grid is None:
            raise ValueError("grid: unknown until the first solve; pass grid=shape to set up now")
        device = torch.device(device) if device is not None else self.A.coefficients.device
        key = (self.grid, dtype, device)
        if key not in self._hierarchies:
            start = time.perf_counter()
            base_key = (self.grid, torch.float64, device)
            if base_key not in self._hierarchies:
                # Refuse what cannot fit before allocating anything (the red-black masks of a 100000^2 grid
                # alone are 160 GB).
                estimate = self.memory_estimate(cycle_dtype=dtype, setup=True)
                check_memory(estimate, device)
                stored, grid, order = self._storage()
                A = _on(stored, device, torch.float64)
                with torch.no_grad(), _setup_errors(self, estimate):
                    built = build_hierarchy(A, grid, self.options)
                if order is not None:
                    _caller_axes(built, order)
                self._hierarchies[base_key] = built
            if key != base_key:
                self._hierarchies[key] = copy.deepcopy(self._hierarchies[base_key]).to(dtype=dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.setup_seconds += time.perf_counter() - start
        return self._hierarchies[key]

    def null_space(self, device: torch.device | None = None) -> Tensor | None:
        """The null vector of a singular operator (pure Neumann, fully periodic), 1 on the active points,
        as a float64 grid; ``None`` for a non-singular one (see :func:`mgcore.boundary.null_vector`).  When the
        active points form parts that do not couple (:func:`mgcore.boundary.null_parts`), each part's indicator
        is a null vector too; this is their sum, and solves keep ``x`` at zero mean on each part."""
        null = self._cycled_null(device)
        if isinstance(null, _NullParts):
            null = null.vector
        box = self._box
        if null is None or box is None:
            return null
        whole = null.new_zeros(box.grid_shape)
        whole[box.box] = null
        return whole

    def _cycled_null(self, device: torch.device | None = None) -> Tensor | None:
        """:meth:`null_space` on the grid the cycles run on (:attr:`active_box`): the rows outside the box are
        decoupled with a non-zero diagonal, so the null vector is zero there."""
        if self.grid is None:
            return None
        if "_null" not in self.__dict__:
            active = None
            masked = False
            stored, grid, _ = self._storage()
            built = next((h for (g, *_), h in self._hierarchies.items() if g == self.grid), None)  # any dtype, device
            P = None if built is None else built[0].P
            if isinstance(P, BoundaryProlongation):
                # The fine level's active cells, found by the set-up already (None there: all of them).
                masked = P.active is not None
                active = P.active.cpu() if masked else torch.ones(grid, dtype=torch.bool)
            elif P is None and not stored.is_constant:  # no coarse level (or none built yet) to ask
                active = active_cells(stored, grid).cpu()
                masked = not bool(active.all())
            # Dirichlet faces ground a box; a masked domain may not reach them (a disk with Neumann conditions
            # on its edge is singular inside a Dirichlet box), so its operator is tested (on the active box,
            # whose cut faces are labelled Neumann, the labels say nothing anyway).
            grounded = stored.boundary == "dirichlet" and not masked
            self._null = None if grounded else null_vector(stored, grid, active=active)
            if self._null is not None and not stored.is_constant and not self._null.numpy().all():
                # Active points in parts that do not couple: one null vector per part (a grid with every
                # point active is one part to the stencil's pattern, which is all null_parts reads).
                labels, count = null_parts(stored, grid, self._null > 0)
                if count > 1:
                    self._null = _NullParts.of(labels, count)
        if self._null is None or device is None:
            return self._null
        return self._null.to(device)

    def _islands(self, device: torch.device) -> _Islands | None:
        """:class:`_Islands` of the cycled operator, or None where none qualifies (found once, on demand)."""
        if "_island_set" not in self.__dict__:
            self._island_set = _Islands.of(*self._storage()[:2])
        found = self._island_set
        return None if found is None else found.to(device)

    def operator(self, dtype: torch.dtype, device: torch.device) -> Stencil:
        """The fine-grid operator in ``dtype`` on ``device`` (for residuals), on the stored grid
        (:attr:`axis_order`)."""
        key = (dtype, device, self.grid)
        if key not in self._operators:
            self._operators[key] = _on(self._storage()[0], device, dtype)
        return self._operators[key]

    def memory_estimate(
        self, batch: int = 0, *, accel: str | None = None, cycle_dtype: torch.dtype | None = None, setup: bool = True
    ):
        """The memory a set-up (and a solve of ``batch`` right-hand sides) needs; see :mod:`mgcore.memory`.

        Examples
        --------
        >>> from mgcore import Stencil
        >>> solver = MultigridSolver(Stencil.laplacian(2), grid=(255, 255))
        >>> print(solver.memory_estimate(batch=4))  # the 31 x 31 coarsest grid's dense LU dominates the set-up
        about 38.9 MiB (smoothers 1.9 MiB, set-up peak 14.1 MiB, coarsest dense LU 7.1 MiB, solve arrays 15.8 MiB)
        """
        if self.grid is None:
            raise ValueError("grid: unknown until the first solve; pass grid=shape to estimate the memory")
        coarsened = None
        if self.options.coarsening == "auto":
            # The fine level's choice, kept on every level: an upper bound (the anisotropy shrinks as it coarsens,
            # and full coarsening takes over).
            # The whole grid: b and x are whole whatever the cycles run on (an upper bound for the active box).
            stored = self._layout_of_grid()
            whole, grid = stored.whole, stored.whole_shape
            if whole.is_constant or tuple(whole.coefficients.shape[1:]) == grid:
                coarsened = coarsened_axes("auto", whole, grid, auto_smoother=self.options.smoother == "auto")
        return estimate_solve_memory(
            self.grid if coarsened is None else self._layout_of_grid().whole_shape,
            coarsened=coarsened,
            stencil_points=len(self.A.offsets),
            variable=not self.A.is_constant,
            options=self.options,
            cycle_dtype=cycle_dtype if cycle_dtype not in (None, torch.float64) else None,
            batch=batch,
            accel=accel,
            setup=setup,
        )

    def __repr__(self) -> str:
        o = self.options
        head = (
            f"MultigridSolver(cycle={o.cycle.value}, smoother={o.smoother!r}, "
            f"presmooth={o.presmooth}, postsmooth={o.postsmooth})"
        )
        if self.grid is None:
            return head
        if self._box is not None:
            head += f" on {self._box_words()}, {self.active_box}"
        return head + "\n" + repr(self.hierarchy(torch.float64, self.device or self.A.coefficients.device))

    @property
    def symmetric(self) -> bool:
        """True when one cycle is a symmetric operator (so it can precondition CG)."""
        if self.options.presmooth != self.options.postsmooth or not self.A.is_symmetric():
            return False
        h = self.hierarchy(torch.float64, self.device or self.A.coefficients.device)
        return all(level.smoother is None or level.smoother.symmetric for level in h.levels)

    # ------------------------------------------------------------------ solving
    def solve(
        self,
        b,
        x0=None,
        *,
        rtol: float = 1e-8,
        atol: float = 0.0,
        maxiter: int = 100,
        accel: str | None = None,
        callback: Callable | None = None,
        singular: str = "error",
    ):
        """Solve ``A x = b`` by multigrid cycles, or by CG preconditioned with one cycle (``accel="cg"``).

        Each right-hand side stops when

            ``||b - A x_k||_2 <= max(rtol * ||b||_2, atol)``,

        after ``maxiter`` iterations, or when its residual becomes NaN/Inf or grows ``1e8``-fold (then
        ``info.converged`` is False and ``info.reason`` says why).

        Parameters
        ----------
        b : numpy.ndarray or torch.Tensor
            Shape ``(*batch, *grid)``, or ``(*batch, N)`` when the operator came from a sparse matrix.
            float32 or float64, on any device.  float32 is cycled in float32 with residuals and the iterate
            kept in float64 (iterative refinement), so it reaches the float64 tolerance.
        x0 : like ``b``, optional
            Initial guess (never modified).
        rtol, atol : float
            Relative and absolute tolerances (``rtol > 0``, ``atol >= 0``).
        maxiter : int
            Largest number of iterations (``>= 1``).
        accel : {None, "cg"}
            ``"cg"``: conjugate gradients preconditioned with one cycle (needs a symmetric cycle:
            ``presmooth == postsmooth``, a symmetric smoother and a symmetric operator).
        callback : callable, optional
            Called as ``callback(xk)`` after each iteration with a copy of the current iterate shaped like
            ``b`` (the caller may keep or modify it).
        singular : {"error", "project"}
            For a singular operator (pure Neumann or fully periodic, null vector ``z`` = the constant on the
            active points): ``"error"`` refuses a ``b`` with a component along ``z`` larger than
            ``rtol ||b|| / 10`` (``A x = b`` has no solution); ``"project"`` removes that component and
            reports it in ``info.extra["removed_component"]`` (the mean of ``b`` over the active points).
            Either way the iterate is kept orthogonal to ``z`` (zero mean), ``x0`` included.  Active points in
            parts that do not couple (:func:`mgcore.boundary.null_parts`) have one such ``z`` per part: the
            check, the projection and the zero mean are per part.

        Returns
        -------
        x : like ``b``
            The solution, of ``b``'s type, dtype and device.
        info : SolveInfo
            Convergence record (see :class:`SolveInfo`).

        Raises
        ------
        TypeError, ValueError
            For bad input, naming the parameter: a ``b``/``x0`` that is not a float32/float64 array or tensor,
            has NaN/Inf, does not fit the operator's grid or is on another (or the ``meta``) device, and bad
            tolerances.  A singular coarsest operator raises ``ValueError`` naming ``A`` and the level.
        MemoryError
            When the estimated memory (:meth:`memory_estimate`) exceeds what the device has free; nothing is
            allocated then.

        Notes
        -----
        An empty batch (a batch dimension of size 0, e.g. ``b`` shaped ``(0, *grid)``) returns an empty ``x``
        and an ``info`` with empty arrays, as ``numpy.linalg.solve`` and ``scipy.sparse.linalg.spsolve`` do.
        Any memory layout is accepted (Fortran order, negative strides, non-contiguous views); ``b`` and
        ``x0`` are never modified.

        Examples
        --------
        >>> import numpy as np
        >>> from mgcore import Stencil
        >>> L = Stencil.laplacian(2)
        >>> solver = MultigridSolver(Stencil(L.offsets, L.coefficients, boundary="periodic"), grid=(32, 32))
        >>> b = np.random.default_rng(0).standard_normal((32, 32))
        >>> x, info = solver.solve(b, singular="project")
        >>> info.converged, bool(abs(info.extra["removed_component"] - b.mean()) < 1e-15), bool(abs(x.mean()) < 1e-12)
        (True, True, True)
        """
        rtol = _check_positive("rtol", rtol)
        atol = _check_positive("atol", atol, allow_zero=True)
        if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
            raise ValueError(f"maxiter: expected an integer >= 1; got {maxiter!r}")
        if accel not in (None, "cg"):
            raise ValueError(f"accel: expected None or 'cg'; got {accel!r}")
        if callback is not None and not callable(callback):
            raise TypeError("callback: expected a callable callback(xk)")
        if singular not in ("error", "project"):
            raise ValueError(f"singular: expected 'error' or 'project'; got {singular!r}")
        bt, layout = _as_grid_tensor(b, "b", self)
        device = bt.device
        if self.device is not None and device != self.device:
            bt = bt.to(self.device)
            device = self.device
        operator_device = self.A.coefficients.device
        if self.device is None and self._device_bound and operator_device != device:
            raise ValueError(
                f"b: on device {device} but the operator A is on {operator_device}; "
                "move them to one device (or pass device=...)"
            )
        x0t = None
        if x0 is not None:
            x0t, x0_layout = _as_grid_tensor(x0, "x0", self)
            if x0t.shape != bt.shape:
                raise ValueError(f"x0: expected the shape of b {tuple(layout.shape)}; got {tuple(x0_layout.shape)}")
            x0t = x0t.to(device)
        if bt.shape[0] == 0:
            return _empty_solve(bt, layout, self)
        box = self._box
        outside = None
        if box is not None:  # cycle on the box; the decoupled rows outside it are solved here, x = b / a
            whole_b, whole_x0 = bt, x0t
            bt = box.inside(whole_b)
            x0t = None if whole_x0 is None else box.inside(whole_x0)
            outside = _Outside.of(box, whole_b, whole_x0)
        null = self._cycled_null(device)
        removed = None
        if null is not None:
            bt, removed = _compatible(
                bt, null, rtol, atol, singular, None if outside is None else outside.b_squares
            )
            if x0t is not None:
                x0t = _orthogonal(x0t, null)
        work_dtype = self.cycle_dtype or bt.dtype
        hierarchy = self.hierarchy(work_dtype, device)
        A64 = self.operator(torch.float64, device)
        o = self.options
        method = f"{o.cycle.value}({o.presmooth},{o.postsmooth}) {_smoother_name(hierarchy)}"
        if box is not None:
            method += f", on {self._box_words()}"
        if accel == "cg":
            if not self.symmetric:
                raise ValueError(
                    "accel: 'cg' needs a symmetric cycle (presmooth == postsmooth, a symmetric smoother and a "
                    f"symmetric operator); got presmooth={o.presmooth}, postsmooth={o.postsmooth}, "
                    f"smoother={o.smoother!r}"
                )
            method = "CG preconditioned by " + method
        check_memory(
            self.memory_estimate(bt.shape[0], accel=accel, cycle_dtype=work_dtype, setup=False), device, what="b"
        )
        setup_seconds = self.setup_seconds
        self.setup_seconds = 0.0
        compile_seconds = 0.0
        start = time.perf_counter()
        with torch.no_grad():
            run = _pcg if accel == "cg" else _stationary
            chunk = bt.shape[0] if callback is not None else max(1, _CHUNK_POINTS // math.prod(bt.shape[2:]))
            notify = None if callback is None else _Notifier(callback, layout, outside, box)
            pieces = []
            for first in range(0, bt.shape[0], chunk):
                part = slice(first, first + chunk)
                run_cycle, seconds = self._cycle_function(hierarchy, bt[part].shape, accel == "cg")
                compile_seconds += seconds
                pieces.append(
                    run(self, run_cycle, A64, bt[part], None if x0t is None else x0t[part], rtol, atol, maxiter,
                        notify, None if outside is None else outside.part(part))
                )
            x = pieces[0][0] if len(pieces) == 1 else torch.cat([piece[0] for piece in pieces])
            record = _merge_records([piece[1] for piece in pieces])
            around = None if outside is None else outside.final(record["iterations"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start - compile_seconds
        info = _make_info(record, layout.batch_shape, method, setup_seconds, elapsed)
        info.compile_seconds = compile_seconds
        if removed is not None:
            info.extra["removed_component"] = (
                float(removed[0]) if layout.batch_shape == () else removed.reshape(layout.batch_shape)
            )
        if bt.dtype != torch.float64:
            x_out = x.to(bt.dtype)
            squares = (bt.to(torch.float64) - A64(x_out.to(torch.float64))).flatten(1).square().sum(1)
            if around is not None:
                around = [values.to(bt.dtype) for values in around]
                squares += box.outside_squares(whole_b, around)
            relative = (squares.sqrt() / record["b_norm"].clamp_min(1e-300)).cpu().numpy()
            note = f"; the {str(bt.dtype).removeprefix('torch.')} result (rounded from the float64 iterate)"
            info.extra["rounded_relative_residual"] = relative.reshape(layout.batch_shape)
            if np.ndim(info.reason) == 0:
                info.reason = info.reason + note + f" has relative residual {float(relative[0]):.2e}"
            else:
                info.reason = np.array([r + note for r in info.reason.ravel()], dtype=object).reshape(
                    info.reason.shape
                )
            x = x_out
        if box is not None:
            x = box.expand(x, around)
        return layout.restore(x), info

    def _cycle_function(
        self, hierarchy: Hierarchy, shape: tuple[int, ...], symmetric: bool
    ) -> tuple[Callable[[Tensor], Tensor], float]:
        """One cycle from a zero guess, ``r -> cycle(r)``, compiled for ``shape`` when ``compile=True``; and the
        seconds spent compiling it now (0 when eager or cached)."""
        kind = self.options.cycle
        dtype = _dtype_of(hierarchy)

        def run_cycle(residual: Tensor, out: Tensor | None = None) -> Tensor:
            return cycle(hierarchy, None, residual.to(dtype), kind, symmetric=symmetric, out=out)

        if not self.compile:
            return run_cycle, 0.0
        key = (id(hierarchy), tuple(shape), symmetric)
        if key in self._compiled:
            return self._compiled[key], 0.0
        start = time.perf_counter()
        hierarchy.prepare_to_trace(hierarchy[0].A.coefficients.device)  # a graph holds torch ops only
        # Dynamo keeps compiled graphs per code object and refuses (fullgraph) after ``recompile_limit`` (8)
        # variants, which a process building many solvers reaches; a copy of the code per solver keeps its
        # graphs apart, and they go when the solver goes.
        run_cycle = types.FunctionType(
            run_cycle.__code__.replace(), run_cycle.__globals__, run_cycle.__name__, run_cycle.__defaults__,
            run_cycle.__closure__,
        )
        compiled = torch.compile(run_cycle, dynamic=False, fullgraph=True)
        device = hierarchy[0].A.coefficients.device
        compiled(torch.zeros(shape, dtype=torch.float64, device=device))  # traces and compiles now
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self._compiled[key] = lambda residual, out=None: compiled(residual)  # one graph: it makes its own arrays
        return self._compiled[key], time.perf_counter() - start

    def fmg(self, b, *, cycles_per_level: int = 1, interpolation: str = "cubic"):
        """One full-multigrid pass (see :func:`mgcore.cycles.fmg`); returns ``x`` shaped like ``b``.

        Examples
        --------
        >>> import torch
        >>> from mgcore import Stencil
        >>> A = Stencil.laplacian(2, h=1 / 64)
        >>> solver = MultigridSolver(A, grid=(63, 63))
        >>> b = torch.ones(63, 63, dtype=torch.float64)
        >>> x = solver.fmg(b)
        >>> bool((A.residual(x[None, None], b[None, None]).norm() / b.norm()) < 1e-2)
        True
        """
        bt, layout = _as_grid_tensor(b, "b", self)
        hierarchy = self.hierarchy(bt.dtype, bt.device)
        box = self._box
        with torch.no_grad():
            x = fmg(
                hierarchy,
                bt if box is None else box.inside(bt),
                cycles_per_level=cycles_per_level,
                kind=self.options.cycle,
                interpolation=interpolation,
            )
            if box is not None:  # the decoupled rows outside the active box, exactly
                x = box.expand(x, box.solve_outside(bt))
        return layout.restore(x)

    def aspreconditioner(self):
        """One cycle from a zero guess as a ``scipy.sparse.linalg.LinearOperator`` on flat float64 vectors.

        Use a symmetric cycle (``presmooth == postsmooth``) with ``scipy.sparse.linalg.cg``.

        Examples
        --------
        >>> import numpy as np, scipy.sparse.linalg as spla
        >>> from mgcore import Stencil
        >>> A = Stencil.laplacian(2)
        >>> solver = MultigridSolver(A, grid=(31, 31), presmooth=1, postsmooth=1)
        >>> M = solver.aspreconditioner()
        >>> b = np.ones(31 * 31)
        >>> x, status = spla.cg(A.to_sparse((31, 31)), b, M=M, rtol=1e-10)
        >>> status, float(np.linalg.norm(b - A.to_sparse((31, 31)) @ x) / np.linalg.norm(b)) < 1e-9
        (0, True)
        """
        from scipy.sparse.linalg import LinearOperator

        if self.grid is None:
            raise ValueError("grid: pass grid=shape to the solver before asking for a preconditioner")
        device = self.device or self.A.coefficients.device
        hierarchy = self.hierarchy(torch.float64, device)
        n = math.prod(self.grid)
        grid = self.grid
        kind = self.options.cycle

        order = self.axis_order
        layout = _Layout("torch", (n,), (), torch.float64, order)
        box = self._box

        def matmat(v: np.ndarray) -> np.ndarray:
            v = np.asarray(v, dtype=np.float64)
            columns = v.reshape(n, -1).T  # (k, n)
            f = layout.stored(torch.from_numpy(np.ascontiguousarray(columns)).to(device).reshape(-1, 1, *grid))
            with torch.no_grad():
                if box is None:
                    z = cycle(hierarchy, None, f, kind, symmetric=True)
                else:  # as a cycle on the whole grid: its smoothing solves the decoupled rows outside exactly
                    z = box.expand(cycle(hierarchy, None, box.inside(f), kind, symmetric=True), box.solve_outside(f))
            return layout.caller(z).reshape(-1, n).T.cpu().numpy().reshape(v.shape)

        return LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)


def _smoother_name(hierarchy: Hierarchy) -> str:
    """The smoother's name; when the levels differ in smoother or coarsened axes (``auto``, semicoarsening),
    what each run of levels uses, e.g. ``"levels 0-3 zebra-x coarsen xy, levels 4-5 rbgs coarsen x"``; and the
    coarsest solve when it is not the dense LU of a small grid (``", exact 255 x 1023 by fast diagonalisation"``)."""
    smoother = hierarchy[0].smoother
    if smoother is None:
        return "exact"
    name = _level_choices(hierarchy)
    if hierarchy.coarse_solver.name not in ("dense LU", "sparse LU"):
        grid = " x ".join(str(n) for n in hierarchy.caller_shape(hierarchy[-1].grid_shape))
        name += f", exact {grid} by {hierarchy.coarse_solver.name}"
    return name


def _level_choices(hierarchy: Hierarchy) -> str:
    smoother = hierarchy[0].smoother
    choices = []
    for level in hierarchy.levels[:-1]:
        axes = level.coarsened_axes
        full = axes is None or len(axes) == len(level.grid_shape)
        letters = None if full else hierarchy.axis_letters(axes)
        choices.append((level.smoother.name, letters))
    if all(choice == (smoother.name, None) for choice in choices):
        return smoother.name
    runs: list[list] = []
    for k, choice in enumerate(choices):
        if runs and runs[-1][2] == choice:
            runs[-1][1] = k
        else:
            runs.append([k, k, choice])
    semi = any(axes for _, axes in choices)  # name the coarsening only where some level semicoarsens
    parts = []
    for first, last, (name, axes) in runs:
        where = f"level {first}" if first == last else f"levels {first}-{last}"
        coarsening = (f" coarsen {axes}" if axes else " full coarsening") if semi else ""
        parts.append(f"{where} {name}{coarsening}")
    return ", ".join(parts)


def _line_axis_last(A: Stencil, grid: Sequence[int] | None, options: MultigridOptions) -> tuple[int, ...] | None:
    """The stored axis order that puts the line axis of ``smoother="auto"`` on the finest level last, when the
    lines run along another axis (:attr:`MultigridSolver.axis_order`); else ``None``."""
    if grid is None or options.smoother != "auto" or A.dim < 2 or A.boundary != "dirichlet":
        return None
    if not A.is_constant and tuple(A.coefficients.shape[1:]) != tuple(grid):
        return None
    (name, _), _ = choose(A, grid)
    if not name.startswith("zebra-") or len(name) != len("zebra-x"):
        return None
    axis = "xyz".index(name[-1])
    if axis == A.dim - 1:
        return None
    return (*(a for a in range(A.dim) if a != axis), axis)


def _caller_axes(hierarchy: Hierarchy, order: tuple[int, ...]) -> None:
    """Name the axes of a hierarchy built on a transposed grid as the caller numbers them (the smoothers'
    names, "auto:zebra-y" -> "auto:zebra-x", and the table's grids and coarsened axes)."""
    hierarchy.axis_order = order
    letters = {"xyz"[a]: "xyz"[order[a]] for a in range(len(order))}
    for level in hierarchy.levels:
        if level.smoother is not None:
            level.smoother.name = re.sub(
                r"(zebra-|line-)([xyz]+)",
                lambda m: m.group(1) + "".join(letters[c] for c in m.group(2)),
                level.smoother.name,
            )


def _check_grid(grid: Sequence[int], name: str = "grid") -> None:
    for axis, n in enumerate(grid):
        if n < 3:
            raise ValueError(
                f"{name}: every side needs at least 3 points; axis {axis} has {n} (grid {tuple(grid)}"
                + (")" if name == "grid" else f" taken from {name}'s shape)")
            )


def _on(A: Stencil, device: torch.device, dtype: torch.dtype) -> Stencil:
    """``A`` on ``device`` in ``dtype``: ``A`` itself when it is there already, else a copy.

    ``nn.Module.to`` moves a module in place, so calling it on the caller's stencil would move *their* operator
    (to the GPU, or to float32).
    """
    coefficients = A.coefficients
    if coefficients.device == device and coefficients.dtype == dtype:
        return A
    return copy.deepcopy(A).to(device=device, dtype=dtype)


class _setup_errors:  # noqa: N801 - used as a context manager, like contextlib's lower-case helpers
    """Turn the engine's low-level set-up failures into errors that name the cause.

    An allocation that the memory estimate let through fails in the allocator; this says so with the estimate.
    (A singular coarsest operator is named by :class:`mgcore.CoarseSolver` itself.)
    """

    def __init__(self, solver: MultigridSolver, estimate) -> None:
        self.solver, self.estimate = solver, estimate

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> bool:
        if not isinstance(error, RuntimeError):
            return False
        text = str(error)
        if isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in text:
            raise MemoryError(f"grid: the set-up ran out of memory; the estimate was {self.estimate}") from error
        return False


def _empty_solve(bt: Tensor, layout: _Layout, solver: MultigridSolver):
    """The result of a batch with no right-hand sides: an empty ``x`` and an ``info`` of empty arrays."""
    batch = layout.batch_shape
    info = SolveInfo(
        converged=np.zeros(batch, dtype=bool),
        iterations=np.zeros(batch, dtype=int),
        residuals=np.zeros((*batch, 1)),
        convergence_factor=np.zeros(batch),
        reason=np.empty(batch, dtype=object),
        threshold=np.zeros(batch),
        method=solver.options.label,
    )
    return layout.restore(torch.zeros_like(bt)), info


@dataclass
class _Layout:
    """How the caller's array maps to the internal ``(batch, 1, *grid)`` tensor, and back."""

    kind: str  # "numpy" or "torch"
    shape: tuple[int, ...]  # the caller's shape
    batch_shape: tuple[int, ...]
    dtype: torch.dtype
    order: tuple[int, ...] | None = None  # the solver's axis_order: the caller's axis of each stored axis

    def stored(self, x: Tensor) -> Tensor:
        """``(batch, 1, *grid)`` in the caller's axis order -> the stored order (a contiguous copy)."""
        if self.order is None:
            return x
        return x.permute(0, 1, *(2 + a for a in self.order)).contiguous()

    def caller(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`stored` (a view)."""
        if self.order is None:
            return x
        inverse = sorted(range(len(self.order)), key=self.order.__getitem__)
        return x.permute(0, 1, *(2 + a for a in inverse))

    def restore(self, x: Tensor):
        x = self.caller(x).reshape(self.shape)
        if self.kind == "numpy":
            return x.cpu().numpy()
        return x


def _as_grid_tensor(value, name: str, solver: MultigridSolver) -> tuple[Tensor, _Layout]:
    """Validate ``b``/``x0`` and view it as ``(batch, 1, *grid)`` (never copied unless needed)."""
    if isinstance(value, Tensor):
        kind, tensor = "torch", value.detach()
        if tensor.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense tensor; got layout {tensor.layout}")
        if tensor.device.type == "meta":
            raise ValueError(f"{name}: a tensor on the 'meta' device holds no values; move it to 'cpu' or 'cuda'")
    elif isinstance(value, np.ndarray):
        kind = "numpy"
        if value.dtype.kind != "f" or value.dtype.itemsize not in (4, 8):
            raise TypeError(f"{name}: expected a float32 or float64 array; got dtype {value.dtype}")
        if not value.dtype.isnative:  # big-endian data: torch reads native byte order only
            value = value.astype(value.dtype.newbyteorder("="))
        if any(stride < 0 for stride in value.strides):  # np.flipud and friends: torch has no negative strides
            value = np.ascontiguousarray(value)
        with warnings.catch_warnings():
            # Read-only arrays (np.broadcast_to, memory maps) are fine: b and x0 are only ever read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(value)
    else:
        raise TypeError(f"{name}: expected a numpy.ndarray or torch.Tensor; got {type(value).__name__}")
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: expected dtype float32 or float64; got {tensor.dtype}")
    dim = solver.A.dim
    grid = solver.grid
    if grid is None:
        if tensor.ndim < dim:
            raise ValueError(f"{name}: expected shape (*batch, *grid) with a {dim}D grid; got {tuple(tensor.shape)}")
        grid = tuple(tensor.shape[tensor.ndim - dim :])
        _check_grid(grid, name)
        solver.grid = grid
    n = math.prod(grid)
    if tuple(tensor.shape[tensor.ndim - dim :]) == grid:
        batch_shape = tuple(tensor.shape[: tensor.ndim - dim])
    elif tensor.ndim >= 1 and tensor.shape[-1] == n:
        batch_shape = tuple(tensor.shape[:-1])
    else:
        raise ValueError(
            f"{name}: shape {tuple(tensor.shape)} does not match the operator's grid {grid}; "
            f"expected (*batch, {', '.join(map(str, grid))}) or (*batch, {n})"
        )
    if not _all_finite(tensor):
        raise ValueError(f"{name}: contains NaN or Inf")
    layout = _Layout(kind, tuple(tensor.shape), batch_shape, tensor.dtype, solver.axis_order)
    return layout.stored(tensor.reshape(-1, 1, *grid)), layout


def _all_finite(tensor: Tensor) -> bool:
    """Whether every value of ``tensor`` is finite.

    A NaN or an Inf makes the sum NaN or Inf, so a finite sum proves them absent in one reduction (0.2 against
    2.5 ms for ``isfinite(...).all()`` on a 1023^2 float64 grid, 2 threads: it writes a boolean grid first); only
    a sum that overflowed from finite values needs the elementwise check.

    Examples
    --------
    >>> big = torch.tensor([1e308, 1e308], dtype=torch.float64)  # finite values whose sum overflows
    >>> _all_finite(big), _all_finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    """
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


@dataclass
class _NullParts:
    """The null space of a singular operator whose active points form ``K > 1`` parts that do not couple
    (:func:`mgcore.boundary.null_parts`): the constant of each part.  Held as labels, not ``K`` grids."""

    labels: Tensor  # (N,) int64: the part of each point of the cycled grid, 0 off the parts
    counts: Tensor  # (K + 1,) float64: the points of each part, 0 at index 0
    inverse_counts: Tensor  # (K + 1,) float64: 1 / (points of the part), 0 at index 0
    vector: Tensor  # (*grid) float64: the indicator of all parts (what null_space() returns)

    @classmethod
    def of(cls, labels: Tensor, count: int) -> _NullParts:
        flat = labels.reshape(-1)
        counts = torch.bincount(flat, minlength=count + 1).to(torch.float64)
        counts[0] = 0.0
        inverse = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), 0.0)
        return cls(flat, counts, inverse, (labels > 0).to(torch.float64))

    @property
    def count(self) -> int:
        return self.inverse_counts.numel() - 1

    def to(self, device: torch.device) -> _NullParts:
        return _NullParts(*(t.to(device) for t in (self.labels, self.counts, self.inverse_counts, self.vector)))

    def norms(self, means: Tensor) -> Tensor:
        """``(batch,)``: the 2-norm of the part in the null space of the grids whose :meth:`means` these are."""
        return (means.square() * self.counts.to(means.dtype)).sum(1).sqrt()

    def means(self, x: Tensor) -> Tensor:
        """``(batch, K + 1)``: each right-hand side's mean over each part (0 in column 0)."""
        sums = torch.zeros((x.shape[0], self.count + 1), dtype=x.dtype, device=x.device)
        sums.index_add_(1, self.labels, x.reshape(x.shape[0], -1))
        return sums * self.inverse_counts.to(x.dtype)

    def spread(self, means: Tensor, like: Tensor) -> Tensor:
        """The grids holding ``means`` on their parts, shaped like ``like``."""
        return means[:, self.labels].reshape(like.shape)


def _orthogonal(x: Tensor, null: Tensor | _NullParts | None) -> Tensor:
    """``x`` minus its component along the null vector ``null`` (a new tensor; ``x`` itself unchanged)."""
    if null is None:
        return x
    if isinstance(null, _NullParts):
        return x - null.spread(null.means(x), x)
    z = null.to(x.dtype)
    coefficient = (x * z).flatten(1).sum(1) / z.sum()  # z is 0/1, so z.z = sum(z)
    return x - coefficient.reshape(-1, *([1] * (x.ndim - 1))) * z


def _orthogonal_(x: Tensor, null: Tensor | None) -> Tensor:
    """:func:`_orthogonal` in place, for an ``x`` the caller owns (a cycle's output): one ``z . x`` per right-hand
    side and one rank-one update, no temporaries of the grid's size."""
    if null is None:
        return x
    if isinstance(null, _NullParts):
        return x.sub_(null.spread(null.means(x), x))
    if x.dtype != null.dtype or not x.is_contiguous():
        return x.copy_(_orthogonal(x, null))
    z = null.reshape(-1)
    rows = x.reshape(x.shape[0], -1)
    coefficient = (rows @ z) / z.sum()  # z is 0/1, so z.z = sum(z)
    rows.addr_(coefficient, z, alpha=-1.0)
    return x


def _compatible(
    b: Tensor, null: Tensor, rtol: float, atol: float, singular: str, outside_squares: Tensor | None = None
) -> tuple[Tensor, np.ndarray]:
    """Check ``b`` against the null vector of a singular operator (``A`` symmetric: range = z-complement),
    or project it (``singular="project"``); returns the ``b`` to solve with and the removed means.

    ``outside_squares``: ``||b||^2`` outside the active box when ``b`` is the box's part (the null vector is zero
    there), so that ``||b||`` is the whole grid's."""
    b64 = b.to(torch.float64)
    if isinstance(null, _NullParts):
        return _compatible_parts(b, b64, null, rtol, atol, singular, outside_squares)
    z = null.to(torch.float64)
    mean = (b64 * z).flatten(1).sum(1) / z.sum()
    component = mean.abs() * z.sum().sqrt()  # the 2-norm of the part of b along z
    if singular == "error":
        _refuse_incompatible(
            b64, component, rtol, atol, outside_squares,
            lambda i, norm: "b: incompatible with the singular operator (pure Neumann or periodic: A x = b needs b "
            f"orthogonal to the constants on the active points); right-hand side {i} has mean {float(mean[i]):.3e}, "
            f"a component of norm {float(component[i]):.3e} against ||b|| = {norm:.3e}; pass singular='project' to "
            "remove it",
        )
    return (b - (mean.reshape(-1, *([1] * (b.ndim - 1))) * z).to(b.dtype)), mean.cpu().numpy()


def _refuse_incompatible(
    b64: Tensor, component: Tensor, rtol: float, atol: float, outside_squares: Tensor | None,
    message: Callable[[int, float], str],
) -> None:
    """Raise ``ValueError(message(i, ||b_i||))`` for the first right-hand side whose component in the null space
    exceeds ``max(rtol ||b|| / 10, atol)`` (``||b||`` of the whole grid: ``outside_squares`` adds what lies
    outside the active box)."""
    b_norms = _norms(b64) if outside_squares is None else (_norms(b64).square() + outside_squares).sqrt()
    limit = torch.clamp(0.1 * rtol * b_norms, min=atol)
    bad = torch.nonzero(component > limit).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(message(i, float(b_norms[i])))


def _compatible_parts(
    b: Tensor, b64: Tensor, null: _NullParts, rtol: float, atol: float, singular: str,
    outside_squares: Tensor | None,
) -> tuple[Tensor, np.ndarray]:
    """:func:`_compatible` for a null space of ``K`` parts' constants: ``b`` must sum to zero over each part."""
    means = null.means(b64)  # (batch, K + 1)
    counts = null.counts
    component = null.norms(means)
    if singular == "error":

        def message(i: int, norm: float) -> str:
            part = int((means[i].abs() * counts.sqrt()).argmax())
            return (
                f"b: incompatible with the singular operator (its active points form {null.count} parts that do "
                "not couple, each with the constants as null space: A x = b needs b to sum to zero over each "
                f"part); right-hand side {i} has a component of norm {float(component[i]):.3e} against ||b|| = "
                f"{norm:.3e} (part {part} of {null.count}: mean {float(means[i, part]):.3e}); pass "
                "singular='project' to remove it"
            )

        _refuse_incompatible(b64, component, rtol, atol, outside_squares, message)
    total = (means * counts).sum(1) / counts.sum()  # the mean over all active points, as for one part
    return (b - null.spread(means, b).to(b.dtype)), total.cpu().numpy()


def _norms(r: Tensor) -> Tensor:
    return r.flatten(1).norm(dim=1)  # (batch,)


def _residual_norms(A64, x: Tensor, b64: Tensor, r: Tensor) -> Tensor:
    """``r = b - A x`` in place and its norm per right-hand side, in one pass where ``A`` can."""
    combined = getattr(A64, "residual_norms", None)
    if combined is not None:
        return combined(x, b64, r)
    A64.residual(x, b64, out=r)
    return _norms(r)


def _dtype_of(hierarchy: Hierarchy) -> torch.dtype:
    """The floating dtype the hierarchy computes in."""
    A = hierarchy[0].A
    return A.coefficients.dtype if isinstance(A, Stencil) else torch.float64


def _start(A64, b: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """float64 copies of ``b`` and ``x0`` (zero by default) and the residual ``b - A x0``; inputs untouched."""
    b64 = b.to(torch.float64)
    x = torch.zeros_like(b64) if x0 is None else x0.to(torch.float64, copy=True)
    r = b64.clone() if x0 is None else A64.residual(x, b64)
    return b64, x, r


@dataclass
class _Storage:
    """How a solver stores its grid for the cycles (:attr:`MultigridSolver.axis_order`,
    :attr:`MultigridSolver.active_box`)."""

    grid: tuple[int, ...]  # the caller's grid this was made for
    order: tuple[int, ...] | None  # the caller's axis of each stored axis; None: as given
    whole: Stencil  # the operator on the whole stored grid
    whole_shape: tuple[int, ...]  # the whole stored grid
    box: ActiveBox | None  # the box of the stored grid the cycles run on; None: all of it
    cycled: Stencil  # the operator the cycles run on (`whole`, or `whole` on the box)
    cycled_shape: tuple[int, ...]  # its grid


@dataclass
class _Outside:
    """The decoupled rows outside the active box of a batch, solved directly (``x = b / a``), and what they add
    to the reported norms: each right-hand side's norms are the whole grid's, ``||r||^2 = ||r_box||^2 +
    ||r_outside||^2``."""

    b_squares: Tensor  # (batch,) ||b||^2 outside the box
    start_squares: Tensor  # (batch,) ||b - A x0||^2 outside the box (no x0: b_squares)
    squares: Tensor  # (batch,) ||b - A (b / a)||^2 outside the box: the rounding of b / a
    solution: list[Tensor]  # per slab of ActiveBox.slabs(): b / a, (batch, 1, *slab) float64
    start: list[Tensor] | None  # per slab: x0 (None: zero), for right-hand sides that stop at x0

    @classmethod
    def of(cls, box: ActiveBox, b: Tensor, x0: Tensor | None) -> _Outside:
        solution = box.solve_outside(b)
        b_squares = box.outside_squares(b)
        start = None if x0 is None else box.outside(x0)
        start_squares = b_squares if x0 is None else box.outside_squares(b, start)
        return cls(b_squares, start_squares, box.outside_squares(b, solution), solution, start)

    def part(self, rows: slice) -> _Outside:
        """The right-hand sides ``rows`` of the batch."""
        return _Outside(
            self.b_squares[rows],
            self.start_squares[rows],
            self.squares[rows],
            [values[rows] for values in self.solution],
            None if self.start is None else [values[rows] for values in self.start],
        )

    def final(self, iterations: np.ndarray) -> list[Tensor]:
        """The iterate outside the box per slab: ``b / a``, or the start for right-hand sides that took no
        iteration (their reported residual is the start's)."""
        fresh = np.asarray(iterations).reshape(-1) == 0
        if not fresh.any():
            return self.solution
        device = self.b_squares.device
        keep = torch.from_numpy(fresh).to(device)
        result = []
        for k, values in enumerate(self.solution):
            where = keep.reshape(-1, *([1] * (values.ndim - 1)))
            start = torch.zeros((), dtype=values.dtype, device=device) if self.start is None else self.start[k]
            result.append(torch.where(where, start.to(values.dtype), values))
        return result


class _Notifier:
    """Calls ``callback(xk)`` after each iteration with a copy of the whole grid's iterate, shaped (and typed)
    like the caller's ``b``."""

    def __init__(
        self, callback: Callable, layout: _Layout, outside: _Outside | None, box: ActiveBox | None
    ) -> None:
        self.callback, self.layout, self.outside, self.box = callback, layout, outside, box

    def __call__(self, x: Tensor, iterations: np.ndarray) -> None:
        if self.box is not None:
            x = self.box.expand(x, self.outside.final(iterations))
        # A copy: the callback may keep or modify what it gets without touching the iteration.
        xk = self.layout.caller(x).reshape(self.layout.shape).clone()
        self.callback(xk if self.layout.kind == "torch" else xk.cpu().numpy())


SLOW_FACTOR = 0.5
"""A stationary solve whose residual fell by less than this per cycle over two cycles (after the third) looks for
:class:`_Islands`; multigrid on the problems it serves falls by 0.02-0.1 per cycle, so the search never runs
there."""


@dataclass
class _Islands:
    """The disconnected parts of a masked domain (all but singular ones) and the correction that solves for
    their constants after each cycle: ``x += sum_i z_i (z_i^T r) / (z_i^T A z_i)``, the Galerkin correction on
    the parts' indicator vectors ``z_i`` (their system is diagonal: the parts do not couple).  Where a part's
    rows sum to nearly zero (Neumann edges, weak screening) its constant is nearly in the null space.

    Parts closer than a coarse cell merge on the coarse grids, so the coarse spaces hold the sum of their
    constants but not the differences, which the smoother barely reduces: 5-15 islands with Neumann edges and
    weak screening stalled at factors 0.7-0.99."""

    labels: Tensor  # (N,) int64: the part of each point of the cycled grid, 0 for none
    image: Tensor  # (N,) float64: A z at each point (z the indicator of all parts; they do not couple)
    inverse: Tensor  # (parts + 1,) float64: 1 / (z_i^T A z_i), 0 at index 0
    free: _NullParts | None = None  # the parts A annihilates (nothing grounds them), or None

    @classmethod
    def of(cls, A: Stencil, grid: tuple[int, ...]) -> _Islands | None:
        if A.is_constant:
            return None
        active = active_cells(A, grid).cpu()
        labels, count = null_parts(A, grid, active)
        if count == 0:
            return None
        active = active.numpy()
        labels = labels.numpy()
        A64 = _on(A, torch.device("cpu"), torch.float64)
        ones = torch.from_numpy(active.astype(np.float64)).reshape(1, 1, *grid)
        image = (A64(ones).reshape(-1) * ones.reshape(-1)).numpy()  # A z on the parts, 0 elsewhere
        flat = labels.reshape(-1)
        sums = np.bincount(flat, weights=image, minlength=count + 1)[1:]
        scale = np.bincount(flat, weights=np.abs(A64.diagonal(grid).reshape(-1).numpy()), minlength=count + 1)[1:]
        # Every part but a singular one (the null space the solve projects out): the correction is the A-orthogonal
        # projection on their span, which never slows a cycle down; the slow parts are the nearly null ones.
        keep = np.abs(sums) > NULL_TOL * scale

        def chosen(parts: np.ndarray) -> np.ndarray:  # the labels of the chosen parts, numbered 1.. (0 elsewhere)
            renumber = np.zeros(count + 1, dtype=np.int64)
            renumber[1:][parts] = np.arange(1, int(parts.sum()) + 1)
            return renumber[labels]

        free = None if keep.all() else _NullParts.of(torch.from_numpy(chosen(~keep)), int((~keep).sum()))
        inverse = np.concatenate([[0.0], 1.0 / sums[keep]])
        return cls(torch.from_numpy(chosen(keep).reshape(-1)), torch.from_numpy(image), torch.from_numpy(inverse),
                   free)

    def to(self, device: torch.device) -> _Islands:
        free = None if self.free is None else self.free.to(device)
        return _Islands(self.labels.to(device), self.image.to(device), self.inverse.to(device), free)

    def stop_where_unsolvable(self, state: _Record, r: Tensor, active: Tensor) -> None:
        """For an operator taken as non-singular whose parts include some that nothing grounds (:attr:`free`:
        each one's constant is a null vector, some other part is held by a Dirichlet face or edge): stop the
        right-hand sides whose residual ``r`` (whose sum over a free part is ``b``'s, as ``A`` sums to zero
        there) has a component on them above a tenth of the tolerance: ``A x = b`` has no solution."""
        if self.free is None:
            return
        component = self.free.norms(self.free.means(r.to(torch.float64))).cpu().numpy()
        threshold = state.threshold.cpu().numpy()
        for i in active.cpu().numpy():
            if component[i] > 0.1 * threshold[i]:
                state.stop(
                    int(i),
                    f"no solution: A is singular on {self.free.count} part(s) of the active points that no Dirichlet "
                    "face or edge and no screening holds (each one's constant is a null vector), and b has a "
                    f"component of norm {component[i]:.3e} on them (||b|| = {float(state.b_norm[i]):.3e}); b must "
                    "sum to zero over each such part",
                )

    def project(self, r: Tensor) -> Tensor:
        """``sum_i z_i (z_i^T r) / (z_i^T A z_i)`` for ``r`` shaped ``(batch, 1, *grid)``."""
        sums = torch.zeros((r.shape[0], self.inverse.numel()), dtype=r.dtype, device=r.device)
        sums.index_add_(1, self.labels, r.reshape(r.shape[0], -1))
        return (sums * self.inverse)[:, self.labels].reshape(r.shape)

    def apply(self, v: Tensor) -> Tensor:
        """``A v`` for ``v`` constant on each part and zero elsewhere (what :meth:`project` returns)."""
        return (v.reshape(v.shape[0], -1) * self.image).reshape(v.shape)

    def correct_(self, x: Tensor, r: Tensor) -> None:
        """``x`` and its residual ``r`` (``(batch, 1, *grid)``, float64) corrected in place."""
        step = self.project(r)
        x.add_(step)
        r.sub_(self.apply(step))


def _slow(state: _Record, active: Tensor) -> bool:
    """Whether every active right-hand side fell by less than :data:`SLOW_FACTOR` per cycle over the last two,
    after at least three cycles."""
    indices = active.cpu().numpy()
    if state.iterations[indices].min() < 3:
        return False
    return all(state.history[i][-1] > SLOW_FACTOR**2 * state.history[i][-3] for i in indices)


def _stationary(solver, run_cycle, A64, b, x0, rtol, atol, maxiter, notify, outside):
    """Multigrid cycles in correction form: ``x <- x + cycle(0, b - A x)`` with float64 residuals."""
    if x0 is None:
        # x = 0 and r = b: the first correction becomes x itself and the first cycle reads b, so neither a zero
        # grid nor a copy of b is made (two of the few grid passes outside the cycles).
        b64 = b.to(torch.float64)
        x, r = None, b64
    else:
        b64, x, r = _start(A64, b, x0)
    r_norms = _norms(r)
    state = _Record(b64, r_norms, rtol, atol, b_norm=r_norms if r is b64 else None, outside=outside)  # r = b at x = 0
    null = solver._cycled_null(b.device)
    spare = None  # the last correction, added to x already: the next cycle writes its iterate there
    islands, searched = None, False  # the parts' correction, looked for once when the cycles are slow
    for _ in range(maxiter):
        active = state.active_indices()
        if active is None:
            break
        if x is None and active.numel() == b.shape[0]:
            x = _orthogonal_(run_cycle(r), null).to(torch.float64)
            r = torch.empty_like(b64)
            state.update(_residual_norms(A64, x, b64, r), active)
            if notify is not None:
                notify(x, state.iterations)
            continue
        if x is None:  # some right-hand sides already converged at x = 0
            x, r = torch.zeros_like(b64), b64.clone()
        # A compiled cycle keeps one shape: it always cycles the whole chunk.
        if 2 * active.numel() >= b.shape[0] or solver.compile:
            # Most right-hand sides still run: cycle them all and keep the update of the active ones only
            # (cheaper than gathering and scattering the active subset).
            # A fresh grid of 1023^2 float64 values costs 1.5-2 ms of page faults (large arrays are mapped anew):
            # the finest iterate of each cycle reuses the last correction's array.
            correction = _orthogonal_(run_cycle(r, out=spare), null)
            spare = correction
            if active.numel() == b.shape[0]:
                x.add_(correction)
            else:
                keep = torch.zeros(b.shape[0], dtype=torch.float64, device=b.device)
                keep[active] = 1.0
                x.addcmul_(correction, keep.reshape(-1, *([1] * (b.ndim - 1))))
            norms = _residual_norms(A64, x, b64, r)  # r = b - A x, in the same buffer
            if islands is not None:
                islands.correct_(x, r)
                norms = _norms(r)
        else:
            xa = x.index_select(0, active)
            xa.add_(_orthogonal_(run_cycle(r.index_select(0, active)), null))
            ra = A64.residual(xa, b64.index_select(0, active))
            if islands is not None:
                islands.correct_(xa, ra)
            x.index_copy_(0, active, xa)
            r.index_copy_(0, active, ra)
            norms = _norms(r)
        state.update(norms, active)
        if notify is not None:
            notify(x, state.iterations)
        remaining = state.active_indices()
        if islands is None and not searched and remaining is not None and _slow(state, remaining):
            searched = True
            islands = solver._islands(b.device)
            if islands is not None and null is None:
                islands.stop_where_unsolvable(state, r, remaining)
    if x is None:  # every right-hand side converged at x = 0
        x = torch.zeros_like(b64)
    return x, state.finish(maxiter)


def _pcg(solver, run_cycle, A64, b, x0, rtol, atol, maxiter, notify, outside):
    """Conjugate gradients preconditioned by one symmetric cycle, batched (per right-hand-side scalars)."""
    b64, x, r = _start(A64, b, x0)
    state = _Record(b64, _norms(r), rtol, atol, outside=outside)
    view = (-1,) + (1,) * (b.ndim - 1)

    null = solver._cycled_null(b.device)

    islands, searched = None, False  # as in _stationary; found, they enter the preconditioner (balancing)

    def precondition(residual: Tensor) -> Tensor:
        if islands is None:
            return _orthogonal(run_cycle(residual).to(torch.float64), null)
        # Balancing (Mandel 1993): Q r + (I - Q A) M (I - A Q) r with Q the Galerkin solve on the parts'
        # indicators: symmetric positive definite like M, and exact on the parts' constants.
        q = islands.project(residual)
        m = _orthogonal(run_cycle(residual - islands.apply(q)).to(torch.float64), null)
        return q + m - islands.project(A64(m))

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).flatten(1).sum(1)

    z = precondition(r)
    p = z.clone()
    rz = dot(r, z)
    for _ in range(maxiter):
        active = state.active_indices()
        if active is None:
            break
        mask = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
        mask[active] = True
        Ap = A64(p)
        pAp = dot(p, Ap)
        alpha = torch.where(mask & (pAp != 0), rz / torch.where(pAp == 0, 1.0, pAp), 0.0).reshape(view)
        x.add_(alpha * p)
        r.sub_(alpha * Ap)
        state.update(_norms(r), active)
        if notify is not None:
            notify(x, state.iterations)
        if state.active_indices() is None:
            break
        if islands is None and not searched and _slow(state, state.active_indices()):
            searched = True
            islands = solver._islands(b.device)
            if islands is not None and null is None:
                islands.stop_where_unsolvable(state, r, state.active_indices())
                if state.active_indices() is None:
                    break
            if islands is not None:  # a new preconditioner: CG starts again from here
                z = precondition(r)
                p, rz = z.clone(), dot(r, z)
                continue
        z = precondition(r)
        rz_new = dot(r, z)
        beta = torch.where(rz != 0, rz_new / torch.where(rz == 0, 1.0, rz), 0.0).reshape(view)
        p = z + beta * p
        rz = rz_new
    return x, state.finish(maxiter)


class _Record:
    """Per-right-hand-side residual history and stopping state; with ``outside``, of the whole grid around the
    active box that ``b64`` and the norms cover."""

    def __init__(
        self,
        b64: Tensor,
        r0: Tensor,
        rtol: float,
        atol: float,
        b_norm: Tensor | None = None,
        outside: _Outside | None = None,
    ) -> None:
        self.outside = outside
        b_norm = _norms(b64) if b_norm is None else b_norm
        if outside is not None:
            b_norm = (b_norm.square() + outside.b_squares).sqrt()
            r0 = (r0.square() + outside.start_squares).sqrt()
        self.b_norm = b_norm
        self.threshold = torch.clamp(self.b_norm * rtol, min=atol)
        self.history = [[float(v)] for v in r0.cpu()]
        self.r0 = r0.cpu().numpy()
        count = r0.numel()
        self.done = np.zeros(count, dtype=bool)
        self.converged = np.zeros(count, dtype=bool)
        self.reason = [""] * count
        self.iterations = np.zeros(count, dtype=int)
        self._check(r0.cpu().numpy(), np.arange(count))

    def _check(self, norms: np.ndarray, indices: np.ndarray) -> None:
        threshold = self.threshold.cpu().numpy()
        for value, i in zip(norms, indices):
            if not np.isfinite(value):
                self.done[i] = True
                self.reason[i] = f"the residual became {value} at iteration {self.iterations[i]}"
            elif value <= threshold[i]:
                self.done[i] = self.converged[i] = True
                self.reason[i] = f"||r|| = {value:.3e} <= max(rtol*||b||, atol) = {threshold[i]:.3e}"
            elif self.iterations[i] > 0 and value > _DIVERGENCE * max(self.r0[i], 1e-300):
                self.done[i] = True
                self.reason[i] = f"diverged: ||r|| grew from {self.r0[i]:.3e} to {value:.3e}"

    def stop(self, i: int, reason: str) -> None:
        """Stop right-hand side ``i`` unconverged, for ``reason``."""
        self.done[i] = True
        self.reason[i] = reason

    def active_indices(self) -> Tensor | None:
        active = np.flatnonzero(~self.done)
        if active.size == 0:
            return None
        return torch.from_numpy(active).to(self.threshold.device)

    def update(self, norms: Tensor, active: Tensor) -> None:
        if self.outside is not None:  # from the first iteration on, x = b / a outside the box
            norms = (norms.square() + self.outside.squares).sqrt()
        active_np = active.cpu().numpy()
        values = norms.cpu().numpy()[active_np]  # norms covers the whole batch
        for value, i in zip(values, active_np):
            self.history[i].append(float(value))
            self.iterations[i] += 1
        self._check(values, active_np)

    def finish(self, maxiter: int) -> dict:
        for i in np.flatnonzero(~self.done):
            last = self.history[i][-1]
            relative = last / self.b_norm[i].item() if self.b_norm[i].item() else float("inf")
            self.reason[i] = f"maxiter={maxiter} reached with relative residual {relative:.3e}"
        return {
            "history": self.history,
            "converged": self.converged,
            "iterations": self.iterations,
            "reason": self.reason,
            "threshold": self.threshold.cpu().numpy(),
            "b_norm": self.b_norm,
        }


def _merge_records(records: list[dict]) -> dict:
    """Concatenate the per-chunk records of a batch, in order."""
    if len(records) == 1:
        return records[0]
    return {
        "history": [h for r in records for h in r["history"]],
        "converged": np.concatenate([r["converged"] for r in records]),
        "iterations": np.concatenate([r["iterations"] for r in records]),
        "reason": [text for r in records for text in r["reason"]],
        "threshold": np.concatenate([r["threshold"] for r in records]),
        "b_norm": torch.cat([r["b_norm"] for r in records]),
    }


def _factor(history: Sequence[float]) -> float:
    k = len(history) - 1
    if k == 0:
        return float("nan")
    if k == 1 or history[1] == 0:
        return history[1] / history[0] if history[0] else float("nan")
    return (history[-1] / history[1]) ** (1.0 / (k - 1))


def _make_info(record: dict, batch_shape, method: str, setup: float, elapsed: float) -> SolveInfo:
    histories = record["history"]
    factors = np.array([_factor(h) for h in histories])
    if batch_shape == ():
        return SolveInfo(
            converged=bool(record["converged"][0]),
            iterations=int(record["iterations"][0]),
            residuals=np.array(histories[0]),
            convergence_factor=float(factors[0]),
            reason=record["reason"][0],
            threshold=float(record["threshold"][0]),
            method=method,
            setup_seconds=setup,
            solve_seconds=elapsed,
        )
    longest = max(len(h) for h in histories)
    residuals = np.full((len(histories), longest), np.nan)
    for i, h in enumerate(histories):
        residuals[i, : len(h)] = h
    return SolveInfo(
        converged=record["converged"].reshape(batch_shape),
        iterations=record["iterations"].reshape(batch_shape),
        residuals=residuals.reshape(*batch_shape, longest),
        convergence_factor=factors.reshape(batch_shape),
        reason=np.array(record["reason"], dtype=object).reshape(batch_shape),
        threshold=record["threshold"].reshape(batch_shape),
        method=method,
        setup_seconds=setup,
        solve_seconds=elapsed,
    )


def solve(
    A,
    b,
    x0=None,
    *,
    grid: Sequence[int] | None = None,
    rtol: float = 1e-8,
    atol: float = 0.0,
    maxiter: int = 100,
    accel: str | None = None,
    callback: Callable | None = None,
    device: str | torch.device | None = None,
    cycle_dtype: torch.dtype | None = None,
    compile: bool = False,  # noqa: A002 - as in MultigridSolver
    options: MultigridOptions | None = None,
    singular: str = "error",
    boundary=None,
    **overrides,
):
    """Solve ``A x = b`` by geometric multigrid, in the calling convention of ``scipy.sparse.linalg``.

    The iteration stops for each right-hand side when

        ``||b - A x_k||_2 <= max(rtol * ||b||_2, atol)``

    or after ``maxiter`` iterations (cycles, or CG iterations with ``accel="cg"``).

    Parameters
    ----------
    A : Stencil or scipy.sparse matrix
        The operator; a sparse matrix needs ``grid=shape`` and must be a stencil on it.
    b : numpy.ndarray or torch.Tensor
        ``(*batch, *grid)`` (or ``(*batch, N)`` for a sparse ``A``), float32 or float64, any device.
    x0 : like ``b``, optional
        Initial guess; never modified.
    grid : tuple of int, optional
        The grid (needed for a sparse ``A``).
    rtol, atol, maxiter : float, float, int
        Stopping rule above.
    accel : {None, "cg"}
        ``"cg"``: multigrid-preconditioned conjugate gradients (symmetric cycle required).
    callback : callable, optional
        ``callback(xk)`` after every iteration.
    device : str or torch.device, optional
        Run there (the result returns to ``b``'s device only if you move it; by default ``b``'s device).
    cycle_dtype : torch.dtype, optional
        ``torch.float32`` runs the cycles in float32 with float64 residual refinement (see
        :class:`MultigridSolver`).
    compile : bool
        Run each cycle as one compiled graph (see :class:`MultigridSolver`).
    options : MultigridOptions, optional
        Cycle, smoother, sweeps, coarse operators, transfers, ``max_coarse``
        (see :class:`~mgcore.options.MultigridOptions`); for rough coefficients pass
        ``interpolation="operator"``.
    singular : {"error", "project"}
        For a singular operator (pure Neumann, fully periodic): refuse an incompatible ``b``, or project it
        onto the range and report the removed mean in ``info.extra["removed_component"]``
        (see :meth:`MultigridSolver.solve`).
    boundary : str or sequence, optional
        Face labels of a sparse ``A`` (see :class:`MultigridSolver`).
    **overrides
        Any :class:`~mgcore.options.MultigridOptions` field by name: ``cycle="W"``, ``smoother="chebyshev"``,
        ``presmooth=1``, ...

    Returns
    -------
    x : like ``b``
        Same type, dtype and device as ``b``.
    info : SolveInfo
        ``converged``, ``iterations``, ``residuals``, ``convergence_factor``, ``reason`` (arrays over
        the batch shape for a batch).

    Examples
    --------
    >>> import numpy as np
    >>> from mgcore import Stencil, solve
    >>> n = 127
    >>> A = Stencil.laplacian(2, h=1 / (n + 1))
    >>> b = np.ones((n, n))
    >>> x, info = solve(A, b, rtol=1e-10)
    >>> info.converged, info.iterations, round(info.convergence_factor, 2) <= 0.1
    (True, 8, True)
    >>> xs, infos = solve(A, np.stack([b, 2 * b]))  # a batch of two right-hand sides
    >>> infos.converged.tolist(), bool(np.allclose(xs[1], 2 * xs[0]))
    ([True, True], True)
    """
    if accel == "cg" and options is None and not {"presmooth", "postsmooth"} & overrides.keys():
        overrides = {**CG_SWEEPS, **overrides}
    solver = MultigridSolver(
        A, grid, options, device=device, cycle_dtype=cycle_dtype, compile=compile, boundary=boundary, **overrides
    )
    return solver.solve(
        b, x0, rtol=rtol, atol=atol, maxiter=maxiter, accel=accel, callback=callback, singular=singular
    )
