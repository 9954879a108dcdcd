"""Training throughput (images/s) of registered models against plain, hand-written PyTorch versions.

The claim checked: building MgNet and the ResNets from the shared engine blocks (``mgcore``) costs no speed.
Each registered model is timed against a hand-written implementation of the same architecture with the same
parameter count (``PlainMgNet`` has the module names of the original ``mgnet.py``, so its weights also test
the checkpoint converter).  The two are timed alternately, several rounds, and the median is reported.

    python benchmarks/throughput.py                        # mgnet_cifar, resnet18, preact_resnet18 on CPU
    python benchmarks/throughput.py --device cuda --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision.registry import create_model

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- plain hand-written models


class PlainMgIte(nn.Module):
    """``u + relu(bn2(B(relu(bn1(f - A u)))))`` written directly (names as in the original mgnet.py)."""

    def __init__(self, A: nn.Conv2d, B: nn.Conv2d) -> None:
        super().__init__()
        self.A, self.B = A, B
        self.bn1 = nn.BatchNorm2d(A.weight.shape[0])
        self.bn2 = nn.BatchNorm2d(B.weight.shape[0])

    def forward(self, pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        u, f = pair
        return u + F.relu(self.bn2(self.B(F.relu(self.bn1(f - self.A(u)))))), f


class PlainMgRestriction(nn.Module):
    """``u' = relu(bn1(Π u))``, ``f' = relu(bn2(R(f - A_old u))) + A_conv u'``."""

    def __init__(self, A_old: nn.Conv2d, A_conv: nn.Conv2d, Pi_conv: nn.Conv2d, R_conv: nn.Conv2d) -> None:
        super().__init__()
        self.A_old, self.A_conv, self.Pi_conv, self.R_conv = A_old, A_conv, Pi_conv, R_conv
        self.bn1 = nn.BatchNorm2d(Pi_conv.weight.shape[0])
        self.bn2 = nn.BatchNorm2d(R_conv.weight.shape[0])

    def forward(self, pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        u0, f0 = pair
        u = F.relu(self.bn1(self.Pi_conv(u0)))
        f = F.relu(self.bn2(self.R_conv(f0 - self.A_old(u0)))) + self.A_conv(u)
        return u, f


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PlainMgNet(nn.Module):
    """MgNet[ν]-c-B^ℓ (or B^{ℓ,i} with ``wise_B``) with the original code's structure and state-dict names."""

    def __init__(
        self, num_ite=(2, 2, 2, 2), c: int = 256, wise_B: bool = False, in_channels: int = 3, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.num_ite = tuple(num_ite)
        self.conv1 = _conv(in_channels, c)
        self.bn1 = nn.BatchNorm2d(c)
        A = _conv(c, c)
        B = None if wise_B else _conv(c, c)
        layers: list[nn.Module] = []
        for l, nu in enumerate(self.num_ite):
            for _ in range(nu):
                layers.append(PlainMgIte(A, _conv(c, c) if wise_B else B))
            setattr(self, f"layer{l}", nn.Sequential(*layers))
            if l < len(self.num_ite) - 1:
                A_old, A = A, _conv(c, c)
                if not wise_B:
                    B = _conv(c, c)
                layers = [PlainMgRestriction(A_old, A, _conv(c, c, 2), _conv(c, c, 2))]
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        f = F.relu(self.bn1(self.conv1(x)))
        pair = (torch.zeros_like(f), f)
        for l in range(len(self.num_ite)):
            pair = getattr(self, f"layer{l}")(pair)
        return self.fc(torch.flatten(self.pooling(pair[0]), 1))


class PlainPreActBlock(nn.Module):
    """``x + conv2(relu(bn2(conv1(relu(bn1(x))))))`` with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), _conv(c_in, c, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), _conv(c, c)
        self.shortcut = None
        if stride != 1 or c_in != c:
            self.shortcut = nn.Conv2d(c_in, c, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + short


class PlainPreActResNet18(nn.Module):
    """Pre-act ResNet18 (CIFAR stem) with a final BN-ReLU, as He et al. (2016b)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        blocks, c_in = [], 64
        for stage, c in enumerate((64, 128, 256, 512)):
            for i in range(2):
                blocks.append(PlainPreActBlock(c_in, c, 2 if i == 0 and stage > 0 else 1))
                c_in = c
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def plain_counterpart(name: str) -> nn.Module:
    """The hand-written model with the architecture of registered ``name``."""
    from vision.baselines import PlainResNet18

    table = {
        "mgnet_cifar": lambda: PlainMgNet(),
        "mgnet_cifar_wise_b": lambda: PlainMgNet(wise_B=True),
        "mgnet_cifar_512": lambda: PlainMgNet(c=512),
        "mgnet_mnist_tiny": None,
        "resnet18": PlainResNet18,
        "resnet18_plain": PlainResNet18,
        "preact_resnet18": PlainPreActResNet18,
    }
    if table.get(name) is None:
        raise KeyError(
            f"model: no hand-written counterpart for {name!r}; expected one of "
            f"{sorted(k for k, v in table.items() if v)}"
        )
    return table[name]()


# ------------------------------------------------------------------------------------------- timing


def _train_step_time(model: nn.Module, x: Tensor, y: Tensor, steps: int, amp: str) -> float:
    """Seconds for ``steps`` SGD training steps (forward, backward, update)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = (
        torch.autocast(x.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp != "none"
        else torch.autocast(x.device.type, enabled=False)
    )

    def step() -> None:
        with ctx:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocator, oneDNN primitive caches, cuDNN autotune)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(
    name: str, device: str, batch: int, steps: int, rounds: int, amp: str, channels_last: bool, with_plain: bool = True
) -> dict:
    """Median images/s of ``name`` and of its plain counterpart, timed alternately."""
    torch.manual_seed(0)
    ours = create_model(name).to(device).train()
    plain = plain_counterpart(name).to(device).train() if with_plain else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours = ours.to(memory_format=fmt)
    if plain is not None:
        plain = plain.to(memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    ours_rates, plain_rates = [], []
    for _ in range(rounds):
        ours_rates.append(batch * steps / _train_step_time(ours, x, y, steps, amp))
        if plain is not None:
            plain_rates.append(batch * steps / _train_step_time(plain, x, y, steps, amp))
    row = {
        "model": name,
        "params": sum(p.numel() for p in ours.parameters()),
        "ours": statistics.median(ours_rates),
        "ours_all": ours_rates,
    }
    if plain is not None:
        row["plain"] = statistics.median(plain_rates)
        row["plain_all"] = plain_rates
        row["plain_params"] = sum(p.numel() for p in plain.parameters())
        row["ratio"] = row["ours"] / row["plain"]
    return row


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["ours"] for r in rows], 0.4, label="engine blocks (vision)")
    ax.bar([x + 0.2 for x in xs], [r["plain"] for r in rows], 0.4, label="hand-written")
    for x, r in zip(xs, rows):
        ax.text(x, max(r["ours"], r["plain"]) * 1.02, f"x{r['ratio']:.3f}", ha="center")
    ax.set_xticks(list(xs), [r["model"] for r in rows])
    ax.set(ylabel="training images/s", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mgnet_cifar", "resnet18", "preact_resnet18"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device-name", default=None, help="name of the device for the report")
    parser.add_argument("--tag", default=datetime.date.today().isoformat(), help="date in the file name")
    parser.add_argument("--out", default=None, help="markdown file (default results/vision_throughput_<dev>_<tag>.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    device_name = args.device_name or (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{torch.get_num_threads()}-thread CPU"
    )
    rows = []
    for name in args.models:
        row = measure(name, args.device, args.batch, args.steps, args.rounds, args.amp, args.channels_last)
        rows.append(row)
        print(
            f"{name}: ours {row['ours']:.1f} img/s, plain {row['plain']:.1f} img/s, ratio {row['ratio']:.3f}",
            flush=True,
        )
    date = args.tag
    lines = [
        f"# Training throughput, engine blocks vs hand-written ({device_name}, {date})",
        "",
        f"Batch {args.batch} of 3x32x32, SGD step (forward, backward, update), {args.steps} steps x "
        f"{args.rounds} alternating rounds, median; amp={args.amp}, channels_last={args.channels_last}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        "| model | params | engine blocks (img/s) | hand-written (img/s) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['ours']:.1f} | {r['plain']:.1f} | {r['ratio']:.3f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else RESULTS / f"vision_throughput_{args.device.split(':')[0]}_{date}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    _plot(rows, out.with_suffix(".png"), f"Training throughput ({device_name}, {date})")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
