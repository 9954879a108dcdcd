"""Training: MNIST accuracy, exact resume, two-process DDP, checkpoints and their errors, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from vision import train
from vision.cli import main as vision_main
from vision.train import CheckpointError, load_checkpoint, predict

ROOT = Path(__file__).resolve().parents[2]


def test_small_mgnet_reaches_98_percent_on_real_mnist(tmp_path, mnist_dir):
    """One epoch of MgNet[1,1,1]-[8,16,32] on all 60k MNIST images: about 1.5 min on one core."""
    result = train(
        model="mgnet_mnist_tiny",
        dataset="mnist",
        data_dir=str(mnist_dir),
        download=False,
        output_dir=str(tmp_path / "mnist"),
        epochs=1,
        batch_size=128,
        lr=0.1,
        schedule="onecycle",
        crop_padding=0,
        threads=1,
        progress=False,
        seed=0,
        time_limit=170.0,  # the acceptance bound is 3 minutes of training
    )
    assert result.train_seconds < 180
    assert result.final_test_acc >= 0.98, result.history
    assert result.best_test_acc >= result.final_test_acc
    assert (tmp_path / "mnist" / "best.pt").is_file() and (tmp_path / "mnist" / "curves.png").is_file()


def test_resume_after_kill_in_second_epoch_matches_uninterrupted(tmp_path, quick_config):
    full = train(quick_config(tmp_path / "a" / "run"))
    killed = train(quick_config(tmp_path / "b" / "run", max_steps=8 + 3))  # 8 steps per epoch
    assert killed.interrupted and killed.epochs_run == 1
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["epoch"] == 1
    resumed = train(quick_config(tmp_path / "b" / "run", resume=True))
    assert resumed.epochs_run == 2 and not resumed.interrupted
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]
    # The logs hold each epoch once.
    rows = (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    csv_lines = (tmp_path / "b" / "run" / "log.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,lr,train_loss,train_acc,test_loss,test_acc") and len(csv_lines) == 3


def test_checkpoint_contents_and_weights_only_loading(tmp_path, quick_config):
    result = train(quick_config(tmp_path / "run", epochs=1))
    blob = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("config", "model", "optimizer", "scheduler", "scaler", "epoch", "rng", "history", "best_acc"):
        assert key in blob
    assert blob["config"]["model"] == "mgnet_mnist_tiny" and blob["epoch"] == 1
    assert blob["best_acc"] == result.best_test_acc
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())  # atomic writes


def test_existing_run_is_not_overwritten(tmp_path, quick_config):
    train(quick_config(tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a run.*--resume"):
        train(quick_config(tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_bad_checkpoints_are_clear_errors_and_leave_files_alone(tmp_path, quick_config):
    train(quick_config(tmp_path / "run", epochs=1))
    last = tmp_path / "run" / "last.pt"
    original = last.read_bytes()
    # Another architecture, another class count.
    with pytest.raises(
        CheckpointError, match=r"last\.pt' holds model 'mgnet_mnist_tiny' with 10 classes; expected model 'mgnet_mnist'"
    ):
        train(quick_config(tmp_path / "run", epochs=2, model="mgnet_mnist", resume=True))
    with pytest.raises(CheckpointError, match="does not fit model 'mgnet_mnist_tiny'"):
        train(quick_config(tmp_path / "run", epochs=2, resume=True, model_kwargs={"channels_u": [8, 16, 24]}))
    assert last.read_bytes() == original
    # A file cut short.
    cut = tmp_path / "cut.pt"
    cut.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt' cannot be read .*cut short or corrupt"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    assert vision_main(["eval", str(cut)]) == 2


def test_eval_and_predict_commands(tmp_path, mnist_dir, quick_config, capsys):
    train(quick_config(tmp_path / "run", epochs=1, train_subset=2048, test_subset=500))
    ckpt = tmp_path / "run" / "best.pt"
    assert vision_main(["eval", str(ckpt), "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "mgnet_mnist_tiny epoch 1" in out
    from vision.data import load_dataset

    _, test = load_dataset("mnist", mnist_dir, download=False)
    img = tmp_path / "digit.png"
    Image.fromarray(test.images[0, 0].numpy()).save(img)  # a 7
    rows = predict(ckpt, [img], top_k=2)
    assert len(rows[0]["top"]) == 2 and 0 < rows[0]["top"][0][1] <= 1
    assert vision_main(["predict", str(ckpt), str(img)]) == 0
    assert "digit.png:" in capsys.readouterr().out
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert vision_main(["predict", str(ckpt), str(bad)]) == 2
    assert "notes.png: not a readable image" in capsys.readouterr().err


def test_cli_train_errors(tmp_path, capsys):
    from vision.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--label-smoothing" in help_text and "--resume [BOOL]" in help_text and "--hflip [BOOL]" in help_text
    assert (
        vision_main(
            [
                "train",
                "--model",
                "mgnet_cifr",
                "--data-dir",
                str(tmp_path / "none"),
                "--download",
                "false",
                "--output-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "did you mean 'mgnet_cifar'" in capsys.readouterr().err
    assert (
        vision_main(
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path / "none"),
                "--download",
                "false",
                "--output-dir",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "dataset 'cifar10' not found" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_cli_train_on_synthetic_cifar(tmp_path, cifar_factory, capsys):
    data = cifar_factory(tmp_path / "c", n_train=40, n_test=20)
    argv = [
        "train",
        "--model",
        "mgnet_cifar",
        "--model-kwargs",
        "channels_u=8",
        "num_iterations=[1,1]",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--schedule",
        "step",
        "--threads",
        "1",
        "--progress",
        "false",
        "--json",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert vision_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and 0 <= summary["final_test_acc"] <= 1 and "best_test_acc" in summary
    blob = load_checkpoint(tmp_path / "run" / "last.pt")
    assert blob["model_kwargs"] == {"channels_u": 8, "num_iterations": [1, 1]} and blob["class_names"][0] == "airplane"


def test_two_process_gloo_ddp_identical_weights(tmp_path, cifar_factory):
    data = cifar_factory(tmp_path / "c", n_train=64, n_test=20)
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from vision import train
        r = train(model="mgnet_cifar", model_kwargs=dict(channels_u=8, num_iterations=(1, 1)),
                  dataset="cifar10", data_dir={str(data)!r}, download=False, output_dir={str(tmp_path / "run")!r},
                  epochs=2, batch_size=8, lr=0.05, threads=1, progress=False, seed=1)
        torch.save(r.model.state_dict(), os.path.join({str(tmp_path)!r}, f"rank{{os.environ['RANK']}}.pt"))
        print("world", os.environ["WORLD_SIZE"], "acc", r.final_test_acc)
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    blob = load_checkpoint(tmp_path / "run" / "last.pt")
    assert blob["epoch"] == 2
    # 64 images, 2 ranks, batch 8: 4 steps per epoch per rank (the DistributedSampler-like split).
    assert blob["scheduler"]["last_epoch"] == 8


def test_cifar_benchmark_smoke_mode(tmp_path):
    from benchmarks import cifar

    out = tmp_path / "cifar_smoke.md"
    assert cifar.main(["--smoke", "--datasets", "cifar10", "cifar100", "--output", str(out)]) == 0
    text = out.read_text()
    for dataset in ("cifar10", "cifar100"):
        for name in ("mgnet_cifar", "resnet18", "preact_resnet18"):
            assert f"| {dataset} | {name} |" in text


def test_train_on_image_folder(tmp_path):
    """The ImageNet-style layout through DataLoader workers (none here: 0 keeps the test light)."""
    for split in ("train", "val"):
        for k, colour in enumerate(((250, 10, 10), (10, 10, 250), (10, 250, 10))):
            d = tmp_path / "imgs" / split / f"class{k}"
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20 + i, 18), colour).save(d / f"{i}.jpg")
    result = train(
        model="resnet18",
        model_kwargs={"channels": [4, 4, 4, 4]},
        dataset="folder",
        data_dir=str(tmp_path / "imgs"),
        image_size=16,
        workers=0,
        epochs=2,
        batch_size=4,
        lr=0.05,
        threads=1,
        progress=False,
        output_dir=str(tmp_path / "run"),
    )
    assert result.epochs_run == 2 and 0.0 <= result.final_test_acc <= 1.0
    blob = load_checkpoint(tmp_path / "run" / "last.pt")
    assert blob["class_names"] == ["class0", "class1", "class2"] and blob["input_size"] == [3, 16, 16]
    rows = predict(tmp_path / "run" / "last.pt", [tmp_path / "imgs" / "val" / "class1" / "0.jpg"])
    assert rows[0]["top"][0][0] in blob["class_names"]
