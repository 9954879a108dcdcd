"""Training-loop faults: non-finite losses, kills between an epoch's writes, resumes of the wrong run or with
other settings, stale temporary files, the paper's schedule and the lr each epoch logs, --init-from."""

from __future__ import annotations

import csv
import functools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import vision.checkpoint as vcheckpoint
from vision import TrainConfig, create_model, train
from vision.checkpoint import CheckpointError, load_checkpoint
from vision.cli import main as vision_main
from vision.train import lr_schedule, param_groups

TIMING = ("epoch_seconds", "elapsed_seconds")


@pytest.fixture()
def quick(quick_config):
    """The shared quick run (conftest) with 256 training and 128 test images: 4 steps an epoch."""
    return functools.partial(quick_config, train_subset=256, test_subset=128)


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    for key in ("epoch", "best_epoch", "best_acc"):
        assert x[key] == y[key], key
    assert _untimed(x["history"]) == _untimed(y["history"])
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), k
    for i, state in x["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], y["optimizer"]["state"][i]["momentum_buffer"])
    assert x["scheduler"]["last_epoch"] == y["scheduler"]["last_epoch"]


def _assert_same_logs(a: Path, b: Path) -> None:
    rows_a = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (b / "log.jsonl").read_text().splitlines()]
    assert _untimed(rows_a) == _untimed(rows_b)
    with (a / "log.csv").open() as fa, (b / "log.csv").open() as fb:
        assert _untimed(list(csv.DictReader(fa))) == _untimed(list(csv.DictReader(fb)))


# ------------------------------------------------------------------------------------------ non-finite


@pytest.mark.parametrize(
    ("option", "value"), [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"), ("--momentum", "inf")]
)
def test_non_finite_hyper_parameters_are_refused_before_training(tmp_path, mnist_dir, capsys, option, value):
    argv = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--download", "false"]
    argv += ["--output-dir", str(tmp_path / "run"), option, value]
    assert vision_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {option[2:].replace('-', '_')}: expected a finite number")
    assert not (tmp_path / "run").exists()


def test_divergence_stops_with_an_error_and_keeps_the_last_good_epoch(tmp_path, mnist_dir, capsys):
    # The step schedule multiplies lr 0.05 by 1e6 from epoch 2 (2 // step_size 2 = 1): the loss turns NaN.
    argv = ["train", "--model", "mgnet_mnist_tiny", "--data-dir", str(mnist_dir), "--download", "false"]
    argv += ["--output-dir", str(tmp_path / "run"), "--epochs", "3", "--batch-size", "64", "--lr", "0.05"]
    argv += ["--schedule", "step", "--step-size", "2", "--gamma", "1e6", "--train-subset", "256"]
    argv += ["--test-subset", "128", "--threads", "1", "--progress", "false", "--seed", "3"]
    assert vision_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged: the loss became nan in epoch 2" in err[0], err
    assert "last.pt holds epoch 1" in err[0]
    for name in ("last.pt", "best.pt"):
        blob = load_checkpoint(tmp_path / "run" / name)
        assert blob["epoch"] == 1 and all(
            torch.isfinite(v).all() for v in blob["model"].values() if v.is_floating_point()
        )
    rows = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1] and math.isfinite(json.loads(rows[0])["train_loss"])


