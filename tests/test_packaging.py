"""Packaging: the metadata accepts the user's torch (a range, no pin), the project's own set-up pins the CPU
build through a constraints file, and the distribution name is not the unrelated ``mgnet`` on PyPI."""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

requirements = pytest.importorskip("packaging.requirements")
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _metadata() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _torch_requirement():
    lines = _metadata()["options"]["install_requires"].strip().splitlines()
    found = [requirements.Requirement(line) for line in lines if line.strip().startswith("torch")]
    assert len(found) == 1, lines
    return found[0]


def test_the_distribution_is_not_the_unrelated_mgnet():
    config = _metadata()
    assert config["metadata"]["name"] == "mgnet-multigrid"
    assert "mgnet = mgnet.cli:main" in config["options.entry_points"]["console_scripts"]


def test_metadata_accepts_the_installed_torch_and_cuda_builds():
    requirement = _torch_requirement()
    assert not any(spec.operator in ("==", "===", "~=") for spec in requirement.specifier), requirement
    installed = Version(torch.__version__)
    assert requirement.specifier.contains(installed, prereleases=True), (requirement, installed)
    for other in ("2.13.0+cu128", "2.5.1", "2.13.0"):  # CUDA and plain builds a user may already have
        assert requirement.specifier.contains(Version(other)), other
    assert not requirement.specifier.contains(Version("2.2.2"))  # torch.amp.GradScaler(device) needs 2.3


def test_dev_extra_has_the_test_tools():
    extras = _metadata()["options.extras_require"]["dev"].split()
    assert {"pytest", "ruff", "hypothesis", "packaging"} <= set(extras)


def test_constraints_pin_the_cpu_build_that_make_installs():
    lines = [
        line.strip()
        for line in (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins = [requirements.Requirement(line) for line in lines]
    (torch_pin,) = [pin for pin in pins if pin.name == "torch"]
    (spec,) = torch_pin.specifier
    assert spec.operator == "==" and Version(spec.version).local == "cpu"
    assert _torch_requirement().specifier.contains(Version(spec.version))  # the pin satisfies the metadata
    if Version(torch.__version__).local == "cpu":  # the environment make built
        assert Version(spec.version) == Version(torch.__version__)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS := constraints/cpu\.txt$", makefile, re.MULTILINE)
    assert re.search(r"^\$\(STAMP\):.*\$\(CONSTRAINTS\)", makefile, re.MULTILINE)  # a new pin reinstalls
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all("-c $(CONSTRAINTS)" in line for line in installs), installs


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools in the environment")
def test_an_editable_install_leaves_the_installed_torch_alone(tmp_path):
    """pip resolves ``pip install -e .`` against this environment, offline: only the project is to install."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
               "--quiet", "--report", str(report), "-e", str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert names == ["mgnet-multigrid"], names
