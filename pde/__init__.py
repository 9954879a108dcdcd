"""pde: model elliptic problems, their multigrid solution and learned smoothers, on top of :mod:`mgcore`."""

from pde.families import FAMILY_NAMES, Family, make_family
from pde.learned import LearnConfig, LearnedSmoother, learn_smoother, measure_factor
from pde.problems import (
    Problem,
    anisotropic,
    diffusion,
    grid_coordinates,
    lognormal_diffusion,
    poisson,
    rotated_anisotropic,
)

__all__ = [
    "FAMILY_NAMES",
    "Family",
    "LearnConfig",
    "LearnedSmoother",
    "Problem",
    "anisotropic",
    "diffusion",
    "grid_coordinates",
    "learn_smoother",
    "lognormal_diffusion",
    "make_family",
    "measure_factor",
    "poisson",
    "rotated_anisotropic",
]
