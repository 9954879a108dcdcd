"""``mgnet train | eval | predict | models``: the vision subcommands of the ``mgnet`` command line.

``mgnet train`` has one option per :class:`vision.train.TrainConfig` field (``--batch-size``,
``--schedule``, ...), so the command line and ``vision.train(config)`` are the same interface.  Heavy imports
happen inside the command functions.  ``python -m vision`` runs these commands alone (useful under
``torchrun``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import json
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "register"]


def _parse_kv(items: Sequence[str]) -> dict:
    """``["channels_u=64", "share_B=False"]`` -> ``{"channels_u": 64, "share_B": False}``.

    Examples
    --------
    >>> _parse_kv(["channels_u=[16,32]", "activation=hat"])
    {'channels_u': [16, 32], 'activation': 'hat'}
    """
    out = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--model-kwargs: expected KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, its help taken from the field's metadata.

    Options that are not given stay out of the namespace (``argparse.SUPPRESS``), so a ``--recipe``
    supplies them and explicit options override the recipe.
    """
    from vision.train import TrainConfig, config_fields

    hints = typing.get_type_hints(TrainConfig)
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name == "model_kwargs":
            parser.add_argument(flag, nargs="*", default=argparse.SUPPRESS, metavar="KEY=VALUE", help=help_text)
        elif hint is bool or bool in typing.get_args(hint):
            parser.add_argument(
                flag,
                type=_bool,
                nargs="?",
                const=True,
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=f"{help_text} (default {default})",
            )
        else:
            args = typing.get_args(hint)
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            kind = {int: int, float: float}.get(base, str)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"{help_text} (default {default})")


def _add_checkpoint_reader_options(p: argparse.ArgumentParser) -> None:
    """The options ``eval`` and ``predict`` share: ``--debug`` and the dataset of an original checkpoint."""
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument(
        "--dataset",
        default=None,
        choices=("mnist", "cifar10", "cifar100"),
        help="original checkpoints: the dataset (default: from its input channels and classes)",
    )


