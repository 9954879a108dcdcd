"""Data readers and their errors: IDX raw and gzipped, CIFAR binary, image folders, downloads offline,
archive extraction, on-device augmentation."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import tarfile
import typing
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from vision import data as vdata
from vision.data import (
    DataError,
    DatasetNotFoundError,
    DeviceLoader,
    ImageFolder,
    TensorData,
    augment_batch,
    load_dataset,
    read_cifar_binary,
    read_idx,
    read_image,
    safe_extract,
    write_cifar_binary,
)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_real_mnist_gzipped(mnist_dir):
    train, test = load_dataset("mnist", mnist_dir, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first MNIST labels
    assert torch.bincount(test.labels).tolist()[:3] == [980, 1135, 1032]


def test_idx_raw_and_gzipped_agree(tmp_path, mnist_dir):
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:50]
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:50]
    raw = tmp_path / "raw"
    gz = tmp_path / "gz"
    raw.mkdir()
    gz.mkdir()
    for stem, arr in (
        ("train-images-idx3-ubyte", images),
        ("t10k-images-idx3-ubyte", images),
        ("train-labels-idx1-ubyte", labels),
        ("t10k-labels-idx1-ubyte", labels),
    ):
        payload = _idx_bytes(arr.numpy())
        (raw / stem).write_bytes(payload)
        (gz / (stem + ".gz")).write_bytes(gzip.compress(payload))
    a_train, _ = load_dataset("fashion_mnist", raw, download=False)  # the IDX layout is shared
    b_train, _ = load_dataset("fashion_mnist", gz, download=False)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_train.labels, b_train.labels)
    assert torch.equal(a_train.images[:, 0], images)


def test_truncated_and_corrupt_idx_name_the_file(tmp_path, mnist_dir):
    payload = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    cut = tmp_path / "t10k-labels-idx1-ubyte"
    cut.write_bytes(payload[:-100])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: IDX header says shape \(10000,\).*truncated"):
        read_idx(cut)
    bad_gz = tmp_path / "x-idx1-ubyte.gz"
    bad_gz.write_bytes(gzip.compress(payload)[:-200])
    with pytest.raises(DataError, match=r"x-idx1-ubyte\.gz: cannot be read"):
        read_idx(bad_gz)
    magic = tmp_path / "m-idx1-ubyte"
    magic.write_bytes(b"\x00\x00\x0d\x01" + payload[4:])
    with pytest.raises(DataError, match="m-idx1-ubyte: not an IDX file"):
        read_idx(magic)


def test_label_outside_class_range(tmp_path):
    imgs = np.zeros((3, 28, 28), np.uint8)
    for split in ("train", "t10k"):
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([1, 12, 3])))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 12 is outside the class range 0\.\.9"):
        load_dataset("mnist", tmp_path, download=False)


def test_cifar10_binary_roundtrip(tmp_path, cifar_factory):
    folder = cifar_factory(tmp_path, n_train=25, n_test=7)
    train, test = load_dataset("cifar10", folder, download=False)
    assert train.images.shape == (25, 3, 32, 32) and test.images.shape == (7, 3, 32, 32)
    assert int(train.labels.max()) <= 9
    # Channel planes: byte 1 of a record is the first red pixel.
    raw = (folder / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert test.labels[0].item() == raw[0] and test.images[0, 0, 0, 0].item() == raw[1]
    assert test.images[0, 1, 0, 0].item() == raw[1 + 1024]


def test_cifar100_binary_fine_labels(tmp_path):
    sub = tmp_path / "cifar-100-binary"
    sub.mkdir()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    write_cifar_binary(sub / "train.bin", x, torch.tensor([0, 57, 99, 3]), coarse_labels=torch.tensor([1, 2, 3, 4]))
    write_cifar_binary(sub / "test.bin", x[:2], torch.tensor([5, 6]), coarse_labels=torch.tensor([7, 8]))
    train, test = load_dataset("cifar100", tmp_path, download=False)
    assert train.labels.tolist() == [0, 57, 99, 3] and test.labels.tolist() == [5, 6]
    assert torch.equal(train.images, x)
    assert read_cifar_binary([sub / "train.bin"], coarse=True)[1].tolist() == [1, 2, 3, 4]


def test_truncated_cifar_and_bad_label_name_the_file(tmp_path, cifar_factory):
    folder = cifar_factory(tmp_path, n_train=10, n_test=4)
    batch = folder / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"data_batch_3\.bin: \d+ bytes is not a whole number of 3073-byte"):
        load_dataset("cifar10", folder, download=False)
    folder2 = cifar_factory(tmp_path / "b", n_train=10, n_test=4)
    test_file = folder2 / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(test_file.read_bytes())
    raw[0] = 42
    test_file.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"label 42 is outside the class range 0\.\.9"):
        load_dataset("cifar10", folder2, download=False)


def test_missing_data_offline_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(vdata, "_urlopen", offline)
    empty = tmp_path / "nothing"
    with pytest.raises(
        DatasetNotFoundError, match=r"dataset 'cifar10' not found in data directory .*nothing.*--data-dir"
    ):
        load_dataset("cifar10", empty, download=True)
    assert calls and calls[0][0].endswith("cifar-10-binary.tar.gz") and calls[0][1] <= 30
    assert not any(p.is_file() for p in empty.rglob("*"))  # no partial download left behind
    with pytest.raises(DatasetNotFoundError, match="download disabled"):
        load_dataset("mnist", empty, download=False)


def test_download_checksum_and_extraction(tmp_path, monkeypatch, cifar_factory):
    """A "download" served from memory: verified by MD5, extracted safely, then read."""
    src = cifar_factory(tmp_path / "src", n_train=10, n_test=5)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    payload = buf.getvalue()

    class Response(io.BytesIO):
        headers: typing.ClassVar[dict] = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(vdata, "_urlopen", lambda url, timeout: Response(payload))
    import hashlib

    remote = vdata.DATASETS["cifar10"]["remotes"]["cifar-10-binary.tar.gz"]
    monkeypatch.setitem(
        vdata.DATASETS["cifar10"]["remotes"],
        "cifar-10-binary.tar.gz",
        vdata.Remote(remote.url, hashlib.md5(payload).hexdigest()),
    )
    train, test = load_dataset("cifar10", tmp_path / "dl", download=True)
    assert len(train) == 10 and len(test) == 5

    monkeypatch.setitem(
        vdata.DATASETS["cifar10"]["remotes"], "cifar-10-binary.tar.gz", vdata.Remote(remote.url, "0" * 32)
    )
    with pytest.raises(DataError, match="does not match its published MD5"):
        load_dataset("cifar10", tmp_path / "dl2", download=True)
    assert not (tmp_path / "dl2" / "cifar-10-binary.tar.gz").exists()


def test_safe_extract_refuses_traversal_and_links(tmp_path):
    for name, kind in (
        ("../../evil.txt", tarfile.REGTYPE),
        ("/abs/evil.txt", tarfile.REGTYPE),
        ("link", tarfile.SYMTYPE),
    ):
        archive = tmp_path / "a.tar"
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 4
                tar.addfile(info, io.BytesIO(b"evil"))
        with pytest.raises(DataError, match=r"a\.tar: member"):
            safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_image_folder_and_non_image(tmp_path):
    for split in ("train", "val"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40 + i, 30), colour).save(d / f"{i}.png")
    ds = ImageFolder(tmp_path / "val", size=24)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and y == 1
    assert x[2].float().mean() > 250 and x[0].float().mean() < 5  # blue dog
    train = ImageFolder(tmp_path / "train", size=16, train=True)
    assert train[0][0].shape == (3, 16, 16)
    (tmp_path / "val" / "dog" / "broken.jpg").write_bytes(b"this is not a JPEG")
    ds = ImageFolder(tmp_path / "val", size=24)
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        ds[[p.name for p, _ in ds.samples].index("broken.jpg")]
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        read_image(tmp_path / "val" / "dog" / "broken.jpg")
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "val")


def test_augment_batch_crops_and_flips_on_device():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(3)
    y = augment_batch(x, padding=1, flip=True, generator=g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    for i in range(2):  # each output is a shifted/flipped window of its own padded input
        padded = torch.nn.functional.pad(x[i, 0], (1, 1, 1, 1))
        windows = [padded[a : a + 4, b : b + 4] for a in range(3) for b in range(3)]
        windows += [w.flip(1) for w in windows]
        assert any(torch.equal(y[i, 0], w) for w in windows)
    flipped = augment_batch(x.repeat(8, 1, 1, 1), 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(flipped, x.repeat(8, 1, 1, 1))]
    mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(flipped, x.repeat(8, 1, 1, 1))]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_device_loader_epochs_and_shards():
    data = TensorData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    loader = DeviceLoader(data, 4, (0.0,), (1.0,), train=True, seed=5)
    loader.set_epoch(0)
    e0 = torch.cat([y for _, y in loader]).tolist()
    loader.set_epoch(1)
    e1 = torch.cat([y for _, y in loader]).tolist()
    loader.set_epoch(0)
    assert torch.cat([y for _, y in loader]).tolist() == e0 and e0 != e1 and sorted(e0) == list(range(10))
    shards = []
    for rank in range(2):
        lo = DeviceLoader(data, 3, (0.0,), (1.0,), train=False, rank=rank, world_size=2)
        shards += torch.cat([y for _, y in lo]).tolist()
    assert sorted(shards) == list(range(10))  # evaluation shards cover each image exactly once


@pytest.mark.parametrize("drop_last", [True, False])
def test_device_loader_batches_equal_per_batch_augmentation(drop_last):
    """The loader draws an epoch's crops and flips up front (one transfer to the device) in the order
    augment_batch draws them batch by batch: the batches are the same."""
    g = torch.Generator().manual_seed(1)
    data = TensorData(torch.randint(0, 256, (37, 2, 6, 6), generator=g, dtype=torch.uint8), torch.arange(37))
    loader = DeviceLoader(
        data, 8, (0.5, 0.4), (0.25, 0.2), train=True, padding=2, flip=True, seed=5, drop_last=drop_last
    )
    loader.set_epoch(3)
    batches = list(loader)
    assert [len(y) for _, y in batches] == ([8] * 4 if drop_last else [8] * 4 + [5])
    order = loader._indices()
    reference = torch.Generator().manual_seed(5 * 100_003 + 3 + 7919)  # the loader's (seed, epoch, rank) stream
    mean = torch.tensor([0.5, 0.4]).reshape(1, 2, 1, 1) * 255.0
    std = torch.tensor([0.25, 0.2]).reshape(1, 2, 1, 1) * 255.0
    for i, (x, y) in enumerate(batches):
        idx = order[i * 8 : (i + 1) * 8]
        expected = augment_batch(data.images[idx], 2, True, reference)
        assert torch.equal(y, data.labels[idx])
        assert torch.allclose(x, (expected.float() - mean) * (1.0 / std), rtol=0, atol=1e-6)
