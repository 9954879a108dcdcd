"""Smoothers: every one is a sequence of residual-correction steps ``u <- u + B_k (f - A u)``.

This is the point of He & Xu (2019): the classical smoothers differ only in ``B``.

==============  ==============================================  =========================================
name            ``B_k`` of each step                            reference
==============  ==============================================  =========================================
``jacobi``      ``D^{-1}``                                       Saad 2003, section 4.1
``wjacobi``     ``ω D^{-1}``, ``ω = 4/5`` (2D), ``6/7`` (3D)      Trottenberg et al. 2001, section 2.1
``rbgs``        ``mask_c D^{-1}`` for each colour ``c``           Trottenberg et al. 2001, section 2.1
``chebyshev``   ``D^{-1} / τ_k``, ``τ_k`` Chebyshev roots          Adams et al. 2003; pyamg ``chebyshev``
learned         a trained convolution                            Katrutsa et al. 2020; He & Xu 2019
==============  ==============================================  =========================================

Red-black Gauss-Seidel uses two colours (checkerboard) when the stencil couples only along the axes
(5-point, 7-point); stencils with diagonal couplings (Galerkin 9-/27-point) use ``2^d`` colours (the parity
of each index), which again decouples every colour.  A post-smoother runs the colours in reverse order, so a
V-cycle with equal pre- and post-smoothing is symmetric and can precondition CG.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mgcore import kernels
from mgcore.anisotropy import choose
from mgcore.blocks import ResidualCorrection, residual_corrections
from mgcore.operators import Lattice, Operator, Stencil

__all__ = [
    "SMOOTHERS",
    "DiagonalScaling",
    "Smoother",
    "SmootherFactory",
    "auto",
    "chebyshev",
    "check_smoother_spec",
    "jacobi",
    "make_smoother",
    "red_black_gauss_seidel",
    "weighted_jacobi",
]


def _version_key(A: Stencil) -> tuple[int, int]:
    """Identifies the coefficient values of a variable stencil (storage and version counter)."""
    return A.coefficients.data_ptr(), A.coefficients._version


def _check_diagonal(zeros: int, negative: int, total: int) -> None:
    """Refuse a diagonal with ``zeros`` zero entries (of ``total``; ``negative`` below zero)."""
    if zeros:
        signs = f" and {negative} negative" if negative and negative < total else ""
        raise ValueError(
            f"A: the diagonal has {zeros} zero{signs} entries; diagonal smoothers divide by it (A should be "
            "positive definite, as -Δ is)"
        )


def _point_indices(points: Tensor, grid_shape: Sequence[int] | None) -> Tensor:
    """``points`` as distinct flat grid indices (``int64``), checked once here: the compiled loops read and write
    at them without bounds checks, and a repeated point would be updated twice in one Jacobi step (and race).

    Examples
    --------
    >>> _point_indices(torch.tensor([[0, 5], [7, 8]]), (3, 3)).tolist()
    [0, 5, 7, 8]
    >>> _point_indices(torch.tensor([4, 4]), (3, 3))
    Traceback (most recent call last):
    ...
    ValueError: points: expected distinct flat grid indices (each point is relaxed once per step); index 4 is repeated
    """
    if points.dtype.is_floating_point or points.dtype.is_complex or points.dtype == torch.bool:
        raise TypeError(
            f"points: expected a tensor of integer flat grid indices (or True, with a mask); got dtype {points.dtype}"
        )
    index = points.reshape(-1).to(torch.long)
    if index.numel() == 0:
        return index
    values = index.cpu().numpy()  # a check at set-up: NumPy is several times faster than torch on small arrays
    # Sorted indices (as the band's, from flatnonzero) are distinct when strictly increasing: one cheap pass.
    increasing = values.size < 2 or bool((values[1:] > values[:-1]).all())
    ordered = values if increasing else np.sort(values)
    if not increasing:
        repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
        if repeated.size:
            raise ValueError(
                "points: expected distinct flat grid indices (each point is relaxed once per step); index "
                f"{int(ordered[repeated[0]])} is repeated"
            )
    low, high = int(ordered[0]), int(ordered[-1])
    count = None if grid_shape is None else math.prod(grid_shape)
    if low < 0 or (count is not None and high >= count):
        raise ValueError(
            f"points: expected flat grid indices in [0, {count if count is not None else 'N'}) for grid "
            f"{tuple(grid_shape) if grid_shape is not None else '(unknown)'}; got {low}..{high}"
        )
    return index


class DiagonalScaling(Operator):
    """``B r = scale * r`` with ``scale = ω mask / diag(A)``: the ``B`` of Jacobi, Gauss-Seidel colours and
    Chebyshev steps.

    Parameters
    ----------
    A : Stencil
        The operator whose diagonal is inverted.
    omega : float
        Damping factor.
    mask : Tensor, optional
        A 0/1 grid (``(*grid)``) selecting the points this step updates.
    grid_shape : tuple of int, optional
        The grid, for a constant stencil with Neumann faces (whose diagonal differs on them); the mask's by
        default.
    points : bool or Tensor
        The mask selects a scattered set of points (a band along a masked domain's boundary): keep their
        indices and couplings (:attr:`~mgcore.operators.Operator.points`) so the shared block forms the residual
        at those points only.  Or the flat indices of those points themselves (distinct and on the grid, checked
        here; then no mask is needed).
    parity : int, optional
        ``mask`` selects the points whose index sum has this parity (0 or 1): one colour of red-black
        Gauss-Seidel.  Without a mask, this colour is the mask.
    lattices : sequence of lattices, optional
        The stride sub-lattices (``(start, step)`` per axis) that make up the mask's support, when no two of
        them couple through ``A`` (one colour of multicolour Gauss-Seidel).  The shared block then forms the
        residual on those points only (:attr:`~mgcore.operators.Operator.lattices`).  Without a mask, their
        points are the mask.

    The scale of a variable stencil (and the arrays derived from it) is formed at the first step that runs in
    PyTorch: the compiled CPU loops (:mod:`mgcore.kernels`) read the diagonal from ``A`` and the points from
    the parity, the lattices or the indices.

    Examples
    --------
    >>> import torch
    >>> B = DiagonalScaling(Stencil.laplacian(1), omega=0.5)
    >>> u = torch.zeros(1, 1, 3, dtype=torch.float64)
    >>> B.accumulate_(u, torch.ones_like(u))  # u += 0.5 / 2 * r, in place
    tensor([[[0.2500, 0.2500, 0.2500]]], dtype=torch.float64)
    """

    def __init__(
        self,
        A: Stencil,
        omega: float = 1.0,
        mask: Tensor | None = None,
        lattices: Sequence[Lattice] | None = None,
        points: bool | Tensor = False,
        grid_shape: Sequence[int] | None = None,
        parity: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = A.dim
        # The mask's colour of a two-colour (checkerboard) Gauss-Seidel, when it is one: the points whose index
        # sum has this parity.  The shared block then may relax them by one compiled loop (mgcore.kernels).
        self.parity = parity
        if grid_shape is None and mask is not None:
            grid_shape = tuple(mask.shape[-A.dim :])
        if A.is_constant and mask is not None and min(mask.shape[-A.dim :]) >= 2:
            # A constant stencil's diagonal is c_0, halved on Neumann faces (W c_0, W > 0): the masked scale
            # ω mask / (W c_0) is formed in one new array (fresh memory costs its page faults at set-up).
            centre = float(A.coefficients[A.center_index])
            count = math.prod(mask.shape[-A.dim :])
            _check_diagonal(count if centre == 0.0 else 0, count if centre < 0.0 else 0, count)
            self.omega = float(omega)
            self.scalar = None
            scale = torch.mul(mask.to(A.coefficients.dtype), self.omega / centre)
            if A.reflect is not None:
                A._halve_faces(scale, None, [(0, 1, n) for n in scale.shape[-A.dim :]], factor=2.0)  # divide by W
            self.register_buffer("scale", scale.reshape(1, 1, *scale.shape[-A.dim :]))
            self._finish(A, lattices, points, mask, tuple(scale.shape[-A.dim :]))
            return
        diagonal = A.diagonal(grid_shape)
        if A.is_constant or A.__dict__.get("_diagonal_checked") != _version_key(A):
            zeros = None if A.is_constant else kernels.zero_diagonal_count(A)  # counted by a pass that ran
            if zeros is None:
                zeros = int((diagonal == 0).sum())
            if zeros:
                _check_diagonal(zeros, int((diagonal < 0).sum()), diagonal.numel())
            if not A.is_constant:  # the colours of a level share A: check its diagonal once
                A.__dict__["_diagonal_checked"] = _version_key(A)
        self.omega = float(omega)
        self.register_buffer("scale", None)
        if A.is_constant and mask is None and A.reflect is None:
            self.scalar: float | None = self.omega / float(diagonal)
            self._finish(A, lattices, points, mask, None)
        else:
            self.scalar = None
            # `scale` and the arrays derived from it are formed at the first PyTorch step (:meth:`materialize`): the
            # compiled loops (mgcore.kernels) read A's diagonal themselves, and forming them for every colour
            # of every level was a third of a masked 1023^2 disk's set-up.
            grid = mask.shape if mask is not None and diagonal.dim() == 0 else diagonal.shape
            self._finish(A, lattices, points, mask, tuple(grid[-A.dim :]))

    def _finish(
        self, A: Stencil, lattices, points: bool, mask: Tensor | None, grid_shape: tuple[int, ...] | None
    ) -> None:
        """The lattices and point indices; the arrays that hold :attr:`scale` wait for :meth:`materialize`."""
        self.grid_shape = grid_shape
        self.lattices = None
        if lattices is not None:
            if grid_shape is None:
                raise ValueError("lattices: need a mask (or variable coefficients) to restrict the update to")
            self.lattices = tuple(tuple((int(start), int(step)) for start, step in lattice) for lattice in lattices)
            for k in range(len(self.lattices)):
                self.register_buffer(f"lattice_scale_{k}", None)
        self.register_buffer("point_index", None)
        if isinstance(points, Tensor):
            self.point_index = _point_indices(points, grid_shape)
        elif points:
            if mask is None:
                raise ValueError("points: need a mask selecting the points")
            self.point_index = torch.nonzero(mask.reshape(-1)).squeeze(1)
        if self.point_index is not None:  # buffers, so that .to() moves them once formed
            for name in ("point_neighbours", "point_weights", "point_scale"):
                self.register_buffer(name, None)
        # A tuple, so that A is not registered as a submodule (it belongs to the step that holds this B).
        self._pending = None if grid_shape is None else (A, mask)
        if self.grid_shape is not None and A.is_constant:
            self.materialize()  # a constant stencil's scale is one array, cheap to form now

    def materialize(self) -> None:
        """Form :attr:`scale` (``ω mask / diag(A)``), the lattices' contiguous copies of it and the points'
        couplings, once, on the device and dtype ``A`` has now."""
        pending = self._pending
        if pending is None:
            return
        A, mask = pending
        if self.scale is None:
            diagonal = A.diagonal(self.grid_shape)
            scale = self.omega / diagonal
            if mask is None:
                mask = self._implied_mask(diagonal)
            if mask is not None:
                scale = scale * mask.to(device=scale.device, dtype=scale.dtype)
            # `scale` is a new array already (the quotient above): kept without another copy.
            self.scale = scale.reshape(1, 1, *self.grid_shape)
        for k, lattice in enumerate(self.lattices or ()):
            # Contiguous per lattice, like the stencil's lattice coefficients: the update reads it densely.
            where = (..., *(slice(start, None, step) for start, step in lattice))
            setattr(self, f"lattice_scale_{k}", self.scale[where].contiguous())
        if self.point_index is not None:
            index = self.point_index.to(self.scale.device)
            self.point_index = index
            self.point_neighbours, self.point_weights = A.point_couplings(index, self.grid_shape)
            self.point_scale = self.scale.reshape(-1)[index].clone()
        self._pending = None

    def _implied_mask(self, like: Tensor) -> Tensor | None:
        """The 0/1 grid of the points this step updates when no mask was given: its indices, its lattices or its
        colour (else None: every point)."""
        if self.point_index is None and self.lattices is None and self.parity is None:
            return None
        mask = torch.zeros(self.grid_shape, dtype=like.dtype, device=like.device)
        if self.point_index is not None:
            mask.view(-1)[self.point_index.to(like.device)] = 1.0
        elif self.lattices is not None:
            for lattice in self.lattices:
                mask[tuple(slice(start, None, step) for start, step in lattice)] = 1.0
        else:
            index_sum = sum(
                torch.arange(n, device=like.device).reshape([-1 if a == axis else 1 for a in range(self.dim)])
                for axis, n in enumerate(self.grid_shape)
            )
            mask[index_sum % 2 == self.parity] = 1.0
        return mask

    @property
    def points(self) -> Tensor | None:  # the Operator protocol: the flat indices this B updates
        return self.point_index

    @property
    def couplings(self) -> tuple[Tensor, Tensor]:
        self.materialize()
        return self.point_neighbours, self.point_weights

    def accumulate_points_(self, u: Tensor, r: Tensor) -> Tensor:
        """``u += scale * r`` at :attr:`points` (``r`` holds the residual there, ``(batch * channels, P)``)."""
        self.materialize()
        u.view(r.shape[0], -1).index_add_(1, self.point_index, r.mul_(self.point_scale))
        return u

    def forward(self, r: Tensor) -> Tensor:
        self.materialize()
        return r * (self.scalar if self.scale is None else self.scale)

    def accumulate_(self, y: Tensor, x: Tensor) -> Tensor:
        """``y += scale * x`` in one pass, without a temporary (the classical smoothers' update)."""
        self.materialize()
        if self.scale is None:
            return y.add_(x, alpha=self.scalar)
        return y.addcmul_(x, self.scale)

    def accumulate_lattice_(self, k: int, u: Tensor, r: Tensor) -> Tensor:
        """``u += scale * r`` on lattice ``k`` (``r`` holds the residual there)."""
        self.materialize()
        points = (..., *(slice(start, None, step) for start, step in self.lattices[k]))
        u[points].addcmul_(r, getattr(self, f"lattice_scale_{k}"))
        return u


class Smoother(nn.Module):
    """A smoothing sweep: the residual-correction steps ``u <- u + B_k (f - A u)``, ``k = 1..K``.

    Every step runs through the one shared block, :func:`mgcore.blocks.residual_correction` (He & Xu 2019,
    eq. (3.5)), for the classical smoothers, the learned ones and MgNet alike.  Once ``u`` is an array this
    call made, the steps update it in place (when autograd records nothing), as pyamg's relaxation methods
    do; ``workspace`` holds the residual, so a sweep allocates nothing.

    Parameters
    ----------
    steps : sequence of ResidualCorrection
        The steps of one sweep.
    name : str
        Shown in hierarchy tables.
    symmetric : bool
        True when running the steps in reverse order gives the adjoint sweep (Jacobi, Chebyshev, colour
        sweeps): then a V-cycle with reversed post-smoothing is symmetric.
    cost : float
        Operator applications per sweep, in units of one application of ``A`` on the whole grid.

    Examples
    --------
    >>> import torch
    >>> A = Stencil.laplacian(2)
    >>> S = weighted_jacobi(A, (7, 7))
    >>> S
    Smoother(wjacobi(omega=0.8), steps=1, cost=1, symmetric)
    >>> f = torch.ones(1, 1, 7, 7, dtype=torch.float64)
    >>> r0 = A.residual(torch.zeros_like(f), f).norm()
    >>> bool(A.residual(S(torch.zeros_like(f), f, sweeps=3), f).norm() < r0)
    True
    """

    def __init__(self, steps: Sequence[ResidualCorrection], *, name: str, symmetric: bool, cost: float) -> None:
        super().__init__()
        if not steps:
            raise ValueError("steps: a smoother needs at least one step")
        self.steps = nn.ModuleList(steps)
        self.name = name
        self.symmetric = bool(symmetric)
        self.cost = float(cost)

    def _shared_operator(self) -> tuple[nn.Module, list[nn.Module]] | None:
        """The one ``A`` of every step and the steps' ``B`` when no step has an activation (then the sweeps run
        through :func:`~mgcore.blocks.residual_corrections`), else None.

        Read at every call (the steps may change between calls), from the modules' own tables: each attribute
        through ``nn.Module.__getattr__`` cost about 0.7 us, 20-40 of them per call of a cycle's smoother."""
        first = None
        Bs = []
        for step in self.steps._modules.values():
            A = _child(step, "A")
            if first is None:
                first = A
            if A is not first or _child(step, "pre_act") is not None or _child(step, "post_act") is not None:
                return None
            Bs.append(_child(step, "B"))
        return first, Bs

    def _plan(self, Bs: Sequence[nn.Module] | None = None):
        """The :class:`~mgcore.kernels.StepPlan` of the steps' ``Bs`` (all steps' by default; None where the loops
        cannot run them), kept while the steps hold the same ``B`` modules."""
        if Bs is None:
            Bs = [step.B for step in self.steps]
        cached = self.__dict__.get("_step_plan")
        if cached is None or len(cached[0]) != len(Bs) or any(a is not b for a, b in zip(cached[0], Bs)):
            cached = (tuple(Bs), kernels.step_plan(list(Bs)))
            self.__dict__["_step_plan"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        sym = ", symmetric" if self.symmetric else ""
        return f"{self.name}, steps={len(self.steps)}, cost={self.cost:g}{sym}"

    def __repr__(self) -> str:
        return f"Smoother({self.extra_repr()})"

    def forward(
        self,
        u: Tensor | None,
        f: Tensor,
        sweeps: int = 1,
        reverse: bool = False,
        workspace: Tensor | None = None,
        inplace: bool = False,
        settled: bool = False,
        out: Tensor | None = None,
    ) -> Tensor:
        """Run ``sweeps`` sweeps on ``A u = f``; ``u=None`` means a zero initial guess.

        ``u`` and ``f`` are never modified, unless ``inplace`` (for an ``u`` the caller owns, such as a
        post-smoother's input in a cycle: it saves a copy of the grid).  ``reverse=True`` runs the steps in
        reverse order (the adjoint sweep of a post-smoother).  ``workspace`` (shaped like ``f``) receives each
        step's residual when autograd is off.  ``settled=True`` promises that ``u`` came from a sweep of this
        smoother on this ``f`` and has changed since at coupled rows only (a cycle's post-smoother, after a
        prolongation that is zero at decoupled rows); the compiled loops then skip the rows with their diagonal
        only, which a step with ``ω = 1`` would set to the values they hold (see
        :func:`mgcore.kernels.run_steps_`).  When the promise holds it changes no value.  ``out`` (shaped like
        ``f``) may receive the new iterate when ``u`` is None, where the compiled CPU loops run (there a fresh
        grid costs page faults; elsewhere a new array is cheaper than filling ``out`` with zeros).
        """
        shared = self._shared_operator()
        if shared is not None:  # one A, no activations: the classical smoothers
            return residual_corrections(
                shared[0],
                shared[1],
                u,
                f,
                sweeps=sweeps,
                reverse=reverse,
                workspace=workspace,
                inplace=inplace,
                # The compiled graph runs its own kernels; the loops' plan (NumPy) is not traced.
                plan=None if torch.compiler.is_compiling() else self._plan(shared[1]),
                settled=settled,
                out=out,
            )
        steps = list(self.steps)[::-1] if reverse else list(self.steps)
        # True once u is an array this call may update (made here, or given with inplace): the steps then
        # update it in place.
        owned = inplace and u is not None
        for _ in range(sweeps):
            for step in steps:
                u = step(u, f, workspace=workspace, inplace=owned)
                owned = True
        return torch.zeros_like(f) if u is None else u


def _child(module: nn.Module, name: str):
    """``module.<name>``: a submodule from the module's table, anything else (such as None) as an attribute."""
    children = module._modules
    return children[name] if name in children else getattr(module, name)


def _class_view(x: Tensor, parity: Sequence[int]) -> Tensor:
    """The stride-2 view of the points whose index has the given parity on every axis."""
    return x[(..., *(slice(p, None, 2) for p in parity))]


SmootherFactory = Callable[[Stencil, tuple[int, ...], int], Smoother]
"""A callable ``(A, grid_shape, level) -> Smoother`` building the smoother of one level."""


def _colour_classes(A: Stencil, dim: int) -> list[list[tuple[int, ...]]]:
    """The colours that decouple Gauss-Seidel for ``A``, each a list of parity classes.

    Axis-aligned stencils need two colours (red: even index sum, black: odd); stencils with diagonal
    couplings need one colour per parity class, ``2^d`` in all.
    """
    if A.radius > 1:
        raise ValueError("smoother: multicolour Gauss-Seidel supports stencils of radius 1")
    classes = list(itertools.product((0, 1), repeat=dim))
    if A.is_axis_aligned:
        return [[q for q in classes if sum(q) % 2 == c] for c in (0, 1)]
    return [[q] for q in classes]


def _mask(classes: Sequence[tuple[int, ...]], grid_shape: Sequence[int], like: Tensor) -> Tensor:
    mask = torch.zeros(tuple(grid_shape), dtype=like.dtype, device=like.device)
    for q in classes:
        _class_view(mask, q).fill_(1.0)
    return mask


def jacobi(A: Stencil, grid_shape: Sequence[int], level: int = 0) -> Smoother:
    """Plain Jacobi ``u <- u + D^{-1}(f - A u)`` (not a good smoother for Poisson; here for comparison)."""
    step = ResidualCorrection(A, DiagonalScaling(A, 1.0, grid_shape=grid_shape))
    return Smoother([step], name="jacobi", symmetric=True, cost=1)


def weighted_jacobi(
    A: Stencil, grid_shape: Sequence[int], level: int = 0, *, omega: float | None = None
) -> Smoother:
    """Damped Jacobi with ``ω = 2d/(2d+1)`` by default: 4/5 in 2D and 6/7 in 3D minimise the smoothing
    factor of the (2d+1)-point Laplacian (Trottenberg et al. 2001, section 2.1.2)."""
    if omega is None:
        omega = 2 * A.dim / (2 * A.dim + 1)
    if not 0 < omega < 2:
        raise ValueError(f"omega: expected 0 < omega < 2; got {omega}")
    return Smoother(
        [ResidualCorrection(A, DiagonalScaling(A, omega, grid_shape=grid_shape))],
        name=f"wjacobi(omega={omega:.3g})",
        symmetric=True,
        cost=1,
    )


BOUNDARY_BAND = 2
"""Width (in points) of the band along a masked domain's boundary that Gauss-Seidel sweeps once more."""


def boundary_band(A: Stencil, grid_shape: Sequence[int], width: int = BOUNDARY_BAND) -> Tensor | None:
    """The active points within ``width`` points (any direction) of an inactive one (a row with its diagonal
    only: a cell outside a masked domain), as a boolean grid; ``None`` when ``A`` has no inactive row.

    Examples
    --------
    >>> import torch
    >>> c = Stencil.laplacian(1).coefficient_arrays((7,))
    >>> c[[0, 2], 3] = 0.0  # point 3 is outside the domain
    >>> boundary_band(Stencil(Stencil.laplacian(1).offsets, c), (7,), width=1).tolist()
    [False, False, True, False, True, False, False]
    """
    if A.is_constant:
        return None
    coupled = kernels.coupled(A, within=False)  # one compiled pass on the CPU
    if coupled is not None:
        count = kernels.coupled_count(A, within=False)
        if count in (0, coupled.numel()):  # every row decoupled, or none
            return None
        inactive = coupled.logical_not_()
    else:
        inactive = None
        for k, o in enumerate(A.offsets):
            if any(o):
                zero = A.coefficients[k] == 0
                inactive = zero if inactive is None else inactive.logical_and_(zero)
        if inactive is None or not bool(inactive.any()) or bool(inactive.all()):
            return None
    compiled = kernels.band(inactive, width)
    if compiled is not None:
        return compiled[0] if compiled[1] else None
    # Dilation by `width` in every direction, one axis after the other (a box is separable): shifted ORs.
    near = inactive.clone()
    for axis in range(A.dim):
        grown = near.clone()
        n = near.shape[axis]
        for shift in range(1, min(width, n - 1) + 1):
            grown.narrow(axis, shift, n - shift).logical_or_(near.narrow(axis, 0, n - shift))
            grown.narrow(axis, 0, n - shift).logical_or_(near.narrow(axis, shift, n - shift))
        near = grown
    band = near.logical_and_(~inactive)
    return band if bool(band.any()) else None


def red_black_gauss_seidel(A: Stencil, grid_shape: Sequence[int], level: int = 0) -> Smoother:
    """Red-black (multicolour) Gauss-Seidel; one sweep updates every colour once.

    On a masked domain (rows with their diagonal only outside it) a sweep then updates the
    :func:`boundary_band` once more, colour by colour, forming the residual at those points only.  Geometric
    coarse grids resolve an irregular boundary ever more coarsely, and the error left next to it grows with the
    number of levels; extra smoothing there keeps the factor from growing (McAdams, Sifakis & Teran 2010,
    section 4; measured V(2,1) factor on a domain with 16 holes, 255^2 -> 2047^2: 0.032 -> 0.056 without it,
    0.031 -> 0.034 with it).  Its name is then ``rbgs+band``.
    """
    colours = _colour_classes(A, len(grid_shape))
    # With four or eight colours (diagonal couplings) a colour is one stride-2 sub-lattice: forming the residual
    # there only is cheaper than on the whole grid (11.9 -> 7.8 ms per sweep on a 512^2 9-point variable
    # stencil, single-thread CPU).  With two colours each is two sub-lattices whose strided passes cost more than
    # one contiguous residual (9.6 against 7.8 ms per colour at 1023^2), so red-black keeps the plain block.
    steps = []
    grid_shape = tuple(int(n) for n in grid_shape)
    # A variable stencil's colours need no mask array: the parity or the lattices define them (DiagonalScaling
    # forms the mask only for a PyTorch step; the compiled loops never do).
    masks = [_mask(classes, grid_shape, A.coefficients) if A.is_constant else None for classes in colours]
    for parity, (classes, mask) in enumerate(zip(colours, masks)):
        lattices = [tuple((p, 2) for p in q) for q in classes] if len(colours) > 2 else None
        checkerboard = parity if len(colours) == 2 else None
        steps.append(
            ResidualCorrection(
                A, DiagonalScaling(A, 1.0, mask, lattices, parity=checkerboard, grid_shape=grid_shape)
            )
        )
    name = "rbgs" if len(colours) == 2 else f"gs-{len(colours)}colour"
    # Each colour updates 1/len(colours) of the points: one sweep costs one application of A.
    cost = 1.0
    band = boundary_band(A, grid_shape)
    if band is not None:
        flat = band.reshape(-1)
        if flat.device.type == "cpu":  # NumPy finds the points in a third of torch.nonzero's time (1023^2 grid)
            index = torch.from_numpy(np.flatnonzero(flat.numpy()))
        else:
            index = torch.nonzero(flat).squeeze(1)
        # The parity class of each band point as a number: bit a is its index modulo 2 along axis a (on the CPU
        # in NumPy: a handful of calls instead of some forty small torch ones per level).
        flat_points = index.cpu().numpy()
        code, rest = np.zeros(flat_points.size, dtype=np.int64), flat_points
        for axis in reversed(range(len(grid_shape))):
            code += (rest % grid_shape[axis] % 2) << axis
            rest = rest // grid_shape[axis]
        # Each class code's colour, so that one lookup colours every band point (np.isin per colour sorted the
        # codes each time: 0.1 ms a colour on a 417^2 level).
        colour_of = np.empty(2 ** len(grid_shape), dtype=np.int64)
        for colour, classes in enumerate(colours):
            for q in classes:
                colour_of[sum(c << axis for axis, c in enumerate(q))] = colour
        band_colours = colour_of[code]
        for colour in range(len(colours)):
            chosen = np.flatnonzero(band_colours == colour)
            if chosen.size:
                if index.device.type == "cpu":
                    points = torch.from_numpy(flat_points[chosen])
                else:
                    points = index[torch.from_numpy(chosen).to(index.device)]
                steps.append(ResidualCorrection(A, DiagonalScaling(A, 1.0, points=points, grid_shape=grid_shape)))
        name, cost = f"{name}+band", 1.0 + index.numel() / band.numel()
    # Every step (a colour, or a colour of the band) relaxes points that do not couple: the steps in reverse
    # order are the adjoint sweep, with the band as without it.
    return Smoother(steps, name=name, symmetric=True, cost=cost)


def estimate_lambda_max(A: Stencil, grid_shape: Sequence[int], iterations: int = 15, seed: int = 0) -> float:
    """Largest eigenvalue of ``D^{-1} A`` by power iteration, capped by the Gershgorin bound.

    Examples
    --------
    >>> lam = estimate_lambda_max(Stencil.laplacian(2), (31, 31))
    >>> 1.9 < lam <= 2.0
    True
    """
    generator = torch.Generator().manual_seed(seed)
    dtype = A.coefficients.dtype
    x = torch.rand((1, 1, *grid_shape), generator=generator, dtype=dtype).to(A.coefficients.device)
    inverse_diagonal = 1.0 / A.diagonal(grid_shape)
    lam = 0.0
    for _ in range(iterations):
        y = A(x) * inverse_diagonal
        lam = float((x * y).sum() / (x * x).sum())
        x = y / y.norm()
    # Gershgorin: |λ(D^{-1}A)| <= max_x sum_k |c_k(x)| / |c_0(x)|.
    coefficients = A.coefficients.abs()
    center = coefficients[A.center_index]
    gershgorin = float((coefficients.sum(0) / center).max())
    return min(lam, gershgorin)


def chebyshev(
    A: Stencil,
    grid_shape: Sequence[int],
    level: int = 0,
    *,
    degree: int = 3,
    lower_fraction: float = 1.0 / 30.0,
    upper_factor: float = 1.1,
) -> Smoother:
    """Chebyshev smoothing on the Jacobi-scaled operator ``D^{-1} A``.

    The polynomial damps the interval ``[λ_max * lower_fraction, λ_max * upper_factor]`` of ``D^{-1} A``,
    the upper part of the spectrum that the coarse grid cannot correct (Adams, Brezina, Hu & Tuminaro
    2003; the same defaults as pyamg).  It is applied in product form, one residual-correction step per
    Chebyshev root ``τ_k``: ``u <- u + D^{-1}(f - A u)/τ_k``, so a sweep costs ``degree`` applications.
    """
    if degree < 1:
        raise ValueError(f"degree: expected a positive integer; got {degree}")
    lam = estimate_lambda_max(A, grid_shape)
    upper = lam * upper_factor
    lower = lam * lower_fraction
    roots = [
        (upper + lower) / 2 + (upper - lower) / 2 * math.cos(math.pi * (2 * k + 1) / (2 * degree))
        for k in range(degree)
    ]
    steps = [ResidualCorrection(A, DiagonalScaling(A, 1.0 / tau, grid_shape=grid_shape)) for tau in roots]
    return Smoother(steps, name=f"chebyshev(degree={degree})", symmetric=True, cost=degree)


ELONGATED = 4
"""A grid with ``ELONGATED`` times more points along one axis than along another is elongated (``auto``)."""


def auto(
    A: Stencil, grid_shape: Sequence[int], level: int = 0, *, coarsened_axes: Sequence[int] | None = None
) -> Smoother:
    """The smoother :func:`mgcore.anisotropy.choose` picks from the couplings of ``A``: red-black
    Gauss-Seidel for isotropic stencils, zebra line relaxation along the one strong axis (with semicoarsening
    of that axis on 2D 5-point stencils), or point relaxation with semicoarsening when two axes of three are
    strong.  ``coarsened_axes`` (given by the hierarchy) are the
    axes this level coarsens; by default the ones ``coarsening="auto"`` would pick.  Its name is
    ``auto:<chosen>``.

    Examples
    --------
    >>> auto(Stencil.laplacian(2), (7, 7)).name
    'auto:rbgs'
    >>> auto(Stencil.laplacian(2, h=(1.0, 10.0)), (7, 7)).name
    'auto:zebra-x'
    """
    (name, options), axes = choose(A, grid_shape)
    if coarsened_axes is not None and tuple(coarsened_axes) != axes:
        # The level coarsens other axes than the free choice would: pick the smoother for those.
        (name, options), _ = choose(A, grid_shape, coarsened_axes)
    elif name == "rbgs" and level > 0 and A.dim == 2 and max(grid_shape) >= ELONGATED * min(grid_shape):
        # An isotropic coarse level on an elongated grid is what semicoarsening leaves once the anisotropy has
        # shrunk away (31 x 1023 below 1023^2 at eps = 0.001).  Its correction bounds the whole cycle, and it
        # is small: alternating zebra lines there cost little and keep the factor of the anisotropic levels
        # (measured V(1,1) at 1023^2, eps = 0.001: 0.065 with red-black Gauss-Seidel there, 0.0085 with these).
        # Where the stencil is separable the hierarchy ends earlier, on an exact solve of the first thin grid
        # (mgcore.hierarchy.thin_coarsest); these lines serve the others (variable or 9-point coarse stencils).
        name, options = "zebra-alternating", {"axes": (0, 1, 1, 0)}
    smoother = SMOOTHERS[name](A, grid_shape, level, **options)
    smoother.name = f"auto:{smoother.name}"
    return smoother


SMOOTHERS: dict[str, Callable[..., Smoother]] = {
    "jacobi": jacobi,
    "wjacobi": weighted_jacobi,
    "rbgs": red_black_gauss_seidel,
    "chebyshev": chebyshev,
}
"""Smoother builders by name, each ``builder(A, grid_shape, level, **options) -> Smoother``; the line
smoothers of :mod:`mgcore.line` and ``auto`` are added below."""


def check_smoother_spec(spec) -> None:
    """Raise naming ``smoother`` unless ``spec`` is a registered name, a ``(name, options)`` pair or a callable.

    Examples
    --------
    >>> check_smoother_spec(("wjacobi", {"omega": 0.7}))
    >>> check_smoother_spec("sor")
    Traceback (most recent call last):
    ...
    ValueError: smoother: unknown name 'sor'; expected one of ['auto', 'chebyshev', 'jacobi', 'line-x', \
'line-x-symmetric', 'line-y', 'line-y-symmetric', 'rbgs', 'wjacobi', 'zebra-alternating', 'zebra-x', 'zebra-y', \
'zebra-z'], a (name, options) pair, or a callable (A, grid_shape, level) -> Smoother
    """
    if callable(spec) and not isinstance(spec, str):
        return
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise ValueError(f"smoother: expected (name, options dict); got {spec!r}")
        spec = spec[0]
    if not isinstance(spec, str) or spec not in SMOOTHERS:
        raise ValueError(
            f"smoother: unknown name {spec!r}; expected one of {sorted(SMOOTHERS)}, "
            "a (name, options) pair, or a callable (A, grid_shape, level) -> Smoother"
        )


def make_smoother(
    spec: str | tuple[str, dict] | SmootherFactory,
    A: Operator,
    grid_shape: tuple[int, ...],
    level: int,
    *,
    coarsened_axes: Sequence[int] | None = None,
) -> Smoother:
    """Build the smoother of one level from a name, a ``(name, options)`` pair or a factory.

    ``coarsened_axes`` (the axes this level coarsens) is passed on to ``auto``, which picks the smoother for
    them.

    Examples
    --------
    >>> make_smoother(("wjacobi", {"omega": 0.8}), Stencil.laplacian(2), (7, 7), 0).name
    'wjacobi(omega=0.8)'
    >>> make_smoother("sor", Stencil.laplacian(2), (7, 7), 0)
    Traceback (most recent call last):
    ...
    ValueError: smoother: unknown name 'sor'; expected one of ['auto', 'chebyshev', 'jacobi', 'line-x', \
'line-x-symmetric', 'line-y', 'line-y-symmetric', 'rbgs', 'wjacobi', 'zebra-alternating', 'zebra-x', 'zebra-y', \
'zebra-z'], a (name, options) pair, or a callable (A, grid_shape, level) -> Smoother
    """
    if callable(spec) and not isinstance(spec, str):
        smoother = spec(A, grid_shape, level)
        if not isinstance(smoother, Smoother):
            raise TypeError(f"smoother: the factory returned {type(smoother).__name__}; expected a Smoother")
        return smoother
    check_smoother_spec(spec)
    name, options = spec if isinstance(spec, tuple) else (spec, {})
    if not isinstance(A, Stencil):
        raise TypeError(f"smoother {name!r} needs a Stencil operator; got {type(A).__name__}")
    if name == "auto" and coarsened_axes is not None:
        options = {"coarsened_axes": tuple(coarsened_axes), **options}
    try:
        return SMOOTHERS[name](A, grid_shape, level, **options)
    except ValueError as error:
        if level == 0 or not str(error).startswith("A: "):
            raise
        # A coarse operator is the engine's (Galerkin or rediscretised), not the caller's: say which one.
        raise ValueError(
            f"A: the coarse operator of level {level} (grid {tuple(grid_shape)}), formed from the given A, is not "
            f"fit for the {name!r} smoother: {str(error)[3:]}"
        ) from error


# The line smoothers are Smoothers built from the blocks above; registered here so that every name is known
# wherever SMOOTHERS is (option checks, command-line help).
from mgcore.line import LINE_SMOOTHERS  # noqa: E402

SMOOTHERS.update(LINE_SMOOTHERS)
SMOOTHERS["auto"] = auto
