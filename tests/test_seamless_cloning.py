"""``benchmarks/seamless_cloning.py`` on a user's own images: the composite against an independent sparse solve of
the same discrete Poisson problem, and bad input refused in one line before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "seamless_cloning.py"
OFFSET = (14, 23)


def _run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def _images(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target, source and mask written as PNG files, returned as the 8-bit values the script reads back."""
    y, x = np.mgrid[0:70, 0:90] / 70.0
    target = np.stack([0.8 - 0.3 * y, 0.4 + 0.4 * x * y, 0.2 + 0.1 * np.cos(5 * x)], axis=-1).clip(0, 1)
    ys, xs = np.mgrid[0:30, 0:40]
    source = np.stack([0.5 + 0.4 * np.sin(xs / 3.0), 0.3 + 0.02 * ys, 0.9 - 0.3 * ((xs + ys) % 7 == 0)], axis=-1)
    mask = (ys - 15) ** 2 / 12.0**2 + (xs - 20) ** 2 / 17.0**2 < 1
    plt.imsave(folder / "target.png", target)
    plt.imsave(folder / "source.png", source.clip(0, 1))
    plt.imsave(folder / "mask.png", mask.astype(float), cmap="gray")
    read = [plt.imread(folder / name)[..., :3].astype(np.float64) for name in ("target.png", "source.png")]
    return read[0], read[1], mask


def _reference(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pérez et al.'s discrete equation (their (7) with v_pq = s_p - s_q) assembled pixel by pixel and solved by
    spsolve: ``4 u_p - sum_{q in region} u_q = sum_q (s_p - s_q) + sum_{q outside} t_q`` on the region."""
    rows, columns = np.nonzero(mask)
    number = {(r, c): k for k, (r, c) in enumerate(zip(rows, columns))}
    result = target.copy()
    entries, rhs = [], np.zeros((len(rows), 3))
    for k, (r, c) in enumerate(zip(rows, columns)):
        entries.append((k, k, 4.0))
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rhs[k] += source[r, c] - source[r + dr, c + dc]
            if (r + dr, c + dc) in number:
                entries.append((k, number[r + dr, c + dc], -1.0))
            else:
                rhs[k] += target[r + dr + OFFSET[0], c + dc + OFFSET[1]]
    i, j, v = zip(*entries)
    A = sp.csc_matrix((v, (i, j)), shape=(len(rows), len(rows)))
    result[rows + OFFSET[0], columns + OFFSET[1]] = spla.spsolve(A, rhs)
    return result.clip(0, 1)


def test_a_users_images_are_cloned_as_spsolve_clones_them(tmp_path):
    target, source, mask = _images(tmp_path)
    result_path = tmp_path / "composite.png"
    done = _run("--target", str(tmp_path / "target.png"), "--source", str(tmp_path / "source.png"),
                "--mask", str(tmp_path / "mask.png"), "--offset", *map(str, OFFSET), "--result", str(result_path))
    assert done.returncode == 0, done.stderr
    assert f"{int(mask.sum())} pixels of 70 x 90, 3 channels in one solve" in done.stdout
    composite = plt.imread(result_path)[..., :3].astype(np.float64)
    expected = _reference(target, source, mask)
    region = np.zeros(target.shape[:2], dtype=bool)
    region[OFFSET[0]:OFFSET[0] + mask.shape[0], OFFSET[1]:OFFSET[1] + mask.shape[1]] = mask
    assert np.array_equal(composite[~region], target[~region])  # the target, bit for bit, outside the region
    assert np.abs(composite - expected).max() <= 1 / 255 + 1e-6  # inside: spsolve's, up to the 8-bit PNG (truncated)
    assert np.abs(expected[region] - target[region]).max() > 0.1  # the region did change


def test_bad_input_is_refused_in_one_line_before_anything_is_written(tmp_path):
    _images(tmp_path)
    result_path = tmp_path / "composite.png"
    result_path.write_bytes(b"an earlier result")
    images = ["--target", str(tmp_path / "target.png"), "--source", str(tmp_path / "source.png"),
              "--mask", str(tmp_path / "mask.png")]
    cases = {
        ("--offset", "50", "23"): "--offset: 50 23 puts the region on target rows 54..76",
        ("--offset", "0", "0", "--result", str(tmp_path / "composite.jpg")): "--result: expected a .png file name",
        ("--offset", "14", "23", "--result", str(tmp_path / "missing" / "c.png")): "--result: the folder",
    }
    for arguments, message in cases.items():
        done = _run(*images, *arguments, *([] if "--result" in arguments else ["--result", str(result_path)]))
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith(f"seamless_cloning.py: {message}") and done.stderr.count("\n") == 1
    done = _run(*images[:4], "--result", str(result_path))
    assert done.returncode == 2 and done.stderr == (
        "seamless_cloning.py: --mask: --target, --source and --mask go together\n"
    )
    assert result_path.read_bytes() == b"an earlier result"
