"""Every user error of the vision commands is one line on stderr and a non-zero exit, found before any work;
``--debug`` shows the traceback."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

from vision.cli import main as vision_main
from vision.data import DataError, read_idx, read_image


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--model-kwargs", "channels_uu=3"], r"model_kwargs: .*channels_uu"),
        (["--model-kwargs", "channels_u=abc"], r"channels_u: expected .*got 'abc'"),
        (["--model-kwargs", "num_classes=3"], r"model_kwargs: num_classes=3 is set by the dataset \('mnist'\)"),
        (["--label-smoothing", "2"], r"label_smoothing: expected a finite number >= 0 and < 1; got 2.0"),
        (["--threads", "-1"], r"threads: expected a positive integer or None; got -1"),
        (["--schedule", "step", "--step-size", "0"], r"step_size: expected a finite number > 0; got 0.0"),
        (["--train-subset", "0"], r"train_subset: expected a positive integer or None; got 0"),
        (["--train-subset", "-5"], r"train_subset: expected a positive integer or None; got -5"),
        (["--recipe", "paper"], r"recipe: expected one of 'mgnet-paper'; got 'paper'"),
        (["--resume", "--overwrite"], r"resume: no checkpoint|resume, overwrite: pass one of them"),
    ],
)
def test_bad_train_options_are_one_line_before_any_work(tmp_path, mnist_dir, capsys, options, expected):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(mnist_dir), "--download", "false", "--output-dir", str(out), *options]
    assert vision_main(argv) == 2
    assert re.search(expected, _one_line_error(capsys))
    assert not out.exists()


def test_output_dir_under_a_file_is_refused_before_the_data_is_read(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = ["train", "--data-dir", str(tmp_path / "no-data"), "--download", "false"]
    argv += ["--output-dir", str(tmp_path / "file" / "run")]
    assert vision_main(argv) == 2
    assert "is a file, so the folder cannot be created there" in _one_line_error(capsys)  # not "dataset not found"


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["train", "--label-smoothing", "2", "--output-dir", str(tmp_path / "run"), "--debug"]
    assert vision_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: ")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels (and holds no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mnist_dir) -> Path:
    from vision import train

    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(
        model="mgnet_mnist_tiny",
        data_dir=str(mnist_dir),
        download=False,
        output_dir=str(out),
        epochs=1,
        batch_size=64,
        train_subset=64,
        test_subset=64,
        threads=1,
        progress=False,
    )
    return out / "last.pt"


@pytest.mark.parametrize(
    ("side", "expected"),
    [(200_000, "40000000000 pixels"), (9_000, "9000x9000 pixels")],  # beyond Pillow's guard; beyond ours only
)
def test_predict_refuses_a_huge_image_from_its_header(tmp_path, checkpoint, capsys, side, expected):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(side, side))
    with pytest.raises(DataError, match=rf"bomb\.png: the image declares .*{expected}.*refused before decoding"):
        read_image(bomb)
    assert vision_main(["predict", str(checkpoint), str(bomb)]) == 2
    assert "bomb.png" in _one_line_error(capsys)


def test_predict_top_k_and_models_num_classes_must_be_positive(tmp_path, checkpoint, capsys):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(img)
    assert vision_main(["predict", str(checkpoint), str(img), "--top-k", "-3"]) == 2
    assert "top_k: expected a positive integer; got -3" in _one_line_error(capsys)
    assert vision_main(["models", "resnet18", "--num-classes", "-1"]) == 2
    assert "--num-classes: expected a positive integer; got -1" in _one_line_error(capsys)


def test_idx_header_whose_dimensions_overflow_names_the_file(tmp_path):
    # 65536^4 = 2^64 wraps to 0 in int64, which equalled the (empty) data and passed the size check.
    path = tmp_path / "huge-idx4-ubyte"
    path.write_bytes(struct.pack(">HBB4I", 0, 8, 4, 65536, 65536, 65536, 65536))
    with pytest.raises(DataError, match=r"huge-idx4-ubyte: IDX header says shape \(65536, 65536, 65536, 65536\)"):
        read_idx(path)
