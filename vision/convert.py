"""Load weights of the original implementation (XuTeam/MgNet_Code, ``mgnet.py``) into :class:`MgNet`.

The original stores the stem as ``conv1``/``bn1``, grid ℓ as ``layer{ℓ}`` (a Sequential whose entry 0 is the
restriction ``MgRestriction`` on grids ℓ > 0, the others the smoothing steps ``MgIte``) and the head as
``fc``.  ``MgIte`` holds ``A``, ``B`` and its σ norms ``bn1`` (before B) and ``bn2`` (after B);
``MgRestriction`` holds ``A_old`` (fine A), ``A_conv`` (coarse A), ``Pi_conv``, ``R_conv``, ``bn1`` (after Π)
and ``bn2`` (after R).  Shared operators appear under every name that uses them, in both models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from vision.models import MgNet, MgNetConfig

__all__ = ["config_from_original", "convert_original_state_dict", "load_original_checkpoint"]

_ITE = {"A.weight": "A.conv.weight", "B.weight": "B.conv.weight", "bn1": "pre_act.0", "bn2": "post_act.0"}
_RES = {
    "A_old.weight": "A.conv.weight",
    "A_conv.weight": "A_coarse.conv.weight",
    "Pi_conv.weight": "Pi.conv.weight",
    "R_conv.weight": "R.conv.weight",
    "bn1": "u_act.0",
    "bn2": "f_act.0",
}


def _rename(table: dict[str, str], rest: str, key: str) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(f"state_dict: unexpected key {key!r} in an original MgNet checkpoint")


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
            m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", name)
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


def config_from_original(state: Mapping[str, Tensor], **overrides) -> MgNetConfig:
    """Infer ``num_iterations``, channels, ``share_B``, ``in_channels`` and ``num_classes`` from the weights.

    Examples
    --------
    >>> import torch
    >>> ours = MgNet(num_iterations=(1, 2), channels_u=4)
    >>> from vision.convert import _to_original_names
    >>> cfg = config_from_original(_to_original_names(ours.state_dict()))
    >>> cfg.num_iterations, cfg.channels_u, cfg.num_classes
    ((1, 2), (4, 4), 10)
    """
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    counts: dict[int, int] = {}
    for key in state:
        m = re.fullmatch(r"layer(\d+)\.(\d+)\.B\.weight", key)
        if m:
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    if not counts or "conv1.weight" not in state or "fc.weight" not in state:
        raise ValueError("state_dict: not an original MgNet checkpoint (expected conv1, layer*.*.B and fc keys)")
    iterations = tuple(counts[g] for g in sorted(counts))
    # B^{ℓ,i} when the two B's of a grid are different tensors (shared ones are equal objects or values).
    b0, b1 = state.get("layer0.0.B.weight"), state.get("layer0.1.B.weight")
    share_B = b1 is None or b0 is b1 or bool(torch.equal(b0, b1))
    fields = dict(
        num_iterations=iterations,
        channels_u=int(state["fc.weight"].shape[1]),
        channels_f=int(state["conv1.weight"].shape[0]),
        in_channels=int(state["conv1.weight"].shape[1]),
        num_classes=int(state["fc.weight"].shape[0]),
        share_B=share_B,
    )
    fields.update(overrides)
    return MgNetConfig(**fields)


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


def load_original_checkpoint(path: str | Path, **overrides) -> MgNet:
    """Build an :class:`MgNet` from a checkpoint of the original code (``{'model_state_dict': ...}`` or a bare
    state dict), loaded with ``weights_only=True``; the logits equal those of the original model."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {str(path)!r}: cannot be read as a PyTorch checkpoint ({err})") from None
    state = blob.get("model_state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r}: expected a state dict or a dict with 'model_state_dict'")
    model = MgNet(config_from_original(state, **overrides))
    model.load_state_dict(convert_original_state_dict(state))
    return model
