"""Problem families for learned smoothers: what a smoother is trained on and evaluated on.

A family names a class of operators (Poisson; anisotropic ``-u_xx - eps u_yy``; rotated anisotropy
``(eps, theta)`` as in ``pyamg.gallery.diffusion_stencil_2d``; log-normal diffusion ``-div(a grad u)`` with
``a = exp(N(0, sigma^2))`` per cell, Greenfeld et al. 2019).  A parameter left as ``None`` is *sampled* for
training (``eps`` log-uniform in ``[0.01, 1]``, ``theta`` uniform in ``[0, pi)``); log-normal coefficients
are always sampled.  Training draws from :meth:`Family.sample` with seeds at or above
:data:`TRAIN_SEED_OFFSET`; evaluation uses :meth:`Family.evaluation` with the fixed seeds
:data:`EVALUATION_SEEDS`, so training and evaluation problems never coincide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pde.problems import Problem, anisotropic, lognormal_diffusion, poisson, rotated_anisotropic

__all__ = [
    "EVALUATION_SEEDS",
    "FAMILY_NAMES",
    "TRAIN_SEED_OFFSET",
    "Family",
    "family_from_params",
    "make_family",
]

FAMILY_NAMES = ("poisson", "aniso", "rotated", "lognormal")
"""The family names accepted by :func:`make_family` (and ``mgnet learn-smoother --family``)."""

_ALIASES = {"anisotropic": "aniso", "rotated_anisotropic": "rotated", "lognormal_diffusion": "lognormal"}

EVALUATION_SEEDS = (0, 1, 2)
"""Seeds of the log-normal evaluation coefficients (fixed; training seeds are never below 1000)."""

TRAIN_SEED_OFFSET = 1000
"""Training samples of the log-normal family use seeds ``>= TRAIN_SEED_OFFSET``."""

_EVAL_EPS = (1.0, 0.1, 0.01)  # the anisotropies of the issue, evaluated when eps is sampled in training
_EVAL_THETA = math.pi / 6  # a rotation off both the grid axes and the diagonals (hardest for point smoothers)
_SAMPLE_EPS = (0.01, 1.0)  # log-uniform training range of eps


def _positive(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0; got {value}")
    return value


def _angle(value: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"theta: expected a number (radians); got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"theta: expected a finite angle in radians; got {value}")
    return value


@dataclass(frozen=True)
class Family:
    """A family of 2D model problems; build one with :func:`make_family`.

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
    def varies(self) -> bool:
        """True when training samples differ from one another (a sampled parameter or random coefficients)."""
        if self.name == "lognormal":
            return True
        if self.name == "aniso":
            return self.eps is None
        if self.name == "rotated":
            return self.eps is None or self.theta is None
        return False

    @property
    def label(self) -> str:
        """A short description, e.g. ``"aniso(eps=0.01)"``."""
        if self.name == "poisson":
            return "poisson"
        if self.name == "aniso":
            return f"aniso(eps={'sampled' if self.eps is None else f'{self.eps:g}'})"
        if self.name == "rotated":
            eps = "sampled" if self.eps is None else f"{self.eps:g}"
            theta = "sampled" if self.theta is None else f"{self.theta:.4g}"
            return f"rotated(eps={eps}, theta={theta})"
        return f"lognormal(sigma={self.sigma:g})"

    def params(self) -> dict:
        """The parameters as a plain dict (saved with a learned smoother)."""
        return {"name": self.name, "eps": self.eps, "theta": self.theta, "sigma": self.sigma}

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

        Parameters left ``None`` take the family's value, or, when that is sampled too, the evaluation value
        (``eps = 0.01``, ``theta = pi/6``).  ``seed`` picks the log-normal coefficients.
        """
        eps = _positive(eps, "eps") or self.eps or _EVAL_EPS[-1]
        theta = self.theta if theta is None else _angle(theta)
        theta = _EVAL_THETA if theta is None else theta
        if self.name == "poisson":
            return poisson(shape, solution=None, dtype=dtype)
        if self.name == "aniso":
            return anisotropic(shape, eps, solution=None, dtype=dtype)
        if self.name == "rotated":
            return rotated_anisotropic(shape, eps, theta, solution=None, dtype=dtype)
        return lognormal_diffusion(shape, self.sigma, seed=seed, dtype=dtype)

    def evaluation(self, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> list[Problem]:
        """The fixed evaluation problems: one per fixed parameter set (``eps in {1, 0.1, 0.01}`` when ``eps``
        is sampled; the seeds :data:`EVALUATION_SEEDS` for log-normal coefficients)."""
        if self.name == "lognormal":
            return [self.problem(shape, seed=s, dtype=dtype) for s in EVALUATION_SEEDS]
        if self.name in ("aniso", "rotated") and self.eps is None:
            return [self.problem(shape, eps=e, dtype=dtype) for e in _EVAL_EPS]
        return [self.problem(shape, dtype=dtype)]

    def sample(self, shape: Sequence[int], rng: np.random.Generator, dtype: torch.dtype = torch.float64) -> Problem:
        """A random training problem: sampled parameters, and fresh log-normal coefficients with a seed
        ``>= TRAIN_SEED_OFFSET`` (never an evaluation seed)."""
        eps = self.eps
        if eps is None and self.name in ("aniso", "rotated"):
            low, high = np.log(_SAMPLE_EPS[0]), np.log(_SAMPLE_EPS[1])
            eps = float(np.exp(rng.uniform(low, high)))
        theta = self.theta
        if theta is None and self.name == "rotated":
            theta = float(rng.uniform(0.0, math.pi))
        seed = int(rng.integers(TRAIN_SEED_OFFSET, 2**31 - 1))
        return self.problem(shape, eps=eps, theta=theta, seed=seed, dtype=dtype)


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
    if not isinstance(name, str):
        raise TypeError(f"family: expected a family name (str); got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in FAMILY_NAMES:
        raise ValueError(f"family: unknown family {name!r}; expected one of {sorted(FAMILY_NAMES)}")
    eps = _positive(eps, "eps")
    sigma = _positive(sigma, "sigma")
    if theta is not None:
        theta = _angle(theta)
    accepts = {"poisson": (), "aniso": ("eps",), "rotated": ("eps", "theta"), "lognormal": ("sigma",)}[key]
    for param, value in (("eps", eps), ("theta", theta), ("sigma", sigma)):
        if value is not None and param not in accepts:
            raise ValueError(f"{param}: the {key!r} family has no parameter {param!r} (it takes {list(accepts)})")
    return Family(key, eps=eps, theta=theta, sigma=1.0 if sigma is None else sigma)


def family_from_params(params: dict) -> Family:
    """The inverse of :meth:`Family.params` (used when loading a saved smoother)."""
    name = params.get("name")
    return make_family(
        name,
        eps=params.get("eps") if name in ("aniso", "rotated") else None,
        theta=params.get("theta") if name == "rotated" else None,
        sigma=params.get("sigma") if name == "lognormal" else None,
    )
