"""Seamless cloning (Poisson image editing, Pérez, Gangnet & Blake 2003) with ``pde.poisson(mask=...)``.

Inside the region Ω (a disk) the result ``u`` solves ``-Δu = -Δs`` (the Laplacian of the source image, the
guidance field of the paper's equation (10) with v = ∇s), and on the boundary of Ω it takes the target
image's values (Dirichlet on the mask boundary); outside Ω it is the target.  Both images are made here
synthetically; each colour channel is one masked Poisson solve.

Usage::

    python benchmarks/seamless_cloning.py [--size 256] [--out benchmarks/results/seamless_cloning.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import mgcore
import pde


def images(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A target (sky-like vertical gradient with a warm glow), a source (a blue-green checked ring) and the mask."""
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    target = np.stack([0.9 - 0.5 * y + 0.1 * x, 0.6 - 0.3 * y, 0.3 + 0.5 * y], axis=-1)
    target += 0.3 * np.exp(-((x - 0.7) ** 2 + (y - 0.3) ** 2) / 0.02)[..., None] * np.array([1.0, 0.6, 0.0])
    r = np.hypot(x - 0.5, y - 0.5)
    checks = 0.5 + 0.5 * np.sign(np.sin(24 * np.pi * x) * np.sin(24 * np.pi * y))
    ring = np.exp(-((r - 0.18) ** 2) / 0.002)
    source = np.stack([0.1 + 0.2 * checks, 0.2 + 0.6 * ring, 0.8 - 0.3 * checks * ring], axis=-1)
    mask = r < 0.3
    return np.clip(target, 0, 1), np.clip(source, 0, 1), mask


def clone(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Solve one masked Poisson problem per channel; returns the composite in [0, 1]."""
    shape = mask.shape
    laplacian = mgcore.Stencil.laplacian(2)  # h = 1: the pixel grid
    result = np.empty_like(target)
    for channel in range(target.shape[-1]):
        s = torch.from_numpy(np.ascontiguousarray(source[..., channel]))
        guidance = laplacian(s[None, None])[0, 0].numpy()  # -Δs inside (only read at the active points)
        # pde.poisson scales by 1/h^2 with h = 1/(n + 1); the pixel Laplacian has h = 1, hence the factor.
        h = 1.0 / (shape[0] + 1)
        problem = pde.poisson(shape, mask=mask, rhs=guidance / h**2, boundary=target[..., channel], solution=None)
        u, info = mgcore.solve(problem.A, problem.f, rtol=1e-10)
        if not info.converged:
            raise RuntimeError(f"channel {channel}: {info.reason}")
        result[..., channel] = u.numpy()
    return np.clip(result, 0, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    default_out = Path(__file__).resolve().parent / "results" / "seamless_cloning.png"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)
    target, source, mask = images(args.size)
    naive = np.where(mask[..., None], source, target)
    cloned = clone(target, source, mask)
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, image, title in zip(axes, (target, source, naive, cloned),
                                ("target", "source", "pasted (naive)", "seamless cloning (mgcore)")):
        ax.imshow(image)
        ax.set_title(title)
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(args.out, dpi=90)
    plt.close(figure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
