"""Multigrid cycles (V, W, F) and full multigrid, written once over the shared blocks.

Each level runs the MgNet smoothing block (:class:`~mgcore.smoothers.Smoother`, a sequence of
``u <- u + B(f - A u)`` steps) and the MgNet restriction block (:func:`~mgcore.blocks.restriction_step`:
``u' = Π u``, ``f' = R(f - A u) + A' u'``), then corrects ``u <- u + P(u'_new - u')``.  With ``Π = None``
this is the correction scheme (``u' = 0``); with Π the injection it is FAS (Brandt 1977).

The cycle type is resolved once into the :class:`~mgcore.options.Cycle` enum; the recursion follows its
``coarse_visits``: V visits the coarse grid once, W twice, F once with an F-cycle and then with a V-cycle
(Trottenberg et al. 2001, section 2.4).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mgcore.blocks import _records_grad, restriction_step
from mgcore.boundary import BoundaryProlongation
from mgcore.hierarchy import Hierarchy
from mgcore.options import Cycle
from mgcore.transfers import cubic_interpolate

__all__ = ["Cycle", "cycle", "fmg"]


def cycle(
    hierarchy: Hierarchy,
    u: Tensor | None,
    f: Tensor,
    kind: Cycle = Cycle.V,
    level: int = 0,
    symmetric: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """One multigrid cycle on level ``level`` for ``A u = f``; returns the new ``u``.

    Parameters
    ----------
    hierarchy : Hierarchy
        The levels.
    u : Tensor or None
        Initial guess ``(batch, channels, *grid)``; ``None`` is zero (saves one operator application).
        Not modified.
    f : Tensor
        Right-hand side, same shape.  Not modified.
    kind : Cycle
        V, W or F.
    level : int
        The level to start from.
    symmetric : bool
        Run each post-smoother's steps in reverse order, which makes the cycle a symmetric operator (for
        preconditioning CG).  Off by default: for red-black Gauss-Seidel the same (red, black) order
        before and after the correction converges faster (measured V(1,1) factor at 255^2: 0.10 against
        0.25 with the reversed order).
    out : Tensor, optional
        With ``u=None``, an array shaped like ``f`` that may receive the new ``u`` (whatever it holds is
        overwritten): a caller that cycles again and again saves a fresh grid each time.  The coarse levels'
        iterates always reuse arrays kept on their levels.

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import Stencil
    >>> from mgcore.hierarchy import build_hierarchy
    >>> A = Stencil.laplacian(2, h=1 / 64)
    >>> h = build_hierarchy(A, (63, 63), max_coarse=50)
    >>> f = torch.ones(1, 1, 63, 63, dtype=torch.float64)
    >>> u = cycle(h, None, f)
    >>> bool(A.residual(u, f).norm() < 0.1 * f.norm())
    True
    """
    if level == len(hierarchy) - 1:
        return hierarchy.coarse_solver(f)
    current = hierarchy[level]
    coarse = hierarchy[level + 1]
    if current.presmooth == 0 and u is not None:
        u = u.clone()  # the in-place correction below must never reach the caller's tensor
    # Without autograd the level's workspace holds the smoothing residuals, the fine residual and then the
    # prolonged correction: a cycle allocates no fine-grid array.
    recording = _records_grad(u, f, current)
    workspace = None if recording else current.workspace(f)
    u = current.smoother(u, f, sweeps=current.presmooth, workspace=workspace, out=None if recording else out)
    u_coarse_initial, f_coarse = restriction_step(
        current.A, coarse.A, current.R, current.Pi, u, f, workspace=workspace
    )
    u_coarse = u_coarse_initial
    for visit in kind.coarse_visits:
        # A zero coarse guess starts in the coarse level's own array: its iterate is spent (prolonged) before
        # that level runs again.  Only the compiled CPU loops write into it (elsewhere a new array costs no
        # page faults), so other devices keep no such array.
        kept = not recording and u_coarse is None and f_coarse.device.type == "cpu"
        spare = coarse.iterate(f_coarse) if kept else None
        u_coarse = cycle(hierarchy, u_coarse, f_coarse, visit, level + 1, symmetric, out=spare)
    correction = u_coarse if u_coarse_initial is None else u_coarse - u_coarse_initial
    if recording or _records_grad(u, correction):
        u = u + current.P(correction, current.grid_shape)
        return current.smoother(u, f, sweeps=current.postsmooth, reverse=symmetric)
    # u is the smoother's own output: the correction is added in place (in one pass where P can).
    if hasattr(current.P, "accumulate_"):
        current.P.accumulate_(u, correction, workspace)
    else:
        u.add_(current.P(correction, current.grid_shape, out=workspace))
    # The pre-smoother relaxed the decoupled rows (diagonal only) and P adds nothing there: the post-smoother
    # need not pass over them again (half of a masked disk's grid).
    settled = current.presmooth > 0 and getattr(current.P, "zero_on_inactive", False)
    return current.smoother(
        u, f, sweeps=current.postsmooth, reverse=symmetric, workspace=workspace, inplace=True, settled=settled
    )


def fmg(
    hierarchy: Hierarchy,
    f: Tensor,
    *,
    cycles_per_level: int = 1,
    kind: Cycle = Cycle.V,
    interpolation: str = "cubic",
    rhs_levels: Sequence[Tensor] | None = None,
) -> Tensor:
    """Full multigrid: solve on the coarsest grid, interpolate up, and run ``cycles_per_level`` cycles on
    each finer grid (Brandt 1977; Trottenberg et al. 2001, section 2.6).

    One V(2,1) per level with cubic interpolation reaches the discretisation error for second-order
    problems (tested at 255^2 and 1023^2 in ``tests/mgcore/test_convergence.py``).

    Parameters
    ----------
    hierarchy : Hierarchy
        The levels.
    f : Tensor
        Fine right-hand side ``(batch, channels, *grid)``.
    cycles_per_level : int
        Cycles after each interpolation.
    kind : Cycle
        The cycle run on each level.
    interpolation : {"cubic", "linear"}
        How the coarse solution is carried to the next finer grid (face-aware levels of Neumann, periodic and
        masked operators always use their own linear ``P``).
    rhs_levels : sequence of Tensor, optional
        Right-hand sides of every level; by default ``f`` restricted by full weighting.

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import Stencil
    >>> from mgcore.hierarchy import build_hierarchy
    >>> A = Stencil.laplacian(2, h=1 / 64)
    >>> h = build_hierarchy(A, (63, 63), max_coarse=50)
    >>> f = torch.ones(1, 1, 63, 63, dtype=torch.float64)
    >>> bool(A.residual(fmg(h, f), f).norm() < 0.05 * f.norm())
    True
    """
    if interpolation not in ("cubic", "linear"):
        raise ValueError(f"interpolation: expected 'cubic' or 'linear'; got {interpolation!r}")
    if rhs_levels is None:
        rhs_levels = [f]
        for level in hierarchy.levels[:-1]:
            rhs_levels.append(level.R(rhs_levels[-1]))
    u = hierarchy.coarse_solver(rhs_levels[-1])
    for k in range(len(hierarchy) - 2, -1, -1):
        level = hierarchy[k]
        # Cubic interpolation is written for the coarse grids of mgcore.transfers (coarse i on fine 2 i + 1, zero
        # beyond the faces); face-aware levels (Neumann, periodic, masked: mgcore.boundary) place their coarse
        # points otherwise, so they carry the solution up with their own P.
        if interpolation == "cubic" and not isinstance(level.P, BoundaryProlongation):
            u = cubic_interpolate(u, level.grid_shape, len(level.grid_shape))
        else:
            u = level.P(u, level.grid_shape)
        for _ in range(cycles_per_level):
            u = cycle(hierarchy, u, rhs_levels[k], kind, k)
    return u
