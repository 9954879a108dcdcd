"""The two blocks that multigrid and MgNet share (He & Xu 2019, Algorithm 2 and eq. (3.5)-(3.7)).

* Smoothing, the residual correction ``u <- u + σ(B σ(f - A u))``.  With fixed stencils and σ the identity
  it is a classical smoother step (Jacobi: ``B = ω D^{-1}``; a colour of red-black Gauss-Seidel:
  ``B = mask D^{-1}``; a Chebyshev step: ``B = D^{-1}/τ_k``).  With trained convolutions and σ = BN+ReLU
  it is the MgNet block.
* Restriction, ``u' = σ(Π u)`` and ``f' = σ(R(f - A u)) + A' u'``.  With ``Π = None`` (a zero coarse
  initial guess) it is the restriction of the residual of the correction scheme; with Π the injection it
  is FAS; with trained strided convolutions it is MgNet's pooling.

The multigrid cycles in :mod:`mgcore.cycles` and the MgNet classifiers in ``vision`` both call exactly these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mgcore import kernels

__all__ = [
    "ResidualCorrection",
    "Restriction",
    "residual_correction",
    "residual_corrections",
    "restriction_step",
    "scratch",
]

Activation = Callable[[Tensor], Tensor] | None


def _records_grad(*items) -> bool:
    """True when autograd would record an operation on any of ``items`` (tensors or modules)."""
    if not torch.is_grad_enabled():
        return False
    for item in items:
        if isinstance(item, Tensor):
            if item.requires_grad:
                return True
        elif isinstance(item, nn.Module) and any(p.requires_grad for p in item.parameters()):
            return True
    return False


def scratch(workspace: Tensor | None, like: Tensor, shape: Sequence[int]) -> Tensor:
    """A contiguous array of ``shape`` (dtype and device of ``like``) over the front of ``workspace`` when it
    is contiguous and large enough, else a new one: the smoothers' per-colour residuals need no allocation.

    Examples
    --------
    >>> w = torch.zeros(2, 3)
    >>> _ = scratch(w, w, (2, 2)).fill_(1.0)
    >>> w
    tensor([[1., 1., 1.],
            [1., 0., 0.]])
    """
    count = math.prod(shape)
    if (
        workspace is not None
        and workspace.is_contiguous()
        and workspace.dtype == like.dtype
        and workspace.device == like.device
        and workspace.numel() >= count
    ):
        return workspace.view(-1)[:count].view(tuple(shape))
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)


def _own(u: Tensor | None, f: Tensor, inplace: bool) -> Tensor:
    """The iterate a step may update in place: zeros for ``u=None``, ``u`` itself when ``inplace``, else a
    copy."""
    if u is None:
        return torch.zeros_like(f, memory_format=torch.contiguous_format)
    return u if inplace else u.clone()


def _lattice_correction(A, B, u: Tensor | None, f: Tensor, workspace: Tensor | None, inplace: bool) -> Tensor:
    """The step of :func:`residual_correction` for a ``B`` that acts on sub-lattices (``B.lattices``): the
    residual is formed on those points only, so one colour of four costs a quarter of a residual.  The same
    iterate as the whole-grid form up to round-off, since ``B`` reads and writes those points only."""
    zero = u is None
    if zero:
        u = torch.zeros_like(f, memory_format=torch.contiguous_format)
    elif not inplace:
        u = u.clone()
    for k, lattice in enumerate(B.lattices):
        r = B.lattice_buffer(k, f, workspace)  # (N, C, *lattice points)
        if zero:
            r.copy_(f[(..., *(slice(start, None, step) for start, step in lattice))])  # f - A 0
        else:
            A.residual_on(u, f, lattice, out=r)
        B.accumulate_lattice_(k, u, r)
    return u


def _point_correction(A, B, u: Tensor | None, f: Tensor, inplace: bool) -> Tensor:
    """The step of :func:`residual_correction` for a ``B`` that acts on a set of points (``B.points``): the
    residual is gathered at those points only, so a band of a few thousand points costs that, not a grid pass.
    The same iterate as the whole-grid form up to round-off."""
    if u is None:
        u = torch.zeros_like(f, memory_format=torch.contiguous_format)
    elif not inplace:
        u = u.clone(memory_format=torch.contiguous_format)
    r = A.residual_at(u, f, B.points, B.couplings)  # (N * C, P)
    B.accumulate_points_(u, r)
    return u


def residual_correction(
    A: Callable[[Tensor], Tensor],
    B: Callable[[Tensor], Tensor],
    u: Tensor | None,
    f: Tensor,
    pre_act: Activation = None,
    post_act: Activation = None,
    *,
    workspace: Tensor | None = None,
    inplace: bool = False,
) -> Tensor:
    """One smoothing step ``u + σ_post(B σ_pre(f - A u))``: the one code path of every smoother and of MgNet.

    Parameters
    ----------
    A, B : callable
        Operators on ``(N, C, *grid)`` tensors.  An :class:`~mgcore.operators.Operator` ``A`` forms ``f - A u``
        in one pass (into ``workspace`` when given); an Operator ``B`` adds ``B r`` to ``u`` in place through
        its ``accumulate_`` (one pass for the diagonal ``B`` of the classical smoothers).
    u : Tensor or None
        The iterate; ``None`` is a zero initial guess (then ``A u`` is skipped: ``A`` is linear).
    f : Tensor
        Right-hand side.  Never modified.
    pre_act, post_act : callable, optional
        σ before and after ``B`` (``None``: the identity, the PDE case).
    workspace : Tensor, optional
        An array shaped like ``f`` that receives the residual when autograd records nothing, so a step
        allocates no grid array.  Its content is consumed within the call.
    inplace : bool
        Update ``u`` in place (when autograd records nothing).  Only for an ``u`` the caller owns; by default
        ``u`` is not modified and a new tensor is returned.

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import Stencil
    >>> A = Stencil.laplacian(1)
    >>> f = torch.ones(1, 1, 3, dtype=torch.float64)
    >>> u = torch.zeros_like(f)
    >>> residual_correction(A, lambda r: r / 2, u, f)  # one Jacobi sweep, D = 2
    tensor([[[0.5000, 0.5000, 0.5000]]], dtype=torch.float64)
    >>> v = torch.zeros_like(f)
    >>> w = residual_correction(A, lambda r: r / 2, v, f, inplace=True)
    >>> w is v, v
    (True, tensor([[[0.5000, 0.5000, 0.5000]]], dtype=torch.float64))
    """
    recording = _records_grad(u, f, A, B, pre_act, post_act)
    # A B that acts on part of the grid (sub-lattices or a set of points) in the plain PDE step: the residual
    # is formed there only.  A compiled cycle traces the whole-grid form (one graph); autograd records it too.
    partial = (
        pre_act is None
        and post_act is None
        and not recording
        and not torch.compiler.is_compiling()
        and tuple(f.shape[2:]) == getattr(B, "grid_shape", None)
    )
    if partial and hasattr(B, "omega"):
        plan = kernels.step_plan([B])  # a colour, sub-lattices or points of one B (kept on B)
        if kernels.fits_plan(A, plan, u, f):
            # A stencil with one common row (a masked domain's operator): the loops of run_steps_.
            return kernels.run_steps_(A, _own(u, f, inplace), f, plan)
    if partial and getattr(B, "parity", None) is not None and kernels.fits(A, u, f, colours=True):
        # One colour of red-black Gauss-Seidel: one compiled loop on the CPU (mgcore.kernels).
        return kernels.gauss_seidel_colour_(A, _own(u, f, inplace), f, B.parity, B.omega)
    if partial and getattr(B, "lattices", None) and hasattr(A, "residual_on"):
        return _lattice_correction(A, B, u, f, workspace, inplace)
    if (
        partial
        and getattr(B, "points", None) is not None
        and hasattr(A, "residual_at")
        and f.is_contiguous()
        and (u is None or u.is_contiguous())
    ):
        if hasattr(B, "omega") and not getattr(A, "is_constant", True) and kernels.fits(A, u, f):
            return kernels.gauss_seidel_points_(A, _own(u, f, inplace), f, B.points, B.omega)
        return _point_correction(A, B, u, f, inplace)
    if u is not None and not recording and not inplace:
        # One copy, then the one-pass in-place update: cheaper than forming B r and u + B r as new arrays.
        u, inplace = u.clone(), True
    if u is None:
        r = f  # f - A 0
    elif hasattr(A, "residual"):
        r = A.residual(u, f, out=None if recording else workspace)  # (N, C, *grid)
    else:
        r = f - A(u)
    if pre_act is not None:
        r = pre_act(r)
    if inplace and u is not None and not recording:
        if post_act is None and hasattr(B, "accumulate_"):
            return B.accumulate_(u, r)
        correction = B(r)
        if post_act is not None:
            correction = post_act(correction)
        return u.add_(correction)  # autograd may still record this (a B whose parameters live elsewhere)
    correction = B(r)
    if post_act is not None:
        correction = post_act(correction)
    if u is None:
        # The new iterate must be an array of its own: callers update it in place afterwards.
        return correction.clone() if correction is f else correction
    return u + correction


def residual_corrections(
    A: Callable[[Tensor], Tensor],
    Bs: Sequence[Callable[[Tensor], Tensor]],
    u: Tensor | None,
    f: Tensor,
    *,
    sweeps: int = 1,
    reverse: bool = False,
    workspace: Tensor | None = None,
    inplace: bool = False,
    plan: kernels.StepPlan | None = None,
    settled: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """``sweeps`` sweeps of :func:`residual_correction` with one ``A`` and the ``Bs`` in turn (in reverse order
    with ``reverse``): a classical smoother's sweeps, the same iterate as the steps one by one.

    ``plan`` (:func:`mgcore.kernels.step_plan` of ``Bs``) lets the compiled CPU loops run all the steps in one
    call where they apply (a masked domain's variable stencil with a common row, :func:`mgcore.kernels.split`):
    a V(2,1) cycle on a masked 1023^2 disk makes 108 steps, and the Python around each was 20-40 us.
    ``settled`` tells those loops that ``u`` came from a sweep of these steps on this ``f`` and has changed
    since at coupled rows only, so the decoupled rows need no new pass (:func:`mgcore.kernels.run_steps_`);
    it changes no value.  ``out`` may receive the iterate when ``u`` is None (see :meth:`Smoother.forward
    <mgcore.smoothers.Smoother.forward>`).

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import Stencil
    >>> A = Stencil.laplacian(1)
    >>> f = torch.ones(1, 1, 3, dtype=torch.float64)
    >>> residual_corrections(A, [lambda r: r / 2, lambda r: r / 4], None, f, sweeps=2)
    tensor([[[0.9688, 1.2500, 0.9688]]], dtype=torch.float64)
    """
    if (
        plan is not None
        and not _records_grad(u, f, A)
        and not torch.compiler.is_compiling()
        and kernels.fits_plan(A, plan, u, f)
    ):
        iterate = None if u is None else u if inplace else u.clone()
        return kernels.run_steps_(A, iterate, f, plan, sweeps, reverse, settled, out=out)
    order = list(Bs)[::-1] if reverse else list(Bs)
    if u is None and out is not None and not _records_grad(f, A) and kernels.fits(A, f, out):
        u, inplace = out.zero_(), True  # the compiled steps of a constant stencil: zeros, then in place
    owned = inplace and u is not None
    for _ in range(sweeps):
        for B in order:
            u = residual_correction(A, B, u, f, workspace=workspace, inplace=owned)
            owned = True
    return torch.zeros_like(f) if u is None else u


class ResidualCorrection(nn.Module):
    """The smoothing block ``u <- u + σ_post(B σ_pre(f - A u))`` as a module.

    Parameters
    ----------
    A, B : nn.Module
        Operators (a :class:`~mgcore.operators.Stencil` or :class:`~mgcore.operators.ConvOperator`, or any
        module mapping ``(N, C, *grid)`` tensors).  Passing the same ``A`` to several blocks shares it
        (MgNet's ``A^ℓ``); a new one per block is ``A^{ℓ,i}``.
    pre_act, post_act : nn.Module, optional
        σ before and after ``B``; ``None`` is the identity (the PDE case).

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import ConvOperator
    >>> block = ResidualCorrection(ConvOperator(8, 8), ConvOperator(8, 8),
    ...                            nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()),
    ...                            nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()))
    >>> u, f = torch.zeros(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    >>> block(u, f).shape
    torch.Size([2, 8, 6, 6])
    """

    def __init__(
        self,
        A: nn.Module,
        B: nn.Module,
        pre_act: nn.Module | None = None,
        post_act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.A = A
        self.B = B
        self.pre_act = pre_act
        self.post_act = post_act

    def forward(
        self, u: Tensor | None, f: Tensor, *, workspace: Tensor | None = None, inplace: bool = False
    ) -> Tensor:
        """See :func:`residual_correction`."""
        return residual_correction(
            self.A, self.B, u, f, self.pre_act, self.post_act, workspace=workspace, inplace=inplace
        )


def restriction_step(
    A: Callable[[Tensor], Tensor],
    A_coarse: Callable[[Tensor], Tensor] | None,
    R: Callable[[Tensor], Tensor],
    Pi: Callable[[Tensor], Tensor] | None,
    u: Tensor,
    f: Tensor,
    u_act: Activation = None,
    f_act: Activation = None,
    workspace: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Move ``(u, f)`` to the coarse grid: ``u' = σ(Π u)``, ``f' = σ(R(f - A u)) + A' u'``.

    With ``Pi=None`` the coarse initial guess is zero, ``u'`` is returned as ``None`` and ``f'`` is the
    restricted residual (correction scheme).  ``workspace`` (optional, shaped like ``u``) receives the fine
    residual when autograd is off, so no fine-grid array is allocated for it.

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import Stencil
    >>> from mgcore.transfers import FullWeighting
    >>> A = Stencil.laplacian(1)
    >>> u_c, f_c = restriction_step(A, None, FullWeighting(1), None,
    ...                             torch.zeros(1, 1, 3, dtype=torch.float64),
    ...                             torch.ones(1, 1, 3, dtype=torch.float64))
    >>> u_c is None, f_c
    (True, tensor([[[1.]]], dtype=torch.float64))
    """
    # An Operator computes f - A u with one temporary (in place when autograd is off).
    if hasattr(A, "residual"):
        residual = A.residual(u, f, out=workspace) if workspace is not None else A.residual(u, f)
    else:
        residual = f - A(u)  # (N, C, *grid)
    f_coarse = R(residual)
    if f_act is not None:
        f_coarse = f_act(f_coarse)
    if Pi is None:
        return None, f_coarse
    u_coarse = Pi(u)
    if u_act is not None:
        u_coarse = u_act(u_coarse)
    if A_coarse is not None:
        f_coarse = f_coarse + A_coarse(u_coarse)
    return u_coarse, f_coarse


class Restriction(nn.Module):
    """The restriction block ``u' = σ_u(Π u)``, ``f' = σ_f(R(f - A u)) + A' u'`` as a module.

    Parameters
    ----------
    A, A_coarse : nn.Module
        The fine operator and the coarse operator ``A'`` (``None`` to skip the ``A' u'`` term).
    R, Pi : nn.Module
        Restriction of the residual and of the state (``Pi=None``: zero coarse guess).
    u_act, f_act : nn.Module, optional
        σ applied after ``Π`` and after ``R``.

    Examples
    --------
    >>> import torch
    >>> from mgcore.operators import ConvOperator
    >>> block = Restriction(ConvOperator(4, 4), ConvOperator(4, 4),
    ...                     R=ConvOperator(4, 4, stride=2), Pi=ConvOperator(4, 4, stride=2))
    >>> u_c, f_c = block(torch.zeros(1, 4, 8, 8), torch.randn(1, 4, 8, 8))
    >>> tuple(u_c.shape), tuple(f_c.shape)
    ((1, 4, 4, 4), (1, 4, 4, 4))
    """

    def __init__(
        self,
        A: nn.Module,
        A_coarse: nn.Module | None,
        R: nn.Module,
        Pi: nn.Module | None,
        u_act: nn.Module | None = None,
        f_act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.A = A
        self.A_coarse = A_coarse
        self.R = R
        self.Pi = Pi
        self.u_act = u_act
        self.f_act = f_act

    def forward(self, u: Tensor, f: Tensor) -> tuple[Tensor | None, Tensor]:
        return restriction_step(self.A, self.A_coarse, self.R, self.Pi, u, f, self.u_act, self.f_act)
