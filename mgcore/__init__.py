"""mgcore: one multigrid engine for PDE solvers and MgNet classifiers (He & Xu 2019)."""

from mgcore.blocks import ResidualCorrection, Restriction, residual_correction, restriction_step
from mgcore.operators import ConvOperator, Operator, Stencil
from mgcore.transfers import (
    ConvProlongation,
    ConvRestriction,
    FullWeighting,
    Injection,
    Linear,
    WeightedProlongation,
    WeightedRestriction,
    coarse_shape,
    cubic_interpolate,
    operator_dependent_transfers,
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
    "WeightedProlongation",
    "WeightedRestriction",
    "coarse_shape",
    "cubic_interpolate",
    "operator_dependent_transfers",
    "residual_correction",
    "restriction_step",
]

from mgcore.cycles import Cycle, cycle, fmg
from mgcore.hierarchy import CoarseSolver, Hierarchy, Level, SeparableSolver, build_hierarchy
from mgcore.options import MultigridOptions
from mgcore.smoothers import SMOOTHERS, Smoother, make_smoother
from mgcore.solve import MultigridSolver, SolveInfo, solve

__all__ += [
    "SMOOTHERS",
    "CoarseSolver",
    "Cycle",
    "Hierarchy",
    "Level",
    "MultigridOptions",
    "MultigridSolver",
    "SeparableSolver",
    "Smoother",
    "SolveInfo",
    "build_hierarchy",
    "cycle",
    "fmg",
    "make_smoother",
    "solve",
]

from mgcore.analysis import FactorEstimate, asymptotic_factor  # noqa: E402

__all__ += ["FactorEstimate", "asymptotic_factor"]
