"""pde: model elliptic problems and their multigrid solution on top of :mod:`mgcore`."""

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
    "Problem",
    "anisotropic",
    "diffusion",
    "grid_coordinates",
    "lognormal_diffusion",
    "poisson",
    "rotated_anisotropic",
]
