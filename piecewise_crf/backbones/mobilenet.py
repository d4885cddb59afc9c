"""MobileNetV2 in torchvision's layout, dilated so that its output stays at stride 16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .weights import normalize_images

# (expansion t, channels c, repeats n, stride s) of torchvision's mobilenet_v2(): features.1..17.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(conv(x)) as one convolution while `bn` is in eval mode (always, with `freeze_bn`): an
    eval BatchNorm is a per-channel affine map, folded into the conv's weight and bias on every
    call, so gradients still reach both modules' parameters and the state dict is unchanged.
    Saves a pass over every activation: the BatchNorm ops took 43 of 770 ms of CamVid's
    crf+dense stage (torch.profiler, 2 threads), and FeatMap-Net on a 480x360 frame went from 238
    to 201 ms (2 threads, `benchmarks/prediction_paths.py`)."""
    if bn.training:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU6, keyed like torchvision's Conv2dNormActivation; the
    BatchNorm folded into the conv while it is in eval mode (`conv_bn`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(
                cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False
            ),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, relu = self
        return relu(conv_bn(conv, bn, x))


class InvertedResidual(nn.Module):
    """torchvision's InvertedResidual: ``conv`` = [expand 1x1,] depthwise 3x3, linear 1x1, BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU(cin, hidden, 1)]
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *blocks, project, bn = self.conv
        y = x
        for block in blocks:
            y = block(y)
        y = conv_bn(project, bn, y)
        return x + y if self.use_res_connect else y


class MobileNetV2(nn.Module):
    """MobileNetV2 features at stride 16: the stride-32 stage (features.14..17) has stride 1 and
    dilation 2 in its depthwise convs, as in DeepLabV3's output_stride=16.

    ``with_last_conv=False`` (default) outputs features.17 (320 channels); True adds features.18,
    the 1x1 conv to 1280 channels. 320 is the default because features.18 exists to feed the pooled
    ImageNet classifier (DeepLab's MobileNetV2 also stops before it) and a 4x wider map makes every
    layer after the backbone (block 6 per scale, pyramid pooling, potentials) about 4x dearer.
    Without it, a full torchvision state dict loads with ``features.18.*`` reported as ignored.

    ``freeze_bn`` (default True) keeps BatchNorm in eval mode even under ``.train()``: the shared
    ImageNet weights have BN folded into the convs (weight 1, mean 0, var 1-eps), which batch
    statistics would destroy, and small CPU batches give poor statistics anyway. BN affine
    parameters still train.
    """

    stride = 16
    input_style = "imagenet"

    def __init__(self, with_last_conv: bool = False, freeze_bn: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU(3, 32, 3, 2)]
        channels, current_stride, dilation = 32, 2, 1
        for t, c, n, s in _SETTINGS:
            if current_stride == self.stride:  # past stride 16, trade each stride for dilation
                dilation, s = dilation * s, 1
            current_stride *= s
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t, dilation))
                channels = c
        if with_last_conv:
            layers.append(ConvBNReLU(channels, 1280, 1))
            channels = 1280
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> MobileNetV2:
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1] -> ImageNet mean/std normalised RGB."""
        return normalize_images(images, self.input_style)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
