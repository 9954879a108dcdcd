"""Resource checks before a solve: is the device usable, and does the memory a solve needs fit on it?

A multigrid solve on ``N`` unknowns needs ``O(N)`` memory, but the constants matter at the sizes people try:
a 100000 x 100000 grid is 80 GB per float64 array, and a coarsest grid of a million points is an 8 TB dense
LU.  :func:`estimate_solve_memory` adds up the arrays the engine allocates, from the grid alone, so a solver
can refuse *before* it allocates anything (:func:`check_memory`), with the estimate in the message.

The estimate (``b`` = bytes per value, 8 for float64; ``N_k`` the unknowns of level ``k``; ``B`` the
right-hand sides; ``C`` those cycled at once, at most ``2^20 / N_0`` of them):

* operators: the ``3^d``-point Galerkin operators of the coarse levels hold ``3^d N_k`` values each;
  rediscretised constant operators hold none (the fine operator is the caller's, allocated already);
* smoothers: red-black Gauss-Seidel keeps one scaled mask per colour (2 colours for axis-aligned stencils,
  ``2^d`` otherwise; those colours also keep contiguous copies of the coefficients and the scale at their own
  points, one more grid per stencil point and one for the scale; on variable levels these are formed at the first
  step that runs in PyTorch, as on a GPU, and never by the compiled CPU loops), Jacobi and Chebyshev one array
  per step on variable levels, a smoother factory (learned smoothers) is counted as a 9-point variable stencil
  per level;
* transfers: operator-dependent interpolation keeps ``3^d`` weights per coarse point in ``P`` and in ``R``;
* set-up peaks: Galerkin probing applies ``A`` and ``P`` to 9 probe vectors at once (about ``22 N_k``
  values), operator-dependent transfers about ``30 N_k``; the largest of these peaks is added once;
* the coarsest level's dense LU: ``N_c^2`` values, ``3 N_c^2`` while it is factorised (the identity, the
  assembled matrix and the factors); where ``smoother="auto"`` ends the hierarchy earlier, on a thin grid solved
  by fast diagonalisation (:func:`mgcore.hierarchy.thin_coarsest`, a few arrays of that grid), the levels it
  replaces are counted instead, which is more;
* a ``cycle_dtype`` other than float64 adds the converted copy of the hierarchy;
* solving: ``b``, ``x`` and ``r`` in float64 over the whole batch (``3 B N_0``), one more for the update
  (CG: ``p``, ``z``, ``A p`` and a temporary, ``4 B N_0``), and per cycled chunk three arrays per level
  (iterate, right-hand side, the smoother's scratch for residual and prolonged correction: ``3 C sum_k N_k``).

It is an estimate of the peak, not a bound: against the peak resident memory of whole solves (3 cycles,
one right-hand side) it measured 117 MiB for 110 MiB on 1023^2 Poisson, 405 MiB for 344 MiB on 2047^2,
172 MiB for 173 MiB on 127^3, and 395 MiB for 250-350 MiB (it varies from run to run) on 1023^2 log-normal
diffusion with operator-dependent transfers.  It exists to turn an allocation
that cannot succeed into an immediate, explained refusal.  Available memory is ``torch.cuda.mem_get_info``
on a CUDA device, and on the CPU the smaller of ``MemAvailable`` (``/proc/meminfo``, or ``psutil``, or
``os.sysconf``) and the cgroup limit of a container; where it cannot be read the check passes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mgcore.anisotropy import level_axes, named_axes, semicoarse_shape
from mgcore.options import MultigridOptions
from mgcore.transfers import coarse_shape

__all__ = [
    "MemoryEstimate",
    "available_memory",
    "check_device",
    "check_memory",
    "estimate_solve_memory",
    "format_bytes",
    "level_shapes",
]

_GALERKIN_PROBES = 9  # galerkin_stencil's chunk of probe vectors
_CHUNK_POINTS = 2**20  # mgcore.solve cycles a batch in chunks of about this many points


def format_bytes(count: float) -> str:
    """``count`` bytes in words with a binary unit.

    Examples
    --------
    >>> format_bytes(512), format_bytes(3 * 2**30), format_bytes(1.5 * 2**40)
    ('512 B', '3.0 GiB', '1.5 TiB')
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes a set-up or solve is expected to need at its peak, with the parts they come from.

    Examples
    --------
    >>> e = MemoryEstimate({"hierarchy": 3 * 2**20, "coarsest dense LU": 2**20})
    >>> e.total, str(e)
    (4194304, 'about 4.0 MiB (hierarchy 3.0 MiB, coarsest dense LU 1.0 MiB)')
    """

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """The sum of the parts, in bytes."""
        return int(sum(self.parts.values()))

    def __str__(self) -> str:
        shown = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items() if size > 0)
        return f"about {format_bytes(self.total)} ({shown})"


def level_shapes(
    grid_shape: Sequence[int],
    max_coarse: int,
    max_levels: int = MultigridOptions().max_levels,
    coarsened: Sequence[int] | None = None,
    *,
    then_full: bool = False,
) -> list[tuple[int, ...]]:
    """The grids of the hierarchy :func:`mgcore.build_hierarchy` builds, fine to coarse (no allocation).

    ``coarsened``: the axes every level coarsens (semicoarsening, e.g. ``coarsening="x"``: ``(0,)``); ``None``
    coarsens all axes (full coarsening).  Once an axis of ``coarsened`` has fewer than 3 points, ``then_full``
    coarsens all axes (as ``coarsening="auto"`` does), else those with 2 points or more (named axes).

    Examples
    --------
    >>> level_shapes((63, 63), max_coarse=100)
    [(63, 63), (31, 31), (15, 15), (7, 7)]
    >>> level_shapes((63, 63), max_coarse=100, coarsened=(0,))
    [(63, 63), (31, 63), (15, 63), (7, 63), (3, 63), (1, 63)]
    """
    shapes = [tuple(int(n) for n in grid_shape)]
    while True:
        shape = shapes[-1]
        axes = level_axes(range(len(shape)) if coarsened is None else coarsened, shape, then_full=then_full)
        following = coarse_shape(shape) if len(axes) == len(shape) else semicoarse_shape(shape, axes)
        if math.prod(shape) <= max_coarse or following == shape or len(shapes) >= max_levels:
            return shapes
        shapes.append(following)


def estimate_solve_memory(
    grid_shape: Sequence[int],
    options: MultigridOptions | None = None,
    *,
    stencil_points: int = 5,
    variable: bool = False,
    cycle_dtype: torch.dtype | None = None,
    batch: int = 0,
    accel: str | None = None,
    setup: bool = True,
    coarsened: Sequence[int] | None = None,
    **overrides,
) -> MemoryEstimate:
    """Estimate the peak memory of building a hierarchy on ``grid_shape`` and solving ``batch`` right-hand sides.

    Parameters
    ----------
    grid_shape : tuple of int
        The fine grid.
    stencil_points : int
        Points of the fine stencil (5 or 7 for the Laplacian, 9 for the rotated anisotropic one).
    variable : bool
        True for a variable-coefficient fine operator.
    options : MultigridOptions, optional
        The hierarchy's options (smoother, coarse operators, transfers, ``max_coarse``, ``max_levels``); a
        smoother factory is counted as a 9-point learned stencil per level.
    cycle_dtype : torch.dtype, optional
        Precision of the cycles; float32 halves the cycle workspace and adds a float32 copy of the hierarchy.
    batch : int
        Right-hand sides solved at once (0: the set-up alone).
    accel : {None, "cg"}
        CG keeps three more arrays per right-hand side.
    setup : bool
        Count the hierarchy (False: it exists already, and only the solve's arrays are new).
    coarsened : tuple of int, optional
        The axes every level coarsens (:func:`level_shapes`); ``None``: the axes of ``options.coarsening`` when
        it names them, else all (``"full"``; for ``"auto"`` the caller passes what the fine level chooses).

    Returns
    -------
    MemoryEstimate
        The parts and their total in bytes.

    Examples
    --------
    >>> print(estimate_solve_memory((1023, 1023), batch=1))
    about 116.9 MiB (smoothers 31.9 MiB, set-up peak 14.1 MiB, coarsest dense LU 7.1 MiB, solve arrays 63.8 MiB)
    >>> print(estimate_solve_memory((100000, 100000)))  # Galerkin on the even sides, 22 fine arrays at once
    about 2.4 TiB (coarse operators 223.5 GiB, smoothers 596.0 GiB, set-up peak 1.6 TiB, coarsest dense LU 2.5 MiB)
    """
    options = MultigridOptions.resolve(options, overrides)
    smoother, interpolation, coarse_operator = options.smoother, options.interpolation, options.coarse_operator
    dim = len(grid_shape)
    if coarsened is None and options.coarsening not in ("full", "auto"):
        coarsened = named_axes(options.coarsening, dim)
    shapes = level_shapes(
        grid_shape, options.max_coarse, options.max_levels, coarsened, then_full=options.coarsening == "auto"
    )
    value = 8  # the hierarchy is built in float64
    work = torch.empty((), dtype=cycle_dtype).element_size() if cycle_dtype is not None else value
    name = smoother[0] if isinstance(smoother, tuple) and smoother else smoother
    factory = callable(smoother) and not isinstance(smoother, str)
    parts = {
        "coarse operators": 0,
        "smoothers": 0,
        "transfers": 0,
        "set-up peak": 0,
        "coarsest dense LU": 0,
        "cycle precision copy": 0,
        "solve arrays": 0,
    }
    if setup:
        operator_dependent = interpolation == "operator"
        peak = 0
        points, is_variable, axis_aligned = stencil_points, variable, stencil_points <= 2 * dim + 1
        for k, shape in enumerate(shapes):
            n = math.prod(shape)
            if is_variable and k > 0:  # the fine operator is the caller's, allocated already
                parts["coarse operators"] += points * n * value
            if k == len(shapes) - 1:
                # Coarsest: lu and pivots kept; identity, assembled matrix and factors alive while factorising.
                parts["coarsest dense LU"] += n * n * value + n * 8
                peak = max(peak, 2 * n * n * value)
                break
            if factory:
                arrays = 9
            elif name == "rbgs" and axis_aligned:
                arrays = 2 + 1  # a scaled mask per colour and the mask built
            elif name == "rbgs":
                # 2^d scaled masks and the mask built; per colour its points' copies of the coefficients (variable
                # stencils) and of the scale, one grid of each in all.
                arrays = 2**dim + 1 + (points if is_variable else 0) + 1
            elif name == "chebyshev":
                arrays = 3 if is_variable else 0  # one diagonal scaling per step (degree 3)
            elif isinstance(name, str) and name.startswith(("zebra", "line", "auto")):
                # Variable line parts (three grids) and their LAPACK factors (two); constant ones are one line
                # per class and step (up to 4 steps of 2 classes, three diagonals and two factors each).
                arrays = 5 if is_variable else 0
                parts["smoothers"] += 0 if is_variable else 4 * 2 * 5 * max(shape) * value
            else:
                arrays = 1 if is_variable else 0
            parts["smoothers"] += arrays * n * value
            odd = all(m >= 3 and m % 2 == 1 for m in shape)
            coarse_n = math.prod(shapes[k + 1])
            if operator_dependent and odd:
                parts["transfers"] += 2 * 3**dim * coarse_n * value  # P's weights, and R's copy
                peak = max(peak, 30 * n * value)
            rediscretized = (
                not operator_dependent
                and not is_variable
                and odd
                and coarse_operator != "galerkin"
                and points <= 3**dim
            )
            if not rediscretized:  # Galerkin: R A P probed with 9 vectors at a time
                peak = max(peak, (2 * _GALERKIN_PROBES + 4) * n * value)
                points, is_variable, axis_aligned = 3**dim, True, False
        parts["set-up peak"] = peak
        if work != value:
            stored = sum(parts[p] for p in ("coarse operators", "smoothers", "transfers"))
            stored += parts["coarsest dense LU"]
            parts["cycle precision copy"] = stored + stored * work // value  # deep copy, then converted
    if batch > 0:
        n0 = math.prod(shapes[0])
        chunk = min(batch, max(1, _CHUNK_POINTS // n0))
        per_rhs = (3 + (4 if accel == "cg" else 1)) * n0 * value
        cycle_arrays = 3 * chunk * sum(math.prod(s) for s in shapes) * work
        parts["solve arrays"] = batch * per_rhs + cycle_arrays
    return MemoryEstimate({k: int(v) for k, v in parts.items()})


_psutil = None  # the psutil module once looked for, False when it is absent


def _find_psutil():
    """psutil (optional: present on many systems, not a dependency), or None; looked for once, since a failed
    import searches the whole path again each time (0.3 ms, twice per solve)."""
    global _psutil
    if _psutil is None:
        try:
            import psutil
        except ImportError:
            _psutil = False
        else:
            _psutil = psutil
    return _psutil or None


def _cpu_available() -> int | None:
    """Bytes of memory this process may still use on the CPU, or ``None`` when it cannot be read."""
    candidates = []
    try:
        candidates.append(int(_find_psutil().virtual_memory().available))
    except Exception:  # absent or unusable psutil: fall back to the kernel's numbers
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        candidates.append(int(line.split()[1]) * 1024)
                        break
        except (OSError, ValueError, IndexError):
            try:
                candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (AttributeError, ValueError, OSError):
                pass
    # A container's memory limit (cgroup v2) can be far below what the host reports.
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as limit_file:
            limit = limit_file.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as current_file:
            current = int(current_file.read().strip())
        if limit != "max":
            candidates.append(max(int(limit) - current, 0))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes free on ``device`` now (CUDA: ``torch.cuda.mem_get_info`` plus the allocator's unused cached
    blocks), or ``None`` when unknown.

    Examples
    --------
    >>> available = available_memory("cpu")
    >>> available is None or available > 0
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Blocks torch's caching allocator holds but does not use are free for this process too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        return _cpu_available()
    return None


def check_memory(estimate: MemoryEstimate, device: str | torch.device = "cpu", *, what: str = "grid") -> None:
    """Raise ``MemoryError`` (naming ``what`` and giving the estimate) when ``estimate`` exceeds free memory.

    Examples
    --------
    >>> check_memory(estimate_solve_memory((15, 15)), "cpu")  # a few KiB: fits anywhere
    """
    available = available_memory(device)
    if available is not None and estimate.total > available:
        raise MemoryError(
            f"{what}: this needs {estimate}, but {torch.device(device)} has {format_bytes(available)} available; "
            "use a smaller grid, fewer right-hand sides or a smaller max_coarse"
        )


def check_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that can hold data here; ``ValueError`` naming ``name`` otherwise.

    Refuses malformed names (``"tpu"``), ``"meta"`` (no data), and devices this torch build or machine does not
    have (``"cuda"`` without a GPU, ``"mps"`` off Apple silicon).

    Examples
    --------
    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device: 'tpu' is not a torch device; expected e.g. 'cpu' or 'cuda'
    >>> check_device("meta")
    Traceback (most recent call last):
    ...
    ValueError: device: 'meta' tensors hold no values; expected e.g. 'cpu' or 'cuda'
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name}: expected a device name such as 'cpu' or 'cuda'; got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{name}: {str(device)!r} is not a torch device; expected e.g. 'cpu' or 'cuda'") from err
    if parsed.type == "meta":
        raise ValueError(f"{name}: 'meta' tensors hold no values; expected e.g. 'cpu' or 'cuda'")
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}: {str(parsed)!r} asked for, but torch sees no CUDA device here")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{name}: {str(parsed)!r} asked for, but torch sees {count} CUDA device(s)")
        return parsed
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: 'mps' asked for, but this machine or torch build has no MPS (Apple GPU) support")
    try:  # other back ends (xpu, ...): usable if a tensor can be put there
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        reason = str(err).split(". ")[0][:120]
        raise ValueError(f"{name}: {str(parsed)!r} is not available here ({reason})") from err
    return parsed
