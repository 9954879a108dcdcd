"""mgcore: one multigrid engine for PDE solvers and MgNet classifiers (He & Xu 2019)."""

from mgcore.blocks import ResidualCorrection, Restriction, residual_correction, restriction_step
from mgcore.operators import ConvOperator, Operator, Stencil
from mgcore.transfers import (
    ConvProlongation,
    ConvRestriction,
    FullWeighting,
    Injection,
    Linear,
    coarse_shape,
    cubic_interpolate,
)

__all__ = [
    "ConvOperator",
    "ConvProlongation",
    "ConvRestriction",
    "FullWeighting",
    "Injection",
    "Linear",
    "Operator",
    "ResidualCorrection",
    "Restriction",
    "Stencil",
    "coarse_shape",
    "cubic_interpolate",
    "residual_correction",
    "restriction_step",
]
