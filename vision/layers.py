"""Small layers the classifiers put into the engine's blocks: σ = norm + activation, the Hat activation.

MgNet's nonlinearity σ is "batch normalisation followed by an activation" (He & Xu 2019, eq. (3.5)); the
engine's :class:`mgcore.ResidualCorrection` and :class:`mgcore.Restriction` take it as a module, so these
builders only assemble ``nn.Sequential(norm, act)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["HAT_PEAKS", "Hat", "ZeroOperator", "make_act", "make_norm", "sigma"]

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


HAT_PEAKS = ("half_support", "one")


class Hat(nn.Module):
    """The compact Hat activation of Wang, Xu & Zhu (2022), a piecewise-linear bump on ``[0, s]``.

    Two scalings of the same bump are in use; they agree at ``s = 2``, where both are eq. (1) of Wang, Xu &
    Zhu, "CNNs with Compact Activation Function", ICCS 2022: ``Hat(x) = x`` on ``[0, 1]``, ``2 - x`` on
    ``[1, 2]``, ``0`` otherwise.

    * ``peak="half_support"`` (the default; this project's Hat since its first version): the paper's Hat
      with its slope 1 kept and its support stretched to ``[0, s]``: ``hat(x) = x`` on ``[0, s/2]``,
      ``s - x`` on ``[s/2, s]``, ``0`` elsewhere, peak ``s/2``.  Near ``0`` it is ReLU, so supports such as
      ``[5, 10, 15, 20]`` ("Hat-[5,10,15,20]") act like ReLU on the range BatchNorm produces and cut off
      only large values.
    * ``peak="one"``: the piecewise-linear finite-element basis function of the mesh ``{0, s/2, s}``, the
      form Xu's lectures write, ``φ(x) = (2/s) hat(x)`` with peak 1 at ``x = s/2`` (the paper's Hat
      composed with ``x -> 2x/s``).

    The forward pass is fused into three elementwise operations, ``clamp(min(x, s - x), min=0)`` (times
    ``2/s`` for ``peak="one"``), instead of the three ReLUs and two additions of
    ``relu(x) - 2 relu(x - s/2) + relu(x - s)``; both give the same values and the same derivatives in ``x``
    and ``s`` away from the kinks (checked against the piecewise definition in the tests).

    Parameters
    ----------
    support : float
        The width ``s > 0`` of the support.
    trainable : bool
        Make ``s`` a parameter (one per grid in :class:`~vision.models.MgNet`).
    peak : {"half_support", "one"}
        The scaling: peak ``s/2`` with slope 1 (default) or peak 1.

    Examples
    --------
    >>> import torch
    >>> Hat(2.0)(torch.tensor([-1.0, 0.5, 1.0, 1.5, 3.0]))
    tensor([0.0000, 0.5000, 1.0000, 0.5000, 0.0000])
    >>> Hat(4.0, peak="one")(torch.tensor([-1.0, 1.0, 2.0, 3.0, 5.0]))
    tensor([0.0000, 0.5000, 1.0000, 0.5000, 0.0000])
    """

    def __init__(self, support: float = 2.0, trainable: bool = False, peak: str = "half_support") -> None:
        super().__init__()
        if not support > 0:  # also refuses NaN
            raise ValueError(f"support: expected a positive number; got {support}")
        if peak not in HAT_PEAKS:
            raise ValueError(f"peak: expected 'half_support' or 'one'; got {peak!r}")
        self.peak = peak
        value = torch.tensor(float(support))
        if trainable:
            self.support = nn.Parameter(value)
        else:
            self.register_buffer("support", value)

    def forward(self, x: Tensor) -> Tensor:
        s = self.support.to(x.dtype)
        out = torch.clamp(torch.minimum(x, s - x), min=0.0)
        return out * (2.0 / s) if self.peak == "one" else out

    def extra_repr(self) -> str:
        kind = "trainable" if isinstance(self.support, nn.Parameter) else "fixed"
        return f"support={float(self.support):g}, {kind}, peak={self.peak}"


class ZeroOperator(nn.Module):
    """The zero operator ``A = 0``: with it the engine's residual ``f - A u`` is ``f`` itself.

    The (pre-act) ResNet step ``r <- r - A σ(B σ(r))`` is a residual correction whose state is the
    residual ``r`` (He & Xu 2019, Theorem 3.1), so the ResNet family runs through
    :class:`mgcore.ResidualCorrection` with this operator in the ``A`` slot and ``u = f = r``.

    Examples
    --------
    >>> import torch
    >>> ZeroOperator()(torch.ones(2, 3)).shape
    torch.Size([])
    """

    def forward(self, u: Tensor) -> Tensor:
        # A 0-d zero broadcasts in ``f - A u`` and costs no allocation of a grid tensor.
        return u.new_zeros(())


def make_norm(kind: str) -> NormLayer:
    """A builder ``channels -> nn.Module`` for ``"batch"``, ``"group"`` (32 groups or fewer) or ``"none"``.

    Examples
    --------
    >>> make_norm("batch")(8)
    BatchNorm2d(8, eps=1e-05, ...)
    """
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda c: nn.GroupNorm(min(32, c), c)
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"norm: expected 'batch', 'group' or 'none'; got {kind!r}")


def make_act(kind: str, support: float = 2.0, trainable: bool = False, peak: str = "half_support") -> ActLayer:
    """A builder ``() -> nn.Module`` for ``"relu"``, ``"hat"`` (see :class:`Hat`) or ``"identity"``.

    Examples
    --------
    >>> make_act("relu")()
    ReLU(inplace=True)
    """
    if kind == "relu":
        # In place is safe: σ always follows a norm or a conv whose output nothing else reads.
        return lambda: nn.ReLU(inplace=True)
    if kind == "hat":
        return lambda: Hat(support, trainable, peak)
    if kind == "identity":
        return nn.Identity
    raise ValueError(f"activation: expected 'relu', 'hat' or 'identity'; got {kind!r}")


def sigma(channels: int, norm_layer: NormLayer, act: nn.Module) -> nn.Sequential:
    """σ = ``norm_layer(channels)`` then ``act`` (an activation module, possibly shared on a grid).

    Examples
    --------
    >>> sigma(4, nn.BatchNorm2d, nn.ReLU())
    Sequential(
      (0): BatchNorm2d(4, eps=1e-05, ...)
      (1): ReLU()
    )
    """
    return nn.Sequential(norm_layer(channels), act)
