"""Training, evaluation and prediction for the registered classifiers (``vision.train``, ``mgnet train``).

The recipe follows timm's conventions: SGD with momentum (optionally Nesterov), weight decay on
convolution and linear weights only (not on norms, biases or Hat supports), label smoothing, a learning-rate
schedule stepped every iteration (the paper's step schedule ``lr * 0.1^(epoch // 50)``, cosine, or one-cycle
with warm-up), AMP and channels_last on CUDA, optional ``torch.compile``, and DistributedDataParallel when
launched with ``torchrun``.

Every epoch logs train/test loss and accuracy and time (CSV and JSON lines, and a PNG of the curves) and
writes the ``last`` checkpoint; ``best`` follows the best test accuracy.  The *final* and the *best* test
accuracy are reported separately: the original code reported the best one over the epochs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vision.data import DATASETS, DataError, DeviceLoader, TensorData, folder_splits, load_dataset, read_image
from vision.registry import create_model, default_input_size

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "evaluate_checkpoint",
    "load_checkpoint",
    "predict",
    "train",
]

CHECKPOINT_FORMAT = 1

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``mgnet train`` has one option per field.

    Examples
    --------
    >>> TrainConfig(model="mgnet_mnist", epochs=1).schedule
    'cosine'
    """

    # Registered model name (`mgnet models` lists them).
    model: str = "mgnet_mnist"
    # Overrides of the model's configuration, e.g. {"channels_u": 64, "share_B": False}.
    model_kwargs: dict = field(default_factory=dict)
    # mnist, fashion_mnist, cifar10, cifar100 or folder (root/train/<class>/..., root/val/<class>/...).
    dataset: str = "mnist"
    # Folder holding the dataset (downloaded there when missing); default ./data/<dataset>.
    data_dir: str | None = None
    # Download a missing dataset from its canonical address.
    download: bool = True
    # Where checkpoints, logs and the curves plot go.
    output_dir: str = "runs/mgnet"
    # Epochs of training.
    epochs: int = 10
    # Mini-batch size per process.
    batch_size: int = 128
    # Batch size for evaluation.
    eval_batch_size: int = 500
    # Peak learning rate (the paper: 0.1 with batch 128).
    lr: float = 0.1
    # SGD momentum.
    momentum: float = 0.9
    # Nesterov momentum.
    nesterov: bool = False
    # L2 weight decay on conv/linear weights (norms, biases and Hat supports are not decayed).
    weight_decay: float = 5e-4
    # Label smoothing of the cross-entropy.
    label_smoothing: float = 0.0
    # "step" (the paper: x gamma every step_size epochs), "cosine", "onecycle" or "constant".
    schedule: str = "cosine"
    # Epochs between decays of the step schedule (the paper: 50).
    step_size: float = 50.0
    # Decay factor of the step schedule.
    gamma: float = 0.1
    # Linear warm-up epochs (cosine; onecycle uses warmup_epochs or 25% of the run when 0).
    warmup_epochs: float = 0.0
    # Random-crop padding for small datasets; None: 4 for CIFAR, 2 for (Fashion-)MNIST, 0 to disable.
    crop_padding: int | None = None
    # Horizontal flips; None: on for CIFAR and image folders, off for digits.
    hflip: bool | None = None
    # Image side for folder datasets.
    image_size: int = 224
    # DataLoader worker processes for folder datasets.
    workers: int = 4
    # "auto" (CUDA when available), "cpu" or "cuda".
    device: str = "auto"
    # Mixed precision: "none", "bf16" or "fp16" (fp16 on CUDA only, with a gradient scaler).
    amp: str = "none"
    # channels_last memory format (CUDA).
    channels_last: bool = False
    # torch.compile the model.
    compile: bool = False
    # Seed of weights, data order and augmentation; CPU runs with the same seed are reproducible.
    seed: int = 0
    # Continue from output_dir/last.pt exactly where it stopped.
    resume: bool = False
    # Start afresh even when output_dir already holds a run (its checkpoints are replaced).
    overwrite: bool = False
    # Stop after this many seconds of training (checked every step); None: no limit.
    time_limit: float | None = None
    # Stop after this many optimizer steps in total, as if killed (tests of --resume); None: no limit.
    max_steps: int | None = None
    # Use only the first N training / test images (quick runs); None: all.
    train_subset: int | None = None
    test_subset: int | None = None
    # Torch CPU threads; None leaves PyTorch's default.
    threads: int | None = None
    # tqdm progress bars.
    progress: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in ("step", "cosine", "onecycle", "constant"):
            raise ValueError(f"schedule: expected 'step', 'cosine', 'onecycle' or 'constant'; got {self.schedule!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp: expected 'none', 'bf16' or 'fp16'; got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:N]'; got {self.device!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {sorted(DATASETS)}; got {self.dataset!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer; got {getattr(self, name)}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs: expected a dict; got {self.model_kwargs!r}")

    def to_dict(self) -> dict:
        """Plain-Python form stored in checkpoints."""
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    final_test_acc: float  # test accuracy after the last epoch (what this model scores)
    best_test_acc: float  # best test accuracy over the epochs (what the original code reported)
    best_epoch: int  # epoch (1-based) of the best test accuracy
    epochs_run: int  # epochs completed, counting resumed ones
    train_seconds: float  # wall time spent training and evaluating, this process
    params: int  # trainable parameters
    history: list[dict]  # one row per epoch (the CSV/JSON lines log)
    output_dir: str  # where checkpoints and logs are
    interrupted: bool = False  # stopped by max_steps mid-epoch (the checkpoint is the last full epoch)
    model: nn.Module | None = field(default=None, repr=False)  # the trained model (unwrapped)