def register(subparsers) -> None:
    """Add ``train``, ``eval``, ``predict`` and ``models`` to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "train",
        help="train an MgNet/ResNet classifier (options = vision.TrainConfig)",
        description="Train a registered classifier; every option is a TrainConfig field.",
    )
    _add_train_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.set_defaults(func=cmd_train)

    original = "or a checkpoint of the original XuTeam/MgNet_Code (detected, converted, its configuration printed)"
    p = subparsers.add_parser("eval", help="test loss and accuracy of a checkpoint")
    p.add_argument("checkpoint", help=f"a last.pt or best.pt written by `mgnet train`, {original}")
    p.add_argument(
        "--data-dir", default=None, help="dataset folder (default: the one used in training; required for original)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=500)
    _add_checkpoint_reader_options(p)
    p.add_argument("--save-logits", default=None, metavar="FILE", help="original checkpoints: save the test logits")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="classify images with a checkpoint")
    p.add_argument("checkpoint", help=f"a last.pt or best.pt written by `mgnet train`, {original}")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=int, default=3)
    _add_checkpoint_reader_options(p)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("models", help="list registered models with parameters and multiply-adds")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'mgnet*'")
    p.add_argument("--num-classes", type=int, default=None, help="count with this many classes")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.set_defaults(func=cmd_models)


def _fail(err: BaseException, status: int = 2) -> int:
    text = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message holds
    print(f"error: {text}", file=sys.stderr)
    return status


def _user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn every error a user can cause into one line on stderr and a non-zero exit (``--debug`` shows
    the traceback): bad options and files, missing data, a checkpoint that does not fit, a diverged run."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from vision.train import TrainingDivergedError

        try:
            return command(args)
        except (ValueError, TypeError, KeyError, OSError, argparse.ArgumentTypeError, TrainingDivergedError) as err:
            if getattr(args, "debug", False):
                traceback.print_exc()
            return _fail(err, 1 if isinstance(err, TrainingDivergedError) else 2)
        except KeyboardInterrupt:
            if getattr(args, "debug", False):
                traceback.print_exc()
            return _fail(KeyboardInterrupt("interrupted; the last completed epoch is saved (--resume continues)"), 130)

    return run


@_user_errors
def cmd_train(args: argparse.Namespace) -> int:
    """``mgnet train``."""
    from vision.train import TrainConfig, config_fields, train

    values = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    if "model_kwargs" in values:
        values["model_kwargs"] = _parse_kv(values["model_kwargs"] or [])
    recipe = values.pop("recipe", None)
    config = TrainConfig.from_recipe(recipe, **values) if recipe else TrainConfig(**values)
    result = train(config)
    summary = {
        "final_test_acc": result.final_test_acc,
        "best_test_acc": result.best_test_acc,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "params": result.params,
        "seconds": round(result.train_seconds, 1),
        "output_dir": result.output_dir,
        "interrupted": result.interrupted,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"final test accuracy {100 * result.final_test_acc:.2f}% (after epoch {result.epochs_run}); "
            f"best test accuracy {100 * result.best_test_acc:.2f}% (epoch {result.best_epoch}); "
            f"{result.params:,} parameters; {result.train_seconds:.0f} s; checkpoints in {result.output_dir}"
        )
    return 0


def _checked_output(path: str) -> Path:
    """An output file path whose folder exists and which is not a folder (checked before any work)."""
    out = Path(path).expanduser()
    if out.is_dir() or not out.parent.is_dir():
        raise ValueError(f"--save-logits: expected a file path in an existing folder; got {path!r}")
    return out


def _eval_original(args: argparse.Namespace) -> int:
    """``mgnet eval`` of an original MgNet_Code checkpoint."""
    from mgcore.io import atomic_save
    from vision.convert import evaluate_original_checkpoint
    from vision.data import DataError, DatasetNotFoundError

    try:
        out = _checked_output(args.save_logits) if args.save_logits else None
        if args.data_dir is None:
            raise ValueError("--data-dir: required for an original MgNet_Code checkpoint (it records no dataset)")
        r = evaluate_original_checkpoint(args.checkpoint, args.data_dir, args.device, args.batch_size, args.dataset)
    except (DataError, DatasetNotFoundError, ValueError) as err:
        return _fail(err)
    print(f"{r['checkpoint']}: original MgNet_Code checkpoint, converted to {r['config']}")
    epoch = "" if r["epoch"] is None else f" epoch {r['epoch']}:"
    print(
        f"{r['checkpoint']}:{epoch} {r['dataset']} test loss {r['test_loss']:.4f}, "
        f"test accuracy {100 * r['test_acc']:.2f}% ({r['images']} images)"
    )
    if out is not None:
        atomic_save(r["logits"], out)
        print(f"logits {tuple(r['logits'].shape)} saved to {out}")
    return 0


@_user_errors
def cmd_eval(args: argparse.Namespace) -> int:
    """``mgnet eval CHECKPOINT``."""
    from vision.convert import is_original_checkpoint
    from vision.data import DataError, DatasetNotFoundError
    from vision.train import CheckpointError, evaluate_checkpoint

    if is_original_checkpoint(args.checkpoint):
        return _eval_original(args)
    if args.dataset is not None or args.save_logits is not None:
        return _fail(ValueError("--dataset, --save-logits: only for original MgNet_Code checkpoints"))
    try:
        r = evaluate_checkpoint(args.checkpoint, args.data_dir, args.device, args.batch_size)
    except (DataError, DatasetNotFoundError, CheckpointError, ValueError) as err:
        return _fail(err)
    print(
        f"{r['checkpoint']}: {r['model']} epoch {r['epoch']}: test loss {r['test_loss']:.4f}, "
        f"test accuracy {100 * r['test_acc']:.2f}%"
    )
    return 0


@_user_errors
def cmd_predict(args: argparse.Namespace) -> int:
    """``mgnet predict CHECKPOINT IMAGE...``."""
    from vision.convert import is_original_checkpoint, predict_original
    from vision.data import DataError
    from vision.train import CheckpointError, predict

    try:
        if is_original_checkpoint(args.checkpoint):
            config, rows = predict_original(args.checkpoint, args.images, args.top_k, args.dataset)
            print(f"{args.checkpoint}: original MgNet_Code checkpoint, converted to {config}")
        elif args.dataset is not None:
            raise ValueError("--dataset: only for original MgNet_Code checkpoints")
        else:
            rows = predict(args.checkpoint, args.images, args.top_k)
    except (DataError, CheckpointError, ValueError) as err:
        return _fail(err)
    for row in rows:
        tops = ", ".join(f"{name} {100 * p:.1f}%" for name, p in row["top"])
        print(f"{row['image']}: {tops}")
    return 0


@_user_errors
def cmd_models(args: argparse.Namespace) -> int:
    """``mgnet models``: every registered model with parameters and multiply-adds at its input size."""
    from vision.registry import list_models, model_info

    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes: expected a positive integer; got {args.num_classes}")
    names = list_models(args.pattern)
    if not names:
        return _fail(ValueError(f"pattern: no registered model matches {args.pattern!r}"))
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    print(f"{'model':<24} {'params':>13} {'MACs':>10}  input")
    for name in names:
        info = model_info(name, **overrides)
        c, h, w = info.input_size
        macs = f"{info.macs / 1e9:.3f}G" if info.macs >= 1e9 else f"{info.macs / 1e6:.1f}M"
        print(f"{name:<24} {info.params:>13,} {macs:>10}  {c}x{h}x{w}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the vision subcommands (``python -m vision``)."""
    parser = argparse.ArgumentParser(prog="python -m vision", description="MgNet classifiers on the mgcore engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a vision subcommand; return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
