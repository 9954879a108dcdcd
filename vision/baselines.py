"""The paper's baseline, a plain ResNet18 with the CIFAR stem, written directly in PyTorch.

It is the comparison point of He & Xu's CIFAR table, deliberately *not* built from the engine's blocks: the
same architecture in blocks is ``resnet18`` (identical parameter count).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PlainBasicBlock", "PlainResNet18"]


class PlainBasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm_layer=nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm_layer(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PlainResNet18(nn.Module):
    """ResNet18 for 32x32 images (3x3 stem, no max pool).

    Examples
    --------
    >>> sum(p.numel() for p in PlainResNet18().parameters())
    11173962
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        c_in = 64
        for stage, c in enumerate((64, 128, 256, 512)):
            for i in range(2):
                layers.append(PlainBasicBlock(c_in, c, 2 if (i == 0 and stage > 0) else 1))
                c_in = c
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(512, num_classes)
        self.num_features = 512

    def forward_features(self, x: Tensor) -> Tensor:
        """Features before pooling, ``(N, 512, H/8, W/8)``."""
        return self.layers(self.relu(self.bn1(self.conv1(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Average pool and the linear classifier."""
        x = self.drop(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
