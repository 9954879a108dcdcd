"""Load weights of the original implementation (XuTeam/MgNet_Code, ``mgnet.py``) into :class:`MgNet`.

The original stores the stem as ``conv1``/``bn1``, grid ℓ as ``layer{ℓ}`` (a Sequential whose entry 0 is the
restriction ``MgRestriction`` on grids ℓ > 0, the others the smoothing steps ``MgIte``) and the head as
``fc``.  ``MgIte`` holds ``A``, ``B`` and its σ norms ``bn1`` (before B) and ``bn2`` (after B);
``MgRestriction`` holds ``A_old`` (fine A), ``A_conv`` (coarse A), ``Pi_conv``, ``R_conv``, ``bn1`` (after Π)
and ``bn2`` (after R).  Shared operators appear under every name that uses them, in both models.

What the original code can produce, and how each choice is read back from a state dict alone:

* ``--num-ite ν_1,...,ν_J`` (any J, any ν_ℓ >= 0): the grids are the ``layer{ℓ}`` indices and ν_ℓ the number
  of ``MgIte`` entries.  A grid with ν_ℓ = 0 holds only its restriction; a first grid with ν_1 = 0 stores no
  key at all and shows up as the gap before ``layer1``.
* ``--wise-B`` (B^{ℓ,i}) or not (B^ℓ): the original registers the *same* module under every step of a grid,
  and ``state_dict()`` (and ``torch.save``, which keeps storage sharing) then hold one tensor under several
  keys.  A grid with two or more steps therefore tells: one storage = B^ℓ, distinct tensors = B^{ℓ,i}.  The
  flag is global in the original, so one such grid decides for all; grids that disagree are refused.  With
  ν_ℓ <= 1 on every grid, B^ℓ and B^{ℓ,i} are the same network (one B per grid either way).  Distinct
  tensors with equal values (sharing lost, e.g. by copying the state dict) are ambiguous: refused with the
  key named unless the caller passes ``share_B``.
* ``--num-channel-u`` / ``--num-channel-f``: read from the shapes of ``B`` (``(c_u, c_f, 3, 3)``); the
  original runs only with c_u = c_f (its initial ``u`` has the shape of ``f``, its ``R`` maps c_f to c_u
  channels and its norm after ``R`` has c_f), so other values are refused naming the key.
* ``--dataset mnist`` (1 input channel) or CIFAR (3): ``conv1.weight``'s second dimension.
* the number of classes: ``fc.weight``'s first dimension.

After loading, every tensor of the checkpoint is compared with the model's tensor under the same name, so
a checkpoint whose sharing does not fit the inferred configuration (which a plain ``load_state_dict``
would accept, the last of several shared keys silently winning) is refused, not loaded wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vision.models import MgNet, MgNetConfig

__all__ = [
    "ORIGINAL_NORMALISATION",
    "OriginalCheckpointError",
    "config_from_original",
    "convert_original_state_dict",
    "describe_config",
    "evaluate_original_checkpoint",
    "guess_original_dataset",
    "is_original_checkpoint",
    "load_original_checkpoint",
    "model_from_original_state",
    "original_state_dict",
    "predict_original",
]

# The input normalisation of the original train_mgnet.py (torchvision ToTensor then Normalize(mean, std));
# a model trained there expects exactly these inputs.
ORIGINAL_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_ITE = {"A.weight": "A.conv.weight", "B.weight": "B.conv.weight", "bn1": "pre_act.0", "bn2": "post_act.0"}
_RES = {
    "A_old.weight": "A.conv.weight",
    "A_conv.weight": "A_coarse.conv.weight",
    "Pi_conv.weight": "Pi.conv.weight",
    "R_conv.weight": "R.conv.weight",
    "bn1": "u_act.0",
    "bn2": "f_act.0",
}
_KEY = re.compile(r"layer(\d+)\.(\d+)\.(.+)")


class OriginalCheckpointError(ValueError):
    """An original MgNet_Code checkpoint that cannot be converted faithfully (the message names the key)."""


def _strip_module(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # nn.DataParallel prefixes every key with "module."
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _rename(table: dict[str, str], rest: str, key: str) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(f"state_dict: unexpected key {key!r} in an original MgNet checkpoint")


def original_state_dict(blob: object) -> dict[str, Tensor] | None:
    """The model state dict of an original checkpoint (``{'model_state_dict': ...}`` as ``train_mgnet.py``
    saves it, or a bare state dict), or ``None`` when ``blob`` is not one.

    Examples
    --------
    >>> import torch
    >>> original_state_dict({"epoch": 3, "model_state_dict": {"conv1.weight": torch.zeros(1),
    ...                      "layer0.0.B.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}}) is not None
    True
    >>> original_state_dict({"format": 1, "model": {}}) is None
    True
    """
    if not isinstance(blob, Mapping):
        return None
    state = blob.get("model_state_dict", blob)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        return None
    names = _strip_module(state)
    if "conv1.weight" not in names or "fc.weight" not in names:
        return None
    if not any(_KEY.fullmatch(k) for k in names):
        return None
    if not all(isinstance(v, Tensor) for v in names.values()):
        return None
    return dict(state)


def convert_original_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original ``mgnet.py`` state dict to this package's :class:`MgNet` names.

    A ``module.`` prefix (``nn.DataParallel``) is dropped.

    Examples
    --------
    >>> import torch
    >>> sorted(convert_original_state_dict({"layer1.0.Pi_conv.weight": torch.zeros(1),
    ...                                     "layer1.2.bn1.running_mean": torch.zeros(1),
    ...                                     "conv1.weight": torch.zeros(1)}))
    ['grids.1.restrict.Pi.conv.weight', 'grids.1.smooth.1.pre_act.0.running_mean', 'stem.0.conv.weight']
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith("conv1."):
            new = "stem.0.conv." + name[len("conv1.") :]
        elif name.startswith("bn1."):
            new = "stem.1." + name[len("bn1.") :]
        elif name.startswith("fc."):
            new = name
        else:
            m = _KEY.fullmatch(name)
            if m is None:
                raise KeyError(f"state_dict: unexpected key {key!r} in an original MgNet checkpoint")
            grid, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if grid > 0 and index == 0:
                new = f"grids.{grid}.restrict.{_rename(_RES, rest, key)}"
            else:
                step = index - 1 if grid > 0 else index
                new = f"grids.{grid}.smooth.{step}.{_rename(_ITE, rest, key)}"
        out[new] = value
    return out


def _same_storage(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors are one tensor (the original's shared module saved under two keys)."""
    if a is b:
        return True
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


def _infer_share_B(state: Mapping[str, Tensor], iterations: Sequence[int]) -> bool:
    """B^ℓ (True) or B^{ℓ,i} (False) from the grids with two or more steps; see the module docstring."""
    verdicts: dict[str, str] = {}  # "shared" / "per-step" / "equal values" -> the first key that says so
    for grid, nu in enumerate(iterations):
        first = 1 if grid > 0 else 0  # entry 0 of a coarse grid is its restriction
        keys = [f"layer{grid}.{first + i}.B.weight" for i in range(nu)]
        for key in keys[1:]:
            a, b = state[keys[0]], state[key]
            if _same_storage(a, b):
                kind = "shared"
            elif a.shape != b.shape or not torch.equal(a, b):
                kind = "per-step"
            else:
                kind = "equal values"
            verdicts.setdefault(kind, f"{keys[0]!r} and {key!r}")
    if "shared" in verdicts and "per-step" in verdicts:
        raise OriginalCheckpointError(
            f"state_dict: B is one tensor on some grids ({verdicts['shared']}) and one per step on others "
            f"({verdicts['per-step']}); the original code shares B on all grids or on none (--wise-B)"
        )
    if "per-step" in verdicts:
        if "equal values" in verdicts:
            raise OriginalCheckpointError(
                f"state_dict: B differs per step ({verdicts['per-step']}) but {verdicts['equal values']} are "
                "equal copies; pass share_B=True or share_B=False explicitly"
            )
        return False
    if "shared" in verdicts:
        return True
    if "equal values" in verdicts:
        raise OriginalCheckpointError(
            f"state_dict: {verdicts['equal values']} are equal but separate tensors, so it cannot tell B^ℓ "
            "(shared, its sharing lost in a copy) from B^{ℓ,i} (--wise-B); pass share_B=True or share_B=False"
        )
    return True  # ν_ℓ <= 1 on every grid: one B per grid either way, the two networks are the same


def config_from_original(state: Mapping[str, Tensor], **overrides) -> MgNetConfig:
    """Infer every choice of an original ``mgnet.py`` model from its state dict (see the module docstring).

    Parameters
    ----------
    state : mapping
        The original model's state dict (``module.`` prefixes allowed).
    **overrides
        Fields of :class:`MgNetConfig` to set instead of inferring them (``share_B=False`` settles a
        state dict whose B sharing was lost in a copy).

    Raises
    ------
    OriginalCheckpointError
        When the state dict is not the original layout or a choice is ambiguous; the message names the key.

    Examples
    --------
    >>> import torch
    >>> ours = MgNet(num_iterations=(1, 2), channels_u=4)
    >>> from vision.convert import _to_original_names
    >>> cfg = config_from_original(_to_original_names(ours.state_dict()))
    >>> cfg.num_iterations, cfg.channels_u, cfg.share_B, cfg.num_classes, cfg.in_channels
    ((1, 2), (4, 4), True, 10, 3)
    """
    state = _strip_module(state)
    if "conv1.weight" not in state or "fc.weight" not in state:
        missing = "conv1.weight" if "conv1.weight" not in state else "fc.weight"
        raise OriginalCheckpointError(f"state_dict: not an original MgNet checkpoint (no {missing!r} key)")
    steps: dict[int, set[int]] = {}
    restrictions: set[int] = set()
    for key in state:
        m = _KEY.fullmatch(key)
        if m is None:
            if not key.startswith(("conv1.", "bn1.", "fc.")):
                raise OriginalCheckpointError(f"state_dict: unexpected key {key!r} in an original MgNet checkpoint")
            continue
        grid, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if grid > 0 and index == 0:
            restrictions.add(grid)
        elif rest == "B.weight":
            steps.setdefault(grid, set()).add(index)
    grids = max([*steps, *restrictions], default=-1) + 1
    if grids == 0:
        raise OriginalCheckpointError("state_dict: not an original MgNet checkpoint (no 'layer*' keys)")
    iterations = []
    for grid in range(grids):
        if grid > 0 and grid not in restrictions:
            raise OriginalCheckpointError(
                f"state_dict: grid {grid} has no restriction ('layer{grid}.0.Pi_conv.weight' missing)"
            )
        first = 1 if grid > 0 else 0
        found = sorted(steps.get(grid, ()))
        if found != list(range(first, first + len(found))):
            gap = next(i for i in range(first, first + len(found) + 1) if i not in found)
            raise OriginalCheckpointError(f"state_dict: smoothing step 'layer{grid}.{gap}.B.weight' missing")
        iterations.append(len(found))
    iterations = tuple(iterations)

    conv1, fc = state["conv1.weight"], state["fc.weight"]
    c_f, c_u = int(conv1.shape[0]), int(fc.shape[1])
    for grid, nu in enumerate(iterations):
        keys = [f"layer{grid}.{(1 if grid else 0) + i}.B.weight" for i in range(nu)]
        for key in keys:
            shape = tuple(state[key].shape)
            if shape[:2] != (c_u, c_f):
                raise OriginalCheckpointError(
                    f"state_dict: {key!r} has shape {shape}; expected ({c_u}, {c_f}, k, k) from fc.weight "
                    f"({c_u} channels of u) and conv1.weight ({c_f} channels of f)"
                )
    if c_u != c_f:
        raise OriginalCheckpointError(
            f"state_dict: channels of u (fc.weight: {c_u}) differ from channels of f (conv1.weight: {c_f}); the "
            "original mgnet.py runs only with --num-channel-u equal to --num-channel-f"
        )
    a_key = next((k for k in state if re.fullmatch(r"layer\d+\.\d+\.(A|A_conv)\.weight", k)), None)
    kernel = int(state[a_key].shape[-1]) if a_key is not None else 3
    fields: dict = dict(
        num_iterations=iterations,
        channels_u=c_u,
        channels_f=c_f,
        kernel_size=kernel,
        in_channels=int(conv1.shape[1]),
        num_classes=int(fc.shape[0]),
        share_A=True,  # the original has one A per grid, always
    )
    if "share_B" not in overrides:
        fields["share_B"] = _infer_share_B(state, iterations)
    fields.update(overrides)
    try:
        return MgNetConfig(**fields)
    except (TypeError, ValueError) as err:
        raise OriginalCheckpointError(f"state_dict: cannot build MgNet from it: {err}") from None


def model_from_original_state(state: Mapping[str, Tensor], **overrides) -> MgNet:
    """An :class:`MgNet` computing what the original model of ``state`` computes.

    Every tensor of ``state`` is checked against the loaded model afterwards: a shared operator stored with
    different values under two keys (a per-step checkpoint read as shared, or a forced ``share_B``) is
    refused with the key named instead of keeping whichever key loaded last.
    """
    config = config_from_original(state, **overrides)
    model = MgNet(config)
    try:
        converted = convert_original_state_dict(state)
    except KeyError as err:
        raise OriginalCheckpointError(str(err.args[0])) from None
    try:
        model.load_state_dict(converted)
    except RuntimeError as err:
        raise OriginalCheckpointError(
            f"state_dict: does not fit the inferred {describe_config(config)}: {err}"
        ) from None
    names = dict(zip(converted, state))
    loaded = model.state_dict()
    for new, value in converted.items():
        if not torch.equal(loaded[new].to(value.dtype), value):
            raise OriginalCheckpointError(
                f"state_dict: {names[new]!r} differs from another key the inferred {describe_config(config)} "
                "shares it with; the checkpoint's operator sharing does not match (check share_B)"
            )
    return model


def describe_config(config: MgNetConfig) -> str:
    """The paper's name of a configuration, e.g. ``MgNet[2,2,2,2]-256-B^ℓ (3 input channels, 10 classes)``.

    Examples
    --------
    >>> describe_config(MgNetConfig(num_iterations=(1, 2), channels_u=8, share_B=False, in_channels=1))
    'MgNet[1,2]-8-B^{ℓ,i} (1 input channel, 10 classes)'
    """
    nus = ",".join(str(v) for v in config.num_iterations)
    cu = config.channels_u
    channels = str(cu[0]) if len(set(cu)) == 1 else "[" + ",".join(str(c) for c in cu) + "]"
    if tuple(config.channels_f) != tuple(cu):
        channels += "/f" + ",".join(str(c) for c in config.channels_f)
    b = "B^ℓ" if config.share_B else "B^{ℓ,i}"
    plural = "" if config.in_channels == 1 else "s"
    return f"MgNet[{nus}]-{channels}-{b} ({config.in_channels} input channel{plural}, {config.num_classes} classes)"


def guess_original_dataset(config: MgNetConfig) -> str | None:
    """The dataset an original model was trained on, as far as its shape tells: ``train_mgnet.py`` builds
    1 input channel only for MNIST and 100 classes only for CIFAR-100.

    Examples
    --------
    >>> guess_original_dataset(MgNetConfig(in_channels=1)), guess_original_dataset(MgNetConfig(num_classes=100))
    ('mnist', 'cifar100')
    """
    if config.in_channels == 1 and config.num_classes == 10:
        return "mnist"
    if config.in_channels == 3 and config.num_classes == 10:
        return "cifar10"
    if config.in_channels == 3 and config.num_classes == 100:
        return "cifar100"
    return None


def _to_original_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse renaming (ours -> original); used to test the converter both ways."""
    inverse_ite = {v: k for k, v in _ITE.items()}
    inverse_res = {v: k for k, v in _RES.items()}
    out = {}
    for key, value in state.items():
        if key.startswith("stem.0.conv."):
            new = "conv1." + key[len("stem.0.conv.") :]
        elif key.startswith("stem.1."):
            new = "bn1." + key[len("stem.1.") :]
        elif key.startswith("fc."):
            new = key
        else:
            m = re.fullmatch(r"grids\.(\d+)\.(restrict|smooth)\.(?:(\d+)\.)?(.+)", key)
            grid, kind, step, rest = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            if kind == "restrict":
                new = f"layer{grid}.0.{_rename(inverse_res, rest, key)}"
            else:
                index = int(step) + (1 if grid > 0 else 0)
                new = f"layer{grid}.{index}.{_rename(inverse_ite, rest, key)}"
        out[new] = value
    return out


def _read(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise OriginalCheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise OriginalCheckpointError(
            f"checkpoint {str(path)!r}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {first})"
        ) from None


def _load(path: str | Path, **overrides) -> tuple[MgNet, Mapping]:
    blob = _read(path)
    state = original_state_dict(blob)
    if state is None:
        raise OriginalCheckpointError(
            f"checkpoint {str(path)!r}: not an original MgNet_Code checkpoint (expected 'model_state_dict' or a "
            "state dict with conv1, layer*.*, fc keys)"
        )
    try:
        return model_from_original_state(state, **overrides).eval(), blob
    except OriginalCheckpointError as err:
        raise OriginalCheckpointError(f"checkpoint {str(path)!r}: {err}") from None


def load_original_checkpoint(path: str | Path, **overrides) -> MgNet:
    """Build an :class:`MgNet` from a checkpoint of the original code (``{'model_state_dict': ...}`` as
    ``train_mgnet.py`` saves it, or a bare state dict), read with ``weights_only=True``; the logits equal
    those of the original model.

    ``overrides`` go to :func:`config_from_original` (e.g. ``share_B=False``).  The model is returned in
    eval mode, its inferred configuration in ``model.config``.
    """
    return _load(path, **overrides)[0]


def is_original_checkpoint(path: str | Path) -> bool:
    """Whether the file is an original MgNet_Code checkpoint (read with ``weights_only=True``).

    A file that cannot be read is not one (the caller's own loader then reports why).
    """
    try:
        return original_state_dict(_read(path)) is not None
    except OriginalCheckpointError:
        return False


def _normalise(images: Tensor, dataset: str) -> Tensor:
    """``uint8 (N, C, H, W)`` -> the original's inputs, ``(x / 255 - mean) / std`` in float32."""
    mean, std = ORIGINAL_NORMALISATION[dataset]
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def _resolve_dataset(config: MgNetConfig, dataset: str | None, path: str | Path) -> str:
    if dataset is None:
        dataset = guess_original_dataset(config)
        if dataset is None:
            raise OriginalCheckpointError(
                f"checkpoint {str(path)!r}: {describe_config(config)} matches none of the original datasets; "
                f"pass the dataset (one of {sorted(ORIGINAL_NORMALISATION)})"
            )
    if dataset not in ORIGINAL_NORMALISATION:
        raise ValueError(f"dataset: expected one of {sorted(ORIGINAL_NORMALISATION)}; got {dataset!r}")
    return dataset


@torch.no_grad()
def evaluate_original_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    device: str = "cpu",
    batch_size: int = 500,
    dataset: str | None = None,
) -> dict:
    """Test loss and accuracy of an original checkpoint, its inputs normalised as ``train_mgnet.py`` does.

    Returns a dict with ``checkpoint``, ``config`` (:func:`describe_config`), ``dataset``, ``epoch`` (when
    stored), ``test_loss``, ``test_acc``, ``images`` and ``logits`` (``(N, classes)`` float32 on the CPU).
    """
    from vision.data import load_dataset

    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer; got {batch_size}")
    model, blob = _load(path)
    dataset = _resolve_dataset(model.config, dataset, path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    _, test = load_dataset(dataset, data_dir, download=False)
    if test.images.shape[1] != model.config.in_channels:
        raise OriginalCheckpointError(
            f"checkpoint {str(path)!r}: {describe_config(model.config)} does not take {dataset} images "
            f"({test.images.shape[1]} channels)"
        )
    model = model.to(dev)
    logits = []
    for start in range(0, len(test), batch_size):
        x = _normalise(test.images[start : start + batch_size], dataset).to(dev)
        logits.append(model(x).float().cpu())
    out = torch.cat(logits)
    loss = float(nn.functional.cross_entropy(out, test.labels))
    if not torch.isfinite(out).all():
        raise OriginalCheckpointError(f"checkpoint {str(path)!r}: the model's logits are not finite")
    epoch = blob.get("epoch") if "model_state_dict" in blob else None
    return {
        "checkpoint": str(path),
        "config": describe_config(model.config),
        "dataset": dataset,
        "epoch": epoch,
        "test_loss": loss,
        "test_acc": float((out.argmax(1) == test.labels).float().mean()),
        "images": len(test),
        "logits": out,
    }


@torch.no_grad()
def predict_original(
    path: str | Path, images: Sequence[str | Path], top_k: int = 3, dataset: str | None = None
) -> tuple[str, list[dict]]:
    """Top-``k`` classes of each image under an original checkpoint: ``(configuration, rows)``.

    Images are converted to grey for MNIST models, resized to 28x28 (MNIST) or 32x32 (CIFAR) and
    normalised as ``train_mgnet.py`` does.  Class names are the indices.
    """
    import numpy as np
    from PIL import Image

    from vision.data import read_image

    if top_k < 1:
        raise ValueError(f"top_k: expected a positive integer; got {top_k}")
    model = load_original_checkpoint(path)
    dataset = _resolve_dataset(model.config, dataset, path)
    side = 28 if dataset == "mnist" else 32
    batch = []
    for image in images:
        pil = Image.fromarray(read_image(image).permute(1, 2, 0).numpy())  # (H, W, 3) uint8
        if dataset == "mnist":
            pil = pil.convert("L")
        pil = pil.resize((side, side), Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())
        batch.append(array[None] if array.dim() == 2 else array.permute(2, 0, 1))
    probs = torch.softmax(model(_normalise(torch.stack(batch), dataset)), dim=1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    rows = [
        {"image": str(p), "top": [(str(int(i)), float(v)) for v, i in zip(vs, ids)]}
        for p, vs, ids in zip(images, values, indices)
    ]
    return describe_config(model.config), rows
