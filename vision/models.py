"""MgNet and the ResNet family, all built from the engine's two blocks.

MgNet (He & Xu 2019, Algorithm 3) keeps a data tensor ``f`` and a feature tensor ``u`` per grid ``ℓ``:

* smoothing, ``u <- u + σ∘B^{ℓ,i} * σ(f - A^ℓ * u)``, is :class:`mgcore.ResidualCorrection`;
* restriction, ``u' = σ∘Π * u``, ``f' = σ∘R * (f - A^ℓ * u) + A^{ℓ+1} * u'``, is
  :class:`mgcore.Restriction`;

with trained convolutions (:class:`mgcore.ConvOperator`) for A, B, R, Π and σ = norm + activation.  The
multigrid V-cycle of the PDE solver calls the very same blocks with stencils and σ = identity.

ResNet and pre-act ResNet are residual corrections whose state is the residual ``r = f - A u``
(Theorem 3.1 of the paper: the MgNet step gives ``r <- r - A * σ∘B * σ(r)``); they run through the same
blocks with :class:`~vision.layers.ZeroOperator` in the residual slot, so that the lecture's table of
``A^ℓ``/``A^{ℓ,i}`` × ``B^ℓ``/``B^{ℓ,i}`` variants is one flag per operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mgcore import ConvOperator, ResidualCorrection, Restriction
from vision.layers import ZeroOperator, make_act, make_norm, sigma

__all__ = ["MgNet", "MgNetConfig", "ResNet", "ResNetConfig", "parse_activation", "zeros_in_format_of"]


def _per_grid(value: int | float | Sequence, grids: int, name: str, kind: type = int) -> list:
    """Expand one number to ``grids`` of them, or check a list has one entry per grid."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [kind(value)] * grids
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    numbers = values is not None and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numbers or len(values) != grids:
        raise ValueError(f"{name}: expected one number or {grids} of them (one per grid); got {value!r}")
    return [kind(v) for v in values]


def zeros_in_format_of(f: Tensor, channels: int) -> Tensor:
    """Zeros shaped ``(N, channels, H, W)`` like ``f`` (dtype, device) and in ``f``'s memory format.

    Examples
    --------
    >>> f = torch.ones(2, 3, 4, 4).to(memory_format=torch.channels_last)
    >>> zeros_in_format_of(f, 5).is_contiguous(memory_format=torch.channels_last)
    True
    >>> zeros_in_format_of(torch.ones(2, 3, 4, 4), 5).is_contiguous()
    True
    """
    shape = (f.shape[0], channels, *f.shape[2:])
    if f.dim() == 4 and not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(shape, dtype=f.dtype, device=f.device, memory_format=torch.channels_last).zero_()
    return f.new_zeros(shape)


def parse_activation(name: str) -> tuple[str, tuple[float, ...] | None]:
    """Split the lecture's notation ``"hat-[5,10,15,20]"`` into ``("hat", (5.0, 10.0, 15.0, 20.0))``.

    Other names come back unchanged with ``None`` (no supports given).

    Examples
    --------
    >>> parse_activation("Hat-[5,10,15,20]")
    ('hat', (5.0, 10.0, 15.0, 20.0))
    >>> parse_activation("relu")
    ('relu', None)
    """
    if not isinstance(name, str):
        raise ValueError(f"activation: expected a string such as 'relu' or 'hat-[5,10,15,20]'; got {name!r}")
    lowered = name.strip().lower()
    if not lowered.startswith("hat-"):
        return lowered, None
    body = lowered[4:].strip()
    try:
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError
        supports = tuple(float(v) for v in body[1:-1].split(","))
    except ValueError:
        raise ValueError(f"activation: expected 'hat-[s_1,...,s_J]' with numbers s_ℓ; got {name!r}") from None
    return "hat", supports


