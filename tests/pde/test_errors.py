"""Bad input to the pde builders, learned smoother files and the ``mgnet solve``/``learn-smoother`` commands:
one clear error naming what the user passed, checked before any long work, and nothing half-written."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

import mgcore.memory
import pde
import pde.cli
from mgcore import Stencil, solve
from mgnet.cli import main
from pde.learned import LearnedSmoother, learn_smoother, measure_factor


# ---------------------------------------------------------------------------------------------- problems
@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: pde.anisotropic((7, 7), True), TypeError, "eps: expected a real number; got bool True"),
        (lambda: pde.anisotropic((7, 7), "0.1"), TypeError, "eps: expected a real number; got str '0.1'"),
        (lambda: pde.anisotropic((7, 7), None), TypeError, "eps: expected a real number; got NoneType None"),
        (lambda: pde.anisotropic((7, 7), -1), ValueError, "eps: expected a finite positive number; got -1.0"),
        (lambda: pde.rotated_anisotropic((7, 7), 0.1, "pi/4"), TypeError, "theta: expected a real number; got str"),
        (lambda: pde.rotated_anisotropic((7, 7), 0.1, math.inf), ValueError, "theta: expected a finite number"),
        (lambda: pde.lognormal_diffusion((7, 7), 1.0, seed=-1), ValueError, "seed: expected a non-negative integer"),
        (lambda: pde.lognormal_diffusion((7, 7), 1.0, seed=1.5), TypeError, "seed: expected a non-negative integer"),
        (lambda: pde.lognormal_diffusion((7, 7), 1.0, seed=None), TypeError, "seed: expected a non-negative int"),
        (lambda: pde.lognormal_diffusion((7, 7), 1.0, seed=True), TypeError, "seed: expected a non-negative int"),
        (lambda: pde.lognormal_diffusion((7, 7), "1"), TypeError, "sigma: expected a real number"),
        (lambda: pde.poisson((7, 7)).random_rhs(2, seed=-3), ValueError, "seed: expected a non-negative integer"),
        (lambda: pde.poisson((7, 7)).random_rhs(0), ValueError, "batch: expected a positive integer; got 0"),
        (lambda: pde.make_family("rotated").problem((7, 7), theta="pi/4"), TypeError, "theta: expected a number"),
        (lambda: pde.make_family("aniso").problem((7, 7), eps="0.1"), TypeError, "eps: expected a number"),
        (lambda: pde.make_family("lognormal").problem((7, 7), seed=1.5), TypeError, "seed: expected a non-neg"),
    ],
)
def test_builders_name_the_bad_parameter(build, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_huge_sigma_names_sigma_not_an_internal_argument():
    with pytest.raises(ValueError, match=r"sigma: 1000 draws coefficients up to exp\(2325\) \(seed 0\)"):
        pde.lognormal_diffusion((7, 7), 1000)
    p = pde.lognormal_diffusion((7, 7), 100)  # |log a| up to 233: large contrast, still representable
    assert bool(torch.isfinite(p.A.coefficients).all())


def test_problem_stencils_know_their_grid():
    p = pde.poisson((31, 31))
    assert p.A.grid_shape == (31, 31)
    with pytest.raises(ValueError, match=r"b: shape \(30, 31\) does not match the operator's grid \(31, 31\)"):
        solve(p.A, np.ones((30, 31)))
    x, info = solve(p.A, p.f.numpy(), rtol=1e-10)
    assert info.converged and p.error(x) < 1e-3
    assert pde.rotated_anisotropic((7, 9), 0.1, 0.3).A.grid_shape == (7, 9)
    assert pde.poisson((5, 5, 5), dtype=torch.float32).A.grid_shape == (5, 5, 5)


# ---------------------------------------------------------------------------------------------- smoothers
def test_measure_factor_rejects_unknown_smoother_names():
    with pytest.raises(ValueError, match="smoother: unknown name 'sor'"):
        measure_factor(Stencil.laplacian(2), (15, 15), "sor")  # 225 <= max_coarse: no smoother is built


def test_a_smoother_file_with_nan_weights_does_not_load(tmp_path):
    S = LearnedSmoother(kernel_size=3)
    with torch.no_grad():
        S.weight[0, 0, 4, 0] = float("nan")
    path = S.save(tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="weights are not all finite numbers"):
        LearnedSmoother.load(path)


def test_a_pth_file_is_a_smoother_for_the_cli(tmp_path, capsys):
    path = LearnedSmoother(kernel_size=3).save(tmp_path / "jacobi.pth")
    status = main(["solve", "--shape", "63", "63", "--smoother", str(path), "--presmooth", "2", "--postsmooth", "2"])
    out = capsys.readouterr().out
    assert status == 0 and "learned(3x3, steps=1)" in out and "converged         True" in out


@pytest.fixture
def one_thread():
    """Training runs on one thread: on a loaded 2-core machine, two OpenMP threads made it 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_diverging_training_raises(one_thread):
    with pytest.raises(FloatingPointError, match=r"lr: training diverged: the per-cycle factor went from 0\.0779 to "
                       r"1\.23e\+22 \(>= 1: the cycle amplifies errors\); lower lr \(now 10000\)"):
        learn_smoother("poisson", train_size=15, iterations=10, batch=4, unroll=2, lr=1e4, progress=False)


