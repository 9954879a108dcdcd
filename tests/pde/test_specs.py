"""The one table of problem families (pde.specs): families, ``mgnet solve`` and ``mgnet learn-smoother`` read
it, with one default per parameter; ``--bc`` for every problem."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from mgnet.cli import build_parser, main
from pde.families import FAMILY_NAMES, family_from_params, make_family
from pde.specs import FAMILIES, PARAMETERS, family_spec


def test_family_names_aliases_and_parameters_come_from_the_table():
    assert FAMILY_NAMES == ("poisson", "aniso", "rotated", "lognormal") == tuple(FAMILIES)
    for spec in FAMILIES.values():
        for name in (spec.name, *spec.aliases):
            assert family_spec(name) is spec and make_family(name).name == spec.name
        family = make_family(spec.name)
        assert family_from_params(family.params()) == family
        assert [p.name for p in spec.parameters] == [k for k in ("eps", "theta", "sigma") if k in family.label]
        for parameter in spec.parameters:
            if parameter.sample is not None:
                low, high = parameter.sample
                assert all(low <= v <= high for v in parameter.evaluation)
    assert make_family("rotated").label == "rotated(eps=sampled, theta=sampled)"
    assert make_family("lognormal").label == "lognormal(sigma=1)"


def _solve_args(*argv):
    parser = build_parser()
    return parser.parse_args(["solve", *argv])


def test_one_default_theta_for_the_cli_and_the_family():
    args = _solve_args("--problem", "rotated_anisotropic")
    assert args.problem == "rotated" and args.theta == math.pi / 6 == PARAMETERS["theta"].fixed
    assert args.eps == 0.01 and args.sigma == 1.0
    from pde.cli import _problem

    args.shape = [15, 15]
    cli_problem = _problem(args)
    family_problem = make_family("rotated").problem((15, 15))
    assert cli_problem.A.coefficients.tolist() == family_problem.A.coefficients.tolist()
    learn = build_parser().parse_args(["learn-smoother", "--family", "anisotropic", "--out", "s.pt"])
    assert learn.family == "aniso" and learn.eps is None and learn.theta is None and learn.sigma is None


def test_help_lists_the_table():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("solve", "learn-smoother"):
        text = sub.choices[command].format_help()
        for spec in FAMILIES.values():
            assert spec.name in text
        assert "--eps" in text and "--theta" in text and "--sigma" in text
    assert "(default pi/6)" in " ".join(sub.choices["solve"].format_help().split())


@pytest.mark.parametrize(
    "arguments",
    [
        ["--problem", "lognormal", "--sigma", "0.5", "--shape", "63", "65", "--bc", "neumann"],
        ["--problem", "rotated", "--eps", "0.5", "--shape", "64", "63", "--bc", "periodic", "dirichlet"],
        ["--problem", "aniso", "--eps", "0.1", "--shape", "63", "64", "--bc", "neumann", "periodic", "--maxiter",
         "200"],
    ],
)
def test_solve_takes_bc_for_every_problem(arguments, capsys):
    assert main(["solve", *arguments, "--max-coarse", "20"]) == 0
    out = capsys.readouterr().out
    assert "converged         True" in out


def test_solve_refuses_options_a_problem_does_not_take(tmp_path, capsys):
    assert main(["solve", "--problem", "rotated", "--shape", "15", "15", "--bc", "neumann"]) == 2
    err = capsys.readouterr().err
    assert "bc: the rotated operator takes 'dirichlet' or 'periodic' faces" in err and err.count("\n") == 1
    assert main(["solve", "--problem", "lognormal", "--shape", "15", "15", "--screen", "1"]) == 2
    assert "--screen: supported for poisson/aniso; the lognormal problem does not take it" in capsys.readouterr().err
    import matplotlib.pyplot as plt

    path = tmp_path / "m.png"
    plt.imsave(path, np.ones((8, 8)), cmap="gray")
    assert main(["solve", "--problem", "rotated", "--mask", str(path)]) == 2
    assert "--mask: supported for poisson/aniso; the rotated problem does not take it" in capsys.readouterr().err
    assert main(["solve", "--problem", "aniso", "--shape", "7", "7", "7"]) == 2
    assert "--shape: the aniso problem is 2D; got 3 numbers" in capsys.readouterr().err
