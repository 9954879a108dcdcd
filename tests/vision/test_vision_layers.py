"""The Hat activation (fused form against the piecewise definition, both scalings, the one-flag MgNet
configuration) and memory formats through every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mgcore import ResidualCorrection
from vision import MgNet, MgNetConfig, create_model, list_models, model_info
from vision.cli import _parse_kv
from vision.layers import Hat
from vision.models import ResNetConfig, zeros_in_format_of


def _reference_hat(x: torch.Tensor, s: float, peak: str) -> torch.Tensor:
    """The piecewise definition: x on [0, s/2], s - x on [s/2, s], 0 elsewhere (times 2/s for peak 1)."""
    up = (x >= 0) & (x <= s / 2)
    down = (x > s / 2) & (x <= s)
    value = torch.where(up, x, torch.where(down, s - x, torch.zeros_like(x)))
    return value * (2 / s) if peak == "one" else value


def _points(s: float) -> torch.Tensor:
    """Points covering [-s, 2s] that keep 1e-3 away from the kinks 0, s/2, s (where the derivative jumps)."""
    x = torch.linspace(-s, 2 * s, 301, dtype=torch.float64)
    kinks = torch.tensor([0.0, s / 2, s], dtype=torch.float64)
    return x[(x[:, None] - kinks).abs().min(1).values > 1e-3]


@pytest.mark.parametrize("peak", ["half_support", "one"])
@pytest.mark.parametrize("s", [2.0, 5.0, 20.0])
def test_fused_hat_equals_the_piecewise_definition_with_its_gradients(peak, s):
    x = _points(s).requires_grad_(True)
    hat = Hat(s, trainable=True, peak=peak).double()
    y = hat(x)
    assert torch.equal(y.detach(), _reference_hat(x.detach(), s, peak))
    y.sum().backward()
    xd = x.detach()
    inside_up = (xd > 0) & (xd < s / 2)
    inside_down = (xd > s / 2) & (xd < s)
    scale = 2 / s if peak == "one" else 1.0
    dx = scale * (inside_up.double() - inside_down.double())
    assert torch.equal(x.grad, dx)
    # d/ds of x or s - x is 0 or 1; for peak 1 also the derivative of the factor 2/s.
    ds = scale * inside_down.double()
    if peak == "one":
        ds = ds - (2 / s**2) * _reference_hat(xd, s, "half_support")
    assert torch.allclose(hat.support.grad, ds.sum(), rtol=1e-12, atol=1e-12)
    assert float(hat.support.grad.abs()) > 0  # the support really is trained


def test_fused_hat_equals_the_three_relu_form_and_peak_one_is_rescaled():
    x = torch.randn(4, 3, 5, 5) * 10
    s = torch.tensor(7.0)
    three_relu = torch.relu(x) - 2 * torch.relu(x - s / 2) + torch.relu(x - s)
    assert torch.allclose(Hat(7.0)(x), three_relu, rtol=0, atol=1e-5)
    assert torch.allclose(Hat(7.0, peak="one")(x), three_relu * 2 / 7, rtol=0, atol=1e-6)
    assert float(Hat(7.0, peak="one")(torch.tensor(3.5))) == 1.0
    assert float(Hat(7.0)(torch.tensor(3.5))) == 3.5
    with pytest.raises(ValueError, match="peak"):
        Hat(2.0, peak="two")
    with pytest.raises(ValueError, match="support"):
        Hat(float("nan"))


class _CountFullSizeOps(TorchDispatchMode):
    """Counts the aten operations whose output has ``numel`` elements (one pass over the activation each)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(str(func))
        return out


def test_fused_hat_is_three_elementwise_passes():
    x = torch.randn(2, 4, 8, 8)
    with _CountFullSizeOps(x.numel()) as counter:
        Hat(5.0)(x)
    assert len(counter.ops) == 3, counter.ops  # s - x, minimum, clamp (the ReLU form takes 8)
    with _CountFullSizeOps(x.numel()) as counter:
        torch.relu(x) - 2.0 * torch.relu(x - 2.5) + torch.relu(x - 5.0)
    assert len(counter.ops) == 8


