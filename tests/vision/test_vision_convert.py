"""Original XuTeam/MgNet_Code checkpoints: every configuration the original code produces loads with the
original logits, by ``load_original_checkpoint``, by the registry and through ``mgnet eval``/``predict``.

``OriginalMgNet`` (``benchmarks.throughput.PlainMgNet``, the hand-written reference the throughput benchmark
also times) re-implements the original ``mgnet.py`` module tree: its module names (``conv1``, ``bn1``,
``layer{ℓ}`` Sequentials of restriction and smoothing steps, ``fc``), its sharing (one A per grid, also held
by the restrictions into and out of that grid; one B per grid unless ``wise_B``, a fresh B per step
otherwise) and its forward pass, so its ``state_dict()`` is what ``train_mgnet.py`` saves.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from benchmarks.throughput import PlainMgNet as OriginalMgNet
from vision import create_model
from vision.cli import main as vision_main
from vision.convert import (
    ORIGINAL_NORMALISATION,
    OriginalCheckpointError,
    config_from_original,
    convert_original_state_dict,
    load_original_checkpoint,
    model_from_original_state,
)
from vision.data import load_dataset, write_cifar_binary


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BatchNorm statistics (running mean/var, affine), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / (m.weight[0].numel() ** 0.5))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model.eval()


DATASETS = {"cifar10": (3, 10), "cifar100": (3, 100), "mnist": (1, 10)}
CASES = list(itertools.product([(1, 2, 2, 2), (2, 2, 2, 2), (3, 4, 6, 3)], [False, True], sorted(DATASETS)))


def _original(num_ite, wise_B: bool, dataset: str, seed: int = 0, channels: int = 4) -> OriginalMgNet:
    torch.manual_seed(seed)
    in_channels, classes = DATASETS[dataset]
    return _randomised(OriginalMgNet(num_ite, channels, wise_B, in_channels, classes), seed + 1)


def _save_original(model: nn.Module, path, epoch: int = 7) -> None:
    """As ``train_mgnet.py`` saves: epoch, model and optimizer state dicts (SGD with momentum)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.save(
        {"epoch": epoch, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
        path,
    )


def _images(dataset: str, n: int = 3, side: int = 8) -> Tensor:
    c = DATASETS[dataset][0]
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(("num_ite", "wise_B", "dataset"), CASES)
def test_original_checkpoint_gives_original_logits(tmp_path, num_ite, wise_B, dataset):
    original = _original(num_ite, wise_B, dataset)
    path = tmp_path / "original.pth"
    _save_original(original, path)
    x = _images(dataset)
    with torch.no_grad():
        expected = original(x)
    assert float(expected.std()) > 1e-2  # the logits depend on the input: a real comparison

    model = load_original_checkpoint(path)
    cfg = model.config
    in_channels, classes = DATASETS[dataset]
    assert cfg.num_iterations == num_ite and cfg.share_B == (not wise_B)
    assert cfg.channels_u == (4,) * 4 and cfg.in_channels == in_channels and cfg.num_classes == classes
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters())
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-6)

    # The registry route: the registered MgNet with the inferred configuration, then the renamed weights.
    state = torch.load(path, weights_only=True)["model_state_dict"]
    registered = create_model("mgnet_cifar", **config_from_original(state).to_dict())
    registered.load_state_dict(convert_original_state_dict(state))
    with torch.no_grad():
        assert torch.allclose(registered.eval()(x), expected, rtol=0, atol=1e-6)


def test_wise_B_with_one_step_on_the_first_grid_is_not_read_as_shared(tmp_path):
    """The defect: ν_1 = 1 left only layer0.0.B to look at, and a --wise-B model loaded as B^ℓ, silently."""
    original = _original((1, 2, 2, 2), True, "cifar10")
    state = original.state_dict()
    assert config_from_original(state).share_B is False
    # Forcing the wrong choice is refused, naming a key, instead of loading whichever B came last.
    with pytest.raises(OriginalCheckpointError, match=r"'layer1\.\d\.B\.weight' differs"):
        model_from_original_state(state, share_B=True)


