"""The registered models: the paper's MgNets, ResNet/pre-act ResNet in the engine's blocks, a plain baseline.

Names follow the paper: ``mgnet_cifar`` is MgNet[2,2,2,2]-256-B^ℓ (8.28M parameters with 10 classes, as the
original ``mgnet.py``); ``_wise_b`` is B^{ℓ,i}.  ResNet variants carry the lecture's table of operator
sharing in their names: ``resnet18_al_bli`` shares A (the second convolution) per stage, and so on; plain
``resnet18`` is A^{ℓ,i}-B^{ℓ,i}, the standard network.
"""

from __future__ import annotations

from torch import nn

from vision.baselines import PlainResNet18
from vision.models import MgNet, MgNetConfig, ResNet, ResNetConfig
from vision.registry import register_model

__all__: list[str] = []


def _mgnet(defaults: dict, overrides: dict) -> MgNet:
    return MgNet(MgNetConfig(**{**defaults, **overrides}))


@register_model
def mgnet_cifar(**kw) -> MgNet:
    """MgNet[2,2,2,2]-256-B^ℓ, the paper's CIFAR model."""
    return _mgnet(dict(num_iterations=(2, 2, 2, 2), channels_u=256), kw)


@register_model
def mgnet_cifar_wise_b(**kw) -> MgNet:
    """MgNet[2,2,2,2]-256-B^{ℓ,i} (the original code's ``--wise-B``)."""
    return _mgnet(dict(num_iterations=(2, 2, 2, 2), channels_u=256, share_B=False), kw)


@register_model
def mgnet_cifar_512(**kw) -> MgNet:
    """MgNet[2,2,2,2]-512-B^ℓ."""
    return _mgnet(dict(num_iterations=(2, 2, 2, 2), channels_u=512), kw)


@register_model
def mgnet_cifar_1024(**kw) -> MgNet:
    """MgNet[2,2,2,2]-1024-B^ℓ."""
    return _mgnet(dict(num_iterations=(2, 2, 2, 2), channels_u=1024), kw)


@register_model(input_size=(3, 224, 224))
def mgnet_imagenet(**kw) -> MgNet:
    """MgNet[3,4,6,3]-[128,256,512,1024]-B^{ℓ,i} with the ImageNet stem, 1000 classes."""
    return _mgnet(
        dict(
            num_iterations=(3, 4, 6, 3),
            channels_u=(128, 256, 512, 1024),
            share_B=False,
            stem="imagenet",
            num_classes=1000,
        ),
        kw,
    )


@register_model(input_size=(1, 28, 28))
def mgnet_mnist(**kw) -> MgNet:
    """A small MgNet[1,2,2]-[8,24,48]-B^ℓ for MNIST-sized grey images (grids 28 -> 14 -> 7).

    Few channels on the finest grid keep it cheap on a CPU; A and B shared per grid make the extra
    smoothing steps nearly free in parameters (79k).  99.57% test accuracy after 5 epochs, 13 minutes on one
    core (``benchmarks/results/vision_mnist_2026-11-22.md``)."""
    return _mgnet(dict(num_iterations=(1, 2, 2), channels_u=(8, 24, 48), in_channels=1), kw)


@register_model(input_size=(1, 28, 28))
def mgnet_mnist_tiny(**kw) -> MgNet:
    """MgNet[1,1,1]-[8,16,32]-B^ℓ: reaches 98% on MNIST in one epoch, about 1.5 min on one CPU core."""
    return _mgnet(dict(num_iterations=(1, 1, 1), channels_u=(8, 16, 32), in_channels=1), kw)


_RESNET_DEPTHS = {"18": (2, 2, 2, 2), "34": (3, 4, 6, 3)}
# The lecture's table: A^ℓ or A^{ℓ,i} × B^ℓ or B^{ℓ,i}; the bare name is the standard A^{ℓ,i}-B^{ℓ,i}.
_SHARING = {"": (False, False), "_al_bli": (True, False), "_ali_bl": (False, True), "_al_bl": (True, True)}


def _register_resnets() -> None:
    for depth, layers in _RESNET_DEPTHS.items():
        for preact in (False, True):
            for suffix, (share_A, share_B) in _SHARING.items():
                name = f"{'preact_' if preact else ''}resnet{depth}{suffix}"
                defaults = dict(layers=layers, preact=preact, share_A=share_A, share_B=share_B)

                def builder(_defaults=defaults, **kw) -> ResNet:
                    return ResNet(ResNetConfig(**{**_defaults, **kw}))

                a = "A^ℓ" if share_A else "A^{ℓ,i}"
                b = "B^ℓ" if share_B else "B^{ℓ,i}"
                builder.__name__ = name
                builder.__doc__ = f"{'Pre-act ' if preact else ''}ResNet{depth} ({a}, {b}) in the engine's blocks."
                register_model(builder)


_register_resnets()


@register_model
def resnet18_plain(**kw) -> nn.Module:
    """The plain hand-written ResNet18 with the CIFAR stem: the paper's baseline (11.17M parameters)."""
    return PlainResNet18(**kw)
