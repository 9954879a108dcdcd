"""A training run's folder: checkpoints, logs, and the order in which one epoch is committed.

An epoch writes ``last.pt`` (the commit point: the full training state, including the history), then
``best.pt`` when the epoch is the best so far (the same bytes), then ``curves.png``, ``log.csv`` and
``log.jsonl`` (all derived from the history in ``last.pt``).  Every file is replaced atomically
(:mod:`mgcore.io`).  A process killed before ``last.pt`` is replaced leaves the previous epoch committed; one
killed after it leaves a *half-committed* epoch, which :meth:`RunDirectory.resume` finishes from ``last.pt``
before training on, so a resumed run ends with the files an uninterrupted one writes.

``run.json`` names the run the folder holds (an id and its configuration), written when a run starts
afresh; checkpoints carry the id.  A ``--resume`` therefore refuses a ``last.pt`` of an earlier run (an
``--overwrite`` interrupted before its first epoch was saved) and refuses changed settings, naming them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from mgcore.io import atomic_write_bytes, remove_stale_temporaries

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "RunDirectory",
    "check_output_dir",
    "load_checkpoint",
    "load_model_state",
    "load_weights_from",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


def _read(path: Path, what: str):
    """``torch.load`` with ``weights_only=True`` (no code from the file runs); one clear error naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "the file is cut short or corrupt"
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`vision.train.train` with ``weights_only=True``; clear errors for bad
    files."""
    path = Path(path)
    blob = _read(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT or "model" not in blob:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a vision.train checkpoint (format {CHECKPOINT_FORMAT})")
    return blob


def load_model_state(model: nn.Module, blob: dict, path: str | Path, name: str, num_classes: int) -> None:
    """Load a checkpoint's weights, naming the file and what differs when they do not fit."""
    saved_name, saved_classes = blob.get("model_name"), blob.get("num_classes")
    if saved_name != name or saved_classes != num_classes:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds model {saved_name!r} with {saved_classes} classes; "
            f"expected model {name!r} with {num_classes} classes"
        )
    _load_state(model, blob["model"], f"checkpoint {str(path)!r} does not fit model {name!r}")


def _load_state(model: nn.Module, state: Mapping, what: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise CheckpointError(f"{what} (another architecture or configuration): {' '.join(first[:3])[:300]}") from None


def load_weights_from(model: nn.Module, path: str | Path, name: str) -> str:
    """Initialise ``model`` from a :func:`vision.train.train` checkpoint or an original MgNet_Code one.

    Returns a one-line description of what was loaded (for an original checkpoint, the configuration the
    converter inferred).  The weights must fit ``model`` exactly; the error names the file.
    """
    path = Path(path)
    blob = _read(path, "init_from: checkpoint")
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT and "model" in blob:
        _load_state(model, blob["model"], f"init_from: checkpoint {str(path)!r} does not fit model {name!r}")
        return f"{path}: {blob.get('model_name')} epoch {blob.get('epoch')}"
    from vision.convert import config_from_original, convert_original_state_dict

    state = blob.get("model_state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"init_from: {str(path)!r} is neither a vision.train checkpoint nor an original MgNet state dict"
        )
    try:
        config = config_from_original(state)
        converted = convert_original_state_dict(state)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"init_from: {str(path)!r}: {str(err).strip(chr(39))}") from None
    _load_state(
        model,
        converted,
        f"init_from: original MgNet checkpoint {str(path)!r} ({config}) does not fit model {name!r}; "
        "choose --model-kwargs that match it",
    )
    return f"{path}: original MgNet_Code checkpoint, {config}"


def check_output_dir(path: str | Path) -> Path:
    """Refuse an output folder that cannot be created or written, before any long work starts.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "file").write_text("")
    >>> check_output_dir(d / "run" / "a") == d / "run" / "a"
    True
    >>> check_output_dir(d / "file" / "run")
    Traceback (most recent call last):
    ...
    NotADirectoryError: output_dir '.../file/run': '.../file' is a file, so the folder cannot be created there
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output_dir {str(path)!r} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"output_dir {str(path)!r}: {str(existing)!r} is a file, so the folder cannot be created there"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output_dir {str(path)!r}: {str(existing)!r} is not writable")
    return path


def _normalised(value: object) -> object:
    """Tuples and lists alike, as a checkpoint's (JSON-like) config stores them."""
    return json.loads(json.dumps(value))