@pytest.mark.parametrize(("num_ite", "wise_B"), [((2, 0, 1), False), ((0, 2), True), ((1, 1, 1), True), ((2,), True)])
def test_other_configurations_of_the_original_code(num_ite, wise_B):
    """Grids without smoothing (the original accepts ν_ℓ = 0), one step everywhere, a single grid."""
    original = _original(num_ite, wise_B, "cifar10")
    model = model_from_original_state(original.state_dict()).eval()
    assert model.config.num_iterations == num_ite
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters())
    x = _images("cifar10")
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), rtol=0, atol=1e-6)


def test_data_parallel_prefix_and_bare_state_dict(tmp_path):
    original = _original((1, 2), True, "mnist")
    torch.save({"module." + k: v for k, v in original.state_dict().items()}, tmp_path / "bare.pth")
    model = load_original_checkpoint(tmp_path / "bare.pth")
    x = _images("mnist")
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), rtol=0, atol=1e-6)


def test_ambiguous_and_impossible_checkpoints_are_refused_naming_the_key():
    # Shared B whose sharing was lost in a copy: equal but separate tensors cannot tell B^ℓ from B^{ℓ,i}.
    shared = _original((1, 2), False, "cifar10").state_dict()
    copied = {k: v.clone() for k, v in shared.items()}
    with pytest.raises(OriginalCheckpointError, match=r"'layer1\.1\.B\.weight' and 'layer1\.2\.B\.weight'"):
        config_from_original(copied)
    assert config_from_original(copied, share_B=True).share_B is True
    x = _images("cifar10")
    reference = _original((1, 2), False, "cifar10")
    with torch.no_grad():
        assert torch.allclose(model_from_original_state(copied, share_B=True).eval()(x), reference(x), atol=1e-6)

    # B shared on one grid and per step on another: no original model looks like that.
    mixed = dict(_original((2, 2), True, "cifar10").state_dict())
    mixed["layer0.1.B.weight"] = mixed["layer0.0.B.weight"]
    with pytest.raises(OriginalCheckpointError, match="shares B on all grids or on none"):
        config_from_original(mixed)

    # A foreign key, a missing smoothing step, a missing restriction, channels of u and f that differ.
    with pytest.raises(OriginalCheckpointError, match=r"unexpected key 'layer0\.0\.conv9\.weight'"):
        model_from_original_state({**shared, "layer0.0.conv9.weight": torch.zeros(1)})
    state = dict(shared)
    del state["layer1.1.B.weight"]
    with pytest.raises(OriginalCheckpointError, match=r"'layer1\.1\.B\.weight' missing"):
        config_from_original(state)
    state = {k: v for k, v in shared.items() if not k.startswith("layer1.0.")}
    with pytest.raises(OriginalCheckpointError, match=r"'layer1\.0\.Pi_conv\.weight' missing"):
        config_from_original(state)
    state = dict(shared)
    state["fc.weight"] = torch.zeros(10, 6)
    with pytest.raises(OriginalCheckpointError, match=r"'layer0\.0\.B\.weight' has shape"):
        config_from_original(state)


def test_not_an_original_checkpoint(tmp_path):
    torch.save({"format": 1, "model": {}}, tmp_path / "ours.pt")
    with pytest.raises(OriginalCheckpointError, match="not an original MgNet_Code checkpoint"):
        load_original_checkpoint(tmp_path / "ours.pt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OriginalCheckpointError, match="cannot be read"):
        load_original_checkpoint(tmp_path / "junk.pth")


def _write_mnist(folder, n: int = 12) -> None:
    """Synthetic MNIST in the IDX format (uncompressed, big-endian headers)."""
    import struct

    g = torch.Generator().manual_seed(4)
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + x.numpy().tobytes()
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.numpy().tobytes())


