"""The options of a multigrid hierarchy and its cycle, in one validated object.

:class:`MultigridOptions` is the one place where the cycle type, the smoother, the sweeps, the coarse
operators, the transfers and the size of the coarsest grid are named, documented, defaulted and checked.
:func:`mgcore.solve`, :class:`mgcore.MultigridSolver`, :func:`mgcore.build_hierarchy`,
``pde.measure_factor``, ``pde.LearnConfig`` and the ``mgnet solve`` / ``mgnet learn-smoother`` command lines
all take it (or its fields as keywords), and the command-line options are generated from its fields
(:meth:`MultigridOptions.add_arguments`), so a choice added here appears everywhere at once.

Like pyamg's ``MultilevelSolver`` keyword set, but validated once at the entry (SciPy's ``make_system``
idea) instead of at every use.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mgcore.anisotropy import COARSENINGS
from mgcore.smoothers import SMOOTHERS, SmootherFactory, check_smoother_spec

__all__ = [
    "CG_SWEEPS",
    "COARSENINGS",
    "COARSE_OPERATORS",
    "INTERPOLATIONS",
    "Cycle",
    "MultigridOptions",
    "SmootherSpec",
]

COARSE_OPERATORS = ("auto", "galerkin", "rediscretize")
"""How coarse operators are formed (see :mod:`mgcore.hierarchy`)."""
INTERPOLATIONS = ("linear", "operator")
"""Grid transfers (see :mod:`mgcore.hierarchy`)."""

SmootherSpec = str | tuple[str, dict] | SmootherFactory
"""A smoother name, a ``(name, options)`` pair, or a factory ``(A, grid_shape, level) -> Smoother``."""


class Cycle(enum.Enum):
    """The cycle types; ``Cycle.parse("W")`` accepts the usual letters.

    The recursion follows :attr:`coarse_visits`: V visits the coarse grid once, W twice, F once with an
    F-cycle and then with a V-cycle (Trottenberg et al. 2001, section 2.4).
    """

    V = "V"
    W = "W"
    F = "F"

    @property
    def coarse_visits(self) -> tuple[Cycle, ...]:
        """The cycles run on the next coarser grid, in order."""
        return _COARSE_VISITS[self]

    @classmethod
    def parse(cls, value: str | Cycle) -> Cycle:
        """``"V"``/``"v"``/``Cycle.V`` -> ``Cycle.V``; anything else raises ``ValueError``.

        Examples
        --------
        >>> Cycle.parse("w")
        <Cycle.W: 'W'>
        >>> Cycle.parse("X")
        Traceback (most recent call last):
        ...
        ValueError: cycle: unknown cycle 'X'; expected one of 'V', 'W', 'F'
        """
        if isinstance(value, Cycle):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"cycle: unknown cycle {value!r}; expected one of 'V', 'W', 'F'")


_COARSE_VISITS = {Cycle.V: (Cycle.V,), Cycle.W: (Cycle.W, Cycle.W), Cycle.F: (Cycle.F, Cycle.V)}

CG_SWEEPS = {"presmooth": 1, "postsmooth": 1}
"""The sweeps a solve with ``accel="cg"`` takes when neither is given: CG needs a symmetric preconditioner, and
the default V(1,2) is not one (``mgcore.solve(A, b, accel="cg")`` and ``mgnet solve --accel cg`` were refused);
pyamg's CG likewise takes its symmetric default smoothing.  Given sweeps are kept (and checked)."""


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers are accepted (they come out of parameter sweeps); bools and floats are not.
        if type(value).__module__ != "numpy" or not hasattr(value, "__index__"):
            raise TypeError(f"{name}: expected an integer >= {minimum}; got {value!r}")
        value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}; got {value}")
    return value


