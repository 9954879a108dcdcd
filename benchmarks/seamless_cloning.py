"""Seamless cloning (Poisson image editing, Pérez, Gangnet & Blake 2003) with ``pde.poisson(mask=...)``.

Inside the region Ω (the mask's bright pixels, placed on the target) the result ``u`` solves ``-Δu = -Δs`` (the
Laplacian of the source image, the guidance field of the paper's equation (10) with v = ∇s), and on the boundary
of Ω it takes the target image's values (Dirichlet on the mask boundary); outside Ω it is the target.  The three
colour channels are three right-hand sides of one batched solve on one hierarchy.

Your own images (PNG or JPEG; grey, RGB or RGBA; the mask has the source's size, the offset places the source's
top-left corner on the target, and the region must stay one pixel inside both images)::

    python benchmarks/seamless_cloning.py --target beach.png --source boat.png --mask boat_mask.png \\
        --offset 120 340 --result composite.png

Without images it makes a synthetic pair (a sky-like gradient and a checked ring in a disk) and also draws
target, source, naive paste and result side by side::

    python benchmarks/seamless_cloning.py [--size 256] [--figure benchmarks/results/seamless_cloning.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mgcore
import pde
from pde.boundaries import load_mask

RESULTS = Path(__file__).resolve().parent / "results"


class InputError(ValueError):
    """Bad input: reported in one line on stderr, exit status 2."""


def synthetic_images(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def read_rgb(path: Path, name: str) -> np.ndarray:
    """An image file as float RGB values in [0, 1], ``(rows, columns, 3)`` (grey is repeated, alpha dropped)."""
    import matplotlib.image as mpimg

    try:
        image = np.asarray(mpimg.imread(path))
    except (OSError, ValueError, SyntaxError) as error:
        raise InputError(f"{name}: cannot read the image file '{path}': {error}") from None
    values = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    if values.ndim == 2:
        values = np.repeat(values[..., None], 3, axis=2)
    if values.ndim != 3 or values.shape[2] not in (1, 3, 4):
        raise InputError(f"{name}: expected a grey, RGB or RGBA image; got an array of shape {image.shape}")
    return np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[..., :3]


def place(target: np.ndarray, source: np.ndarray, mask: np.ndarray, offset: tuple[int, int]) -> tuple:
    """The source, the guidance ``-Δs`` and the mask on the target's grid (the source's corner at ``offset``),
    after checking that the region stays one pixel inside the target and the source."""
    if mask.shape != source.shape[:2]:
        raise InputError(
            f"--mask: expected the source's size {source.shape[0]} x {source.shape[1]}; got {mask.shape[0]} x "
            f"{mask.shape[1]}"
        )
    if not mask.any():
        raise InputError("--mask: has no bright pixel; expected the region to clone as bright pixels")
    rows, columns = np.nonzero(mask)
    # The guidance -Δs at a region pixel reads its four neighbours in the source, and the boundary values come
    # from the target pixels around the region: both must exist.
    if rows.min() < 1 or columns.min() < 1 or rows.max() > mask.shape[0] - 2 or columns.max() > mask.shape[1] - 2:
        raise InputError("--mask: the region touches the source's edge; keep it one pixel inside the source")
    top, left = offset
    first = (top + rows.min(), left + columns.min())
    last = (top + rows.max(), left + columns.max())
    if min(first) < 1 or last[0] > target.shape[0] - 2 or last[1] > target.shape[1] - 2:
        raise InputError(
            f"--offset: {top} {left} puts the region on target rows {first[0]}..{last[0]} and columns "
            f"{first[1]}..{last[1]}; the target is {target.shape[0]} x {target.shape[1]} and the region must stay one "
            "pixel inside it"
        )
    s = source.transpose(2, 0, 1)  # (3, rows, columns)
    guidance = 4 * s
    guidance[:, 1:-1, 1:-1] -= s[:, :-2, 1:-1] + s[:, 2:, 1:-1] + s[:, 1:-1, :-2] + s[:, 1:-1, 2:]  # -Δs, h = 1
    on_target = np.zeros((3, *target.shape[:2]))
    region = np.zeros(target.shape[:2], dtype=bool)
    window = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
    # The source may reach beyond the target where the mask is dark: only the region's pixels are placed.
    inside = (slice(max(-top, 0), min(mask.shape[0], target.shape[0] - top)),
              slice(max(-left, 0), min(mask.shape[1], target.shape[1] - left)))
    window = tuple(slice(w.start + i.start, w.start + i.stop) for w, i in zip(window, inside))
    region[window] = mask[inside]
    on_target[(slice(None), *window)] = np.where(mask[inside], guidance[(slice(None), *inside)], 0.0)
    return on_target, region


def clone(target: np.ndarray, guidance: np.ndarray, region: np.ndarray, rtol: float = 1e-10):
    """Solve ``-Δu = guidance`` on ``region`` with the target's values around it, the three channels as one
    batch; returns the composite in [0, 1] and the solve's info."""
    shape = region.shape
    # pde.poisson scales by 1/h^2 with h = 1/(n + 1); the pixel Laplacian has h = 1, hence the factor.
    h = 1.0 / (shape[0] + 1)
    problems = [
        pde.poisson(shape, mask=region, rhs=guidance[c] / h**2, boundary=target[..., c], solution=None)
        for c in range(3)
    ]
    f = torch.stack([p.f for p in problems])  # (3, rows, columns): one hierarchy, three right-hand sides
    u, info = mgcore.solve(problems[0].A, f, grid=shape, rtol=rtol)
    if not np.all(info.converged):
        raise RuntimeError(f"the solve did not converge: {info.reason}")
    result = np.where(region[..., None], u.numpy().transpose(1, 2, 0), target)
    return np.clip(result, 0, 1), info


