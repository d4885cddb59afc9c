"""A generated context dataset: an object's class can only be read from a marker far above it.

Every image has a textured background and one to three grey objects. The two object classes look
exactly alike (same texture distribution); what tells them apart is a coloured bar 64-80 pixels above
each object: red above "object_a", blue above "object_b". The bars are classes of their own and are
easy to recognise locally. A node inside an object sees only grey within a ~100-pixel receptive field,
so unary potentials can do no better than guess between the two object classes, while an
"above_below" Pairwise-Net that pairs a bar node with an object node below it resolves them.

Samples are generated from (seed, index) alone, so the dataset is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

CLASSES = ("background", "object_a", "object_b", "marker_a", "marker_b")
PALETTE = np.array(
    [[60, 90, 60], [230, 160, 40], [40, 200, 220], [220, 30, 30], [30, 30, 220]], dtype=np.uint8
)
MARKER_RGB = {3: (0.85, 0.15, 0.15), 4: (0.15, 0.15, 0.85)}
MARKER_HEIGHT = 32
GAP = (64, 80)  # vertical distance from a bar's bottom to its object's top, pixels
# split -> (seed, number of samples); disjoint seeds keep the splits independent
SPLITS = {"train": (0, 256), "val": (1, 32), "test": (2, 64)}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid, repeated up to `size` pixels."""
    coarse = rng.random((cells, cells, channels))
    return np.kron(coarse, np.ones((size // cells + 1, size // cells + 1, 1)))[:size, :size]


def generate(index: int, *, size: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) float32 in [0, 1] and labels (size, size) uint8 for one sample."""
    rng = np.random.default_rng([seed, index])
    base = np.array([0.35, 0.45, 0.3]) + rng.uniform(-0.08, 0.08, 3)
    image = base + 0.15 * (_smooth_noise(rng, size, 8, 3) - 0.5)
    labels = np.zeros((size, size), np.uint8)

    n_objects = int(rng.integers(2, 4))
    slots = size // n_objects
    for slot in range(n_objects):
        cls = int(rng.integers(1, 3))
        width = int(rng.integers(40, min(72, slots - 8) + 1))
        height = int(rng.integers(48, 65))
        gap = int(rng.integers(GAP[0], GAP[1] + 1))
        x0 = slot * slots + int(rng.integers(4, slots - width - 3))
        y0 = int(rng.integers(0, size - MARKER_HEIGHT - gap - height + 1))
        oy = y0 + MARKER_HEIGHT + gap

        marker = cls + 2
        image[y0 : y0 + MARKER_HEIGHT, x0 : x0 + width] = MARKER_RGB[marker]
        labels[y0 : y0 + MARKER_HEIGHT, x0 : x0 + width] = marker
        grey = 0.55 + rng.uniform(-0.1, 0.1)
        image[oy : oy + height, x0 : x0 + width] = grey
        labels[oy : oy + height, x0 : x0 + width] = cls

    image += rng.normal(0.0, 0.06, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), labels


class SyntheticContext(Dataset):
    """`length` generated samples; items are (image (3, H, W) float in [0, 1], labels (H, W) int64).

    `transforms` is a joint callable on (image tensor, label tensor) applied after generation.
    """

    classes = CLASSES
    palette = PALETTE
    num_classes = len(CLASSES)
    ignore_index = 255

    def __init__(
        self,
        length: int = 200,
        *,
        size: int = 192,
        seed: int = 0,
        transforms: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        if size < 192:
            raise ValueError(f"size must be >= 192 so a bar and its distant object fit, got {size}")
        self.length = length
        self.size = size
        self.seed = seed
        self.transforms = transforms

    @classmethod
    def split(
        cls,
        split: str,
        *,
        transforms: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> SyntheticContext:
        """The named split ("train", "val" or "test") of `SPLITS`."""
        if split not in SPLITS:
            raise ValueError(f"synthetic splits are {', '.join(SPLITS)}, got {split!r}")
        seed, length = SPLITS[split]
        return cls(length, seed=seed, transforms=transforms)

    def __len__(self) -> int:
        return self.length

    def name(self, index: int) -> str:
        return f"synthetic_{self.seed}_{index:05d}"

    def load_label(self, index: int) -> tuple[np.ndarray, str]:
        """The untransformed label map (H, W) and its name, as file-backed datasets give it."""
        return generate(index, size=self.size, seed=self.seed)[1], self.name(index)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        image, labels = generate(index, size=self.size, seed=self.seed)
        x = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        y = torch.from_numpy(labels).long()
        if self.transforms is not None:
            x, y = self.transforms(x, y)
        return x, y


def read_synthetic(
    root: object,
    split: str,
    *,
    transforms: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> SyntheticContext:
    """The "synthetic" reader: split `split` of `SPLITS`. `root` is ignored: the samples are
    generated, not read."""
    return SyntheticContext.split(split, transforms=transforms)
