"""``mgnet solve`` end to end, on a small grid."""

from __future__ import annotations

import pytest

from mgnet.cli import main


def test_solve_prints_a_report_and_compares_with_pyamg(capsys, tmp_path):
    plot = tmp_path / "history.png"
    status = main(
        ["solve", "--problem", "poisson", "--shape", "63", "63", "--rtol", "1e-8", "--compare-pyamg",
         "--plot", str(plot)]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "Multigrid hierarchy" in out and "iter      residual" in out
    assert "converged         True" in out
    assert "pyamg ruge_stuben_solver on the same 3,969 x 3,969 CSR matrix" in out
    agreement = float(out.split("||x_mgcore - x_pyamg|| / ||x_pyamg|| = ")[1].split()[0])
    assert agreement < 1e-6
    # the ratio is taken against a second, warm mgcore run (the first one pays one-time costs)
    warm = float(out.split("warm set-up + solve ")[1].split()[0])
    pyamg_total = float(out.split("pyamg ruge_stuben_solver")[1].split("setup + solve ")[1].split("= ")[1].split()[0])
    ratio = float(out.split("mgcore (warm) is ")[1].split("x faster")[0])
    assert ratio == pytest.approx(pyamg_total / max(warm, 5e-4), rel=0.3)
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    "arguments",
    [
        ["--problem", "poisson", "--shape", "15", "15", "15", "--accel", "cg", "--presmooth", "1",
         "--postsmooth", "1"],
        ["--problem", "poisson", "--shape", "63", "63", "--accel", "cg"],  # V(1,1) by itself (it was refused)
        ["--problem", "aniso", "--eps", "0.1", "--shape", "63", "63", "--maxiter", "200"],
        ["--problem", "rotated", "--eps", "0.1", "--shape", "63", "63", "--maxiter", "200", "--cycle", "W"],
        ["--problem", "lognormal", "--sigma", "1", "--shape", "63", "63", "--fmg"],
        ["--problem", "lognormal", "--sigma", "2", "--shape", "63", "63", "--interpolation", "operator",
         "--maxiter", "20"],
        ["--problem", "poisson", "--shape", "63", "63", "--dtype", "float32", "--rtol", "1e-10"],
    ],
)
def test_solve_variants_converge(arguments, capsys):
    assert main(["solve", *arguments]) == 0
    assert "converged         True" in capsys.readouterr().out


def test_solve_reports_bad_input(capsys):
    assert main(["solve", "--shape", "2", "63"]) == 2
    assert "shape: every side needs at least 3 points" in capsys.readouterr().err
    assert main(["solve", "--smoother", "sor", "--shape", "15", "15"]) == 2
    assert "smoother: unknown name 'sor'" in capsys.readouterr().err