@dataclass
class MgNetConfig:
    """Hyper-parameters of ``MgNet[ν_1..ν_J]-[c_1..c_J]-B^ℓ`` (the paper's notation).

    Examples
    --------
    >>> MgNetConfig(num_iterations=(2, 2), channels_u=16).grids
    2
    """

    # ν_ℓ: smoothing steps on each grid (0 allowed: the grid only restricts, as the original code permits);
    # the length is the number of grids J.
    num_iterations: Sequence[int] = (2, 2, 2, 2)
    # c_{u,ℓ}: channels of u per grid (one number for all grids, or one per grid).
    channels_u: int | Sequence[int] = 256
    # c_{f,ℓ}: channels of f per grid; None means equal to channels_u (the paper's main case).
    channels_f: int | Sequence[int] | None = None
    # A^ℓ (True, one A per grid, as in the paper) or A^{ℓ,i} (False, one per smoothing step).
    share_A: bool = True  # noqa: N815 (the paper's operator name)
    # B^ℓ (True, one B per grid) or B^{ℓ,i} (False, one per step; the original code's --wise-B).
    share_B: bool = True  # noqa: N815
    # Odd kernel size of A, B, R and Π.
    kernel_size: int = 3
    # Activation in σ: "relu", "hat" (Wang, Xu & Zhu 2022), or the lecture's notation "hat-[5,10,15,20]"
    # (Hat with those supports per grid: sets hat_support in one flag).
    activation: str = "relu"
    # Support s of the Hat activation per grid (one number or one per grid).
    hat_support: float | Sequence[float] = 2.0
    # Whether the Hat supports are trained (one parameter per grid).
    hat_trainable: bool = False
    # Scaling of the Hat: "half_support" (slope 1, peak s/2) or "one" (peak 1); see vision.layers.Hat.
    hat_peak: str = "half_support"
    # Normalisation in σ: "batch" (the paper), "group" or "none".
    norm: str = "batch"
    # Stem producing f^1 from the image: "cifar" (3x3 conv) or "imagenet" (7x7/2 conv + 3x3/2 max pool).
    stem: str = "cifar"
    # Image channels (1 for MNIST, 3 for colour).
    in_channels: int = 3
    # Number of classes of the linear head.
    num_classes: int = 10
    # Dropout before the head (0 disables it).
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        self.num_iterations = tuple(int(v) for v in self.num_iterations)
        if not self.num_iterations or min(self.num_iterations) < 0:
            raise ValueError(
                f"num_iterations: expected a non-empty list of non-negative ints; got {self.num_iterations}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected a positive odd integer; got {self.kernel_size}")
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem: expected 'cifar' or 'imagenet'; got {self.stem!r}")
        if self.num_classes < 1 or self.in_channels < 1:
            raise ValueError("num_classes, in_channels: expected positive integers")
        make_norm(self.norm)
        self.activation, supports = parse_activation(self.activation)
        if supports is not None:
            self.hat_support = supports
        make_act(self.activation, peak=self.hat_peak)()
        self.channels_u = tuple(_per_grid(self.channels_u, self.grids, "channels_u"))
        cf = self.channels_u if self.channels_f is None else self.channels_f
        self.channels_f = tuple(_per_grid(cf, self.grids, "channels_f"))
        self.hat_support = tuple(_per_grid(self.hat_support, self.grids, "hat_support", float))
        if not all(v > 0 for v in self.hat_support):  # also refuses NaN
            raise ValueError(f"hat_support: expected positive numbers; got {list(self.hat_support)}")

    @property
    def grids(self) -> int:
        """The number of grids ``J``."""
        return len(self.num_iterations)

    def to_dict(self) -> dict:
        """Plain-Python form (lists, numbers, strings) for checkpoints and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _stem(kind: str, in_channels: int, channels: int, norm_layer, act: nn.Module) -> nn.Sequential:
    """The data stem ``f^1 = σ(conv(image))`` (plus a max pool for the ImageNet stem)."""
    if kind == "cifar":
        return nn.Sequential(ConvOperator(in_channels, channels, 3), norm_layer(channels), act)
    return nn.Sequential(
        ConvOperator(in_channels, channels, 7, stride=2),
        norm_layer(channels),
        act,
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class MgGrid(nn.Module):
    """One grid ℓ of MgNet: the restriction from grid ℓ-1 (``None`` on the finest grid) and ν_ℓ smoothings."""

    def __init__(self, restrict: Restriction | None, smooth: Sequence[ResidualCorrection]) -> None:
        super().__init__()
        self.restrict = restrict
        self.smooth = nn.ModuleList(smooth)

    def forward(self, u: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        if self.restrict is not None:
            u, f = self.restrict(u, f)  # (N, C_ℓ, H/2, W/2) each
        for step in self.smooth:
            u = step(u, f)  # (N, C_u, H, W)
        return u, f


class MgNet(nn.Module):
    """The MgNet classifier (He & Xu 2019, Algorithm 3) on the engine's blocks.

    Parameters
    ----------
    config : MgNetConfig
        Architecture; keyword arguments override or replace it (``MgNet(num_classes=100)``).

    Examples
    --------
    >>> import torch
    >>> model = MgNet(num_iterations=(1, 1), channels_u=8, in_channels=1).eval()
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: MgNetConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = MgNetConfig(**overrides)
        elif overrides:
            config = MgNetConfig(**{**asdict(config), **overrides})
        self.config = config
        self.num_classes = config.num_classes
        norm_layer = make_norm(config.norm)
        cu, cf, k = config.channels_u, config.channels_f, config.kernel_size

        def act(grid: int) -> nn.Module:
            return make_act(config.activation, config.hat_support[grid], config.hat_trainable, config.hat_peak)()

        # One activation module per grid: the Hat support is then "one per grid", shared by its σ's.
        acts = [act(g) for g in range(config.grids)]
        self.stem = _stem(config.stem, config.in_channels, cf[0], norm_layer, acts[0])

        grids: list[MgGrid] = []
        A_prev: nn.Module | None = None
        for g, nu in enumerate(config.num_iterations):
            # A^{ℓ}: cu -> cf (it maps a feature to data); B^{ℓ}: cf -> cu (data to a feature correction).
            # A grid without smoothing (ν_ℓ = 0) still has its A^ℓ: the restrictions into and out of it use it.
            A_shared = ConvOperator(cu[g], cf[g], k) if config.share_A or nu == 0 else None
            B_shared = ConvOperator(cf[g], cu[g], k) if config.share_B and nu > 0 else None
            A_steps = [A_shared if A_shared is not None else ConvOperator(cu[g], cf[g], k) for _ in range(nu)]
            B_steps = [B_shared if B_shared is not None else ConvOperator(cf[g], cu[g], k) for _ in range(nu)]
            A_first = A_steps[0] if A_steps else A_shared
            A_last = A_steps[-1] if A_steps else A_shared
            restrict = None
            if g > 0:
                # u' = σ∘Π*u and f' = σ∘R*(f - A^{ℓ-1}u) + A^{ℓ}u' (eq. (3.7)); A^{ℓ} is the coarse grid's
                # first smoothing operator, as in the original code where it is shared with the smoothing.
                restrict = Restriction(
                    A=A_prev,
                    A_coarse=A_first,
                    R=ConvOperator(cf[g - 1], cf[g], k, stride=2),
                    Pi=ConvOperator(cu[g - 1], cu[g], k, stride=2),
                    u_act=sigma(cu[g], norm_layer, acts[g]),
                    f_act=sigma(cf[g], norm_layer, acts[g]),
                )
            smooth = [
                ResidualCorrection(
                    A_steps[i],
                    B_steps[i],
                    pre_act=sigma(cf[g], norm_layer, acts[g]),
                    post_act=sigma(cu[g], norm_layer, acts[g]),
                )
                for i in range(nu)
            ]
            grids.append(MgGrid(restrict, smooth))
            A_prev = A_last
        self.grids = nn.ModuleList(grids)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(config.drop_rate) if config.drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(cu[-1], config.num_classes)
        self.num_features = cu[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        """The last grid's feature ``u^{J}``, shaped ``(N, c_{u,J}, H_J, W_J)``."""
        f = self.stem(x)  # (N, c_f, H, W)
        # u^{1,0} = 0: the initial guess of the multigrid iteration, in f's memory format so that no
        # update u + σ∘B*σ(f - A*u) mixes NCHW with channels_last (a strided slow path on GPUs).
        u = zeros_in_format_of(f, self.config.channels_u[0])
        for grid in self.grids:
            u, f = grid(u, f)
        return u

    def forward_head(self, u: Tensor, pre_logits: bool = False) -> Tensor:
        """Average pool and the linear classifier (``pre_logits``: stop before it)."""
        u = self.drop(torch.flatten(self.pool(u), 1))  # (N, C)
        return u if pre_logits else self.fc(u)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------- ResNet family


@dataclass
class ResNetConfig:
    """ResNet / pre-act ResNet with the ``A^ℓ``/``A^{ℓ,i}`` × ``B^ℓ``/``B^{ℓ,i}`` sharing options.

    In a basic block ``B`` is the first convolution and ``A`` the second (``r <- r - A σ B σ(r)``).

    Examples
    --------
    >>> ResNetConfig(layers=(2, 2), channels=(8, 16)).preact
    False
    """

    # Blocks per stage (ResNet18: 2,2,2,2; ResNet34: 3,4,6,3).
    layers: Sequence[int] = (2, 2, 2, 2)
    # Channels per stage.
    channels: Sequence[int] = (64, 128, 256, 512)
    # Pre-activation blocks (He et al. 2016b) instead of the original post-activation ones.
    preact: bool = False
    # A^ℓ: the second convolution shared by all blocks of a stage (False: A^{ℓ,i}, standard ResNet).
    share_A: bool = False  # noqa: N815 (the paper's operator name)
    # B^ℓ: the first convolution shared by the stride-1 blocks of a stage (False: B^{ℓ,i}).
    share_B: bool = False  # noqa: N815
    # Activation: "relu" or "hat".
    activation: str = "relu"
    # Normalisation: "batch", "group" or "none".
    norm: str = "batch"
    # "cifar" (3x3 conv) or "imagenet" (7x7/2 conv + max pool) stem.
    stem: str = "cifar"
    # Image channels.
    in_channels: int = 3
    # Number of classes.
    num_classes: int = 10
    # Dropout before the head.
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        self.channels = tuple(int(v) for v in self.channels)
        if not self.layers or min(self.layers) < 1 or len(self.channels) != len(self.layers):
            raise ValueError(
                f"layers, channels: expected equal-length lists of positive ints; got {self.layers}, {self.channels}"
            )
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem: expected 'cifar' or 'imagenet'; got {self.stem!r}")
        make_norm(self.norm)
        make_act(self.activation)

    def to_dict(self) -> dict:
        """Plain-Python form for checkpoints and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class ResidualStep(nn.Module):
    """A stride-1 basic block as one engine residual correction on the state ``r`` (``u = f = r``).

    Pre-act: ``r <- r + A σ(B σ(r))``; post-act: ``r <- act(r + norm(A σ(B r)))``.
    """

    def __init__(self, step: ResidualCorrection, out_act: nn.Module | None) -> None:
        super().__init__()
        self.step = step
        self.out_act = out_act

    def forward(self, r: Tensor) -> Tensor:
        r = self.step(r, r)
        return r if self.out_act is None else self.out_act(r)


class RestrictionStep(nn.Module):
    """A stride-2 basic block as one engine restriction: ``Π`` is the 1x1 shortcut, ``R`` the first conv.

    With ``A = 0`` and ``A' = I`` the restriction returns ``f' = σ_f(R r) + σ_u(Π r)``: the block's
    two branches added, as in (pre-act) ResNet's projection shortcut.
    """

    def __init__(self, step: Restriction, in_act: nn.Module | None, out_act: nn.Module | None) -> None:
        super().__init__()
        self.in_act = in_act
        self.step = step
        self.out_act = out_act

    def forward(self, r: Tensor) -> Tensor:
        if self.in_act is not None:
            r = self.in_act(r)  # pre-act: both branches see σ(r)
        _, r = self.step(r, r)
        return r if self.out_act is None else self.out_act(r)


class ResNet(nn.Module):
    """ResNet and pre-act ResNet (CIFAR or ImageNet stem) expressed in the engine's blocks.

    Examples
    --------
    >>> import torch
    >>> model = ResNet(layers=(1, 1), channels=(8, 16), preact=True).eval()
    >>> model(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: ResNetConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = ResNetConfig(**overrides)
        elif overrides:
            config = ResNetConfig(**{**asdict(config), **overrides})
        self.config = config
        self.num_classes = config.num_classes
        norm_layer = make_norm(config.norm)
        act_layer = make_act(config.activation)
        c0 = config.channels[0]
        if config.preact:
            # Pre-act ResNet's stem is a bare conv: the first block applies σ itself.
            self.stem = nn.Sequential(ConvOperator(config.in_channels, c0, 3))
            if config.stem == "imagenet":
                self.stem = nn.Sequential(
                    ConvOperator(config.in_channels, c0, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
                )
        else:
            self.stem = _stem(config.stem, config.in_channels, c0, norm_layer, act_layer())
        blocks: list[nn.Module] = []
        c_in = c0
        for stage, (n, c) in enumerate(zip(config.layers, config.channels)):
            A_shared = ConvOperator(c, c, 3) if config.share_A else None
            B_shared = ConvOperator(c, c, 3) if config.share_B else None
            for i in range(n):
                A = A_shared if A_shared is not None else ConvOperator(c, c, 3)
                if config.preact:
                    post = nn.Sequential(norm_layer(c), act_layer(), A)  # σ then A
                else:
                    post = nn.Sequential(norm_layer(c), act_layer(), A, norm_layer(c))
                transition = i == 0 and (stage > 0 or c_in != c)
                if transition:
                    stride = 2 if stage > 0 else 1
                    R = ConvOperator(c_in, c, 3, stride=stride)
                    Pi = ConvOperator(c_in, c, 1, stride=stride)
                    step = Restriction(
                        A=ZeroOperator(),
                        A_coarse=nn.Identity(),
                        R=R,
                        Pi=Pi,
                        u_act=None if config.preact else norm_layer(c),
                        f_act=post,
                    )
                    in_act = sigma(c_in, norm_layer, act_layer()) if config.preact else None
                    blocks.append(RestrictionStep(step, in_act, None if config.preact else act_layer()))
                else:
                    B = B_shared if B_shared is not None else ConvOperator(c, c, 3)
                    pre = sigma(c, norm_layer, act_layer()) if config.preact else None
                    step = ResidualCorrection(ZeroOperator(), B, pre_act=pre, post_act=post)
                    blocks.append(ResidualStep(step, None if config.preact else act_layer()))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        # Pre-act ResNet ends with a final σ before pooling.
        self.final_act = sigma(c_in, norm_layer, act_layer()) if config.preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(config.drop_rate) if config.drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(c_in, config.num_classes)
        self.num_features = c_in

    def forward_features(self, x: Tensor) -> Tensor:
        """Features before pooling, ``(N, C, H', W')``."""
        return self.final_act(self.blocks(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Average pool and the linear classifier."""
        x = self.drop(torch.flatten(self.pool(x), 1))  # (N, C)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
