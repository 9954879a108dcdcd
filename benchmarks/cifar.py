"""The paper's CIFAR comparison: MgNet vs ResNet18 vs pre-act ResNet18 (parameters and test accuracy).

Full mode needs a CUDA GPU and the CIFAR *binary* files (``cifar-10-batches-bin/``, ``cifar-100-binary/``)
under ``--data-dir``; it trains each model with the same recipe and records parameters, final and best test
accuracy and time.  Smoke mode (for CI) writes small synthetic files in the CIFAR binary format, shrinks the
models and trains one epoch each on the CPU: it checks the pipeline, not the accuracy.

    python benchmarks/cifar.py --smoke
    python benchmarks/cifar.py --data-dir /data/cifar --datasets cifar10 cifar100 --epochs 300 --schedule step
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision import TrainConfig, model_info, train
from vision.data import write_cifar_binary

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mgnet_cifar", "resnet18", "preact_resnet18")
# Smoke mode: the same architectures, narrow enough to train in seconds on a CPU.
SMOKE_OVERRIDES = {
    "mgnet_cifar": {"channels_u": 8, "num_iterations": (1, 1)},
    "resnet18": {"channels": (8, 8, 8, 8)},
    "preact_resnet18": {"channels": (8, 8, 8, 8)},
}


def write_synthetic(folder: Path, dataset: str, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Small class-dependent colour images in the CIFAR-10 or CIFAR-100 binary layout."""
    g = torch.Generator().manual_seed(seed)
    classes = 10 if dataset == "cifar10" else 100

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        base = torch.stack([(y * 37) % 256, (y * 91) % 256, (y * 13) % 256], 1).float()
        x = base[:, :, None, None] + 25 * torch.randn(n, 3, 32, 32, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    if dataset == "cifar10":
        sub = folder / "cifar-10-batches-bin"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            write_cifar_binary(sub / f"data_batch_{i}.bin", *split(n_train // 5))
        write_cifar_binary(sub / "test_batch.bin", *split(n_test))
    else:
        sub = folder / "cifar-100-binary"
        sub.mkdir(parents=True, exist_ok=True)
        for name, n in (("train.bin", n_train), ("test.bin", n_test)):
            x, y = split(n)
            write_cifar_binary(sub / name, x, y, coarse_labels=y // 5)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="synthetic CIFAR-format files, tiny models, CPU")
    parser.add_argument("--data-dir", default="data", help="folder holding the CIFAR binary versions")
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--schedule", default="step", help="the paper: step (x0.1 every 50 epochs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--amp", default="bf16")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    date = datetime.date.today().isoformat()

    if not args.smoke and not torch.cuda.is_available():
        out = Path(args.output) if args.output else RESULTS / "vision_cifar.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            f"# CIFAR comparison (MgNet vs ResNet18 vs pre-act ResNet18), {date}\n\n"
            "Not measured (no GPU in this session): full training needs a CUDA GPU. Parameters:\n\n"
            + _param_table(args.models)
        )
        print("no CUDA GPU: wrote parameter counts only to", out)
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            data_dir = Path(args.data_dir) / dataset
            if args.smoke:
                data_dir = write_synthetic(Path(tmp) / dataset, dataset)
            for name in args.models:
                overrides = dict(SMOKE_OVERRIDES.get(name, {})) if args.smoke else {}
                cfg = TrainConfig(
                    model=name,
                    model_kwargs=overrides,
                    dataset=dataset,
                    data_dir=str(data_dir),
                    download=False,
                    output_dir=str(Path(tmp) / "runs" / f"{dataset}_{name}"),
                    epochs=1 if args.smoke else args.epochs,
                    batch_size=32 if args.smoke else args.batch_size,
                    lr=args.lr,
                    schedule=args.schedule,
                    step_size=50,
                    momentum=0.9,
                    weight_decay=5e-4,
                    amp="none" if args.smoke else args.amp,
                    channels_last=not args.smoke,
                    progress=not args.smoke,
                    threads=1 if args.smoke else None,
                    seed=0,
                )
                result = train(cfg)
                rows.append((dataset, name, result))
                print(
                    f"{dataset} {name}: final {100 * result.final_test_acc:.2f}% best {100 * result.best_test_acc:.2f}%"
                    f" ({result.params:,} params, {result.train_seconds:.0f} s)",
                    flush=True,
                )
    device = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    lines = [
        f"# CIFAR comparison: MgNet vs ResNet18 vs pre-act ResNet18 ({device}, {date})",
        "",
        (
            "Smoke mode: synthetic CIFAR-format files (200 train / 100 test images), 8-channel models, 1 epoch; "
            "it checks the pipeline, the accuracies mean nothing."
            if args.smoke
            else f"{args.epochs} epochs, SGD lr {args.lr} momentum 0.9 wd 5e-4, {args.schedule} schedule, batch "
            f"{args.batch_size}, amp {args.amp}, channels_last."
        ),
        "",
        "| dataset | model | params | final test acc | best test acc | time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dataset, name, r in rows:
        lines.append(
            f"| {dataset} | {name} | {r.params:,} | {100 * r.final_test_acc:.2f}% | "
            f"{100 * r.best_test_acc:.2f}% | {r.train_seconds:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    out = Path(args.output) if args.output else RESULTS / ("vision_cifar_smoke.md" if args.smoke else "vision_cifar.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


def _param_table(models) -> str:
    lines = ["| model | params (CIFAR-10) | params (CIFAR-100) |", "|---|---:|---:|"]
    for name in models:
        lines.append(f"| {name} | {model_info(name).params:,} | {model_info(name, num_classes=100).params:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
