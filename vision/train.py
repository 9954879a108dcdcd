"""Training, evaluation and prediction for the registered classifiers (``vision.train``, ``mgnet train``).

The loop is timm's: SGD with momentum (optionally Nesterov), weight decay on convolution and linear weights
only (or on every parameter, as the original code), label smoothing, a learning-rate schedule stepped every
iteration (the paper's step schedule ``lr * gamma^(epoch // step_size)`` with epochs counted from 1, cosine,
or one-cycle with warm-up), AMP and channels_last on CUDA, optional ``torch.compile``, and
DistributedDataParallel when launched with ``torchrun``.  ``TrainConfig.from_recipe("mgnet-paper")`` is the
original ``train_mgnet.py`` exactly.

:func:`train` wires :func:`train_one_epoch` and :func:`validate` to a :class:`vision.checkpoint.RunDirectory`,
which commits each epoch (``last.pt``, ``best.pt``, ``log.csv``, ``log.jsonl``, ``curves.png``) so that a
killed run resumes to the files an uninterrupted one writes.  A non-finite loss stops the run with
:class:`TrainingDivergedError` before anything of the failing epoch is written.  The *final* and the *best*
test accuracy are reported separately: the original code reported the best one over the epochs.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vision.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    RunDirectory,
    check_output_dir,
    load_checkpoint,
    load_model_state,
    load_weights_from,
)
from vision.data import DATASETS, DataError, Loaders, build_loaders, read_image
from vision.registry import create_model, default_input_size

__all__ = [
    "RECIPES",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "evaluate_checkpoint",
    "load_checkpoint",
    "lr_schedule",
    "predict",
    "train",
    "train_one_epoch",
    "validate",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and nothing of the failing epoch was saved."""


