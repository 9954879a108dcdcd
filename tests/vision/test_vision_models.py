"""Models: parameter counts of the original code, forward/backward of every registered model, the theorem
identity, the checkpoint converter, the registry and `mgnet models`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mgcore import ResidualCorrection
from vision import MgNet, MgNetConfig, create_model, list_models, model_info
from vision.cli import main as vision_main
from vision.convert import config_from_original, convert_original_state_dict
from vision.layers import Hat, ZeroOperator
from vision.models import ResNet
from vision.registry import UnknownModelError


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("mgnet_cifar", {}, 8_278_794),
        ("mgnet_cifar", {"num_classes": 100}, 8_301_924),
        ("mgnet_cifar_512", {"num_classes": 100}, 33_118_820),
        ("mgnet_cifar_1024", {"num_classes": 100}, 132_297_828),
        ("mgnet_cifar_wise_b", {}, 10_638_090),
        ("resnet18", {}, 11_173_962),  # = the plain ResNet18 baseline
        ("resnet18_plain", {}, 11_173_962),
    ],
)
def test_parameter_counts_match_original(name, overrides, expected):
    assert model_info(name, **overrides).params == expected


def test_plain_original_layout_has_same_counts():
    from benchmarks.throughput import PlainMgNet

    assert sum(p.numel() for p in PlainMgNet(wise_B=True).parameters()) == 10_638_090
    assert sum(p.numel() for p in PlainMgNet(num_classes=100).parameters()) == 8_301_924


def test_sharing_options_change_counts_as_expected():
    c, k2 = 16, 9 * 16 * 16
    base = MgNet(num_iterations=(2, 3), channels_u=c)
    per_step_A = MgNet(num_iterations=(2, 3), channels_u=c, share_A=False)
    per_step_B = MgNet(num_iterations=(2, 3), channels_u=c, share_B=False)
    n = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in per_step_A.parameters()) - n == (1 + 2) * k2
    assert sum(p.numel() for p in per_step_B.parameters()) - n == (1 + 2) * k2
    # A^ℓ: every smoothing step of a grid holds the very same operator object, as does the restriction.
    g1 = base.grids[1]
    assert g1.smooth[0].A is g1.smooth[2].A is g1.restrict.A_coarse
    assert g1.restrict.A is base.grids[0].smooth[1].A


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_forward_shape_no_nan(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    info = model_info(name)
    c, h, _ = info.input_size
    # Small images keep the test fast (the 1024-channel model is 73 GMACs at 32x32); shapes still check.
    side = 64 if h > 64 else 16
    x = torch.randn(2, c, side, side)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, model.num_classes)
    assert torch.isfinite(y).all()
    assert info.macs > 0 and info.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["mgnet_mnist_tiny", "preact_resnet18_al_bl"])
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, **({} if "mnist" in name else {"num_classes": 5}))
    c = 1 if "mnist" in name else 3
    x = torch.randn(4, c, 16, 16)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1 + 0.2 * torch.randn(n, generator=g, dtype=m.weight.dtype)
            m.bias.data = 0.2 * torch.randn(n, generator=g, dtype=m.weight.dtype)
            m.running_mean = 0.1 * torch.randn(n, generator=g, dtype=m.weight.dtype)
            m.running_var = 0.5 + torch.rand(n, generator=g, dtype=m.weight.dtype)


def test_theorem_mgnet_step_is_preact_resnet_step_on_the_residual():
    """He & Xu 2019, Theorem: with r = f - A*u, u <- u + σ∘B*σ(f - A*u) gives r <- r - A*σ∘B*σ(r)."""
    torch.manual_seed(0)
    model = MgNet(num_iterations=(2,), channels_u=6, channels_f=5).double()
    _randomize_bn(model)
    model.train()  # batch statistics: σ is then a genuinely nonlinear function of the whole batch
    step: ResidualCorrection = model.grids[0].smooth[0]
    A = step.A
    u = torch.randn(3, 6, 9, 9, dtype=torch.float64)
    f = torch.randn(3, 5, 9, 9, dtype=torch.float64)
    r0 = f - A(u)
    u1 = step(u, f)
    r1 = f - A(u1)
    # The pre-act ResNet step, written out: r - A*σ∘B*σ(r).
    expected = r0 - A(step.post_act(step.B(step.pre_act(r0))))
    assert torch.allclose(r1, expected, rtol=0, atol=1e-12)
    assert float((r1 - r0).detach().abs().max()) > 1e-2  # the step did something

    # The same through this package's pre-act ResNet block, whose second convolution is -A (signs as in
    # the paper): the ResNet family really is the engine's residual correction on r.
    resnet = ResNet(layers=(2,), channels=(5,), preact=True, in_channels=5).double()
    block = resnet.blocks[1].step  # a stride-1 block: ResidualCorrection(0, B, σ, [σ, A])
    assert isinstance(block, ResidualCorrection) and isinstance(block.A, ZeroOperator)
    # Shapes: MgNet's B maps f (5) -> u (6) channels, so use a square MgNet for the block comparison.
    sq = MgNet(num_iterations=(2,), channels_u=5).double()
    _randomize_bn(sq, 1)
    sq.train()
    s = sq.grids[0].smooth[1]
    with torch.no_grad():
        block.B.conv.weight.copy_(s.B.conv.weight)
        block.pre_act[0].load_state_dict(s.pre_act[0].state_dict())
        block.post_act[0].load_state_dict(s.post_act[0].state_dict())
        block.post_act[2].conv.weight.copy_(-s.A.conv.weight)
    resnet.train()
    u = torch.randn(3, 5, 9, 9, dtype=torch.float64)
    f = torch.randn(3, 5, 9, 9, dtype=torch.float64)
    r0 = f - s.A(u)
    assert torch.allclose(resnet.blocks[1](r0), f - s.A(s(u, f)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("wise_B", [False, True])
def test_converter_gives_the_original_logits(wise_B):
    from benchmarks.throughput import PlainMgNet

    torch.manual_seed(1)
    original = PlainMgNet(num_ite=(2, 1, 2), c=8, wise_B=wise_B, num_classes=7)
    _randomize_bn(original)
    original.eval()
    state = original.state_dict()
    config = config_from_original(state)
    assert config.num_iterations == (2, 1, 2) and config.share_B == (not wise_B) and config.num_classes == 7
    ours = MgNet(config).eval()
    ours.load_state_dict(convert_original_state_dict({"module." + k: v for k, v in state.items()}))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected, got = original(x), ours(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert float(expected.abs().max()) > 1e-3


def test_converter_rejects_foreign_keys():
    with pytest.raises(KeyError, match=r"unexpected key 'layer0\.0\.conv9\.weight'"):
        convert_original_state_dict({"layer0.0.conv9.weight": torch.zeros(1)})


def test_hat_activation_support_and_gradient():
    hat = Hat(support=4.0, trainable=True)
    x = torch.tensor([-1.0, 1.0, 2.0, 3.0, 5.0])
    assert hat(x).tolist() == [0.0, 1.0, 2.0, 1.0, 0.0]
    hat(x).sum().backward()
    assert hat.support.grad is not None
    model = MgNet(num_iterations=(1, 1), channels_u=4, activation="hat", hat_support=(2.0, 3.0), hat_trainable=True)
    supports = sorted(float(p.detach()) for n, p in model.named_parameters() if n.endswith("support"))
    assert supports == [2.0, 3.0]  # one trainable support per grid
    with pytest.raises(ValueError, match="support"):
        Hat(support=0.0)


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="channels_u: expected one number or 2"):
        MgNetConfig(num_iterations=(1, 1), channels_u=(8, 16, 32))
    with pytest.raises(ValueError, match="activation"):
        MgNetConfig(activation="gelu")
    with pytest.raises(ValueError, match="num_iterations"):
        MgNetConfig(num_iterations=(2, -1))


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean 'mgnet_cifar'"):
        create_model("mgnet_cifra")
    with pytest.raises(TypeError, match="bad override"):
        create_model("mgnet_cifar", channel_u=3)


def test_imagenet_and_per_grid_channels():
    model = create_model("mgnet_imagenet")
    assert model.config.channels_u == (128, 256, 512, 1024) and model.config.share_B is False
    assert model_info("mgnet_imagenet").input_size == (3, 224, 224)


def test_models_command_lists_every_model(capsys):
    assert vision_main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "8,278,794" in out and "4.603G" in out


def test_resnet18_in_engine_blocks_computes_the_plain_resnet18():
    """Same weights, same logits: ResNet18 expressed in the engine's blocks is the plain ResNet18."""
    from vision.baselines import PlainResNet18

    torch.manual_seed(0)
    plain = PlainResNet18(num_classes=10)
    _randomize_bn(plain)
    ours = create_model("resnet18")
    mapped = {}
    for key, value in plain.state_dict().items():
        parts = key.split(".")
        if parts[0] == "conv1":
            new = "stem.0.conv.weight"
        elif parts[0] == "bn1":
            new = "stem.1." + parts[1]
        elif parts[0] == "fc":
            new = key
        else:
            k, name, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            transition = k in (2, 4, 6)
            branch = "f_act" if transition else "post_act"
            new = {
                "conv1": f"step.{'R' if transition else 'B'}.conv.{rest}",
                "bn1": f"step.{branch}.0.{rest}",
                "conv2": f"step.{branch}.2.conv.{rest}",
                "bn2": f"step.{branch}.3.{rest}",
                "shortcut": f"step.{'Pi.conv' if parts[3] == '0' else 'u_act'}.{'.'.join(parts[4:])}",
            }[name]
            new = f"blocks.{k}.{new}"
        mapped[new] = value
    ours.load_state_dict(mapped)
    plain.eval()
    ours.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), plain(x), rtol=1e-4, atol=1e-5)