def _write_cifar100(folder, n: int = 12) -> None:
    g = torch.Generator().manual_seed(3)
    sub = folder / "cifar-100-binary"
    sub.mkdir(parents=True)
    for name in ("train.bin", "test.bin"):
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 100, (n,), generator=g)
        write_cifar_binary(sub / name, x, y, coarse_labels=y // 5)


def _original_inputs(dataset: str, data_dir) -> tuple[Tensor, Tensor]:
    """The test split as ``train_mgnet.py`` feeds it: ToTensor (x / 255) then Normalize(mean, std)."""
    _, test = load_dataset(dataset, data_dir, download=False)
    mean, std = (torch.tensor(v).reshape(1, -1, 1, 1) for v in ORIGINAL_NORMALISATION[dataset])
    return (test.images.float() / 255 - mean) / std, test.labels


@pytest.mark.parametrize(
    ("num_ite", "wise_B", "dataset"),
    [((1, 2, 2, 2), True, "mnist"), ((2, 2, 2, 2), False, "cifar10"), ((3, 4, 6, 3), True, "cifar100")],
)
def test_mgnet_eval_detects_converts_and_prints_an_original_checkpoint(
    tmp_path, capsys, cifar_factory, num_ite, wise_B, dataset
):
    if dataset == "mnist":
        data_dir = tmp_path / "mnist"
        _write_mnist(data_dir)
    elif dataset == "cifar10":
        data_dir = cifar_factory(tmp_path / "cifar10")
    else:
        data_dir = tmp_path / "cifar100"
        _write_cifar100(data_dir)
    original = _original(num_ite, wise_B, dataset)
    path = tmp_path / "test.pth"
    _save_original(original, path, epoch=42)
    logits_path = tmp_path / "logits.pt"
    argv = ["eval", str(path), "--data-dir", str(data_dir), "--device", "cpu", "--save-logits", str(logits_path)]
    assert vision_main(argv) == 0
    out = capsys.readouterr().out
    nus = ",".join(map(str, num_ite))
    b = "B^{ℓ,i}" if wise_B else "B^ℓ"
    c, classes = DATASETS[dataset]
    plural = "" if c == 1 else "s"
    assert f"original MgNet_Code checkpoint, converted to MgNet[{nus}]-4-{b} ({c} input channel{plural}, " in out
    assert f"{classes} classes)" in out and f"epoch 42: {dataset} test loss" in out

    x, labels = _original_inputs(dataset, data_dir)
    with torch.no_grad():
        expected = torch.cat([original(x[i : i + 500]) for i in range(0, len(x), 500)])
    got = torch.load(logits_path, weights_only=True)
    assert got.shape == (len(labels), classes)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    accuracy = float((expected.argmax(1) == labels).float().mean())
    assert f"test accuracy {100 * accuracy:.2f}%" in out


def test_mgnet_eval_and_predict_errors_and_predict(tmp_path, capsys):
    from PIL import Image

    original = _original((1, 2), True, "cifar10")
    path = tmp_path / "o.pth"
    _save_original(original, path)
    # No dataset folder: an original checkpoint records none.
    assert vision_main(["eval", str(path)]) == 2
    assert "--data-dir: required for an original" in capsys.readouterr().err
    # The logits file is checked before any work.
    assert (
        vision_main(["eval", str(path), "--data-dir", str(tmp_path), "--save-logits", str(tmp_path / "no/x.pt")]) == 2
    )
    assert "--save-logits" in capsys.readouterr().err

    images = []
    for i, colour in enumerate([(250, 10, 10), (10, 10, 250)]):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 40), colour).save(p)
        images.append(p)
    assert vision_main(["predict", str(path), *map(str, images), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "original MgNet_Code checkpoint, converted to MgNet[1,2]-4-B^{ℓ,i}" in lines[0]
    # The same top class as the original model on the image as train_mgnet.py would normalise it.
    mean, std = (torch.tensor(v).reshape(1, -1, 1, 1) for v in ORIGINAL_NORMALISATION["cifar10"])
    x = torch.stack(
        [
            torch.tensor(c, dtype=torch.float32).reshape(3, 1, 1).expand(3, 32, 32)
            for c in [(250, 10, 10), (10, 10, 250)]
        ]
    )
    with torch.no_grad():
        probs = torch.softmax(original((x / 255 - mean) / std), 1)
    for line, row in zip(lines[1:], probs):
        top = int(row.argmax())
        assert line.split(": ")[1].startswith(f"{top} {100 * float(row[top]):.1f}%")
