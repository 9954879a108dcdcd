"""vision: MgNet image classifiers built from the mgcore engine's blocks (He & Xu 2019).

The smoothing step ``u <- u + σ∘B*σ(f - A*u)`` and the restriction ``u' = σ∘Π*u``,
``f' = σ∘R*(f - A*u) + A'*u'`` are :class:`mgcore.ResidualCorrection` and :class:`mgcore.Restriction` with
trained convolutions and σ = norm + activation; the PDE multigrid cycle uses the same blocks.
"""

from vision import zoo  # noqa: F401  (registers the built-in models)
from vision.convert import convert_original_state_dict, load_original_checkpoint
from vision.layers import Hat
from vision.models import MgNet, MgNetConfig, ResNet, ResNetConfig
from vision.registry import count_macs, count_parameters, create_model, list_models, model_info, register_model
from vision.train import (
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    evaluate_checkpoint,
    load_checkpoint,
    predict,
    train,
)

__all__ = [
    "Hat",
    "MgNet",
    "MgNetConfig",
    "ResNet",
    "ResNetConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "convert_original_state_dict",
    "count_macs",
    "count_parameters",
    "create_model",
    "evaluate_checkpoint",
    "list_models",
    "load_checkpoint",
    "load_original_checkpoint",
    "model_info",
    "predict",
    "register_model",
    "train",
]
