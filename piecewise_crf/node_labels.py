"""Node labels: the ground truth brought down to the CRF's node grid, for the piecewise loss.

A node covers a `cell` x `cell` block of pixels (the network's stride at the largest input
scale). "nearest" takes the pixel under the node's centre; "majority" the most frequent labelled
class among 4 x 4 samples spread over the cell (the ignore index when none is labelled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NODE_LABEL_RULES = ("nearest", "majority")


def node_labels(
    labels: Tensor,
    grid: tuple[int, int],
    cell: float,
    *,
    rule: str = "nearest",
    num_classes: int,
    ignore_index: int = 255,
) -> Tensor:
    """Pixel labels (B, H, W) -> node labels (B, h, w) on a `grid` of `cell`-pixel nodes."""
    if rule not in NODE_LABEL_RULES:
        raise ValueError(f"node label rule must be one of {NODE_LABEL_RULES}, got {rule!r}")
    samples = 1 if rule == "nearest" else 4
    height, width = labels.shape[-2:]

    def coords(n: int, size: int) -> Tensor:
        sub = (torch.arange(samples, device=labels.device) + 0.5) / samples
        pos = (torch.arange(n, device=labels.device)[:, None] + sub) * cell
        return pos.floor().long().clamp(max=size - 1).reshape(-1)

    picked = labels[:, coords(grid[0], height)][:, :, coords(grid[1], width)]
    if samples == 1:
        return picked
    b = labels.shape[0]
    blocks = picked.view(b, grid[0], samples, grid[1], samples).permute(0, 1, 3, 2, 4)
    blocks = blocks.reshape(b, grid[0], grid[1], samples * samples)
    valid = blocks != ignore_index
    counts = F.one_hot(blocks.masked_fill(~valid, 0), num_classes).mul(valid.unsqueeze(-1)).sum(-2)
    return counts.argmax(-1).masked_fill(counts.sum(-1) == 0, ignore_index)