def _plot_png(history: list[dict], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [100 * h["test_acc"] for h in history], "s-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


class RunDirectory:
    """The files of one training run in ``path``; see the module docstring for the commit order.

    Examples
    --------
    >>> import tempfile
    >>> run = RunDirectory(tempfile.mkdtemp())
    >>> run.has_checkpoint, run.last.name, run.best.name
    (False, 'last.pt', 'best.pt')
    """

    FILES = ("last.pt", "best.pt", "log.csv", "log.jsonl", "curves.png", "run.json")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        self.run_file = self.path / "run.json"
        self.run_id: str | None = None

    @property
    def has_checkpoint(self) -> bool:
        return self.last.exists()

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed write left behind."""
        return remove_stale_temporaries(self.path, self.FILES)

    def start(self, config: dict) -> str:
        """Record a new run (fresh or ``--overwrite``): a new id in ``run.json``; returns the id.

        The previous run's files stay until the new run's first epoch replaces them, and a resume in between
        is refused (its ``last.pt`` carries the old id).
        """
        self.run_id = uuid.uuid4().hex
        text = json.dumps({"run_id": self.run_id, "config": config}, indent=1, default=str) + "\n"
        atomic_write_bytes(self.run_file, text.encode())
        return self.run_id

    def resume(
        self,
        config: dict,
        may_differ: Iterable[str],
        title: str,
        model: nn.Module,
        name: str,
        num_classes: int,
        finish: bool = True,
    ) -> dict:
        """Load ``last.pt`` for ``--resume``: check it belongs to this folder's run, fits ``model`` and was
        trained with the same settings, and (``finish``) finish its epoch's commit; returns the checkpoint."""
        if not self.has_checkpoint:
            raise CheckpointError(f"resume: no checkpoint {str(self.last)!r} to resume from")
        blob = load_checkpoint(self.last)
        recorded = None
        if self.run_file.is_file():
            try:
                recorded = json.loads(self.run_file.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(f"resume: {str(self.run_file)!r} cannot be read ({err})") from None
        if recorded is not None and recorded.get("run_id") != blob.get("run_id"):
            raise CheckpointError(
                f"resume: {str(self.last)!r} belongs to an earlier run than the one last started in "
                f"{str(self.path)!r} (an --overwrite interrupted before its first epoch was saved); "
                "start that run again with --overwrite"
            )
        load_model_state(model, blob, self.last, name, num_classes)
        saved = blob.get("config") or {}
        free = set(may_differ)
        changed = [
            f"{key} {_normalised(saved.get(key))!r} -> {_normalised(value)!r}"
            for key, value in config.items()
            if key not in free and key in saved and _normalised(saved[key]) != _normalised(value)
        ]
        if changed:
            raise CheckpointError(
                f"resume: the run in {str(self.path)!r} was trained with other settings ({'; '.join(changed)}); "
                "pass the run's own settings, or start a new run with --overwrite or another --output-dir"
            )
        self.run_id = blob.get("run_id")
        if finish:
            self.finish_commit(blob, title)
        return blob

    def finish_commit(self, blob: dict, title: str) -> None:
        """Write what ``last.pt``'s epoch implies and a kill may have skipped: ``best.pt`` when that epoch
        was the best, the plot and the logs (``log.jsonl`` is written last, so when it is complete the
        others are too)."""
        if blob["best_epoch"] == blob["epoch"]:
            data = self.last.read_bytes()
            if not self.best.is_file() or self.best.read_bytes() != data:
                atomic_write_bytes(self.best, data)
        history = list(blob["history"])
        log = self.path / "log.jsonl"
        if not (log.is_file() and log.read_text() == _jsonl(history)):
            self._write_derived(history, title)

    def commit_epoch(self, blob: dict, is_best: bool, title: str) -> None:
        """Write one epoch's outputs in commit order: ``last.pt``, ``best.pt``, plot, ``log.csv``,
        ``log.jsonl``."""
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        data = buffer.getvalue()
        atomic_write_bytes(self.last, data)  # the commit point
        if is_best:
            atomic_write_bytes(self.best, data)
        self._write_derived(list(blob["history"]), title)

    def _write_derived(self, history: list[dict], title: str) -> None:
        if not history:
            return
        atomic_write_bytes(self.path / "curves.png", _plot_png(history, title))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(self.path / "log.csv", buffer.getvalue().encode())
        atomic_write_bytes(self.path / "log.jsonl", _jsonl(history).encode())


def _jsonl(history: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in history)
