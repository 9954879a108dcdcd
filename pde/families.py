"""Problem families for learned smoothers: what a smoother is trained on and evaluated on.

A family names a class of operators, one entry of the table :data:`pde.specs.FAMILIES` (Poisson;
anisotropic ``-u_xx - eps u_yy``; rotated anisotropy ``(eps, theta)`` as in
``pyamg.gallery.diffusion_stencil_2d``; log-normal diffusion ``-div(a grad u)`` with ``a = exp(N(0,
sigma^2))`` per cell, Greenfeld et al. 2019).  A parameter left as ``None`` is *sampled* for training (the
ranges of :data:`pde.specs.PARAMETERS`: ``eps`` log-uniform in ``[0.01, 1]``, ``theta`` uniform in
``[0, pi)``); log-normal coefficients are always sampled.  Training draws from :meth:`Family.sample` with
seeds at or above :data:`TRAIN_SEED_OFFSET`; evaluation uses :meth:`Family.evaluation` with the fixed seeds
:data:`EVALUATION_SEEDS`, so training and evaluation problems never coincide.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from pde.problems import Problem
from pde.specs import FAMILIES, PARAMETERS, FamilySpec, family_spec

__all__ = [
    "EVALUATION_SEEDS",
    "FAMILY_NAMES",
    "TRAIN_SEED_OFFSET",
    "Family",
    "family_from_params",
    "make_family",
]

FAMILY_NAMES = tuple(FAMILIES)
"""The family names accepted by :func:`make_family` (and ``mgnet learn-smoother --family``)."""

EVALUATION_SEEDS = (0, 1, 2)
"""Seeds of the log-normal evaluation coefficients (fixed; training seeds are never below 1000)."""

TRAIN_SEED_OFFSET = 1000
"""Training samples of the log-normal family use seeds ``>= TRAIN_SEED_OFFSET``."""


@dataclass(frozen=True)
class Family:
    """A family of 2D model problems; build one with :func:`make_family`.

    What each family takes, its defaults and its training ranges are the entries of
    :data:`pde.specs.FAMILIES`.

    Examples
    --------
    >>> fam = make_family("aniso", eps=0.01)
    >>> fam.label, fam.varies
    ('aniso(eps=0.01)', False)
    >>> fam.problem((7, 7)).A.coefficients.tolist()
    [-64.0, -0.64, 129.28, -0.64, -64.0]
    >>> [p.name for p in make_family("lognormal", sigma=1.0).evaluation((7, 7))][:1]
    ['lognormal_diffusion-2d-7x7-sigma1-seed0']
    """

    # One of FAMILY_NAMES.
    name: str
    # Anisotropy of "aniso" and "rotated"; None samples it log-uniformly in [0.01, 1] for training.
    eps: float | None = None
    # Rotation angle (radians) of "rotated"; None samples it uniformly in [0, pi) for training.
    theta: float | None = None
    # Standard deviation of log a for "lognormal" (a = exp(N(0, sigma^2)) per cell).
    sigma: float = 1.0

    @property
    def spec(self) -> FamilySpec:
        """The table entry of the family."""
        return FAMILIES[self.name]

    def _values(self) -> dict:
        return {p.name: getattr(self, p.name) for p in self.spec.parameters}

    @property
    def varies(self) -> bool:
        """True when training samples differ from one another (a sampled parameter or random coefficients)."""
        spec = self.spec
        return spec.random_coefficients or any(
            p.sample is not None and getattr(self, p.name) is None for p in spec.parameters
        )

    @property
    def label(self) -> str:
        """A short description, e.g. ``"aniso(eps=0.01)"``."""
        parameters = self.spec.parameters
        if not parameters:
            return self.name
        return f"{self.name}({', '.join(f'{p.name}={p.text(getattr(self, p.name))}' for p in parameters)})"

    def params(self) -> dict:
        """The parameters as a plain dict (saved with a learned smoother)."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}}

    def problem(
        self,
        shape: Sequence[int],
        *,
        eps: float | None = None,
        theta: float | None = None,
        seed: int = EVALUATION_SEEDS[0],
        dtype: torch.dtype = torch.float64,
    ) -> Problem:
        """One problem of the family with every parameter fixed (``f = 1``, no exact solution).

        Parameters left ``None`` take the family's value, or, when that is sampled too, the fixed value of
        the table (``eps = 0.01``, ``theta = pi/6``).  ``seed`` picks the log-normal coefficients.
        """
        given = {"eps": PARAMETERS["eps"].check(eps), "theta": PARAMETERS["theta"].check(theta)}
        return self._build(shape, given, seed, dtype)

    def _build(self, shape: Sequence[int], given: dict, seed: int, dtype: torch.dtype) -> Problem:
        values = self._values()
        values.update({k: v for k, v in given.items() if v is not None and k in values})
        return self.spec.build(shape, values, seed=seed, solution=None, dtype=dtype)

    def evaluation(self, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> list[Problem]:
        """The fixed evaluation problems: one per fixed parameter set (``eps in {1, 0.1, 0.01}`` when ``eps``
        is sampled; the seeds :data:`EVALUATION_SEEDS` for log-normal coefficients)."""
        if self.spec.random_coefficients:
            return [self._build(shape, {}, s, dtype) for s in EVALUATION_SEEDS]
        sampled = [p for p in self.spec.parameters if p.sample is not None and getattr(self, p.name) is None]
        grid = itertools.product(*(p.evaluation for p in sampled))
        return [
            self._build(shape, dict(zip((p.name for p in sampled), point)), EVALUATION_SEEDS[0], dtype)
            for point in grid
        ]

    def sample(self, shape: Sequence[int], rng: np.random.Generator, dtype: torch.dtype = torch.float64) -> Problem:
        """A random training problem: sampled parameters, and fresh log-normal coefficients with a seed
        ``>= TRAIN_SEED_OFFSET`` (never an evaluation seed)."""
        drawn = {
            p.name: p.draw(rng) for p in self.spec.parameters if p.sample is not None and getattr(self, p.name) is None
        }
        seed = int(rng.integers(TRAIN_SEED_OFFSET, 2**31 - 1))
        return self._build(shape, drawn, seed, dtype)


def make_family(
    name: str, *, eps: float | None = None, theta: float | None = None, sigma: float | None = None
) -> Family:
    """Build and validate a :class:`Family`.

    Parameters
    ----------
    name : {"poisson", "aniso", "rotated", "lognormal"}
        The family (``"anisotropic"``, ``"rotated_anisotropic"`` and ``"lognormal_diffusion"`` are accepted
        too).
    eps : float, optional
        Anisotropy, ``> 0`` ("aniso", "rotated"); ``None`` samples it in training.
    theta : float, optional
        Rotation in radians ("rotated"); ``None`` samples it in training.
    sigma : float, optional
        ``> 0``, the log-normal standard deviation ("lognormal"; default 1).

    Examples
    --------
    >>> make_family("rotated", eps=0.1, theta=0.5).label
    'rotated(eps=0.1, theta=0.5)'
    >>> make_family("helmholtz")
    Traceback (most recent call last):
    ...
    ValueError: family: unknown family 'helmholtz'; expected one of ['aniso', 'lognormal', 'poisson', 'rotated']
    >>> make_family("aniso", eps=0)
    Traceback (most recent call last):
    ...
    ValueError: eps: expected a finite number > 0; got 0.0
    """
    spec = family_spec(name)
    given = {"eps": eps, "theta": theta, "sigma": sigma}
    given = {k: PARAMETERS[k].check(v) for k, v in given.items()}
    accepts = [p.name for p in spec.parameters]
    for param, value in given.items():
        if value is not None and param not in accepts:
            raise ValueError(f"{param}: the {spec.name!r} family has no parameter {param!r} (it takes {accepts})")
    values = {p.name: p.default if given[p.name] is None else given[p.name] for p in spec.parameters}
    return Family(spec.name, **values)


def family_from_params(params: dict) -> Family:
    """The inverse of :meth:`Family.params` (used when loading a saved smoother)."""
    spec = family_spec(params.get("name"))
    return make_family(spec.name, **{p.name: params.get(p.name) for p in spec.parameters})


# The table's parameters are Family's fields (saved with a learned smoother as Family.params()).
if set(PARAMETERS) != {f.name for f in fields(Family)} - {"name"}:  # pragma: no cover - a table edit
    raise RuntimeError("pde.specs.PARAMETERS and the fields of pde.families.Family must name the same parameters")
