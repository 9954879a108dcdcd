"""The one table of problem families: names, builders, parameters with their defaults, help and sampling.

:mod:`pde.families` (the families learned smoothers train on), ``mgnet solve`` (:mod:`pde.cli`) and
``mgnet learn-smoother`` (:mod:`pde.cli_learn`) all read :data:`FAMILIES`; a new family or parameter is one
entry here.

Examples
--------
>>> sorted(FAMILIES)
['aniso', 'lognormal', 'poisson', 'rotated']
>>> spec = family_spec("rotated_anisotropic")
>>> spec.name, [p.name for p in spec.parameters], spec.stencil_points
('rotated', ['eps', 'theta'], 9)
>>> p = spec.build((7, 7), {"eps": 0.1, "theta": PARAMETERS["theta"].fixed}, solution=None)
>>> p.name
'rotated_anisotropic0.1-0.523599-2d-7x7-ones'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pde.problems import Problem, anisotropic, lognormal_diffusion, poisson, rotated_anisotropic

__all__ = ["FAMILIES", "PARAMETERS", "FamilySpec", "ParameterSpec", "family_spec"]


@dataclass(frozen=True)
class ParameterSpec:
    """One real parameter of a family: its check, its values for fixed problems and its training range."""

    # The keyword of the builder, of make_family and of the command-line flag (--eps).
    name: str
    # What it is, for --help and error messages.
    help: str
    # The values evaluated when training samples the parameter; the last one is the value of a single fixed
    # problem (Family.problem) and the default of `mgnet solve`.
    evaluation: tuple[float, ...]
    # Training range (low, high); None: never sampled (the family's default is then `fixed`).
    sample: tuple[float, float] | None = None
    # Sample log-uniformly (True) or uniformly (False).
    log_scale: bool = False
    # "positive" (finite, > 0) or "angle" (any finite number of radians).
    kind: str = "positive"
    # Format of the value in a family's label.
    format: str = "g"
    # How --help shows the fixed value (None: with `format`).
    shown: str | None = None

    @property
    def fixed(self) -> float:
        """The value of a single fixed problem, and the default of ``mgnet solve``."""
        return self.evaluation[-1]

    @property
    def default(self) -> float | None:
        """The value a family takes when not given: ``None`` (sampled in training) or :attr:`fixed`."""
        return None if self.sample is not None else self.fixed

    def check(self, value) -> float | None:
        """``value`` as a float (``None`` passes), or a ``TypeError``/``ValueError`` naming the parameter.

        Examples
        --------
        >>> PARAMETERS["eps"].check(0)
        Traceback (most recent call last):
        ...
        ValueError: eps: expected a finite number > 0; got 0.0
        """
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
            what = "a number (radians)" if self.kind == "angle" else "a number"
            raise TypeError(f"{self.name}: expected {what}; got {type(value).__name__} {value!r}")
        value = float(value)
        if self.kind == "angle":
            if not math.isfinite(value):
                raise ValueError(f"{self.name}: expected a finite angle in radians; got {value}")
        elif not math.isfinite(value) or value <= 0:
            raise ValueError(f"{self.name}: expected a finite number > 0; got {value}")
        return value

    def draw(self, rng) -> float:
        """A training value from :attr:`sample` with the ``numpy.random.Generator`` ``rng``."""
        low, high = self.sample
        if self.log_scale:
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return float(rng.uniform(low, high))

    def text(self, value: float | None) -> str:
        """``value`` as a family's label shows it (``"sampled"`` for ``None``)."""
        return "sampled" if value is None else format(value, self.format)


PARAMETERS: dict[str, ParameterSpec] = {
    parameter.name: parameter
    for parameter in (
        ParameterSpec(
            "eps", "anisotropy ratio eps > 0", evaluation=(1.0, 0.1, 0.01), sample=(0.01, 1.0), log_scale=True,
        ),
        # pi/6 lies off both the grid axes and the diagonals, so neither x/y-line relaxation nor the
        # diagonal couplings of the 9-point stencil align with the strong direction: the hardest case for
        # point smoothers (at pi/4 the strong couplings are exactly the diagonal neighbours).
        ParameterSpec(
            "theta", "rotation angle in radians", evaluation=(math.pi / 6,), sample=(0.0, math.pi), kind="angle",
            format=".4g", shown="pi/6",
        ),
        ParameterSpec("sigma", "standard deviation of log a (log-normal coefficients a = exp(N(0, sigma^2)))",
                      evaluation=(1.0,)),
    )
}
"""Every family parameter by name, in the order families list them (the order training draws them)."""