# --------------------------------------------------------------------------------------------- helpers


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(kind: str, local_rank: int) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but CUDA is not available on this machine")
        return torch.device(kind if ":" in kind else f"cuda:{local_rank}")
    return torch.device("cpu")


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`train` with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "the file is cut short or corrupt"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT or "model" not in blob:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a vision.train checkpoint (format {CHECKPOINT_FORMAT})")
    return blob


def _build_model(name: str, kwargs: dict, num_classes: int, in_channels: int) -> nn.Module:
    return create_model(name, **{**kwargs, "num_classes": num_classes, "in_channels": in_channels})


def _load_model_state(model: nn.Module, blob: dict, path: Path, name: str, num_classes: int) -> None:
    """Load weights, naming the checkpoint and what differs when they do not fit."""
    saved_name, saved_classes = blob.get("model_name"), blob.get("num_classes")
    if saved_name != name or saved_classes != num_classes:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds model {saved_name!r} with {saved_classes} classes; "
            f"expected model {name!r} with {num_classes} classes"
        )
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as err:
        first = str(err).splitlines()
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit model {name!r} (another architecture or configuration): "
            f"{' '.join(first[:3])[:300]}"
        ) from None


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay conv and linear weights only; norms, biases and Hat supports (ndim <= 1) get none (as timm)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """The multiplier of ``cfg.lr`` at optimizer step ``s`` (stepped every iteration)."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and warm == 0:
        warm = 0.25 * total

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":
            # The paper: lr * 0.1^(epoch // 50), epochs counted from 0 here.
            return cfg.gamma ** math.floor(step / steps_per_epoch / cfg.step_size)
        if step < warm:
            start = 0.04 if cfg.schedule == "onecycle" else 0.0  # one-cycle starts at lr / 25
            return start + (1.0 - start) * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1.0, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _loaders(cfg: TrainConfig, device: torch.device, rank: int, world: int):
    """Train and test loaders plus ``(num_classes, in_channels, class names, mean, std, input size)``."""
    info = DATASETS[cfg.dataset]
    data_dir = Path(cfg.data_dir) if cfg.data_dir else Path("data") / cfg.dataset
    mean, std = info["mean"], info["std"]
    if cfg.dataset == "folder":
        if not cfg.data_dir:
            raise ValueError("data_dir: required for dataset 'folder' (root with train/ and val/ class folders)")
        train_set, test_set = folder_splits(data_dir, cfg.image_size)
        if cfg.train_subset:
            train_set.samples = train_set.samples[: cfg.train_subset]
        if cfg.test_subset:
            test_set.samples = test_set.samples[: cfg.test_subset]
        sampler = None
        if world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(train_set, world, rank, seed=cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        train_loader = _FolderLoader(
            torch.utils.data.DataLoader(
                train_set,
                cfg.batch_size,
                shuffle=sampler is None,
                sampler=sampler,
                num_workers=cfg.workers,
                drop_last=True,
                generator=g,
                persistent_workers=cfg.workers > 0,
                pin_memory=device.type == "cuda",
            ),
            device,
            mean,
            std,
            cfg.channels_last,
            sampler,
        )
        test_sampler = None
        if world > 1:
            test_sampler = torch.utils.data.distributed.DistributedSampler(test_set, world, rank, shuffle=False)
        test_loader = _FolderLoader(
            torch.utils.data.DataLoader(test_set, cfg.eval_batch_size, sampler=test_sampler, num_workers=cfg.workers),
            device,
            mean,
            std,
            cfg.channels_last,
            None,
        )
        meta = (len(train_set.classes), 3, list(train_set.classes), mean, std, (3, cfg.image_size, cfg.image_size))
        return train_loader, test_loader, meta
    train_data, test_data = load_dataset(cfg.dataset, data_dir, download=cfg.download)
    if cfg.train_subset:
        train_data = TensorData(train_data.images[: cfg.train_subset], train_data.labels[: cfg.train_subset])
    if cfg.test_subset:
        test_data = TensorData(test_data.images[: cfg.test_subset], test_data.labels[: cfg.test_subset])
    digits = cfg.dataset in ("mnist", "fashion_mnist")
    padding = cfg.crop_padding if cfg.crop_padding is not None else (2 if digits else 4)
    flip = cfg.hflip if cfg.hflip is not None else not digits
    common = dict(device=device, seed=cfg.seed, rank=rank, world_size=world, channels_last=cfg.channels_last)
    train_loader = DeviceLoader(
        train_data, cfg.batch_size, mean, std, train=True, padding=padding, flip=flip, drop_last=True, **common
    )
    test_loader = DeviceLoader(test_data, cfg.eval_batch_size, mean, std, **common)
    classes = info["classes"]
    names = list(CIFAR10_CLASSES) if cfg.dataset == "cifar10" else [str(i) for i in range(classes)]
    meta = (classes, info["shape"][0], names, mean, std, info["shape"])
    return train_loader, test_loader, meta


class _FolderLoader:
    """Wraps a DataLoader of uint8 images: moves batches to the device and normalises them there."""

    def __init__(self, loader, device, mean, std, channels_last, sampler) -> None:
        self.loader, self.device, self.sampler, self.channels_last = loader, device, sampler, channels_last
        self.mean = torch.tensor(mean, device=device).reshape(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, device=device).reshape(1, -1, 1, 1) * 255.0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = (x.to(self.device, non_blocking=True).float() - self.mean) * self.inv_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    if device.type != "cuda" and cfg.amp == "fp16":
        raise ValueError("amp: 'fp16' needs CUDA; use 'bf16' or 'none' on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _evaluate(model: nn.Module, loader, cfg: TrainConfig, device: torch.device, world: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole loader (summed over processes)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y in loader:
        with _autocast(cfg, device):
            logits = model(x)
        totals[0] += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += y.numel()
    if world > 1:
        dist.all_reduce(totals)
    loss, correct, count = totals.tolist()
    return loss / max(count, 1), correct / max(count, 1)


def _plot(history: list[dict], path: Path, title: str) -> None:
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
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)


def _write_logs(history: list[dict], out: Path) -> None:
    """Rewrite ``log.csv`` and ``log.jsonl`` from the history (atomically; a resume drops no row)."""
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    _atomic_write_text(buf.getvalue(), out / "log.csv")
    _atomic_write_text("".join(json.dumps(h) + "\n" for h in history), out / "log.jsonl")


# ----------------------------------------------------------------------------------------------- train


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Train a registered model; see :class:`TrainConfig` for every option.

    Parameters
    ----------
    config : TrainConfig, optional
        The run; keyword arguments override its fields (``train(model="mgnet_cifar", dataset="cifar10")``).

    Returns
    -------
    TrainResult
        Final and best test accuracy (labelled separately), the per-epoch history, the trained model.
    """
    if config is None:
        config = TrainConfig(**overrides)
    elif overrides:
        config = TrainConfig(**{**asdict(config), **overrides})
    cfg = config
    rank, world, local_rank = _dist_info()
    device = _resolve_device(cfg.device, local_rank)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        # On a shared 2-core machine one thread is much faster than two contending with another process.
        torch.set_num_threads(cfg.threads)
    own_group = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    try:
        return _train(cfg, rank, world, device)
    finally:
        torch.set_num_threads(previous_threads)
        if own_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> TrainResult:
    out = Path(cfg.output_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists() and not (cfg.resume or cfg.overwrite):
        raise FileExistsError(
            f"output_dir {str(out)!r} already holds a run ({last_path.name}); pass --resume to continue it "
            "or --overwrite to start afresh"
        )
    if cfg.resume and not last_path.exists():
        raise CheckpointError(f"resume: no checkpoint {str(last_path)!r} to resume from")
    default_input_size(cfg.model)  # an unknown model name fails here, before any data is read or fetched
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    train_loader, test_loader, meta = _loaders(cfg, device, rank, world)
    num_classes, in_channels, class_names, mean, std, input_size = meta
    model = _build_model(cfg.model, cfg.model_kwargs, num_classes, in_channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.SGD(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DataError(f"dataset {cfg.dataset!r}: fewer training images than one batch of {cfg.batch_size}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    start_epoch, history, best_acc, best_epoch = 0, [], -1.0, 0
    if cfg.resume:
        blob = load_checkpoint(last_path)
        _load_model_state(model, blob, last_path, cfg.model, num_classes)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
        start_epoch, history = int(blob["epoch"]), list(blob["history"])
        best_acc, best_epoch = float(blob["best_acc"]), int(blob["best_epoch"])
        torch.set_rng_state(blob["rng"]["torch"])
        if device.type == "cuda" and blob["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(blob["rng"]["cuda"], device)

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def checkpoint(epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": cfg.to_dict(),
            "model_name": cfg.model,
            "model_kwargs": dict(cfg.model_kwargs),
            "num_classes": num_classes,
            "in_channels": in_channels,
            "input_size": list(input_size),
            "class_names": class_names,
            "mean": list(mean),
            "std": list(std),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch,
            "history": history,
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
        }

    from tqdm.auto import tqdm

    started = time.perf_counter()
    interrupted = False
    global_step = start_epoch * steps_per_epoch
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        train_loader.set_epoch(epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        bar = tqdm(
            train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not cfg.progress or rank != 0
        )
        for x, y in bar:
            if cfg.max_steps is not None and global_step >= cfg.max_steps:
                interrupted = True
                break
            if cfg.time_limit is not None:
                over = time.perf_counter() - started > cfg.time_limit
                if world > 1:  # every process must stop at the same step, or DDP would hang: agree every 20
                    over = over and global_step % 20 == 0
                    if global_step % 20 == 0:
                        flag = torch.tensor(float(over), device=device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        over = bool(flag.item() > 0)
                if over:
                    interrupted = True
                    break
            with _autocast(cfg, device):
                logits = net(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            with torch.no_grad():
                sums[0] += loss.detach().double() * y.numel()
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += y.numel()
        if interrupted and (cfg.max_steps is not None and global_step >= cfg.max_steps):
            break  # killed mid-epoch: the last checkpoint stays the one of the last full epoch
        if world > 1:
            dist.all_reduce(sums)
        train_loss, train_correct, seen = sums.tolist()
        test_loss, test_acc = _evaluate(net, test_loader, cfg, device, world)
        seconds = time.perf_counter() - t0
        if test_acc > best_acc:
            best_acc, best_epoch = test_acc, epoch + 1
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss / max(seen, 1),
            "train_acc": train_correct / max(seen, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "best_test_acc": best_acc,
            "epoch_seconds": seconds,
            "elapsed_seconds": (history[-1]["elapsed_seconds"] if history else 0.0) + seconds,
        }
        history.append(row)
        if rank == 0:
            blob = checkpoint(epoch + 1)
            _atomic_save(blob, last_path)
            if best_epoch == epoch + 1:
                _atomic_save(blob, best_path)
            _write_logs(history, out)
            _plot(history, out / "curves.png", f"{cfg.model} on {cfg.dataset}")
            if cfg.progress:
                tqdm.write(
                    f"epoch {epoch + 1:3d}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:.2f}%  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  "
                    f"(best {100 * best_acc:.2f}%)  {seconds:.1f}s"
                )
        if interrupted:  # time limit: the epoch was cut short but is evaluated and logged
            break
    final = history[-1]["test_acc"] if history else float("nan")
    return TrainResult(
        final_test_acc=final,
        best_test_acc=best_acc if history else float("nan"),
        best_epoch=best_epoch,
        epochs_run=len(history),
        train_seconds=time.perf_counter() - started,
        params=params,
        history=history,
        output_dir=str(out),
        interrupted=interrupted,
        model=model,
    )


# -------------------------------------------------------------------------------------- eval / predict


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model of a :func:`train` checkpoint, in eval mode, and the checkpoint's metadata."""
    path = Path(path)
    blob = load_checkpoint(path)
    name = blob["model_name"]
    model = _build_model(name, dict(blob.get("model_kwargs") or {}), blob["num_classes"], blob["in_channels"])
    _load_model_state(model, blob, path, name, blob["num_classes"])
    return model.eval(), blob


def evaluate_checkpoint(
    path: str | Path, data_dir: str | None = None, device: str = "auto", batch_size: int = 500
) -> dict:
    """Test loss and accuracy of a checkpoint on its dataset's test split."""
    model, blob = model_from_checkpoint(path)
    saved = dict(blob["config"])
    saved.update(
        data_dir=data_dir or saved["data_dir"],
        device=device,
        eval_batch_size=batch_size,
        resume=False,
        channels_last=False,
        compile=False,
    )
    cfg = TrainConfig(**saved)
    dev = _resolve_device(cfg.device, 0)
    _, test_loader, _ = _loaders(cfg, dev, 0, 1)
    loss, acc = _evaluate(model.to(dev), test_loader, cfg, dev, 1)
    return {
        "checkpoint": str(path),
        "model": blob["model_name"],
        "epoch": blob["epoch"],
        "test_loss": loss,
        "test_acc": acc,
        "images": len(test_loader.labels) if hasattr(test_loader, "labels") else None,
    }


def _prepare_image(path: str | Path, input_size: Sequence[int], mean, std) -> Tensor:
    import numpy as np
    from PIL import Image

    c, h, w = input_size
    img = read_image(path)  # (3, H, W) uint8; DataError for a non-image
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    if c == 1:
        pil = pil.convert("L")
    pil = pil.resize((w, h), Image.Resampling.BILINEAR)
    array = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).float()
    x = array[None] if c == 1 else array.permute(2, 0, 1)  # (C, H, W)
    mean_t = torch.tensor(mean).reshape(-1, 1, 1) * 255.0
    std_t = torch.tensor(std).reshape(-1, 1, 1) * 255.0
    return (x - mean_t) / std_t


@torch.no_grad()
def predict(path: str | Path, images: Sequence[str | Path], top_k: int = 3) -> list[dict]:
    """Top-``k`` classes and probabilities of each image under a :func:`train` checkpoint.

    Images are resized to the model's input size (and converted to grey for MNIST-like models).
    """
    model, blob = model_from_checkpoint(path)
    size = blob.get("input_size") or list(default_input_size(blob["model_name"]))
    batch = torch.stack([_prepare_image(p, size, blob["mean"], blob["std"]) for p in images])
    probs = torch.softmax(model(batch), dim=1)
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    names = blob.get("class_names") or [str(i) for i in range(probs.shape[1])]
    return [
        {"image": str(p), "top": [(names[int(i)], float(v)) for v, i in zip(vs, ids)]}
        for p, vs, ids in zip(images, values, indices)
    ]


def config_fields() -> list:
    """The dataclass fields of :class:`TrainConfig` (the CLI builds one option per field)."""
    return list(fields(TrainConfig))
