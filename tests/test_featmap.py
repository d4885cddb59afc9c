import pytest
import torch

from piecewise_crf.backbones.tiny import TinyBackbone
from piecewise_crf.config import load_config, shipped_configs
from piecewise_crf.featmap import FeatMapNet, SlidingPyramidPooling, grid_size
from piecewise_crf.model import build_model


def test_sliding_pyramid_pooling_by_hand():
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    out = SlidingPyramidPooling((3, 5))(x)
    assert out.shape == (1, 3, 7, 7)
    assert out[0, 0].sum() == 1  # the un-pooled map
    assert out[0, 1].sum() == 9  # a 3x3 window around the peak
    assert out[0, 2].sum() == 25
    with pytest.raises(ValueError, match="odd"):
        SlidingPyramidPooling((4,))


@pytest.mark.parametrize(("h", "w"), [(33, 47), (64, 64), (17, 95)])
@pytest.mark.parametrize("order", ["pool_then_concat", "concat_then_pool"])
def test_output_is_the_largest_scales_grid(h, w, order):
    net = FeatMapNet(TinyBackbone(8), scales=(1.2, 0.8, 0.4), block6_channels=6, pool_order=order)
    out = net(torch.rand(2, 3, h, w))
    assert out.shape == (2, 3 * 6 * 3, *grid_size(h, w, (1.2, 0.8, 0.4)))
    # grid of the largest scale: ceil(round(1.2 * size) / 16)
    assert out.shape[-2:] == (-(-round(1.2 * h) // 16), -(-round(1.2 * w) // 16))


def test_pooling_off_and_single_scale():
    net = FeatMapNet(TinyBackbone(8), scales=(1.0,), block6_channels=5, pool_windows=())
    assert net(torch.rand(1, 3, 40, 50)).shape == (1, 5, 3, 4)


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_builds_and_runs_on_an_odd_size(name):
    config = load_config(name).model
    config.num_classes = config.num_classes or 5  # unset: the dataset's
    config.backbone_weights = None  # architecture only: no weight files in this test
    model = build_model(config).eval()
    h, w = 71, 53
    with torch.no_grad():
        potentials = model(torch.rand(1, 3, h, w))
    assert potentials.unary.shape == (1, config.num_classes, *model.grid_size(h, w))
    assert set(potentials.pairwise) == set(config.relations)


class Stride8(TinyBackbone):
    """The tiny backbone without its last stride-2 conv block: a stride-8 map."""

    stride = 8

    def __init__(self) -> None:
        super().__init__()
        self.features = self.features[:-3]


def test_the_grid_follows_the_backbones_stride():
    net = FeatMapNet(Stride8(), scales=(1.0,), block6_channels=8, pool_windows=())
    assert net(torch.rand(1, 3, 64, 96)).shape[-2:] == grid_size(64, 96, (1.0,), 8) == (8, 12)
    config = load_config("demo", ["model.num_classes=5"]).model
    model = build_model(config)
    model.featmap = net  # the upsampling maps each node back over its 8x8 pixels
    assert model.grid_size(64, 96) == (8, 12) and model._cell() == 8.0


@pytest.mark.parametrize("order", ["pool_then_concat", "concat_then_pool"])
def test_channels_last_computes_what_nchw_does_and_returns_nchw(order):
    """The memory format changes the layout the convolutions run in, not what they compute:
    features and every weight's gradient agree with the (B, C, H, W) net to float rounding, and
    the features come back (B, C, h, w) contiguous."""
    torch.manual_seed(0)
    nets = [
        FeatMapNet(
            TinyBackbone(8),
            scales=(1.0, 0.5),
            block6_channels=6,
            pool_order=order,
            channels_last=flag,
        )  # fmt: skip
        for flag in (True, False)
    ]
    nets[1].load_state_dict(nets[0].state_dict())
    images = torch.rand(2, 3, 45, 61)
    outs = [net(images) for net in nets]
    assert outs[0].is_contiguous() and not outs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for out in outs:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
        scale = b.grad.abs().max().item()  # sums over ~1e4 pixels: rounding scales with them
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5 * scale, msg=name)