@dataclass(frozen=True)
class MultigridOptions:
    """How the hierarchy is built and cycled.  Every field is checked when the object is made.

    Examples
    --------
    >>> options = MultigridOptions(presmooth=1, postsmooth=1)
    >>> options
    MultigridOptions(cycle=V, smoother='rbgs', presmooth=1, postsmooth=1, coarse_operator='auto', \
interpolation='linear', coarsening='full', max_coarse=1000, max_levels=30, fas=False)
    >>> options.label
    'V(1,1) rbgs'
    >>> options.replace(cycle="w").cycle
    <Cycle.W: 'W'>
    >>> MultigridOptions(interpolation="cubic")
    Traceback (most recent call last):
    ...
    ValueError: interpolation: expected one of 'linear', 'operator'; got 'cubic'
    >>> MultigridOptions.resolve(None, {"presweeps": 1})
    Traceback (most recent call last):
    ...
    TypeError: unknown multigrid option 'presweeps'; expected one of cycle, smoother, presmooth, postsmooth, \
coarse_operator, interpolation, coarsening, max_coarse, max_levels, fas
    """

    cycle: Cycle | str = field(
        default=Cycle.V, metadata={"help": "cycle type", "choices": ("V", "W", "F")}
    )  # V, W or F (Trottenberg et al. 2001, section 2.4)
    smoother: SmootherSpec = field(
        default="rbgs",
        metadata={"help": "smoother: " + ", ".join(SMOOTHERS) + ", or a learned smoother file (.pt)"},
    )  # a name from mgcore.SMOOTHERS, a (name, options) pair, or a factory (A, grid_shape, level) -> Smoother
    presmooth: int = field(default=1, metadata={"help": "smoothing sweeps before the coarse-grid correction"})
    postsmooth: int = field(default=2, metadata={"help": "smoothing sweeps after the coarse-grid correction"})
    coarse_operator: str = field(
        default="auto",
        metadata={
            "help": "coarse operators: rediscretised where exact, else Galerkin R A P",
            "choices": COARSE_OPERATORS,
        },
    )  # see mgcore.hierarchy
    interpolation: str = field(
        default="linear",
        metadata={"help": "grid transfers; 'operator' (operator-dependent) for rough coefficients",
                  "choices": INTERPOLATIONS},
    )  # 'operator' needs a 2D radius-1 stencil and Galerkin (or auto) coarse operators
    coarsening: str = field(
        default="full",
        metadata={
            "help": "coarsened axes: all ('full'), chosen per level from the stencil's couplings ('auto'), "
            "or the named axes only (semicoarsening; axis 0 = x)",
            "choices": COARSENINGS,
        },
    )  # see mgcore.anisotropy; smoother='auto' with coarsening='auto' is robust for anisotropic stencils
    max_coarse: int = field(
        default=1000, metadata={"help": "largest coarsest grid, solved by dense LU (unknowns)"}
    )  # the coarsest LU costs max_coarse^2 numbers of memory
    max_levels: int = field(default=30, metadata={"help": "most levels in the hierarchy"})
    fas: bool = field(
        default=False, metadata={"help": "full approximation scheme (state transfer by injection)"}
    )  # equal iterates to the correction scheme for linear problems (Brandt 1977), which is cheaper

    def __post_init__(self) -> None:
        object.__setattr__(self, "cycle", Cycle.parse(self.cycle))
        check_smoother_spec(self.smoother)
        for name in ("presmooth", "postsmooth"):
            object.__setattr__(self, name, _check_count(name, getattr(self, name), 0))
        if self.presmooth + self.postsmooth == 0:
            raise ValueError("presmooth, postsmooth: at least one smoothing sweep is needed; got 0 and 0")
        for name, choices in (
            ("coarse_operator", COARSE_OPERATORS), ("interpolation", INTERPOLATIONS), ("coarsening", COARSENINGS)
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                expected = ", ".join(repr(c) for c in choices)
                raise ValueError(f"{name}: expected one of {expected}; got {value!r}")
        if self.interpolation == "operator" and self.coarse_operator == "rediscretize":
            raise ValueError(
                "coarse_operator: interpolation='operator' needs 'galerkin' or 'auto' coarse operators; "
                "got 'rediscretize'"
            )
        if self.interpolation == "operator" and self.coarsening != "full":
            raise ValueError(
                f"coarsening: interpolation='operator' needs 'full' coarsening; got {self.coarsening!r}"
            )
        object.__setattr__(self, "max_coarse", _check_count("max_coarse", self.max_coarse, 1))
        object.__setattr__(self, "max_levels", _check_count("max_levels", self.max_levels, 1))
        if not isinstance(self.fas, bool):
            raise TypeError(f"fas: expected True or False; got {self.fas!r}")

    def __repr__(self) -> str:
        values = ", ".join(
            f"{f.name}={self.cycle.value if f.name == 'cycle' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"MultigridOptions({values})"

    # ------------------------------------------------------------------ derived values
    @property
    def label(self) -> str:
        """``"V(1,2) rbgs"``: the cycle, its sweeps and the smoother's name."""
        name = self.smoother if isinstance(self.smoother, str) else (
            self.smoother[0] if isinstance(self.smoother, tuple) else "custom"
        )
        return f"{self.cycle.value}({self.presmooth},{self.postsmooth}) {name}"

    # ------------------------------------------------------------------ construction
    def replace(self, **changes: Any) -> MultigridOptions:
        """A copy with ``changes`` applied (and checked)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in order.

        Examples
        --------
        >>> MultigridOptions.names()[:3]
        ('cycle', 'smoother', 'presmooth')
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def resolve(cls, options: MultigridOptions | None, overrides: Mapping[str, Any]) -> MultigridOptions:
        """``options`` (default: all defaults) with the keyword ``overrides`` applied; unknown keys are a
        ``TypeError`` naming them.  The entry points call this once, with their ``**options`` keywords."""
        if options is not None and not isinstance(options, MultigridOptions):
            raise TypeError(f"options: expected a MultigridOptions; got {type(options).__name__}")
        _check_names(overrides)
        base = cls() if options is None else options
        return dataclasses.replace(base, **overrides) if overrides else base

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the cycle as its letter): for saving with a learned smoother or in a results file."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["cycle"] = self.cycle.value
        return values

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        *,
        defaults: MultigridOptions | None = None,
        exclude: tuple[str, ...] = (),
        smoother_type: Callable[[str], Any] = str,
    ) -> None:
        """Add ``--cycle``, ``--smoother``, ``--presmooth`` ... to ``parser``, one per field, from the field
        metadata.  Every option defaults to ``None`` (= not given), so :meth:`from_arguments` can tell a given
        value from a default (a learned smoother brings the options it was trained with).

        Examples
        --------
        >>> parser = argparse.ArgumentParser()
        >>> MultigridOptions.add_arguments(parser, exclude=("smoother",))
        >>> args = parser.parse_args(["--cycle", "W", "--postsmooth", "1"])
        >>> MultigridOptions.from_arguments(args).label
        'W(1,1) rbgs'
        """
        shown = defaults or cls()
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            default = getattr(shown, f.name)
            default_text = default.value if isinstance(default, Cycle) else default
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata.get('help', f.name)} (default {default_text})"
            if isinstance(default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif "choices" in f.metadata:
                parser.add_argument(flag, choices=f.metadata["choices"], default=None, help=help_text)
            elif f.name == "smoother":
                parser.add_argument(flag, type=smoother_type, default=None, help=help_text)
            else:
                parser.add_argument(flag, type=int, default=None, metavar="N", help=help_text)

    @classmethod
    def from_arguments(
        cls, args: argparse.Namespace, base: MultigridOptions | None = None, *, exclude: tuple[str, ...] = ()
    ) -> MultigridOptions:
        """``base`` (default: the defaults) with every option given on the command line applied, except those in
        ``exclude`` (e.g. a smoother the command resolved itself, such as a learned smoother file)."""
        given = {
            name: getattr(args, name)
            for name in cls.names()
            if name not in exclude and getattr(args, name, None) is not None
        }
        return cls.resolve(base, given)


def _check_names(changes: Mapping[str, Any]) -> None:
    names = MultigridOptions.names()
    for key in changes:
        if key not in names:
            raise TypeError(f"unknown multigrid option {key!r}; expected one of {', '.join(names)}")