def check_png(path: Path, name: str) -> None:
    """A ``.png`` path in an existing, writable folder (checked before any solve)."""
    if path.suffix.lower() != ".png":
        raise InputError(f"{name}: expected a .png file name; got '{path}'")
    folder = path.parent  # Path("c.png").parent is Path(".")
    if not folder.is_dir():
        raise InputError(f"{name}: the folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{name}: the folder '{folder}' is not writable")


def save_atomically(path: Path, write) -> None:
    """``write(temporary_path)``, then rename over ``path``: a failed write never leaves half a file."""
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, help="the image to clone into")
    parser.add_argument("--source", type=Path, help="the image to clone from")
    parser.add_argument("--mask", type=Path, help="the region of the source (bright pixels), the source's size")
    parser.add_argument("--offset", type=int, nargs=2, default=(0, 0), metavar=("ROW", "COLUMN"),
                        help="where the source's top-left pixel lands on the target (default 0 0)")
    parser.add_argument("--result", type=Path, default=None, help="the composite as a PNG")
    parser.add_argument("--figure", type=Path, default=None,
                        help="target, source, naive paste and result side by side, as a PNG (default without "
                             "images: benchmarks/results/seamless_cloning.png)")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic images (default 256)")
    parser.add_argument("--rtol", type=float, default=1e-10, help="relative residual of the solve (default 1e-10)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InputError as error:
        print(f"seamless_cloning.py: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    given = [name for name in ("target", "source", "mask") if getattr(args, name) is not None]
    if given and len(given) != 3:
        missing = ", ".join(f"--{name}" for name in ("target", "source", "mask") if name not in given)
        raise InputError(f"{missing}: --target, --source and --mask go together")
    if not given and args.figure is None:
        args.figure = RESULTS / "seamless_cloning.png"
    if args.figure is None and args.result is None:
        raise InputError("--result: give a file for the composite (or --figure for the side-by-side picture)")
    if not (args.size >= 8):
        raise InputError(f"--size: expected at least 8 pixels; got {args.size}")
    if not (0 < args.rtol < 1):
        raise InputError(f"--rtol: expected a number in (0, 1); got {args.rtol}")
    for path, name in ((args.result, "--result"), (args.figure, "--figure")):
        if path is not None:
            check_png(path, name)
    if given:
        target, source = read_rgb(args.target, "--target"), read_rgb(args.source, "--source")
        try:
            mask = load_mask(str(args.mask))
        except ValueError as error:
            raise InputError(f"--{error}") from None  # "mask: cannot read ..."
        offset = tuple(args.offset)
    else:
        target, source, mask = synthetic_images(args.size)
        offset = (0, 0)
    guidance, region = place(target, source, mask, offset)
    loaded = mgcore.kernels.loaded()
    start = time.perf_counter()
    result, info = clone(target, guidance, region, args.rtol)
    seconds = time.perf_counter() - start
    loading = "" if loaded or not mgcore.kernels.loaded() else " (with loading the compiled loops, once a process)"
    print(f"{int(region.sum()):,} pixels of {target.shape[0]} x {target.shape[1]}, 3 channels in one solve: "
          f"{info.method}, {int(np.max(info.iterations))} cycles; {seconds:.3f} s with the three problems built, "
          f"{info.setup_seconds + info.solve_seconds:.3f} s of it in mgcore.solve{loading}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.result is not None:
        save_atomically(args.result, lambda path: plt.imsave(path, result))
        print(f"wrote {args.result}")
    if args.figure is not None:
        naive = target.copy()  # the source's region pasted as it is
        rows, columns = np.nonzero(mask)
        naive[rows + offset[0], columns + offset[1]] = source[rows, columns]
        figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
        for ax, image, title in zip(axes, (target, source, naive, result),
                                    ("target", "source", "pasted (naive)", "seamless cloning (mgcore)")):
            ax.imshow(image)
            ax.set_title(title)
            ax.axis("off")
        figure.tight_layout()
        save_atomically(args.figure, lambda path: figure.savefig(path, dpi=90))
        plt.close(figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
