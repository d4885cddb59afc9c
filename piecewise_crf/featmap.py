"""FeatMap-Net: the multi-scale network that turns an image into the CRF's node grid.

Each input scale goes through the same stride-16 backbone, then a block 6 of its own (two 3x3
convs); sliding pyramid pooling (stride-1 max pooling over several windows, concatenated with the
un-pooled map) adds patch-background context; the per-scale maps are bilinearly upsampled to the
largest scale's map and concatenated. Default order: pool each scale, then concatenate
("pool_then_concat"); "concat_then_pool" pools the concatenated map instead (same output width).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOL_ORDERS = ("pool_then_concat", "concat_then_pool")


class SlidingPyramidPooling(nn.Module):
    """Concatenate a map with its stride-1 max-pooled versions (C -> C * (1 + len(windows)))."""

    def __init__(self, windows: Sequence[int] = (5, 9)) -> None:
        super().__init__()
        if any(k < 1 or k % 2 == 0 for k in windows):
            raise ValueError(
                f"pooling windows must be odd and positive (size is kept), got {windows}"
            )
        self.windows = tuple(windows)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in self.windows]
        return torch.cat([x, *pooled], dim=1)


def block6(in_channels: int, channels: int) -> nn.Sequential:
    """The per-scale block 6: two 3x3 conv + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


def scaled_size(size: int, scale: float) -> int:
    return max(16, round(size * scale))


def grid_size(
    height: int, width: int, scales: Sequence[float], stride: int = 16
) -> tuple[int, int]:
    """Node grid (h, w) for an image: the stride-16 map of the largest scale (ceil division)."""
    s = max(scales)
    return (
        math.ceil(scaled_size(height, s) / stride),
        math.ceil(scaled_size(width, s) / stride),
    )


class FeatMapNet(nn.Module):
    """Images (B, 3, H, W), RGB in [0, 1] -> node features (B, out_channels, h, w).

    (h, w) = `grid_size(H, W, scales, backbone.stride)`. The backbone (`backbones.Backbone`) must
    expose `normalize`, `out_channels`, `stride` and return a map of size
    ceil(H'/stride) x ceil(W'/stride). `channels_last`: on CPU the backbone and block 6 run in
    that memory format (the output is (B, C, h, w) contiguous either way).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        scales: Sequence[float] = (1.2, 0.8, 0.4),
        block6_channels: int = 512,
        pool_windows: Sequence[int] = (5, 9),
        pool_order: str = "pool_then_concat",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {scales}")
        if pool_order not in POOL_ORDERS:
            raise ValueError(f"pool_order must be one of {POOL_ORDERS}, got {pool_order!r}")
        self.backbone = backbone
        self.stride = int(backbone.stride)
        self.scales = tuple(float(s) for s in scales)
        self.pool_order = pool_order
        self.channels_last = channels_last
        self.block6 = nn.ModuleList(
            block6(backbone.out_channels, block6_channels) for _ in self.scales
        )
        self.pyramid = SlidingPyramidPooling(pool_windows)
        self.out_channels = len(self.scales) * block6_channels * (1 + len(self.pyramid.windows))

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        # Sizes as ints: under the ONNX tracer they are tensors, and the grid is fixed per graph.
        height, width = map(int, images.shape[-2:])
        target = grid_size(height, width, self.scales, self.stride)
        x = self.backbone.normalize(images)
        if self.channels_last and x.device.type == "cpu" and not torch.jit.is_tracing():
            # oneDNN's CPU convolutions run channels_last without reordering every layer's input
            # (benchmarks/layout.py times both; docs/deployment.md). Not measured on CUDA: kept.
            x = x.contiguous(memory_format=torch.channels_last)
        maps = []
        for scale, head in zip(self.scales, self.block6, strict=True):
            size = (scaled_size(height, scale), scaled_size(width, scale))
            xs = (
                x
                if size == (height, width)
                else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            )
            m = head(self.backbone(xs))
            if self.pool_order == "pool_then_concat":
                m = self.pyramid(m)
            if m.shape[-2:] != target:
                m = F.interpolate(m, size=target, mode="bilinear", align_corners=False)
            maps.append(m)
        features = torch.cat(maps, dim=1)
        if self.pool_order == "concat_then_pool":
            features = self.pyramid(features)
        return features.contiguous()  # the heads and the grid mean-field read (B, C, h, w)
