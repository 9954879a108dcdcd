"""Datasets: MNIST / Fashion-MNIST (IDX), CIFAR-10/100 (binary version), and image folders.

Small datasets are read once into ``uint8`` tensors that live on the training device; batches are cut,
shuffled and augmented there (random crop with zero padding, horizontal flip) with no worker processes.
Image folders (``root/train/<class>/*.jpg``, ``root/val/<class>/...``) are read with Pillow through
``DataLoader`` workers.

Files are downloaded from their canonical addresses when missing, checked against published checksums, and
archives are extracted with every member checked to stay inside the target folder.  CIFAR is read from its
*binary* version only: no downloaded file is ever unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import random
import struct
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mgcore.io import atomic_writer

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetNotFoundError",
    "DeviceLoader",
    "FolderLoader",
    "ImageFolder",
    "Loaders",
    "TensorData",
    "augment_batch",
    "build_loaders",
    "download_url",
    "load_dataset",
    "read_cifar_binary",
    "read_idx",
    "read_image",
    "safe_extract",
    "write_cifar_binary",
]


class DataError(ValueError):
    """A data file or folder is malformed; the message names it."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable (offline, or the download failed)."""


@dataclass(frozen=True)
class Remote:
    """One downloadable file: its URL and its published checksum."""

    url: str  # canonical address
    md5: str  # checksum published with the dataset


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses (LeCun's is gone)
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# name -> (remote files, image shape, classes, mean, std)
DATASETS: dict[str, dict] = {
    "mnist": dict(
        remotes={
            "train-images-idx3-ubyte.gz": Remote(
                _MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"
            ),
            "train-labels-idx1-ubyte.gz": Remote(
                _MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"
            ),
            "t10k-images-idx3-ubyte.gz": Remote(
                _MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"
            ),
            "t10k-labels-idx1-ubyte.gz": Remote(
                _MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"
            ),
        },
        shape=(1, 28, 28),
        classes=10,
        mean=(0.1307,),
        std=(0.3081,),
    ),
    "fashion_mnist": dict(
        remotes={
            "train-images-idx3-ubyte.gz": Remote(
                _FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
            ),
            "train-labels-idx1-ubyte.gz": Remote(
                _FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"
            ),
            "t10k-images-idx3-ubyte.gz": Remote(
                _FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"
            ),
            "t10k-labels-idx1-ubyte.gz": Remote(
                _FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"
            ),
        },
        shape=(1, 28, 28),
        classes=10,
        mean=(0.2860,),
        std=(0.3530,),
    ),
    "cifar10": dict(
        remotes={
            "cifar-10-binary.tar.gz": Remote(_CIFAR_URL + "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
        },
        shape=(3, 32, 32),
        classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    ),
    "cifar100": dict(
        remotes={
            "cifar-100-binary.tar.gz": Remote(
                _CIFAR_URL + "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"
            )
        },
        shape=(3, 32, 32),
        classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "folder": dict(
        remotes={}, shape=(3, 224, 224), classes=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    ),
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Download timeout (seconds): offline machines fail fast instead of hanging.
DOWNLOAD_TIMEOUT = 20.0


# ------------------------------------------------------------------------------------------------ readers


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"{path}: cannot be read ({type(err).__name__}: {err}); the file is truncated or corrupt"
        ) from None


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (raw or gzipped) of unsigned bytes into a ``uint8`` tensor.

    Examples
    --------
    >>> import tempfile, struct, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = p.write_bytes(struct.pack(">HBBI", 0, 8, 1, 3) + bytes([7, 8, 9]))
    >>> read_idx(p)
    tensor([7, 8, 9], dtype=torch.uint8)
    """
    path = Path(path)
    data = _open_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()}, expected 0000 08 0n)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape)  # Python integers: a header of huge dimensions cannot wrap around
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(data) - header}; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def read_cifar_binary(paths: Sequence[str | Path], coarse: bool = False, fine: bool = False) -> tuple[Tensor, Tensor]:
    """Read CIFAR binary batches: records of label byte(s) then 3072 bytes (R, G, B planes of 32x32).

    CIFAR-10 records have one label byte; CIFAR-100 records have a coarse then a fine label byte
    (``fine=True`` returns the fine label, ``coarse=True`` the coarse one).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.bin"
    >>> _ = p.write_bytes(bytes([3]) + bytes(3072))
    >>> x, y = read_cifar_binary([p]); x.shape, y.tolist()
    (torch.Size([1, 3, 32, 32]), [3])
    """
    label_bytes = 2 if (coarse or fine) else 1
    record = label_bytes + 3072
    images, labels = [], []
    for path in paths:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot be read ({err})") from None
        if len(data) == 0 or len(data) % record:
            raise DataError(
                f"{path}: {len(data)} bytes is not a whole number of {record}-byte CIFAR records; "
                "the file is truncated or not a CIFAR binary batch"
            )
        array = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
        labels.append(array[:, 0 if coarse or label_bytes == 1 else 1].astype(np.int64))
        images.append(array[:, label_bytes:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def write_cifar_binary(path: str | Path, images: Tensor, labels: Tensor, coarse_labels: Tensor | None = None) -> None:
    """Write images ``uint8 (N, 3, 32, 32)`` and labels in the CIFAR binary format (CIFAR-100 layout when
    ``coarse_labels`` is given); the inverse of :func:`read_cifar_binary`, used for synthetic test data.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.bin"
    >>> write_cifar_binary(p, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([1, 9]))
    >>> p.stat().st_size, read_cifar_binary([p])[1].tolist()
    (6146, [1, 9])
    """
    x = images.to(torch.uint8).reshape(len(images), 3072).numpy()
    columns = [labels.to(torch.uint8).reshape(-1, 1).numpy()]
    if coarse_labels is not None:
        columns.insert(0, coarse_labels.to(torch.uint8).reshape(-1, 1).numpy())
    Path(path).write_bytes(np.concatenate([*columns, x], axis=1).tobytes())


# Largest image `read_image` decodes (pixels; 8K x 8K); the size is read from the header, before decoding.
MAX_IMAGE_PIXELS = 8192 * 8192


def read_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """Read an image file with Pillow into an RGB ``uint8`` tensor ``(3, H, W)``; a clear error otherwise.

    An image whose header declares more than ``max_pixels`` pixels is refused before it is decoded (a
    small file can claim a size that would need gigabytes).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DataError(
                    f"{path}: the image declares {width}x{height} pixels, more than the {max_pixels} "
                    "read_image decodes; refused before decoding"
                )
            img = img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own guard, for sizes far beyond ours
        raise DataError(f"{path}: the image declares too many pixels ({err}); refused before decoding") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)


# ------------------------------------------------------------------------------------------- downloads


def _urlopen(url: str, timeout: float):
    return urllib.request.urlopen(url, timeout=timeout)


def download_url(url: str, dest: str | Path, md5: str | None = None, timeout: float | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically (a temporary file, checked, then renamed).

    Raises :class:`DatasetNotFoundError` when the network is unreachable (within ``timeout`` seconds) and
    :class:`DataError` on a checksum mismatch; nothing is left at ``dest`` in either case.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    digest = hashlib.md5()
    with atomic_writer(dest, "wb") as out:  # a failed or mismatched download leaves nothing at dest
        try:
            with _urlopen(url, timeout or DOWNLOAD_TIMEOUT) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            raise DatasetNotFoundError(
                f"download of {url} failed ({type(err).__name__}: {err}); the machine seems offline"
            ) from None
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"{url}: downloaded file does not match its published MD5 {md5}; not kept")
    return dest


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``dest`` (absolute paths, ``..``,
    links, devices).

    Examples
    --------
    >>> import io, tarfile, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); a = d / "evil.tar"
    >>> with tarfile.open(a, "w") as t:
    ...     info = tarfile.TarInfo("../escape.txt"); info.size = 1
    ...     t.addfile(info, io.BytesIO(b"x"))
    >>> safe_extract(a, d / "out")
    Traceback (most recent call last):
    ...
    vision.data.DataError: .../evil.tar: member '../escape.txt' would be extracted outside ...
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (root / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
                raise DataError(
                    f"{archive}: member {m.name!r} would be extracted outside {dest} or is not a plain file"
                )
        tar.extractall(root, members=members, filter="data")


def _verify_sha256sums(folder: Path, names: Sequence[str]) -> None:
    """Check files against a ``SHA256SUMS`` file in ``folder`` when there is one."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return
    expected = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0]
    for name in names:
        if name in expected:
            h = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            if h != expected[name]:
                raise DataError(
                    f"{folder / name}: SHA256 {h[:12]}... does not match SHA256SUMS ({expected[name][:12]}...)"
                )


# ---------------------------------------------------------------------------------------------- datasets


@dataclass
class TensorData:
    """A whole split as tensors: ``images`` ``uint8 (N, C, H, W)``, ``labels`` ``int64 (N,)``."""

    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _offline_error(name: str, folder: Path, err: Exception | None) -> DatasetNotFoundError:
    why = f": {err}" if err else " (download disabled)"
    return DatasetNotFoundError(
        f"dataset {name!r} not found in data directory {str(folder)!r} and it could not be downloaded{why}. "
        "Pass --data-dir pointing to a local copy."
    )


def _load_idx_dataset(name: str, folder: Path, download: bool) -> tuple[TensorData, TensorData]:
    info = DATASETS[name]
    candidates = [folder, folder / name, folder / name.upper(), folder / name / "raw", folder / "raw"]
    for base in candidates:
        found = [_find_idx(base, stem) for stem in _IDX_NAMES]
        if all(found):
            break
    else:
        if not download:
            raise _offline_error(name, folder, None)
        base = folder
        try:
            for fname, remote in info["remotes"].items():
                if not (folder / fname).is_file():
                    download_url(remote.url, folder / fname, remote.md5)
        except DatasetNotFoundError as err:
            raise _offline_error(name, folder, err) from None
        found = [_find_idx(base, stem) for stem in _IDX_NAMES]
    _verify_sha256sums(base, [p.name for p in found])
    x_train, y_train, x_test, y_test = (read_idx(p) for p in found)
    splits = []
    for x, y, px, py in ((x_train, y_train, found[0], found[1]), (x_test, y_test, found[2], found[3])):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{px} / {py}: {tuple(x.shape)} images do not match {tuple(y.shape)} labels")
        _check_labels(y.long(), info["classes"], py)
        splits.append(TensorData(x.unsqueeze(1).contiguous(), y.long()))
    return splits[0], splits[1]


def _check_labels(labels: Tensor, classes: int, source) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
        raise DataError(f"{source}: label {bad} is outside the class range 0..{classes - 1}")


def _load_cifar(name: str, folder: Path, download: bool) -> tuple[TensorData, TensorData]:
    info = DATASETS[name]
    if name == "cifar10":
        sub, train_names, test_names = (
            "cifar-10-batches-bin",
            [f"data_batch_{i}.bin" for i in range(1, 6)],
            ["test_batch.bin"],
        )
    else:
        sub, train_names, test_names = "cifar-100-binary", ["train.bin"], ["test.bin"]

    def locate() -> Path | None:
        for base in (folder / sub, folder, folder / name / sub, folder / name):
            if all((base / n).is_file() for n in train_names + test_names):
                return base
        return None

    base = locate()
    if base is None:
        if not download:
            raise _offline_error(name, folder, None)
        ((fname, remote),) = info["remotes"].items()
        try:
            archive = download_url(remote.url, folder / fname, remote.md5)
        except DatasetNotFoundError as err:
            raise _offline_error(name, folder, err) from None
        safe_extract(archive, folder)
        base = locate()
        if base is None:
            raise DataError(f"{folder / fname}: the archive does not hold the expected {sub}/ files")
    fine = name == "cifar100"
    splits = []
    for names in (train_names, test_names):
        x, y = read_cifar_binary([base / n for n in names], fine=fine)
        _check_labels(y, info["classes"], base / names[0])
        splits.append(TensorData(x, y))
    return splits[0], splits[1]


def load_dataset(name: str, data_dir: str | Path, download: bool = True) -> tuple[TensorData, TensorData]:
    """The train and test splits of ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100`` as tensors.

    ``data_dir`` may hold the files directly or in the usual sub-folders (``cifar-10-batches-bin/``, ...).
    """
    if name not in DATASETS or name == "folder":
        raise ValueError(f"dataset: expected one of {sorted(set(DATASETS) - {'folder'})}; got {name!r}")
    folder = Path(data_dir).expanduser()
    if name in ("mnist", "fashion_mnist"):
        return _load_idx_dataset(name, folder, download)
    return _load_cifar(name, folder, download)


# ---------------------------------------------------------------------------------- on-device batching


def augment_batch(x: Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip of a whole batch at once, on its device.

    Parameters
    ----------
    x : Tensor
        ``(N, C, H, W)`` images (any dtype).
    padding : int
        Zero padding before a random ``H x W`` crop (0 disables).
    flip : bool
        Flip each image left-right with probability 1/2.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    >>> augment_batch(x, 0, False).equal(x)
    True
    >>> augment_batch(x, 2, True, torch.Generator().manual_seed(0)).shape
    torch.Size([1, 1, 4, 4])
    """
    offsets, flips = _draw_augmentation(x.shape[0], padding, flip, generator)
    return _apply_augmentation(x, padding, offsets, flips)


def _draw_augmentation(
    n: int, padding: int, flip: bool, generator: torch.Generator | None
) -> tuple[Tensor | None, Tensor | None]:
    """The random numbers of :func:`augment_batch` for ``n`` images, drawn on the CPU in its order:
    crop offsets ``(n, 2)`` (row, column) and flip flags ``(n,)``; ``None`` for what is disabled."""
    offsets = flips = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        offsets = torch.stack([oy, ox], 1)
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def _apply_augmentation(x: Tensor, padding: int, offsets: Tensor | None, flips: Tensor | None) -> Tensor:
    """Crop and flip ``x`` on its device with offsets and flags already there (or moved there here)."""
    n, c, h, w = x.shape
    device = x.device
    if offsets is not None:
        offsets = offsets.to(device)
        padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H + 2p, W + 2p), zeros
        rows = (offsets[:, 0, None] + torch.arange(h, device=device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (offsets[:, 1, None] + torch.arange(w, device=device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=device)[:, None, None, None]
        chan = torch.arange(c, device=device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]  # (N, C, H, W)
    if flips is not None:
        x = torch.where(flips.to(device)[:, None, None, None], x.flip(3), x)
    return x


class DeviceLoader:
    """Batches of a :class:`TensorData` held on the training device, normalised to float there.

    Each epoch's order and augmentation come from a generator seeded by ``(seed, epoch)``: a run resumed at
    epoch ``e`` sees exactly the batches an uninterrupted one does.  With ``world_size > 1`` every rank takes
    a strided share of the same permutation (padded to equal length, as ``DistributedSampler`` does).
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        device: torch.device | str = "cpu",
        train: bool = False,
        padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer; got {batch_size}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        c = self.images.shape[1]
        self.mean = torch.tensor(mean, device=self.device).reshape(1, c, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, device=self.device).reshape(1, c, 1, 1) * 255.0)
        self.train, self.padding, self.flip = train, padding, flip
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.channels_last = channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and self.train:
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])  # pad by wrapping
        if self.world_size > 1:
            # Evaluation shards are not padded, so summed counts cover each test image exactly once.
            order = order[self.rank :: self.world_size]
        return order

    def _batches(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self._batches(len(self._indices()))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._indices()
        batches = self._batches(len(order))
        augment = self.train and (self.padding or self.flip)
        offsets = flips = None
        if augment:
            # The whole epoch's crop offsets and flips are drawn here, batch by batch in the order
            # augment_batch draws them, and moved to the device once: a per-batch copy from the host would
            # make the host wait for the device every step.
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7919 * (self.rank + 1))
            draws = [
                _draw_augmentation(min(self.batch_size, len(order) - i * self.batch_size), self.padding, self.flip, g)
                for i in range(batches)
            ]
            if self.padding:
                offsets = torch.cat([d[0] for d in draws]).to(self.device, non_blocking=True)
            if self.flip:
                flips = torch.cat([d[1] for d in draws]).to(self.device, non_blocking=True)
        order = order.to(self.device, non_blocking=True)
        for i in range(batches):
            span = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[span]
            x = self.images[idx]  # (B, C, H, W) uint8
            if augment:
                x = _apply_augmentation(
                    x, self.padding, None if offsets is None else offsets[span], None if flips is None else flips[span]
                )
            x = (x.float() - self.mean) * self.inv_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


class FolderLoader:
    """Wraps a DataLoader of uint8 images: moves batches to the device (from pinned memory on CUDA, without
    waiting) and normalises them there."""

    def __init__(self, loader, device, mean, std, channels_last: bool = False, sampler=None) -> None:
        self.loader, self.device, self.sampler, self.channels_last = loader, device, sampler, channels_last
        self.mean = torch.tensor(mean, device=device).reshape(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, device=device).reshape(1, -1, 1, 1) * 255.0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            x = (x.to(self.device, non_blocking=True).float() - self.mean) * self.inv_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


# -------------------------------------------------------------------------------------------- folders


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` read with Pillow; classes are the sorted sub-folder names.

    Training crops are random-resized (scale 0.08-1, as for ImageNet) with a random flip; evaluation resizes
    the shorter side to ``size / 0.875`` and takes the centre crop.  Items are ``uint8 (3, size, size)``.
    """

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

    def __init__(
        self, root: str | Path, size: int = 224, train: bool = False, classes: Sequence[str] | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"image folder {str(self.root)!r} does not exist")
        self.classes = (
            list(classes) if classes is not None else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        )
        if not self.classes:
            raise DataError(f"{self.root}: expected one sub-folder per class; found none")
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            folder = self.root / cls
            if folder.is_dir():
                for p in sorted(folder.rglob("*")):
                    if p.suffix.lower() in self.EXTENSIONS and p.is_file():
                        self.samples.append((p, label))
        if not self.samples:
            raise DataError(f"{self.root}: no image files ({', '.join(self.EXTENSIONS)}) in its class folders")
        self.size, self.train = size, train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        img = read_image(path)  # (3, H, W) uint8, a clear error for a non-image
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        if self.train:
            pil = _random_resized_crop(pil, self.size)
            if random.random() < 0.5:
                pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            pil = _center_crop(pil, self.size)
        return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1), label


def _random_resized_crop(pil, size: int):
    from PIL import Image

    w, h = pil.size
    for _ in range(10):
        area = w * h * random.uniform(0.08, 1.0)
        ratio = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
            return pil.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return _center_crop(pil, size)


def _center_crop(pil, size: int):
    from PIL import Image

    w, h = pil.size
    scale = size / 0.875 / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    pil = pil.resize((nw, nh), Image.Resampling.BILINEAR)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return pil.crop((x0, y0, x0 + size, y0 + size))


def folder_splits(root: str | Path, size: int) -> tuple[ImageFolder, ImageFolder]:
    """Train and validation :class:`ImageFolder` of ``root/train`` and ``root/val`` (or ``root/test``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data directory {str(root)!r} does not exist (expected train/ and val/ in it)")
    train = ImageFolder(root / "train", size, train=True)
    val_dir = root / "val" if (root / "val").is_dir() else root / "test"
    val = ImageFolder(val_dir, size, train=False, classes=train.classes)
    return train, val


# -------------------------------------------------------------------------------------------- loaders


@dataclass
class Loaders:
    """What :func:`build_loaders` returns: the two loaders and what the model and checkpoints need to know."""

    train: DeviceLoader | FolderLoader  # shuffled and augmented, one epoch per iteration
    test: DeviceLoader | FolderLoader  # in order, no augmentation
    num_classes: int
    in_channels: int
    class_names: list[str]
    mean: tuple[float, ...]  # normalisation of images in [0, 1]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]  # (C, H, W)


def build_loaders(
    dataset: str,
    data_dir: str | Path | None,
    *,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device | str = "cpu",
    download: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    train_subset: int | None = None,
    test_subset: int | None = None,
    crop_padding: int | None = None,
    hflip: bool | None = None,
    drop_last: bool = True,
    image_size: int = 224,
    workers: int = 4,
    channels_last: bool = False,
) -> Loaders:
    """Train and test loaders of a dataset (see :class:`vision.train.TrainConfig` for each option).

    Small datasets live on ``device`` (:class:`DeviceLoader`); image folders are read by ``DataLoader``
    workers (:class:`FolderLoader`).  ``crop_padding`` and ``hflip`` default to 4 and on for CIFAR and
    folders, 2 and off for (Fashion-)MNIST.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}; got {dataset!r}")
    device = torch.device(device)
    info = DATASETS[dataset]
    folder = Path(data_dir) if data_dir else Path("data") / dataset
    mean, std = tuple(info["mean"]), tuple(info["std"])
    if dataset == "folder":
        if not data_dir:
            raise ValueError("data_dir: required for dataset 'folder' (root with train/ and val/ class folders)")
        train_set, test_set = folder_splits(folder, image_size)
        if train_subset:
            train_set.samples = train_set.samples[:train_subset]
        if test_subset:
            test_set.samples = test_set.samples[:test_subset]
        sampler = test_sampler = None
        if world_size > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(train_set, world_size, rank, seed=seed)
            test_sampler = torch.utils.data.distributed.DistributedSampler(test_set, world_size, rank, shuffle=False)
        pin = device.type == "cuda"  # page-locked batches let the copy to the GPU overlap the model
        train_loader = torch.utils.data.DataLoader(
            train_set,
            batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=workers,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=workers > 0,
            pin_memory=pin,
        )
        test_loader = torch.utils.data.DataLoader(
            test_set, eval_batch_size, sampler=test_sampler, num_workers=workers, pin_memory=pin
        )
        return Loaders(
            FolderLoader(train_loader, device, mean, std, channels_last, sampler),
            FolderLoader(test_loader, device, mean, std, channels_last),
            len(train_set.classes),
            3,
            list(train_set.classes),
            mean,
            std,
            (3, image_size, image_size),
        )
    train_data, test_data = load_dataset(dataset, folder, download=download)
    if train_subset:
        train_data = TensorData(train_data.images[:train_subset], train_data.labels[:train_subset])
    if test_subset:
        test_data = TensorData(test_data.images[:test_subset], test_data.labels[:test_subset])
    digits = dataset in ("mnist", "fashion_mnist")
    padding = crop_padding if crop_padding is not None else (2 if digits else 4)
    flip = hflip if hflip is not None else not digits
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size, channels_last=channels_last)
    classes = info["classes"]
    return Loaders(
        DeviceLoader(
            train_data, batch_size, mean, std, train=True, padding=padding, flip=flip, drop_last=drop_last, **common
        ),
        DeviceLoader(test_data, eval_batch_size, mean, std, **common),
        classes,
        info["shape"][0],
        list(CIFAR10_CLASSES) if dataset == "cifar10" else [str(i) for i in range(classes)],
        mean,
        std,
        tuple(info["shape"]),
    )
