"""Tests for xsam.models: shapes, exact parameter counts, BatchNorm, init, errors, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xsam.models import FIXED_INPUT, MODEL_NAMES, build_model
from xsam.models.resnet import CifarResNet
from xsam.models.wide_resnet import WideResNet

# Reference counts: kuangliu/pytorch-cifar layouts (ResNet-18/50, VGG-11, DenseNet-121), the
# WRN authors' layout (WRN-28-10) and He et al. option A (ResNet-20, published as 0.27M).
PARAMS_10 = {
    "mlp": 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10,  # 784-1024-1024-10
    "plain_cnn": 1_630_090,
    "small_cnn": 94_762,
    "resnet20": 269_722,
    "resnet18": 11_173_962,
    "resnet50": 23_520_842,
    "vgg11_bn": 9_231_114,
    "densenet121": 6_956_298,
    "wrn28_10": 36_479_194,
    "vit": 306_826,  # 7x7 patches, width 96, depth 4, MLP ratio 2 (tests/test_vit.py: formula)
}
PARAMS_100 = {
    "mlp": 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 100 + 100,
    "plain_cnn": 1_630_090 + 512 * 90 + 90,
    "small_cnn": 106_372,
    "resnet20": 275_572,
    "resnet18": 11_220_132,
    "resnet50": 23_705_252,
    "vgg11_bn": 9_277_284,
    "densenet121": 7_048_548,
    "wrn28_10": 36_536_884,
    "vit": 306_826 + 96 * 90 + 90,
}
SMALL = ("small_cnn", "resnet20")
CONV_NAMES = tuple(n for n in MODEL_NAMES if n not in FIXED_INPUT)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Every model with default arguments, built once for the module."""
    torch.manual_seed(0)
    return {name: build_model(name) for name in CONV_NAMES}


def test_model_names() -> None:
    assert isinstance(MODEL_NAMES, tuple)
    assert set(MODEL_NAMES) == set(PARAMS_10) == set(PARAMS_100)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count_10_classes(name: str) -> None:
    in_channels = 1 if name in FIXED_INPUT else 3  # mlp: 28x28 grey by default
    assert count_params(build_model(name, in_channels=in_channels)) == PARAMS_10[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count_100_classes(name: str) -> None:
    in_channels = 1 if name in FIXED_INPUT else 3
    assert (
        count_params(build_model(name, num_classes=100, in_channels=in_channels))
        == PARAMS_100[name]
    )


def test_resnet20_matches_published_size() -> None:
    # He et al. 2016, Table 6: 0.27M parameters (option-A shortcuts carry none).
    assert abs(PARAMS_10["resnet20"] - 0.27e6) < 0.005e6


def test_small_cnn_is_small() -> None:
    assert 50_000 < PARAMS_10["small_cnn"] < 200_000


@pytest.mark.parametrize("name", CONV_NAMES)
def test_output_shape_cifar(models: dict[str, nn.Module], name: str) -> None:
    model = models[name]
    model.train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_grayscale_28(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_small_models_backward_and_eval(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, in_channels=1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 5, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 32, 32)).shape == (3, 5)


@pytest.mark.parametrize("name", CONV_NAMES)
def test_has_batchnorm_and_running_stats_update(models: dict[str, nn.Module], name: str) -> None:
    bns = [m for m in models[name].modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns, f"{name} has no BatchNorm2d"
    if name in SMALL:
        model = build_model(name)
        before = [
            bn.running_mean.clone() for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)
        ]
        model.train()
        model(torch.randn(4, 3, 32, 32))
        after = [bn.running_mean for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)]
        assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("name", CONV_NAMES)
def test_init(models: dict[str, nn.Module], name: str) -> None:
    for module in models[name].modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        elif isinstance(module, nn.Conv2d) and module.bias is not None:
            assert torch.all(module.bias == 0)


def test_conv_init_is_kaiming_fan_out(models: dict[str, nn.Module]) -> None:
    # The largest conv of ResNet-18 (512x512x3x3): std should be sqrt(2 / fan_out).
    conv = models["resnet18"].layer4[1].conv2
    expected = math.sqrt(2.0 / (conv.out_channels * 3 * 3))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=0.02 * expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_under_seed(name: str) -> None:
    torch.manual_seed(0)
    first = build_model(name).state_dict()
    torch.manual_seed(0)
    second = build_model(name).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    torch.manual_seed(1)
    other = build_model(name).state_dict()
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_unknown_name_lists_accepted_names() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet1000")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet1000" in message
    for name in MODEL_NAMES:
        assert name in message


def test_name_is_case_insensitive() -> None:
    assert count_params(build_model("ResNet20")) == PARAMS_10["resnet20"]


@pytest.mark.parametrize("arg", ["num_classes", "in_channels"])
@pytest.mark.parametrize("value", [0, -3])
def test_bad_sizes_raise_value_error(arg: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"{arg} should be >= 1 but is: {value}"):
        build_model("small_cnn", **{arg: value})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builders_validate_num_classes_directly(name: str) -> None:
    from xsam import models as zoo

    with pytest.raises(ValueError, match="num_classes"):
        getattr(zoo, name)(num_classes=0)


@pytest.mark.parametrize("kwargs", [{"num_classes": 2.5}, {"in_channels": True}, {"name": 3}])
def test_bad_types_raise_type_error(kwargs: dict[str, object]) -> None:
    args = {"name": "small_cnn", **kwargs}
    with pytest.raises(TypeError):
        build_model(**args)  # type: ignore[arg-type]


def test_dropout_argument() -> None:
    default = build_model("small_cnn")
    assert not any(isinstance(m, nn.Dropout) for m in default.modules())
    dropped = build_model("small_cnn", dropout=0.3)
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert count_params(dropped) == PARAMS_10["small_cnn"]
    with pytest.raises(ValueError, match="dropout should be in"):
        build_model("small_cnn", dropout=1.0)
    with pytest.raises(TypeError):
        build_model("resnet20", dropout=0.1)


def test_wide_resnet_dropout_and_depth() -> None:
    model = WideResNet(depth=10, widen=1, dropout=0.2)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2] * 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="depth should be 6n \\+ 4"):
        WideResNet(depth=27)


def test_cifar_resnet_depth() -> None:
    assert len(CifarResNet(depth=32).layers) == 15
    with pytest.raises(ValueError, match="depth should be 6n \\+ 2"):
        CifarResNet(depth=21)


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3), (8, 2)])
def test_mlp_shapes_width_depth_and_cifar_input(size, channels) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=4, in_channels=channels, image_size=size, width=16,
                        depth=3)  # fmt: skip
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (channels * size * size, 16), (16, 16), (16, 16), (16, 4)
    ]  # fmt: skip
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    out = model(torch.randn(5, channels, size, size))
    assert out.shape == (5, 4)


def test_conv_models_ignore_image_size_and_mlp_checks_it() -> None:
    assert count_params(build_model("small_cnn", image_size=32)) == PARAMS_10["small_cnn"]
    with pytest.raises(ValueError, match="image_size should be >= 1 but is: 0"):
        build_model("mlp", image_size=0)
    with pytest.raises(ValueError, match="width should be >= 1 but is: 0"):
        build_model("mlp", width=0)


def test_plain_cnn_has_no_normalisation_and_fits_its_input() -> None:
    torch.manual_seed(0)
    model = build_model("plain_cnn", num_classes=3, in_channels=3, image_size=32)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="image_size should be >= 4 but is: 3"):
        build_model("plain_cnn", image_size=3)
