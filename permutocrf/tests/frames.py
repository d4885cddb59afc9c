"""Test inputs in numpy: CamVid frames with noisy marginals, and a small noisy three-region
image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

CAMVID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "camvid"


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over a size x size window of each (.., H, W) map, zeros outside (torch's
    avg_pool2d(size, 1, size // 2) with count_include_pad)."""
    r = size // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(r + 1, r), (r + 1, r)])
    sums = padded.cumsum(-1).cumsum(-2)
    h, w = x.shape[-2:]
    s = size
    box = sums[..., s:, s:] - sums[..., :-s, s:] - sums[..., s:, :-s] + sums[..., :-s, :-s]
    return box[..., :h, :w] / (s * s)


def camvid_frames(count: int, k: int = 11) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image (H, W, 3) uint8, label (H, W), probs (K, H, W) float32) for the first ``count``
    CamVid val frames: probs is the softmax of a smoothed one-hot label plus noise (seeded).
    Skips the test when ../shared/data/camvid is missing."""
    from PIL import Image

    if not (CAMVID / "val.txt").exists():
        pytest.skip(f"CamVid not found at {CAMVID}")
    rng = np.random.default_rng(0)
    for line in (CAMVID / "val.txt").read_text().split("\n")[:count]:
        image_path, label_path = line.split()
        image = np.array(Image.open(CAMVID / image_path).convert("RGB"))
        annotation = np.array(Image.open(CAMVID / label_path))
        onehot = np.eye(k, dtype=np.float32)[np.minimum(annotation, k - 1)].transpose(2, 0, 1)
        logits = box_mean(3.0 * onehot, 9) + rng.normal(0, 1.5, onehot.shape)
        yield image, annotation, softmax(logits).astype(np.float32)


def noisy_regions(h: int = 20, w: int = 24, k: int = 4, seed: int = 0):
    """A three-region noisy RGB image (H, W, 3) uint8 and random marginals (K, H, W) float32."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3))
    img[:, : w // 2] = 200, 40, 40
    img[:, w // 2 :] = 30, 60, 220
    img[h // 2 :, w // 4 : 3 * w // 4] = 40, 200, 60
    img = np.clip(img + 8 * rng.standard_normal((h, w, 3)), 0, 255).astype(np.uint8)
    return img, softmax(1.5 * rng.standard_normal((k, h, w))).astype(np.float32)


def noisy_regions_tensors(h: int = 20, w: int = 24, k: int = 4, seed: int = 0):
    """``noisy_regions`` drawn by torch's generator, as tensors: the torch path's tests keep
    the inputs their tolerances were measured on."""
    import torch

    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(h, w, 3)
    img[:, : w // 2] = torch.tensor([200.0, 40, 40])
    img[:, w // 2 :] = torch.tensor([30.0, 60, 220])
    img[h // 2 :, w // 4 : 3 * w // 4] = torch.tensor([40.0, 200, 60])
    img = (img + 8 * torch.randn(h, w, 3, generator=g)).clamp(0, 255).to(torch.uint8)
    return img, torch.softmax(1.5 * torch.randn(k, h, w, generator=g), 0)