def _option(default, help_text: str, *, resumable: bool = False):
    """A :class:`TrainConfig` field: ``help_text`` is the ``mgnet train --help`` text; ``resumable`` fields
    may differ on ``--resume`` (they do not change what is trained)."""
    return field(default=default, metadata={"help": help_text, "resumable": resumable})


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``mgnet train`` has one option per field.

    Examples
    --------
    >>> TrainConfig(model="mgnet_mnist", epochs=1).schedule
    'cosine'
    >>> TrainConfig(lr=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: lr: expected a finite number > 0; got nan
    """

    model: str = _option("mgnet_mnist", "registered model name (`mgnet models` lists them)")
    model_kwargs: dict = field(
        default_factory=dict,
        metadata={
            "help": "overrides of the model's configuration, e.g. channels_u=64 share_B=False "
            "(num_classes and in_channels come from the dataset)",
            "resumable": False,
        },
    )
    dataset: str = _option(
        "mnist",
        "mnist, fashion_mnist, cifar10, cifar100 or folder (root/train/<class>/..., root/val/<class>/...)",
    )
    data_dir: str | None = _option(
        None, "folder holding the dataset (downloaded there when missing); default ./data/<dataset>", resumable=True
    )
    download: bool = _option(True, "download a missing dataset from its canonical address", resumable=True)
    output_dir: str = _option("runs/mgnet", "where checkpoints, logs and the curves plot go", resumable=True)
    epochs: int = _option(10, "epochs of training")
    batch_size: int = _option(128, "mini-batch size per process")
    eval_batch_size: int = _option(500, "batch size for evaluation", resumable=True)
    lr: float = _option(0.1, "peak learning rate (the paper: 0.1 with batch 128)")
    momentum: float = _option(0.9, "SGD momentum")
    nesterov: bool = _option(False, "Nesterov momentum")
    weight_decay: float = _option(5e-4, "L2 weight decay (on conv/linear weights unless --decay-all-params)")
    decay_all_params: bool = _option(
        False, "weight decay on every parameter, norms, biases and Hat supports included (the original code)"
    )
    label_smoothing: float = _option(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    schedule: str = _option(
        "cosine", "step (lr * gamma^(epoch // step-size), epochs from 1, as the paper), cosine, onecycle or constant"
    )
    step_size: float = _option(50.0, "epochs between decays of the step schedule (the paper: 50)")
    gamma: float = _option(0.1, "decay factor of the step schedule")
    warmup_epochs: float = _option(
        0.0, "linear warm-up epochs (cosine; onecycle uses warmup-epochs or 25% of the run when 0)"
    )
    crop_padding: int | None = _option(
        None, "random-crop padding for small datasets; default 4 for CIFAR, 2 for (Fashion-)MNIST, 0 disables"
    )
    hflip: bool | None = _option(None, "horizontal flips; default on for CIFAR and image folders, off for digits")
    drop_last: bool = _option(True, "drop the last partial training batch of each epoch (the original keeps it)")
    image_size: int = _option(224, "image side for folder datasets")
    workers: int = _option(4, "DataLoader worker processes for folder datasets", resumable=True)
    device: str = _option("auto", "auto (CUDA when available), cpu or cuda[:N]", resumable=True)
    amp: str = _option("none", "mixed precision: none, bf16 or fp16 (fp16 on CUDA only, with a gradient scaler)")
    channels_last: bool = _option(False, "channels_last memory format (CUDA)", resumable=True)
    compile: bool = _option(False, "torch.compile the model", resumable=True)
    seed: int = _option(0, "seed of weights, data order and augmentation; CPU runs with one seed are reproducible")
    init_from: str | None = _option(
        None,
        "start from the weights of a checkpoint: one of `mgnet train`'s or an original MgNet_Code one",
        resumable=True,
    )
    recipe: str | None = _option(
        None,
        "a named set of these options, which explicit options override (mgnet-paper: the original train_mgnet.py)",
        resumable=True,
    )
    resume: bool = _option(False, "continue from output_dir/last.pt exactly where it stopped", resumable=True)
    overwrite: bool = _option(
        False, "start afresh even when output_dir already holds a run (replaced epoch by epoch)", resumable=True
    )
    time_limit: float | None = _option(
        None, "stop after this many seconds of training (checked every step); default no limit", resumable=True
    )
    max_steps: int | None = _option(
        None, "stop after this many optimizer steps in total, as if killed (tests of --resume)", resumable=True
    )
    train_subset: int | None = _option(None, "use only the first N training images (quick runs); default all")
    test_subset: int | None = _option(None, "use only the first N test images; default all")
    threads: int | None = _option(None, "torch CPU threads; default PyTorch's", resumable=True)
    progress: bool = _option(True, "progress bars and one line per epoch", resumable=True)

    def __post_init__(self) -> None:
        def choice(name: str, options: Sequence[str]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}; got {value!r}")

        def number(name: str, low: float, high: float = math.inf, *, closed_low: bool = True, optional=False):
            value = getattr(self, name)
            if value is None and optional:
                return
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value >= low if closed_low else value > low) and value < high
            if not ok:
                bound = f"{'>=' if closed_low else '>'} {low:g}" + (f" and < {high:g}" if high < math.inf else "")
                raise ValueError(f"{name}: expected a finite number {bound}; got {value!r}")

        def integer(name: str, low: int, *, optional: bool = False) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                what = "a positive integer" if low == 1 else f"an integer >= {low}"
                raise ValueError(f"{name}: expected {what}{' or None' if optional else ''}; got {value!r}")

        choice("schedule", ("step", "cosine", "onecycle", "constant"))
        choice("amp", ("none", "bf16", "fp16"))
        choice("dataset", sorted(DATASETS))
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:N]'; got {self.device!r}")
        if self.recipe is not None:
            choice("recipe", sorted(RECIPES))
        for name in ("epochs", "batch_size", "eval_batch_size", "image_size"):
            integer(name, 1)
        integer("workers", 0)
        integer("seed", 0)
        integer("crop_padding", 0, optional=True)
        integer("max_steps", 0, optional=True)
        for name in ("train_subset", "test_subset", "threads"):
            integer(name, 1, optional=True)
        number("lr", 0.0, closed_low=False)
        number("momentum", 0.0, 1.0)
        number("weight_decay", 0.0)
        number("label_smoothing", 0.0, 1.0)
        number("step_size", 0.0, closed_low=False)
        number("gamma", 0.0, closed_low=False)
        number("warmup_epochs", 0.0)
        number("time_limit", 0.0, closed_low=False, optional=True)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs: expected a dict; got {self.model_kwargs!r}")
        for name in ("num_classes", "in_channels"):
            if name in self.model_kwargs:
                raise ValueError(
                    f"model_kwargs: {name}={self.model_kwargs[name]!r} is set by the dataset "
                    f"({self.dataset!r}); leave it out"
                )

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> TrainConfig:
        """The options of a named recipe (:data:`RECIPES`), with ``overrides`` on top.

        Examples
        --------
        >>> cfg = TrainConfig.from_recipe("mgnet-paper", output_dir="runs/paper")
        >>> cfg.epochs, cfg.schedule, cfg.decay_all_params, cfg.drop_last, cfg.amp
        (300, 'step', True, False, 'none')
        """
        if name not in RECIPES:
            raise ValueError(f"recipe: expected one of {', '.join(map(repr, sorted(RECIPES)))}; got {name!r}")
        return cls(**{**RECIPES[name], "recipe": name, **overrides})

    def to_dict(self) -> dict:
        """Plain-Python form stored in checkpoints."""
        return asdict(self)


# Named sets of TrainConfig values.  "mgnet-paper" is the original train_mgnet.py (XuTeam/MgNet_Code): SGD
# lr 0.1, momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter, lr x0.1 at epochs 50, 100, ...
# (lr = 0.1 * 0.1^(epoch // 50), epochs from 1), 300 epochs of batch 128 keeping the last partial batch,
# random crop (padding 4) and flip, the dataset's normalisation, float32.
RECIPES: dict[str, dict] = {
    "mgnet-paper": dict(
        model="mgnet_cifar",
        dataset="cifar10",
        epochs=300,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        decay_all_params=True,
        label_smoothing=0.0,
        schedule="step",
        step_size=50.0,
        gamma=0.1,
        warmup_epochs=0.0,
        crop_padding=4,
        hflip=True,
        drop_last=False,
        amp="none",
        channels_last=False,
    )
}


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


# --------------------------------------------------------------------------------------------- pieces


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


def _build_model(name: str, kwargs: dict, num_classes: int, in_channels: int) -> nn.Module:
    try:
        return create_model(name, **{**kwargs, "num_classes": num_classes, "in_channels": in_channels})
    except TypeError as err:  # an unknown keyword or a value of the wrong type
        raise ValueError(f"model_kwargs: {err}") from None


def _loaders(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> Loaders:
    return build_loaders(
        cfg.dataset,
        cfg.data_dir,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        device=device,
        download=cfg.download,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        crop_padding=cfg.crop_padding,
        hflip=cfg.hflip,
        drop_last=cfg.drop_last,
        image_size=cfg.image_size,
        workers=cfg.workers,
        channels_last=cfg.channels_last,
    )


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """SGD parameter groups: decay conv and linear weights only (timm), or every parameter (the original).

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    >>> [(len(g["params"]), g["weight_decay"]) for g in param_groups(net, 5e-4)]
    [(1, 0.0005), (3, 0.0)]
    >>> [(len(g["params"]), g["weight_decay"]) for g in param_groups(net, 5e-4, decay_all=True)]
    [(4, 0.0005)]
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": trainable, "weight_decay": weight_decay}]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]  # norms, biases, Hat supports
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of ``cfg.lr`` for optimizer step ``s`` (counted from 0; the scheduler steps every
    iteration, so step ``s`` belongs to epoch ``s // steps_per_epoch + 1``).

    The step schedule counts epochs as the original ``train_mgnet.py`` does: epoch ``e`` (from 1) trains
    with ``lr * gamma ** (e // step_size)``, so with ``step_size=50`` epochs 1-49 use ``lr``, 50-99
    ``0.1 lr``, and so on.

    Examples
    --------
    >>> factor = lr_schedule(TrainConfig(schedule="step", step_size=2, gamma=0.5), steps_per_epoch=10)
    >>> [factor(s) for s in (0, 9, 10, 29, 30)]  # epochs 1, 1, 2, 3, 4
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and warm == 0:
        warm = 0.25 * total

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch + 1
            return cfg.gamma ** math.floor(epoch / cfg.step_size)
        if step < warm:
            start = 0.04 if cfg.schedule == "onecycle" else 0.0  # one-cycle starts at lr / 25
            return start + (1.0 - start) * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1.0, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    if device.type != "cuda" and cfg.amp == "fp16":
        raise ValueError("amp: 'fp16' needs CUDA; use 'bf16' or 'none' on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class EpochStats:
    """What :func:`train_one_epoch` measured."""

    loss: float  # mean training loss over the images seen (all processes)
    accuracy: float  # training accuracy (on augmented images, in train mode)
    lr: float  # learning rate of the epoch's first step
    steps: int  # optimizer steps taken
    stopped: str | None = None  # "max_steps" or "time_limit" when the epoch was cut short


# The host reads the running loss sum once every this many steps to stop a diverged run early; reading it
# every step would make the host wait for the device each iteration.
DIVERGENCE_CHECK_STEPS = 50


def train_one_epoch(
    net: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    criterion: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    *,
    epoch: int,
    global_step: int,
    started: float,
    world: int = 1,
    progress: bool = False,
) -> EpochStats:
    """One pass over ``loader`` (epoch ``epoch``, counted from 0): forward, backward, step, schedule.

    Raises :class:`TrainingDivergedError` on a non-finite loss (checked every
    :data:`DIVERGENCE_CHECK_STEPS` steps and at the end).
    """
    from tqdm.auto import tqdm

    net.train()
    loader.set_epoch(epoch)
    lr = optimizer.param_groups[0]["lr"]
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    steps, stopped = 0, None
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
    for x, y in bar:
        step = global_step + steps
        if cfg.max_steps is not None and step >= cfg.max_steps:
            stopped = "max_steps"
            break
        if cfg.time_limit is not None and _over_time(started, cfg.time_limit, step, world, device):
            stopped = "time_limit"
            break
        with _autocast(cfg, device):
            logits = net(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        with torch.no_grad():
            sums[0] += loss.detach().double() * y.numel()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
        if steps % DIVERGENCE_CHECK_STEPS == 0:
            _check_finite(float(sums[0]), epoch, steps, lr)
    if stopped == "max_steps":
        return EpochStats(math.nan, math.nan, lr, steps, stopped)
    if world > 1:
        dist.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    _check_finite(loss_sum, epoch, steps, lr)
    return EpochStats(loss_sum / max(seen, 1), correct / max(seen, 1), lr, steps, stopped)


def _check_finite(loss_sum: float, epoch: int, steps: int, lr: float) -> None:
    if not math.isfinite(loss_sum):
        raise TrainingDivergedError(
            f"training diverged: the loss became {loss_sum} in epoch {epoch + 1} (within its first {steps} steps, "
            f"lr {lr:g}); stopped before saving anything of this epoch; lower --lr or check the data"
        )


def _over_time(started: float, limit: float, step: int, world: int, device: torch.device) -> bool:
    over = time.perf_counter() - started > limit
    if world == 1:
        return over
    # Every process must stop at the same step, or DDP would hang: they agree every 20 steps.
    if step % 20:
        return False
    flag = torch.tensor(float(over), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


@torch.no_grad()
def validate(model: nn.Module, loader, cfg: TrainConfig, device: torch.device, world: int = 1) -> tuple[float, float]:
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


# ----------------------------------------------------------------------------------------------- train


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Train a registered model; see :class:`TrainConfig` for every option.

    Parameters
    ----------
    config : TrainConfig, optional
        The run; keyword arguments override its fields (``train(model="mgnet_cifar", dataset="cifar10")``).
        ``train(recipe="mgnet-paper", ...)`` starts from a named recipe (:meth:`TrainConfig.from_recipe`).

    Returns
    -------
    TrainResult
        Final and best test accuracy (labelled separately), the per-epoch history, the trained model.

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite (the last good epoch stays saved).
    """
    if config is None:
        recipe = overrides.pop("recipe", None)
        config = TrainConfig.from_recipe(recipe, **overrides) if recipe else TrainConfig(**overrides)
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


def _preflight(cfg: TrainConfig, run: RunDirectory) -> None:
    """Checks that need no data: the output folder, an existing run, the model and its options."""
    check_output_dir(run.path)
    if run.has_checkpoint and not (cfg.resume or cfg.overwrite):
        raise FileExistsError(
            f"output_dir {str(run.path)!r} already holds a run ({run.last.name}); pass --resume to continue it "
            "or --overwrite to start afresh"
        )
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume, overwrite: pass one of them, not both")
    if cfg.resume and not run.has_checkpoint:
        raise CheckpointError(f"resume: no checkpoint {str(run.last)!r} to resume from")
    if cfg.init_from is not None and not Path(cfg.init_from).is_file():
        raise CheckpointError(f"init_from: checkpoint {str(cfg.init_from)!r} does not exist")
    default_input_size(cfg.model)  # an unknown model name fails here, before any data is read or fetched
    info = DATASETS[cfg.dataset]
    if info["classes"] is not None:  # build the model on the meta device: bad model_kwargs cost nothing
        with torch.device("meta"):
            _build_model(cfg.model, cfg.model_kwargs, info["classes"], info["shape"][0])


def _checkpoint(cfg: TrainConfig, data: Loaders, model, optimizer, scheduler, scaler, state: dict) -> dict:
    """Everything a resume needs, plus what eval/predict need to rebuild the model."""
    device = next(model.parameters()).device
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "model_name": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "input_size": list(data.input_size),
        "class_names": data.class_names,
        "mean": list(data.mean),
        "std": list(data.std),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        **state,  # epoch, history, best_acc, best_epoch, run_id
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
    }


def _restore_or_start(
    cfg: TrainConfig, run: RunDirectory, rank: int, device, data: Loaders, model, optimizer, scheduler, scaler, title
) -> dict:
    """The state to train on from: ``last.pt``'s on ``--resume`` (checked and its epoch's commit finished),
    otherwise a fresh one recorded in ``run.json`` (after loading ``--init-from`` weights)."""
    state = {"epoch": 0, "history": [], "best_acc": -1.0, "best_epoch": 0, "run_id": None}
    if rank == 0:
        run.remove_stale_temporaries()
    if not cfg.resume:
        if cfg.init_from is not None:
            described = load_weights_from(model, cfg.init_from, cfg.model)
            if rank == 0:
                print(f"init_from {described}")
        if rank == 0:
            state["run_id"] = run.start(cfg.to_dict())
        return state
    may_differ = [f.name for f in fields(TrainConfig) if f.metadata["resumable"]]
    if cfg.schedule in ("step", "constant"):
        may_differ.append("epochs")  # their lr does not depend on the length of the run
    blob = run.resume(cfg.to_dict(), may_differ, title, model, cfg.model, data.num_classes, finish=rank == 0)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["rng"]["torch"])
    if device.type == "cuda" and blob["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(blob["rng"]["cuda"], device)
    state = {key: blob.get(key) for key in state}
    state["history"] = list(state["history"])
    return state


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> TrainResult:
    run = RunDirectory(cfg.output_dir)
    _preflight(cfg, run)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    data = _loaders(cfg, device, rank, world)
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise DataError(f"dataset {cfg.dataset!r}: fewer training images than one batch of {cfg.batch_size}")
    model = _build_model(cfg.model, cfg.model_kwargs, data.num_classes, data.in_channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay, cfg.decay_all_params),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    title = f"{cfg.model} on {cfg.dataset}"

    state = _restore_or_start(cfg, run, rank, device, data, model, optimizer, scheduler, scaler, title)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    started = time.perf_counter()
    history = state["history"]
    stopped = None
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        try:
            stats = train_one_epoch(
                net,
                data.train,
                optimizer,
                scheduler,
                scaler,
                criterion,
                cfg,
                device,
                epoch=epoch,
                global_step=epoch * steps_per_epoch,
                started=started,
                world=world,
                progress=cfg.progress and rank == 0,
            )
            if stats.stopped == "max_steps":
                stopped = stats.stopped
                break  # killed mid-epoch: the last checkpoint stays the one of the last full epoch
            test_loss, test_acc = validate(net, data.test, cfg, device, world)
            _check_finite(test_loss, epoch, stats.steps, stats.lr)
        except TrainingDivergedError as err:
            kept = f"{run.last} holds epoch {state['epoch']}" if state["epoch"] else "no epoch was saved"
            raise TrainingDivergedError(f"{err} ({kept})") from None
        stopped = stats.stopped
        seconds = time.perf_counter() - t0
        is_best = test_acc > state["best_acc"]
        if is_best:
            state["best_acc"], state["best_epoch"] = test_acc, epoch + 1
        row = {
            "epoch": epoch + 1,
            "lr": stats.lr,
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "best_test_acc": state["best_acc"],
            "epoch_seconds": seconds,
            "elapsed_seconds": (history[-1]["elapsed_seconds"] if history else 0.0) + seconds,
        }
        history.append(row)
        state["epoch"] = epoch + 1
        if rank == 0:
            run.commit_epoch(_checkpoint(cfg, data, model, optimizer, scheduler, scaler, state), is_best, title)
            if cfg.progress:
                print(
                    f"epoch {epoch + 1:3d}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:.2f}%  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  "
                    f"(best {100 * state['best_acc']:.2f}%)  {seconds:.1f}s"
                )
        if stopped:  # time limit: the epoch was cut short but is evaluated and logged
            break
    return TrainResult(
        final_test_acc=history[-1]["test_acc"] if history else float("nan"),
        best_test_acc=state["best_acc"] if history else float("nan"),
        best_epoch=state["best_epoch"],
        epochs_run=len(history),
        train_seconds=time.perf_counter() - started,
        params=params,
        history=history,
        output_dir=str(run.path),
        interrupted=stopped is not None,
        model=model,
    )


# -------------------------------------------------------------------------------------- eval / predict


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model of a :func:`train` checkpoint, in eval mode, and the checkpoint's metadata."""
    path = Path(path)
    blob = load_checkpoint(path)
    name = blob["model_name"]
    model = _build_model(name, dict(blob.get("model_kwargs") or {}), blob["num_classes"], blob["in_channels"])
    load_model_state(model, blob, path, name, blob["num_classes"])
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
    test_loader = _loaders(cfg, dev, 0, 1).test
    loss, acc = validate(model.to(dev), test_loader, cfg, dev, 1)
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
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k: expected a positive integer; got {top_k!r}")
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
