"""The training code's structure: the registry imports no model module, and the CLI help comes from the
TrainConfig fields' metadata."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

from vision.cli import build_parser
from vision.train import TrainConfig

VISION = Path(__file__).resolve().parents[2] / "vision"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_registry_imports_no_model_module():
    assert not {"vision.zoo", "vision.models", "vision.baselines", "vision.layers"} & _imports(VISION / "registry.py")
    assert "inspect" not in _imports(VISION / "cli.py")  # help is not parsed out of the source


def test_every_train_option_has_help_from_its_field():
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    for f in fields(TrainConfig):
        assert f.metadata["help"] and isinstance(f.metadata["resumable"], bool), f.name
        assert f"--{f.name.replace('_', '-')}" in help_text
    assert "weight decay on every parameter, norms, biases and Hat supports included" in help_text