def test_hat_supports_per_grid_in_one_flag():
    model = MgNet(num_iterations=(1, 2, 2, 2), channels_u=4, in_channels=1, activation="Hat-[5,10,15,20]")
    assert model.config.activation == "hat" and model.config.hat_support == (5.0, 10.0, 15.0, 20.0)
    # One Hat per grid, shared by that grid's σ's: the stem and grid 0 use 5, the coarsest grid 20.
    assert float(model.stem[2].support) == 5.0
    assert [float(g.smooth[0].pre_act[1].support) for g in model.grids] == [5.0, 10.0, 15.0, 20.0]
    assert model.grids[3].restrict.f_act[1] is model.grids[3].smooth[1].post_act[1]
    # The train CLI's --model-kwargs passes it as one KEY=VALUE; trainable supports are one more.
    kwargs = _parse_kv(
        ["num_iterations=[1,2,2,2]", "channels_u=[4,4,8,8]", "activation=hat-[20,15,10,5]", "hat_trainable=True"]
    )
    trained = create_model("mgnet_mnist", **kwargs)
    supports = [float(p.detach()) for n, p in trained.named_parameters() if n.endswith("support")]
    assert supports == [20.0, 15.0, 10.0, 5.0]
    assert trained.config.to_dict()["hat_support"] == [20.0, 15.0, 10.0, 5.0]
    x = torch.randn(2, 1, 28, 28)
    assert create_model("mgnet_mnist", **kwargs, hat_peak="one")(x).shape == (2, 10)
    with pytest.raises(ValueError, match="hat_support: expected one number or 4"):
        MgNetConfig(num_iterations=(1, 2, 2, 2), activation="hat-[5,10]")
    with pytest.raises(ValueError, match=r"activation: expected 'hat-\[s_1,...,s_J\]'"):
        MgNetConfig(activation="hat-[5,x]")
    with pytest.raises(ValueError, match="hat_support: expected positive"):
        MgNetConfig(num_iterations=(1, 1), activation="hat-[5,-1]")
    with pytest.raises(ValueError, match="peak"):
        MgNetConfig(activation="hat", hat_peak="half")


# ----------------------------------------------------------------------------------------- memory formats

CL = torch.channels_last


def test_zeros_keep_the_memory_format_of_f():
    f = torch.randn(2, 3, 5, 5).to(memory_format=CL)
    u = zeros_in_format_of(f, 4)
    assert u.shape == (2, 4, 5, 5) and u.is_contiguous(memory_format=CL) and not u.is_contiguous()
    assert not u.any()
    u = zeros_in_format_of(torch.randn(2, 3, 5, 5, dtype=torch.float64), 4)
    assert u.is_contiguous() and u.dtype == torch.float64


def test_mgnet_initial_u_has_the_memory_format_of_f():
    model = MgNet(num_iterations=(1, 1), channels_u=4, channels_f=6).eval().to(memory_format=CL)
    seen = []
    first = model.grids[0].smooth[0]
    first.register_forward_pre_hook(lambda mod, args: seen.append((args[0], args[1])))
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8).to(memory_format=CL))
    u, f = seen[0]
    assert f.is_contiguous(memory_format=CL) and not f.is_contiguous()
    assert u.shape[1] == 4 and u.is_contiguous(memory_format=CL) and not u.is_contiguous()


def _small_overrides(name: str) -> dict:
    """Few channels keep the test fast; the memory-format behaviour does not depend on them."""
    with torch.device("meta"):
        config = getattr(create_model(name), "config", None)
    if isinstance(config, MgNetConfig):
        return {"channels_u": 4}
    if isinstance(config, ResNetConfig):
        return {"channels": [4 * 2**i for i in range(len(config.layers))]}
    return {}


@pytest.mark.parametrize("name", list_models())
def test_channels_last_flows_through_every_registered_model(name):
    torch.manual_seed(0)
    model = create_model(name, **_small_overrides(name)).eval()
    c, h, _ = model_info(name).input_size
    x = torch.randn(2, c, 32 if h > 64 else 8, 32 if h > 64 else 8)
    with torch.no_grad():
        expected = model(x)
    model = model.to(memory_format=CL)
    mixed, states = [], []

    def check(module, args, out):
        for t in out if isinstance(out, tuple) else (out,):
            # A 4-D tensor with one channel or one pixel is in both formats; any other must be channels_last.
            if isinstance(t, torch.Tensor) and t.dim() == 4 and not t.is_contiguous(memory_format=CL):
                mixed.append(type(module).__name__)

    hooks = [m.register_forward_hook(check) for m in model.modules() if m is not model]
    for m in model.modules():
        if isinstance(m, ResidualCorrection):
            hooks.append(m.register_forward_pre_hook(lambda mod, args: states.append(args[0])))
    with torch.no_grad():
        got = model(x.contiguous(memory_format=CL))
    for handle in hooks:
        handle.remove()
    assert not mixed, f"{name}: NCHW outputs from {sorted(set(mixed))}"
    # The state u (r for the ResNets) entering every engine smoothing step is channels_last too.
    has_engine_steps = any(isinstance(m, ResidualCorrection) for m in model.modules())
    assert len(states) > 0 if has_engine_steps else name == "resnet18_plain"
    assert all(u.is_contiguous(memory_format=CL) for u in states)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert isinstance(model, nn.Module) and got.shape == (2, model.num_classes)