# ---------------------------------------------------------------------------------------------- mgnet solve
def _err(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, no traceback
    return lines[0]


@pytest.fixture
def no_problem(monkeypatch):
    """Fail the test if the command gets as far as building the problem (the checks must come first)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the problem was built before the checks")

    monkeypatch.setattr(pde.cli, "_problem", forbidden)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--device", "tpu"], "mgnet solve: --device: 'tpu' is not a torch device"),
        (["--device", "meta"], "mgnet solve: --device: 'meta' tensors hold no values"),
        (["--plot", "missing-folder/history.png"], "--plot: cannot write 'missing-folder/history.png': the folder"),
        (["--plot", "{file}/sub/history.png"], "is a file, not a folder"),
        (["--plot", "{tmp}"], "is a folder; expected a file name"),
        (["--shape", "2", "63"], "mgnet solve: --shape: every side needs at least 3 points"),
        (["--shape", "5"], "mgnet solve: --shape: takes 2 or 3 numbers"),
    ],
)
def test_solve_checks_before_work(arguments, message, capsys, tmp_path, no_problem, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file where a folder is expected")
    arguments = [a.format(file="notes.txt", tmp=tmp_path) for a in arguments]
    command = ["solve", *arguments] if "--shape" in arguments else ["solve", "--shape", "15", "15", *arguments]
    assert main(command) == 2
    assert message in _err(capsys)


@pytest.mark.parametrize("device", ["mps", "cuda"])
def test_solve_on_an_absent_device(device, capsys, no_problem):
    if (device == "cuda" and torch.cuda.is_available()) or (device == "mps" and torch.backends.mps.is_available()):
        pytest.skip(f"{device} exists here")
    assert main(["solve", "--device", device]) == 2
    assert _err(capsys).startswith(f"mgnet solve: --device: '{device}'")


def test_solve_with_a_missing_smoother_file(capsys, tmp_path):
    assert main(["solve", "--shape", "15", "15", "--smoother", str(tmp_path / "missing.pt")]) == 2
    assert "--smoother: no such file" in _err(capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a smoother")
    assert main(["solve", "--shape", "15", "15", "--smoother", str(tmp_path / "junk.pt")]) == 2
    assert "is not a learned smoother file" in _err(capsys)


def test_solve_on_a_huge_grid_is_refused_at_once(capsys, no_problem, monkeypatch):
    monkeypatch.setattr(mgcore.memory, "available_memory", lambda device="cpu": 64 * 2**30)
    assert main(["solve", "--shape", "100000", "100000"]) == 2
    line = _err(capsys)
    assert line.startswith("mgnet solve: --shape: this needs about 3.4 TiB (problem arrays 447.0 GiB, ")
    assert line.endswith("but cpu has 64.0 GiB available; use a smaller grid, fewer right-hand sides or a smaller "
                         "max_coarse")


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(ValueError, match="--device: 'tpu' is not a torch device"):
        main(["solve", "--device", "tpu", "--debug"])
    with pytest.raises(ValueError, match="--device: 'tpu' is not a torch device"):
        main(["--debug", "solve", "--device", "tpu"])


# ---------------------------------------------------------------------------------------------- learn-smoother
def _learn(*arguments):
    return main(["learn-smoother", "--quiet", "--train-size", "15", "--iterations", "10", "--batch", "4", "--unroll",
                 "2", "--threads", "1", *arguments])


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("training started before the output paths were checked")

    monkeypatch.setattr(sys.modules["pde.learned"], "learn_smoother", forbidden)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--out", "notes.txt/sub/s.pt"], "--out: cannot write 'notes.txt/sub/s.pt': 'notes.txt' is a file, not a"),
        (["--out", "."], "--out: '.' is a folder; expected a file name"),
        (["--out", "s.pt", "--log", "notes.txt/train.jsonl"], "--log: cannot write 'notes.txt/train.jsonl'"),
        (["--out", "s.pt", "--device", "tpu"], "--device: 'tpu' is not a torch device"),
        (["--out", "s.pt", "--threads", "-1"], "--threads: expected a positive integer; got -1"),
    ],
)
def test_learn_smoother_checks_outputs_before_training(arguments, message, capsys, tmp_path, monkeypatch, no_training):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file where a folder is expected")
    assert _learn(*arguments) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "s.pt").exists()


def test_learn_smoother_with_a_huge_lr_fails_and_saves_nothing(capsys, tmp_path, one_thread):
    out = tmp_path / "s.pt"
    assert _learn("--out", str(out), "--lr", "1e4") == 1
    assert _err(capsys).startswith("mgnet learn-smoother: --lr: training diverged: the per-cycle factor went from")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_learn_smoother_creates_missing_folders(capsys, tmp_path, one_thread):
    out = tmp_path / "new" / "folder" / "s.pt"
    assert _learn("--out", str(out), "--log", str(tmp_path / "logs" / "train.jsonl")) == 0
    assert out.is_file() and (tmp_path / "logs" / "train.jsonl").is_file()
    assert "saved" in capsys.readouterr().out
