"""``benchmarks/gpu.py`` runs end to end (small sizes on the CPU) and writes its report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_report_smoke_run(tmp_path):
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick", "--repeats", "1",
         "--skip-vision", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for case in ("2D 31^2", "3D 15^3", "DST-I fast Poisson (torch.fft) 63^2", "FMG alone", "4 right-hand sides",
                 "float32 input", "learn_smoother", "one V(2,1) rbgs cycle"):
        assert case in text
    # The DST-I floor is an exact solver: its residual is round-off.
    floor = next(line for line in text.splitlines() if "DST-I" in line)
    assert float(floor.split("residual ")[1].split()[0].rstrip("|;")) < 1e-10


def test_gpu_report_refuses_a_missing_cuda_device(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cuda", "--out", str(tmp_path / "r.md")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr
    assert not (tmp_path / "r.md").exists()
