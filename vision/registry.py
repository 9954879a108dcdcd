"""A model registry in the timm manner: ``register_model``, ``create_model``, ``list_models``.

Each builder takes keyword overrides of its configuration (``num_classes``, ``in_channels``, ...) and
declares the input size its model is meant for (used by ``mgnet models`` to count multiply-adds).

The registry imports no model module: the built-in models register themselves when ``vision.zoo`` is
imported, which the ``vision`` package does on import (as ``timm.models`` imports its model files).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ModelInfo",
    "UnknownModelError",
    "count_macs",
    "count_parameters",
    "create_model",
    "default_input_size",
    "list_models",
    "model_info",
    "register_model",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZE: dict[str, tuple[int, int, int]] = {}


class UnknownModelError(KeyError):
    """Raised by :func:`create_model` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_size: tuple[int, int, int] = (3, 32, 32)):
    """Register a builder under its function name (usable bare or as ``@register_model(input_size=...)``).

    Examples
    --------
    >>> @register_model(input_size=(1, 8, 8))
    ... def tiny_doc_model(**kw):
    ...     return nn.Linear(64, 10)
    >>> "tiny_doc_model" in list_models("tiny_doc*")
    True
    >>> _ = _REGISTRY.pop("tiny_doc_model"), _INPUT_SIZE.pop("tiny_doc_model")
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        _REGISTRY[name] = f
        _INPUT_SIZE[name] = tuple(input_size)
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``.

    Examples
    --------
    >>> list_models("mgnet_cifar*")
    ['mgnet_cifar', 'mgnet_cifar_1024', 'mgnet_cifar_512', 'mgnet_cifar_wise_b']
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"model: unknown model name {name!r}{hint} (`mgnet models` lists the {len(_REGISTRY)} registered ones)"
        )
    return _REGISTRY[name]


def create_model(name: str, pretrained: bool = False, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its configuration.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    pretrained : bool
        Not supported (no weights are shipped); load a checkpoint instead
        (:func:`vision.convert.load_original_checkpoint` for the original code's weights).

    Examples
    --------
    >>> create_model("mgnet_cifar", num_classes=100).fc.out_features
    100
    >>> create_model("mgnet_cifr")
    Traceback (most recent call last):
    ...
    vision.registry.UnknownModelError: model: unknown model name 'mgnet_cifr'; did you mean 'mgnet_cifar', ...
    """
    builder = _lookup(name)
    if pretrained:
        raise ValueError("pretrained: no weights are shipped; train one or load a checkpoint")
    for key in ("num_classes", "in_channels"):
        value = overrides.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{key}: expected a positive integer; got {value!r}")
    try:
        return builder(**overrides)
    except TypeError as err:  # an unknown override reaches the dataclass
        raise TypeError(f"create_model({name!r}): bad override in {sorted(overrides)}: {err}") from None


def default_input_size(name: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` a registered model is meant for (CIFAR 3x32x32, MNIST 1x28x28, ImageNet 3x224x224)."""
    _lookup(name)
    return _INPUT_SIZE[name]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once (as ``model.parameters()`` yields them)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass of a single image (convolutions and linear layers).

    A shared operator applied several times is counted each time.  Runs on the ``meta`` device, so even
    ImageNet-sized models cost no arithmetic.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kernel = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]  # C_in / groups * kh * kw
        total += out.numel() // out.shape[0] * kernel

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros((1, *input_size), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


@dataclass
class ModelInfo:
    """One row of ``mgnet models``."""

    name: str  # registered name
    params: int  # trainable parameters (shared ones once)
    macs: int  # multiply-adds per image at input_size
    input_size: tuple[int, int, int]  # (C, H, W)


def model_info(name: str, **overrides) -> ModelInfo:
    """Parameters and multiply-adds of a registered model, built on the ``meta`` device (no memory used).

    Examples
    --------
    >>> model_info("mgnet_cifar").params
    8278794
    """
    size = default_input_size(name)
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return ModelInfo(name, count_parameters(model), count_macs(model, size), size)
