"""Atomic file writes shared by every package: a file is either its old content or its complete new content.

The writer puts the bytes in a temporary file *in the target's folder* (so the final rename stays on one file
system), flushes and ``fsync``\\ s it, gives it the mode an ordinary ``open`` would (``0o666`` less the
umask; ``mkstemp`` would leave ``0o600``), and ``os.replace``\\ s it over the target, which POSIX makes
atomic.  On any error the temporary file is removed.  A process killed between the two steps leaves a
``.NAME.*.tmp`` file behind; :func:`remove_stale_temporaries` deletes those of the names a program owns.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "atomic_writer", "remove_stale_temporaries"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` in one step.

    Parameters
    ----------
    path : str or PathLike
        The file to write; its folder is created when missing.
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        Text encoding (``"utf-8"`` when ``mode="w"`` and none is given).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_writer(target, "w") as fh:
    ...     _ = fh.write("complete")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('complete', ['notes.txt'])
    >>> try:
    ...     with atomic_writer(target, "w") as fh:
    ...         _ = fh.write("half")
    ...         raise RuntimeError("killed")
    ... except RuntimeError:
    ...     pass
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('complete', ['notes.txt'])
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w'; got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding or ("utf-8" if mode == "w" else None)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`); returns the path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "a.bin", b"\\x00\\x01").read_bytes()
    b'\\x00\\x01'
    """
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> p = atomic_save({"w": torch.ones(2)}, pathlib.Path(tempfile.mkdtemp()) / "c.pt")
    >>> torch.load(p, weights_only=True)["w"]
    tensor([1., 1.])
    """
    import torch

    with atomic_writer(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete temporary files that a killed :func:`atomic_writer` left for the files ``names`` in ``folder``.

    Both ``.NAME.*.tmp`` (this module) and ``NAME.*.tmp`` (older writers) are removed; other files are
    left alone.  Returns the removed paths.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in (".last.pt.x1.tmp", "last.pt.x2.tmp", "other.tmp", "last.pt"):
    ...     _ = (d / name).write_bytes(b"")
    >>> [p.name for p in remove_stale_temporaries(d, ["last.pt"])]
    ['.last.pt.x1.tmp', 'last.pt.x2.tmp']
    >>> sorted(p.name for p in d.iterdir())
    ['last.pt', 'other.tmp']
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for pattern in (f".{name}.*.tmp", f"{name}.*.tmp"):
            for stale in sorted(folder.glob(pattern)):
                if stale.is_file():
                    stale.unlink()
                    removed.append(stale)
    return removed