def _poisson(shape, values: dict, *, seed: int, **options) -> Problem:
    return poisson(shape, **options)


def _anisotropic(shape, values: dict, *, seed: int, **options) -> Problem:
    return anisotropic(shape, values["eps"], **options)


def _rotated(shape, values: dict, *, seed: int, **options) -> Problem:
    return rotated_anisotropic(shape, values["eps"], values["theta"], **options)


def _lognormal(shape, values: dict, *, seed: int, **options) -> Problem:
    return lognormal_diffusion(shape, values["sigma"], seed=seed, **options)


@dataclass(frozen=True)
class FamilySpec:
    """One problem family: how to build it and what it takes."""

    # The canonical name (make_family, --family, --problem).
    name: str
    # Other names accepted for it (the builder's name).
    aliases: tuple[str, ...]
    # One line for --help.
    summary: str
    # builder(shape, {parameter: value}, seed=..., **options) -> Problem; options are the builder's
    # keywords (solution, dtype and those in `options`).
    builder: Callable[..., Problem]
    # The parameters, in order.
    parameters: tuple[ParameterSpec, ...]
    # The grid dimensions it takes.
    dims: tuple[int, ...] = (2, 3)
    # Random coefficients drawn per problem (from a seed): training problems always differ.
    random_coefficients: bool = False
    # Stencil points (None: the 2 d + 1 of a 5/7-point stencil), for the memory estimate.
    stencil_points: int | None = None
    # Arrays of N values the builder allocates besides the solver (u, f, padded boundary values, lifted f;
    # log-normal: also the cells, the edge weights per axis and the 5-point coefficients).
    problem_arrays: int = 6
    # The boundary keywords its builder takes: bc, mask, mask_bc, screen (mgnet solve --bc, --mask, --screen).
    boundary_options: tuple[str, ...] = ("bc",)

    def build(self, shape, values: dict, *, seed: int = 0, **options) -> Problem:
        """The problem on ``shape`` with the parameter ``values`` (missing ones take :attr:`ParameterSpec.fixed`)."""
        full = {p.name: p.fixed if values.get(p.name) is None else values[p.name] for p in self.parameters}
        return self.builder(shape, full, seed=seed, **options)


# The box-scheme builder of pde.boundaries (poisson, anisotropic) takes masks and screening too.
_AXIS_ALIGNED_OPTIONS = ("bc", "mask", "mask_bc", "screen")

FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec("poisson", (), "-Δu = f (2D/3D)", _poisson, (), boundary_options=_AXIS_ALIGNED_OPTIONS),
        FamilySpec(
            "aniso", ("anisotropic",), "-u_xx - eps u_yy = f (2D)", _anisotropic, (PARAMETERS["eps"],), dims=(2,),
            boundary_options=_AXIS_ALIGNED_OPTIONS,
        ),
        FamilySpec(
            "rotated", ("rotated_anisotropic",), "anisotropy eps rotated by theta, 9-point stencil (2D)", _rotated,
            (PARAMETERS["eps"], PARAMETERS["theta"]), dims=(2,), stencil_points=9,
        ),
        FamilySpec(
            "lognormal", ("lognormal_diffusion",), "-div(a grad u) = f, a = exp(N(0, sigma^2)) per cell (2D/3D)",
            _lognormal, (PARAMETERS["sigma"],), random_coefficients=True, problem_arrays=16,
        ),
    )
}
"""The problem families by canonical name."""

_BY_ALIAS = {alias: spec for spec in FAMILIES.values() for alias in (spec.name, *spec.aliases)}


def family_spec(name: str) -> FamilySpec:
    """The :class:`FamilySpec` of a family name or alias; ``ValueError`` naming ``family`` otherwise.

    Examples
    --------
    >>> family_spec("anisotropic").name
    'aniso'
    >>> family_spec("helmholtz")
    Traceback (most recent call last):
    ...
    ValueError: family: unknown family 'helmholtz'; expected one of ['aniso', 'lognormal', 'poisson', 'rotated']
    """
    if not isinstance(name, str):
        raise TypeError(f"family: expected a family name (str); got {type(name).__name__}")
    if name not in _BY_ALIAS:
        raise ValueError(f"family: unknown family {name!r}; expected one of {sorted(FAMILIES)}")
    return _BY_ALIAS[name]


def families_taking(parameter: str) -> list[str]:
    """The names of the families that take ``parameter``, in table order."""
    return [spec.name for spec in FAMILIES.values() if any(p.name == parameter for p in spec.parameters)]