# ------------------------------------------------------------------------------- kills between writes


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the training code catches it."""


def test_kill_between_any_two_writes_then_resume_equals_an_uninterrupted_run(tmp_path, quick, monkeypatch):
    small = dict(train_subset=192, test_subset=128, batch_size=32)  # 6 steps an epoch
    full = tmp_path / "full"
    train(quick(full, **small))
    base = tmp_path / "base"  # epoch 1 committed, killed at the first step of epoch 2
    assert train(quick(base, max_steps=6, **small)).interrupted
    assert load_checkpoint(full / "best.pt")["best_epoch"] == 2  # epoch 2 writes best.pt too

    real = vcheckpoint.atomic_write_bytes
    calls: list[str] = []

    def resume_writes() -> list[str]:
        calls.clear()

        def counting(path, data):
            calls.append(Path(path).name)
            return real(path, data)

        monkeypatch.setattr(vcheckpoint, "atomic_write_bytes", counting)
        work = tmp_path / "count"
        shutil.copytree(base, work)
        train(quick(work, resume=True, **small))
        return list(calls)

    writes = resume_writes()
    # Epoch 1's commit is complete (nothing to finish); epoch 2 writes last.pt, best.pt, plot, then the logs.
    assert writes == ["last.pt", "best.pt", "curves.png", "log.csv", "log.jsonl"]
    for kill_at in range(len(writes)):
        run = tmp_path / f"kill{kill_at}"
        shutil.copytree(base, run)
        count = {"n": 0}

        def dying(path, data, kill_at=kill_at, count=count):
            if count["n"] == kill_at:  # killed in the middle of this write: a partial temporary file stays
                path = Path(path)
                (path.parent / f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
                raise _Killed(path.name)
            count["n"] += 1
            return real(path, data)

        monkeypatch.setattr(vcheckpoint, "atomic_write_bytes", dying)
        with pytest.raises(_Killed):
            train(quick(run, resume=True, **small))
        monkeypatch.setattr(vcheckpoint, "atomic_write_bytes", real)
        resumed = train(quick(run, resume=True, **small))
        assert resumed.epochs_run == 2, kill_at
        _assert_same_checkpoint(run / "last.pt", full / "last.pt")
        _assert_same_checkpoint(run / "best.pt", full / "best.pt")
        _assert_same_logs(run, full)
        assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp")), kill_at


def test_stale_temporary_files_are_removed_and_modes_are_consistent(tmp_path, quick):
    run = tmp_path / "run"
    train(quick(run, epochs=1))
    stale = [run / "last.pt.abc123.tmp", run / ".best.pt.xyz.tmp", run / ".log.csv.q.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    (run / "notes.tmp").write_text("mine")  # not a file of the run: left alone
    train(quick(run, epochs=1, resume=True))
    assert not any(p.exists() for p in stale) and (run / "notes.tmp").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.name != "notes.tmp"}
    assert len(set(modes.values())) == 1 and set(modes) >= {"last.pt", "best.pt", "log.csv", "curves.png"}, modes


# ------------------------------------------------------------------------------------ resume identity


def test_interrupted_overwrite_is_not_resumed_as_the_old_run(tmp_path, quick):
    run = tmp_path / "run"
    train(quick(run, epochs=1))
    old = (run / "last.pt").read_bytes()
    # --overwrite with other settings, killed in its first epoch: the old checkpoint stays untouched ...
    killed = train(quick(run, epochs=1, lr=0.02, overwrite=True, max_steps=3))
    assert killed.interrupted and (run / "last.pt").read_bytes() == old
    # ... and a resume refuses it instead of continuing the old weights under the new settings.
    with pytest.raises(CheckpointError, match=r"belongs to an earlier run .* --overwrite"):
        train(quick(run, epochs=1, lr=0.02, resume=True))
    # Once the new run has saved an epoch, resume continues the new run.
    train(quick(run, epochs=2, lr=0.02, overwrite=True, max_steps=4))
    resumed = train(quick(run, epochs=2, lr=0.02, resume=True))
    assert resumed.epochs_run == 2 and load_checkpoint(run / "last.pt")["config"]["lr"] == 0.02


def test_resume_with_changed_settings_refuses_and_names_them(tmp_path, quick):
    run = tmp_path / "run"
    train(quick(run, max_steps=4))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"other settings \(batch_size 64 -> 32; lr 0.05 -> 0.1; seed 3 -> 4\)"):
        train(quick(run, resume=True, lr=0.1, batch_size=32, seed=4))
    with pytest.raises(CheckpointError, match=r"other settings \(epochs 2 -> 3\)"):  # cosine depends on it
        train(quick(run, resume=True, epochs=3))
    assert (run / "last.pt").read_bytes() == before
    # Settings that do not change what is trained may differ.
    assert train(quick(run, resume=True, eval_batch_size=100, progress=False)).epochs_run == 2


# ------------------------------------------------------------------------------------------ schedule


def test_paper_recipe_lr_per_epoch_equals_the_original_formula_for_300_epochs():
    cfg = TrainConfig.from_recipe("mgnet-paper")
    assert (cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.decay_all_params) == (0.1, 0.9, False, 5e-4, True)
    assert (cfg.epochs, cfg.batch_size, cfg.drop_last, cfg.crop_padding, cfg.hflip, cfg.amp) == (
        300,
        128,
        False,
        4,
        True,
        "none",
    )
    steps_per_epoch = 3
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.decay_all_params), lr=cfg.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, steps_per_epoch))
    for epoch in range(1, cfg.epochs + 1):  # epochs counted from 1, as train_mgnet.py counts them
        expected = 0.1 * 0.1 ** (epoch // 50)
        for _ in range(steps_per_epoch):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), epoch
            optimizer.step()
            scheduler.step()
    assert [len(g["params"]) for g in optimizer.param_groups] == [2]  # weight and bias both decayed


def test_logged_lr_is_the_lr_the_epoch_trained_with(tmp_path, quick, monkeypatch):
    used: list[float] = []
    step = torch.optim.SGD.step

    def recording(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    result = train(quick(tmp_path, epochs=3, train_subset=128, schedule="step", step_size=2, gamma=0.5))
    per_epoch = [used[i : i + 2] for i in range(0, len(used), 2)]  # 2 steps an epoch
    assert [row["lr"] for row in result.history] == [0.05, 0.025, 0.025]  # 0.05 * 0.5 ** (epoch // 2)
    assert per_epoch == [[row["lr"]] * 2 for row in result.history]


def test_drop_last_false_keeps_the_partial_batch(tmp_path, quick):
    result = train(quick(tmp_path, epochs=1, train_subset=100, drop_last=False, batch_size=64))
    assert load_checkpoint(tmp_path / "last.pt")["scheduler"]["last_epoch"] == 2  # 64 + 36 images
    assert result.epochs_run == 1


# ------------------------------------------------------------------------------------------ init-from


def test_init_from_a_project_and_an_original_checkpoint(tmp_path, quick):
    from vision.convert import _to_original_names

    train(quick(tmp_path / "a", epochs=1))
    trained = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    start = train(quick(tmp_path / "b", init_from=str(tmp_path / "a" / "last.pt"), max_steps=0))
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, trained[k]), k

    source = create_model("mgnet_mnist_tiny", channels_u=8)
    torch.save({"model_state_dict": _to_original_names(source.state_dict())}, tmp_path / "original.pth")
    kw = dict(init_from=str(tmp_path / "original.pth"), max_steps=0, model_kwargs={"channels_u": 8})
    start = train(quick(tmp_path / "c", **kw))
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    with pytest.raises(CheckpointError, match=r"original MgNet checkpoint .*original\.pth.* does not fit model"):
        train(quick(tmp_path / "d", init_from=str(tmp_path / "original.pth"), max_steps=0))


def test_cli_recipe_with_explicit_options_on_top(tmp_path, cifar_factory, capsys):
    data = cifar_factory(tmp_path / "c", n_train=45, n_test=10)  # 45 images, batch 8: 5 full batches and 5 left
    argv = ["train", "--recipe", "mgnet-paper", "--model-kwargs", "channels_u=8", "num_iterations=[1,1]"]
    argv += ["--data-dir", str(data), "--download", "false", "--epochs", "1", "--batch-size", "8"]
    argv += ["--threads", "1", "--progress", "false", "--output-dir", str(tmp_path / "run")]
    assert vision_main(argv) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "best test accuracy" in out
    blob = load_checkpoint(tmp_path / "run" / "last.pt")
    cfg = blob["config"]
    assert (cfg["recipe"], cfg["model"], cfg["dataset"], cfg["epochs"], cfg["batch_size"]) == (
        "mgnet-paper",
        "mgnet_cifar",
        "cifar10",
        1,
        8,
    )
    assert (cfg["schedule"], cfg["step_size"], cfg["lr"], cfg["nesterov"], cfg["amp"]) == (
        "step",
        50.0,
        0.1,
        False,
        "none",
    )
    assert [g["weight_decay"] for g in blob["optimizer"]["param_groups"]] == [5e-4]  # every parameter decayed
    assert blob["scheduler"]["last_epoch"] == 6  # the partial batch is kept
