"""A tiny stride-16 CNN, randomly initialised: for tests, the demo and quick experiments.

Its receptive field is small (about 100 pixels), which the synthetic context dataset relies on:
context farther away can only reach a node through the pairwise potentials.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class TinyBackbone(nn.Module):
    """Images normalised to roughly zero mean, unit spread -> (B, out_channels, ceil(H/16), ceil(W/16))."""

    stride = 16

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.out_channels = 2 * w
        self.features = nn.Sequential(
            *_conv(3, w // 2, 2),
            *_conv(w // 2, w, 2),
            *_conv(w, w, 1),
            *_conv(w, 2 * w, 2),
            *_conv(2 * w, 2 * w, 2),
        )

    def normalize(self, images: Tensor) -> Tensor:
        return (images - 0.5) / 0.25

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
