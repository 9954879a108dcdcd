r"""Learned smoothers: the engine's V-cycle with the fixed smoother ``B`` replaced by a trained convolution.

This is where the two halves of mgnet meet.  MgNet trains the ``B`` of the residual-correction block
``u <- u + B(f - A u)`` for images (He & Xu 2019); here the same block smooths a PDE, with ``B`` trained so
that the multigrid cycle converges fast (Katrutsa, Daulbaev & Oseledets 2020; Meta-MgNet, Chen, Dong & Xu
2022; Huang, Li & Xi 2022).  The residual-correction form is kept, so the exact solution is a fixed point
of every sweep and of every cycle: a converged answer is the true answer, whatever the weights.

The correction
    ``B r = K * (D^{-1} r)``,
a ``k x k`` convolution ``K`` (``k = 3`` or ``5``) of the Jacobi-scaled residual.  The scaling by the
diagonal ``D`` makes one kernel valid on every grid of a constant-coefficient problem: the rediscretised
coarse operators differ from the fine one only by the factor ``1/4`` that ``D^{-1}`` removes, and the
Fourier symbol of ``D^{-1} A`` does not depend on ``h``.  ``K = omega * delta`` is damped Jacobi, the
initial guess of training.

* Several steps per sweep (``steps``) are several residual-correction steps with their own kernels; a sweep
  then costs ``steps`` applications of ``A`` (and ``steps`` of the ``k^2``-point ``B``).
* Per-level kernels (``levels``) are indexed from the finest grid; deeper levels reuse the last one.
* Conditioned smoothers (``conditioned=True``) compute the kernel at each grid point from the local stencil
  normalised by its diagonal, ``w(x) = W phi(x)`` with ``phi(x) = (c_o(x) / c_0(x))`` over the ``3 x 3``
  offsets: one smoother then serves a whole family (sampled ``eps``, random coefficients), and the
  Galerkin coarse operators of variable-coefficient problems get kernels of their own.
* The hierarchy is part of what is learned for: train with the ``coarse_operator`` and ``interpolation``
  the solver will use (operator-dependent transfers for rough coefficients); they are saved with the
  smoother (:meth:`LearnedSmoother.matching_solver_options`).
* Unconditioned kernels are point symmetric, ``K(o) = K(-o)``; with a constant diagonal ``B`` is then a
  symmetric matrix and a cycle with reversed post-smoothing is symmetric (usable as a CG preconditioner).

Training loss (no reference solutions).  With ``f = 0`` a cycle maps an error ``e`` to ``M e``.  For
``K`` unrolled cycles and unit vectors ``z_i`` the loss is ``log(mean_i ||M^K z_i||^2) / (2K)``.  For random
``z`` the mean is Hutchinson's stochastic estimate of ``||M^K||_F^2 / n``, the estimate Katrutsa,
Daulbaev & Oseledets (2020) minimise, and ``||M^K||^(1/K) -> rho(M)`` (Gelfand's formula).  Here half of the
batch are fresh Gaussian vectors and half continue persistent power-iteration chains (the normalised
``M^K z`` of the previous visit): these concentrate on the slowest error modes, so the loss follows the
asymptotic factor that :func:`mgcore.analysis.asymptotic_factor` measures rather than a transient, while
the fresh vectors keep the other modes in view.  The log makes the gradient scale-free across factors from
0.05 to 0.99, and the division by ``K`` reports it per cycle.

Examples
--------
>>> from pde.families import make_family
>>> S = learn_smoother("poisson", train_size=15, iterations=2, batch=2, unroll=1, progress=False, max_coarse=10)
>>> S
LearnedSmoother(3x3, steps=1, levels=1, trained on poisson)
>>> A = make_family("poisson").problem((31, 31)).A
>>> S(A, (31, 31), 0).name
'learned(3x3, steps=1)'
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgcore.analysis import FactorEstimate, asymptotic_factor
from mgcore.blocks import ResidualCorrection
from mgcore.cycles import cycle
from mgcore.hierarchy import build_hierarchy
from mgcore.io import atomic_save
from mgcore.memory import check_device
from mgcore.operators import Stencil
from mgcore.options import MultigridOptions
from mgcore.smoothers import Smoother
from pde.families import Family, family_from_params, make_family
from pde.specs import PARAMETERS

__all__ = ["FORMAT", "LearnConfig", "LearnedSmoother", "learn_smoother", "measure_factor"]

FORMAT = "mgnet.learned_smoother"
"""The ``"format"`` entry of a saved smoother file."""
_VERSION = 1
_FEATURE_OFFSETS = tuple((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1))  # the 3x3 layout of phi(x)
_CENTER_FEATURE = 4  # phi's entry of the zero offset (always 1: it acts as the bias of W)


# ------------------------------------------------------------------------------------------ config
@dataclass
class LearnConfig:
    """Training options of :func:`learn_smoother` (every field may be passed as a keyword instead)."""

    kernel_size: int = 3  # side k of the k x k kernel K (odd: 3 or 5 in the issue; any odd k works)
    steps: int = 1  # residual-correction steps per sweep, each with its own kernel (cost = steps)
    levels: int = 1  # kernels trained per level from the finest; deeper levels reuse the last one
    conditioned: bool | None = None  # kernel from the local stencil; None: when the family's operators vary
    # The cycle the smoother is trained in (its smoother field is replaced by the smoother being trained):
    # V(2,2), and max_coarse 50 so that 63 -> 31 -> 15 -> 7 is a true V-cycle.  Solve with the same options
    # (LearnedSmoother.matching_solver_options): a smoother is only good in the hierarchy it learned in.
    hierarchy: MultigridOptions = field(
        default_factory=lambda: MultigridOptions(presmooth=2, postsmooth=2, max_coarse=50)
    )
    train_size: int = 63  # side of the square training grid: odd, so coarse grids nest; at most 63
    batch: int = 8  # error vectors per step (half persistent power-iteration chains, half fresh)
    unroll: int = 4  # cycles K in the loss log ||M^K z|| / K
    iterations: int = 300  # optimiser steps
    lr: float = 0.01  # Adam learning rate, decayed by a cosine schedule to lr / 20
    pool: int = 8  # operators sampled up front for families that vary (one per step, in turn)
    omega: float = 0.8  # initial kernel omega * delta for steps=1 (damped Jacobi); several steps start as Chebyshev
    seed: int = 0  # seeds the start vectors, the sampled operators and the initialisation
    dtype: str = "float64"  # training precision ("float64" or "float32")
    device: str = "cpu"  # torch device for training ("cuda" works where available)

    def validate(self) -> LearnConfig:
        """Check every field; raise ``ValueError``/``TypeError`` naming the bad one."""
        if not isinstance(self.hierarchy, MultigridOptions):
            raise TypeError(f"hierarchy: expected a MultigridOptions; got {type(self.hierarchy).__name__}")
        for name in ("kernel_size", "steps", "levels", "train_size", "batch", "unroll", "iterations", "pool",
                     "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name}: expected an integer; got {value!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive integer (3 or 5); got {self.kernel_size}")
        for name in ("steps", "levels", "unroll", "iterations", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1; got {getattr(self, name)}")
        if self.batch < 2:
            raise ValueError(f"batch: expected an integer >= 2 (persistent and fresh vectors); got {self.batch}")
        if self.train_size < 7 or self.train_size % 2 == 0:
            raise ValueError(f"train_size: expected an odd grid side >= 7 (e.g. 31 or 63); got {self.train_size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a finite number > 0; got {self.lr!r}")
        if not (isinstance(self.omega, (int, float)) and 0 < self.omega < 2):
            raise ValueError(f"omega: expected 0 < omega < 2; got {self.omega!r}")
        if self.conditioned not in (None, True, False):
            raise TypeError(f"conditioned: expected True, False or None; got {self.conditioned!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype: expected 'float64' or 'float32'; got {self.dtype!r}")
        check_device(self.device, "device")  # malformed names, meta, and CUDA without a GPU
        return self


# ------------------------------------------------------------------------------------------ helpers
def _kernel_offsets(kernel_size: int) -> tuple[tuple[int, int], ...]:
    """The offsets of a ``k x k`` kernel in row-major order (so reversing the order maps ``o`` to ``-o``)."""
    r = kernel_size // 2
    return tuple((i - r, j - r) for i in range(kernel_size) for j in range(kernel_size))


def _check_operator(A: Stencil, dim: int, conditioned: bool) -> None:
    if not isinstance(A, Stencil):
        raise TypeError(f"A: a learned smoother needs an mgcore.Stencil; got {type(A).__name__}")
    if A.dim != dim:
        raise ValueError(
            f"A: this learned smoother was trained for {dim}D grids (kernel layout {dim}D); got a {A.dim}D operator"
        )
    if conditioned and A.radius > 1:
        raise ValueError(
            f"A: a conditioned learned smoother reads the 3x3 stencil layout (radius 1); got radius {A.radius}"
        )


def _features(A: Stencil) -> Tensor:
    """``phi = c_o / c_0`` over the 3x3 offsets: shape ``(9,)`` (constant ``A``) or ``(9, *grid)``."""
    diagonal = A.coefficients[A.center_index]
    shape = (len(_FEATURE_OFFSETS), *diagonal.shape)
    phi = torch.zeros(shape, dtype=A.coefficients.dtype, device=A.coefficients.device)
    for k, o in enumerate(A.offsets):
        phi[_FEATURE_OFFSETS.index(tuple(o))] = A.coefficients[k] / diagonal
    return phi


def _apply_kernel(z: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    """``y(x) = sum_o w_o(x) z(x + o)`` with zero outside the grid, differentiably.

    ``weights`` is ``(k*k,)`` (a convolution: ``conv2d`` is a cross-correlation, exactly this sum) or
    ``(k*k, n0, n1)`` (one kernel per point).
    """
    r = kernel_size // 2
    if weights.ndim == 1:
        batch = z.shape[:-2]
        out = F.conv2d(z.reshape(-1, 1, *z.shape[-2:]), weights.reshape(1, 1, kernel_size, kernel_size), padding=r)
        return out.reshape(*batch, *z.shape[-2:])
    n0, n1 = z.shape[-2:]
    padded = F.pad(z, (r, r, r, r))
    y = None
    for k, (a, b) in enumerate(_kernel_offsets(kernel_size)):
        term = weights[k] * padded[..., r + a : r + a + n0, r + b : r + b + n1]
        y = term if y is None else y + term
    return y


def _initial_dampings(steps: int, omega: float) -> list[float]:
    """Initial ``K_s = omega_s delta``: damped Jacobi for one step; for several, the Chebyshev smoother.

    The Chebyshev dampings ``1 / tau_s`` (roots on ``[lambda_max / 30, 1.1 lambda_max]`` with the Gershgorin
    bound ``lambda_max = 2`` of ``D^{-1} A`` for zero-row-sum M-matrices) are what
    :func:`mgcore.smoothers.chebyshev` uses (Adams et al. 2003), so training starts from that smoother.
    """
    if steps == 1:
        return [omega]
    upper, lower = 2.0 * 1.1, 2.0 / 30.0
    return [
        1.0 / ((upper + lower) / 2 + (upper - lower) / 2 * math.cos(math.pi * (2 * k + 1) / (2 * steps)))
        for k in range(steps)
    ]


class _LiveKernel(nn.Module):
    """``B r = K * (D^{-1} r)`` computed from the owner's parameters at every call (training only).

    The owner is held outside the module tree, so the hierarchy does not re-register its parameters.
    """

    def __init__(self, owner: LearnedSmoother, level: int, step: int, A: Stencil) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)
        self.level, self.step = level, step
        diagonal = A.diagonal()
        self.register_buffer("inverse_diagonal", (1.0 / diagonal).detach().clone())
        self.register_buffer("features", _features(A) if owner.conditioned else None)

    def forward(self, r: Tensor) -> Tensor:
        w = self._owner.kernel_weights(self.level, self.step, self.features)
        return _apply_kernel(r * self.inverse_diagonal, w, self._owner.kernel_size)


# ------------------------------------------------------------------------------------------ the smoother
class LearnedSmoother(nn.Module):
    """A trained convolutional smoother; call it as ``(A, grid_shape, level) -> mgcore.Smoother``.

    It plugs in wherever the engine takes a smoother factory: ``mgcore.solve(A, b, smoother=S)``,
    ``MultigridSolver(A, grid, smoother=S)``, ``build_hierarchy(A, grid, smoother=S)``.  The kernels are
    folded into one stencil per step, ``B = sum_o w_o(x) D^{-1}(x + o) E_o`` (a ``k^2``-point
    :class:`~mgcore.Stencil`), so applying it costs one stencil application and no convolution.

    Parameters
    ----------
    kernel_size : int
        Odd kernel side ``k``.
    steps : int
        Residual-correction steps per sweep.
    levels : int
        Per-level kernels from the finest; deeper levels reuse the last.
    conditioned : bool
        Kernel weights ``W phi(x)`` from the normalised local stencil (see the module docstring).
    omega : float
        Initial kernel ``omega * delta`` of a one-step smoother; with several steps the initial kernels are
        the dampings of the Chebyshev smoother.
    dim : int
        Grid dimension; only 2 is implemented.
    family : dict, optional
        The family it was trained on (:meth:`pde.families.Family.params`).
    training : dict, optional
        The :class:`LearnConfig` it was trained with (used by :meth:`matching_solver_options`).

    Examples
    --------
    >>> import torch
    >>> from mgcore import Stencil, build_hierarchy, cycle
    >>> S = LearnedSmoother(kernel_size=3)  # untrained: K = 0.8 delta, i.e. damped Jacobi
    >>> A = Stencil.laplacian(2, h=1 / 16)
    >>> h = build_hierarchy(A, (15, 15), smoother=S, presmooth=2, postsmooth=2)
    >>> f = torch.randn(1, 1, 15, 15, dtype=torch.float64)
    >>> u = torch.from_numpy(__import__("scipy.sparse.linalg").sparse.linalg.spsolve(
    ...     A.to_sparse((15, 15)).tocsc(), f.flatten().numpy())).reshape(1, 1, 15, 15)
    >>> float((cycle(h, u, f) - u).abs().max() / u.abs().max()) < 1e-12  # the solution is a fixed point
    True
    """

    def __init__(
        self,
        *,
        kernel_size: int = 3,
        steps: int = 1,
        levels: int = 1,
        conditioned: bool = False,
        omega: float = 0.8,
        dim: int = 2,
        family: dict | None = None,
        training: dict | None = None,
    ) -> None:
        super().__init__()
        if dim != 2:
            raise ValueError(f"dim: learned smoothers are implemented for 2D grids; got dim={dim}")
        for name, value in (("kernel_size", kernel_size), ("steps", steps), ("levels", levels)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer; got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd integer (3 or 5); got {kernel_size}")
        self.dim = dim
        self.kernel_size = int(kernel_size)
        self.steps = int(steps)
        self.levels = int(levels)
        self.conditioned = bool(conditioned)
        self.family = dict(family) if family is not None else None
        self.training = dict(training) if training is not None else {}
        self.history: list[float] = []
        n_features = len(_FEATURE_OFFSETS) if self.conditioned else 1
        weight = torch.zeros(self.levels, self.steps, self.kernel_size**2, n_features, dtype=torch.float64)
        weight[:, :, self.kernel_size**2 // 2, _CENTER_FEATURE if self.conditioned else 0] = torch.tensor(
            _initial_dampings(self.steps, float(omega)), dtype=torch.float64
        )
        self.weight = nn.Parameter(weight)

    # -------------------------------------------------------------- kernels
    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """The kernel offsets in row-major order."""
        return _kernel_offsets(self.kernel_size)

    def kernel_weights(self, level: int, step: int, features: Tensor | None = None) -> Tensor:
        """The kernel of ``step`` on ``level``: ``(k*k,)``, or ``(k*k, *grid)`` for a conditioned smoother
        on a variable stencil (``features`` from the stencil, ``(9,)`` or ``(9, *grid)``)."""
        W = self.weight[min(level, self.levels - 1), step]  # (k*k, n_features)
        if not self.conditioned:
            w = W[:, 0]
            return 0.5 * (w + w.flip(0))  # point symmetric: K(o) = K(-o) exactly
        if features is None:
            raise ValueError("features: a conditioned smoother needs the stencil features of the level")
        return torch.einsum("kf,f...->k...", W, features.to(W.dtype))

    def kernels(self, A: Stencil | None = None, level: int = 0) -> np.ndarray:
        """The kernels of one level as an array ``(steps, k, k)`` (for plots).

        A conditioned smoother needs the operator ``A`` of that level; on a variable stencil the kernels are
        averaged over the grid.
        """
        features = None
        if self.conditioned:
            if A is None:
                raise ValueError("A: a conditioned smoother's kernels depend on the operator; pass A")
            _check_operator(A, self.dim, True)
            features = _features(A)
        with torch.no_grad():
            out = []
            for s in range(self.steps):
                w = self.kernel_weights(level, s, features)
                if w.ndim > 1:
                    w = w.flatten(1).mean(1)
                out.append(w.reshape(self.kernel_size, self.kernel_size).cpu().numpy())
        return np.stack(out)

    # -------------------------------------------------------------- the factory
    def forward(self, A: Stencil, grid_shape: Sequence[int], level: int = 0) -> Smoother:
        """The smoother of one level (the engine's factory protocol ``(A, grid_shape, level) -> Smoother``)."""
        _check_operator(A, self.dim, self.conditioned)
        grid_shape = tuple(int(n) for n in grid_shape)
        if len(grid_shape) != self.dim:
            raise ValueError(f"grid_shape: expected {self.dim} sizes; got {grid_shape}")
        dtype, device = A.coefficients.dtype, A.coefficients.device
        diagonal = A.diagonal(grid_shape)
        if bool((diagonal == 0).any()):
            raise ValueError("A: the diagonal has zero entries; a learned smoother scales by its inverse")
        features = _features(A) if self.conditioned else None
        r = self.kernel_size // 2
        steps = []
        with torch.no_grad():
            for s in range(self.steps):
                w = self.kernel_weights(level, s, features).to(device=device, dtype=dtype)
                if A.is_constant and w.ndim == 1:
                    coefficients = w / diagonal  # c_o = w_o / d
                else:
                    # c_o(x) = w_o(x) / d(x + o); points x + o outside the grid are never read by the stencil.
                    inverse = (1.0 / diagonal).reshape(-1).expand(math.prod(grid_shape)).reshape(grid_shape)
                    padded = F.pad(inverse[None, None], (r, r, r, r))[0, 0]
                    w = w.reshape(-1, *([1] * self.dim)).expand(-1, *grid_shape) if w.ndim == 1 else w
                    coefficients = torch.stack(
                        [
                            w[k] * padded[r + a : r + a + grid_shape[0], r + b : r + b + grid_shape[1]]
                            for k, (a, b) in enumerate(self.offsets)
                        ]
                    )
                steps.append(ResidualCorrection(A, Stencil(self.offsets, coefficients)))
        symmetric = all(step.B.is_symmetric() for step in steps)
        extra = ", conditioned" if self.conditioned else ""
        name = f"learned({self.kernel_size}x{self.kernel_size}, steps={self.steps}{extra})"
        return Smoother(steps, name=name, symmetric=symmetric, cost=self.steps)

    def _live(self, A: Stencil, grid_shape: Sequence[int], level: int) -> Smoother:
        """The differentiable smoother used in training: kernels recomputed from the parameters per call."""
        _check_operator(A, self.dim, self.conditioned)
        steps = [ResidualCorrection(A, _LiveKernel(self, level, s, A)) for s in range(self.steps)]
        return Smoother(steps, name="learned(live)", symmetric=False, cost=self.steps)

    # -------------------------------------------------------------- description
    def __repr__(self) -> str:
        trained = ""
        if self.family is not None:
            trained = f", trained on {family_from_params(self.family).label}"
        extra = ", conditioned" if self.conditioned else ""
        k = self.kernel_size
        return f"LearnedSmoother({k}x{k}, steps={self.steps}, levels={self.levels}{extra}{trained})"

    def matching_solver_options(self) -> dict:
        """The :class:`~mgcore.options.MultigridOptions` fields it was trained with (cycle, sweeps, coarse
        operators, transfers): pass them to the solver, e.g. ``MultigridOptions(smoother=S,
        **S.matching_solver_options())``.  ``max_coarse`` is left out: it was chosen for the small training
        grid."""
        keys = ("cycle", "presmooth", "postsmooth", "coarse_operator", "interpolation")
        return {k: self.training[k] for k in keys if k in self.training}

    # -------------------------------------------------------------- persistence
    def state(self) -> dict:
        """Everything needed to rebuild it, as tensors and plain Python values (``weights_only`` loadable)."""
        return {
            "format": FORMAT,
            "version": _VERSION,
            "dim": self.dim,
            "kernel_size": self.kernel_size,
            "steps": self.steps,
            "levels": self.levels,
            "conditioned": self.conditioned,
            "features": int(self.weight.shape[-1]),
            "family": self.family,
            "training": self.training,
            "weight": self.weight.detach().cpu().to(torch.float64).clone(),
            "history": torch.tensor(self.history, dtype=torch.float64),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state` to ``path`` atomically (:func:`mgcore.io.atomic_save`).

        Examples
        --------
        >>> import tempfile, os
        >>> S = LearnedSmoother(kernel_size=5, steps=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     T = LearnedSmoother.load(S.save(os.path.join(d, "s.pt")))
        >>> T.kernel_size, T.steps, bool(torch.equal(T.weight, S.weight))
        (5, 2, True)
        """
        path = Path(path)
        atomic_save(self.state(), path)
        return path

    @classmethod
    def from_state(cls, state: dict, source: str = "state") -> LearnedSmoother:
        """Rebuild from :meth:`state`, checking that the weights match the declared kernel layout."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{source}: not a learned smoother (expected a dict with 'format': {FORMAT!r})")
        if state.get("version") != _VERSION:
            raise ValueError(f"{source}: unsupported learned smoother version {state.get('version')!r}")
        dim = state.get("dim")
        if dim != 2:
            raise ValueError(f"dim: {source} holds a smoother for {dim}D grids; only 2D is implemented")
        try:
            smoother = cls(
                kernel_size=state["kernel_size"],
                steps=state["steps"],
                levels=state["levels"],
                conditioned=state["conditioned"],
                dim=dim,
                family=state.get("family"),
                training=state.get("training"),
            )
        except KeyError as err:
            raise ValueError(f"{source}: the learned smoother misses the entry {err}") from err
        weight = state.get("weight")
        if not isinstance(weight, Tensor) or tuple(weight.shape) != tuple(smoother.weight.shape):
            got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(
                f"kernel_size: the weights of {source} have shape {got}, which does not match the declared layout "
                f"(levels={smoother.levels}, steps={smoother.steps}, kernel_size={smoother.kernel_size} -> "
                f"{smoother.kernel_size**2} taps, features={smoother.weight.shape[-1]})"
            )
        if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
            # A diverged or damaged training run: NaN/Inf kernels would turn every solve into NaN.
            raise ValueError(f"{source}: the learned smoother's weights are not all finite numbers (NaN or Inf)")
        with torch.no_grad():
            smoother.weight.copy_(weight)
        history = state.get("history")
        smoother.history = [float(v) for v in history.tolist()] if isinstance(history, Tensor) else []
        return smoother

    @classmethod
    def load(cls, path: str | os.PathLike) -> LearnedSmoother:
        """Read a file written by :meth:`save` with ``torch.load(..., weights_only=True)``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no such file {str(path)!r}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure means "not a smoother file"
            raise ValueError(f"path: {str(path)!r} is not a learned smoother file ({type(err).__name__})") from err
        return cls.from_state(state, source=f"path {str(path)!r}")


# ------------------------------------------------------------------------------------------ measuring
def measure_factor(
    A: Stencil,
    grid_shape: Sequence[int],
    smoother=None,
    options: MultigridOptions | None = None,
    *,
    iterations: int = 30,
    vectors: int = 2,
    seed: int = 0,
    **overrides,
) -> FactorEstimate:
    """The asymptotic factor of the cycle with ``smoother`` (a name, pair or factory) on ``A``.

    Builds the hierarchy as :class:`mgcore.MultigridSolver` does, from ``options`` and the keyword
    ``overrides`` (any :class:`~mgcore.options.MultigridOptions` field; ``smoother`` given here wins), and
    runs :func:`mgcore.analysis.asymptotic_factor` (power iteration on the error propagation).

    Examples
    --------
    >>> from mgcore import Stencil
    >>> estimate = measure_factor(Stencil.laplacian(2), (15, 15), "rbgs", presmooth=1, postsmooth=1, max_coarse=10)
    >>> 0.04 < estimate.factor < 0.12
    True
    >>> measure_factor(Stencil.laplacian(2), (15, 15), "sor")
    Traceback (most recent call last):
    ...
    ValueError: smoother: unknown name 'sor'; expected one of ['auto', 'chebyshev', 'jacobi', 'line-x', \
'line-x-symmetric', 'line-y', 'line-y-symmetric', 'rbgs', 'wjacobi', 'zebra-alternating', 'zebra-x', 'zebra-y', \
'zebra-z'], a (name, options) pair, or a callable (A, grid_shape, level) -> Smoother
    """
    if smoother is not None:
        overrides = {**overrides, "smoother": smoother}
    options = MultigridOptions.resolve(options, overrides)
    with torch.no_grad():
        h = build_hierarchy(A, tuple(grid_shape), options)
    return asymptotic_factor(h, kind=options.cycle, iterations=iterations, vectors=vectors, seed=seed)


# ------------------------------------------------------------------------------------------ training
class _Adam:
    """Adam (Kingma & Ba 2015) with a cosine learning-rate decay to ``lr / 20``, for one parameter tensor.

    Written out because ``torch.optim`` imports ``torch._dynamo`` on first use, which costs 3-8 s of start-up
    on a 2-core machine: longer than a small training run.
    """

    def __init__(self, parameter: Tensor, lr: float, iterations: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.parameter, self.base_lr, self.iterations = parameter, lr, max(int(iterations), 1)
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.m = torch.zeros_like(parameter)
        self.v = torch.zeros_like(parameter)
        self.t = 0
        self.lr = lr

    def step(self) -> None:
        grad = self.parameter.grad
        if grad is None:
            return
        self.t += 1
        with torch.no_grad():
            self.m.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
            self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            m_hat = self.m / (1 - self.beta1**self.t)
            v_hat = self.v / (1 - self.beta2**self.t)
            self.parameter.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
        # Cosine annealing (Loshchilov & Hutter 2017) from lr to lr / 20 over the run, as CosineAnnealingLR.
        low = self.base_lr / 20
        progress = min(self.t, self.iterations) / self.iterations
        self.lr = low + 0.5 * (self.base_lr - low) * (1 + math.cos(math.pi * progress))


_FAMILY_OPTIONS = tuple(PARAMETERS)  # eps, theta, sigma: the family parameters of the table in pde.specs


def learn_smoother(
    family: str | Family = "poisson",
    config: LearnConfig | None = None,
    *,
    progress: bool = True,
    log: str | os.PathLike | None = None,
    **options,
) -> LearnedSmoother:
    """Train a :class:`LearnedSmoother` for a problem family inside the engine's V-cycle.

    Parameters
    ----------
    family : str or Family
        ``"poisson"``, ``"aniso"``, ``"rotated"``, ``"lognormal"`` or a :class:`~pde.families.Family`.
    config : LearnConfig, optional
        Training options; keywords in ``options`` override its fields.
    progress : bool
        Show a tqdm progress bar.
    log : path, optional
        Write a JSON-lines training log there (one line per step: iteration, loss, factor, lr, seconds).
    **options
        ``eps``, ``theta``, ``sigma`` (family parameters, with a family name) and any :class:`LearnConfig`
        field.

    Returns
    -------
    LearnedSmoother
        On the CPU in float64, with ``history`` the per-step loss as a per-cycle factor ``exp(loss)``.

    Raises
    ------
    FloatingPointError
        When training diverged: a NaN/Inf loss, or a per-cycle factor that ends at 1 or above (median of
        the last 10 steps), as a too large ``lr`` causes.

    Examples
    --------
    >>> S = learn_smoother("poisson", train_size=15, iterations=3, batch=2, unroll=1, progress=False)
    >>> len(S.history), S.training["train_size"]
    (3, 15)
    >>> learn_smoother("poisson", kernel=3)
    Traceback (most recent call last):
    ...
    TypeError: learn_smoother: unknown option 'kernel'; expected eps, theta, sigma, a LearnConfig field \
(kernel_size, steps, levels, ...) or a MultigridOptions field other than smoother
    """
    family_options = {k: options.pop(k) for k in _FAMILY_OPTIONS if k in options}
    hierarchy_options = {k: options.pop(k) for k in MultigridOptions.names() if k in options and k != "smoother"}
    names = {f.name for f in fields(LearnConfig)}
    for key in options:
        if key not in names:
            raise TypeError(
                f"learn_smoother: unknown option {key!r}; expected {', '.join(_FAMILY_OPTIONS)}, a LearnConfig field "
                "(kernel_size, steps, levels, ...) or a MultigridOptions field other than smoother"
            )
    if isinstance(family, Family):
        if family_options:
            raise ValueError(f"{next(iter(family_options))}: give family parameters to make_family, not here")
        fam = family
    else:
        fam = make_family(family, **family_options)
    cfg = config or LearnConfig()
    if hierarchy_options:
        options["hierarchy"] = MultigridOptions.resolve(options.get("hierarchy", cfg.hierarchy), hierarchy_options)
    cfg = replace(cfg, **options).validate()
    dtype = getattr(torch, cfg.dtype)
    device = torch.device(cfg.device)
    conditioned = fam.varies if cfg.conditioned is None else cfg.conditioned
    torch_gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # Plain values only, so the saved file loads with weights_only; the hierarchy options are stored flat.
    training = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "hierarchy"}
    training.update({k: v for k, v in cfg.hierarchy.to_dict().items() if k != "smoother"})
    training["conditioned"] = conditioned
    smoother = LearnedSmoother(
        kernel_size=cfg.kernel_size,
        steps=cfg.steps,
        levels=cfg.levels,
        conditioned=conditioned,
        omega=cfg.omega,
        family=fam.params(),
        training=training,
    ).to(device=device, dtype=dtype)

    shape = (cfg.train_size, cfg.train_size)
    problems = [fam.sample(shape, rng) for _ in range(cfg.pool)] if fam.varies else [fam.problem(shape)]
    hierarchies = [
        build_hierarchy(
            p.A.to(device=device, dtype=dtype),
            shape,
            cfg.hierarchy,
            smoother=smoother._live,
        )
        for p in problems
    ]
    if len(hierarchies[0]) < 2:
        raise ValueError(f"max_coarse: {cfg.hierarchy.max_coarse} leaves a single level on {shape}; lower it")
    persistent = cfg.batch // 2

    def random_vectors(count: int) -> Tensor:
        z = torch.randn((count, 1, *shape), generator=torch_gen, dtype=torch.float64)
        return z.to(device=device, dtype=dtype)

    chains = [random_vectors(persistent) for _ in hierarchies]
    optimiser = _Adam(smoother.weight, cfg.lr, cfg.iterations)
    log_file = None
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log, "w", encoding="utf-8")  # closed in the finally below
    start = time.perf_counter()
    try:
        from tqdm.auto import tqdm

        bar = tqdm(range(cfg.iterations), desc=f"learn {fam.label}", disable=not progress, leave=False)
        for iteration in bar:
            j = iteration % len(hierarchies)
            z = torch.cat([chains[j], random_vectors(cfg.batch - persistent)])
            z = z / z.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
            zero = torch.zeros_like(z)
            e = z
            for _ in range(cfg.unroll):
                e = cycle(hierarchies[j], e, zero, cfg.hierarchy.cycle)
            norms = e.flatten(1).norm(dim=1)
            # Hutchinson: E ||M^K z||^2 = ||M^K||_F^2 / n for z uniform on the sphere (Katrutsa et al. 2020);
            # the mean of squares is dominated by the slowest vectors, the persistent chains.
            loss = torch.log(norms.square().mean().clamp_min(1e-300)) / (2 * cfg.unroll)
            smoother.weight.grad = None
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                chains[j] = e[:persistent].detach() / norms[:persistent].detach().clamp_min(1e-300).reshape(-1, 1, 1, 1)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"lr: training diverged at iteration {iteration} (loss {value}); lower lr (now {cfg.lr})"
                )
            factor = math.exp(value)
            chain_factor = float(norms[:persistent].detach().log().mean().div(cfg.unroll).exp())
            smoother.history.append(factor)
            bar.set_postfix(factor=f"{factor:.4f}", slowest=f"{chain_factor:.4f}")
            if log_file is not None:
                record = {
                    "iteration": iteration,
                    "loss": value,
                    "factor": factor,
                    "chain_factor": chain_factor,
                    "lr": optimiser.lr,
                    "seconds": round(time.perf_counter() - start, 4),
                }
                log_file.write(json.dumps(record) + "\n")
    finally:
        if log_file is not None:
            log_file.close()
    # A finite loss can still have run away (a too large lr drives the factor to 1e23): a cycle whose error
    # grows is no smoother.  The median of the last steps ignores single noisy estimates near 1.
    recent = float(np.median(smoother.history[-10:]))
    if not recent < 1.0:
        raise FloatingPointError(
            f"lr: training diverged: the per-cycle factor went from {smoother.history[0]:.3g} to {recent:.3g} "
            f"(>= 1: the cycle amplifies errors); lower lr (now {cfg.lr:g})"
        )
    smoother.training["seconds"] = round(time.perf_counter() - start, 3)
    return smoother.to(device="cpu", dtype=torch.float64)
