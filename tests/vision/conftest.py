"""Shared fixtures of the vision tests: the real MNIST copy and small synthetic CIFAR binary files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` (the hand-written reference models) is imported by tests
    sys.path.insert(0, str(ROOT))

# The checkout sits next to shared/; a checkout elsewhere (a git worktree) names the copy in MGNET_MNIST_DIR.
MNIST_DIR = Path(os.environ.get("MGNET_MNIST_DIR") or ROOT.parent / "shared/data/mnist")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST expected at {MNIST_DIR} (gzipped IDX files with SHA256SUMS)")
    return MNIST_DIR


@pytest.fixture()
def quick_config(mnist_dir):
    """``quick_config(output_dir, **overrides) -> TrainConfig``: a seconds-long run on real MNIST (512 training
    and 256 test images, 8 steps an epoch, the tiny MgNet, one thread, two epochs), the settings overridden."""
    from vision import TrainConfig

    def build(output_dir: Path, **overrides) -> TrainConfig:
        settings = dict(
            model="mgnet_mnist_tiny",
            dataset="mnist",
            data_dir=str(mnist_dir),
            download=False,
            output_dir=str(output_dir),
            epochs=2,
            batch_size=64,
            lr=0.05,
            schedule="cosine",
            train_subset=512,
            test_subset=256,
            threads=1,
            progress=False,
            seed=3,
        )
        settings.update(overrides)
        return TrainConfig(**settings)

    return build


def make_cifar10(folder: Path, n_train: int = 50, n_test: int = 20, classes: int = 10, seed: int = 0) -> Path:
    """Synthetic CIFAR-10 binary batches in ``folder/cifar-10-batches-bin``: class-dependent colour blobs,
    so a model can learn them."""
    from vision.data import write_cifar_binary

    g = torch.Generator().manual_seed(seed)
    sub = folder / "cifar-10-batches-bin"
    sub.mkdir(parents=True, exist_ok=True)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        base = torch.stack([(y * 25) % 256, (y * 70) % 256, (255 - y * 25) % 256], 1).float()  # (n, 3)
        x = base[:, :, None, None] + 30 * torch.randn(n, 3, 32, 32, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    per = -(-n_train // 5)
    for i in range(1, 6):
        x, y = split(per)
        write_cifar_binary(sub / f"data_batch_{i}.bin", x, y)
    x, y = split(n_test)
    write_cifar_binary(sub / "test_batch.bin", x, y)
    return folder


@pytest.fixture()
def cifar10_dir(tmp_path: Path) -> Path:
    return make_cifar10(tmp_path / "cifar10")


@pytest.fixture()
def cifar_factory():
    """``make_cifar10`` as a fixture (test modules here are not a package, so they cannot import it)."""
    return make_cifar10
