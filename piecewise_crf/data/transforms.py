"""Joint image/label transforms for training: random scale, horizontal flip, crop/pad, colour jitter.

Every transform takes (image, label) and returns (image (3, H, W) float32 in [0, 1], label (H, W)
int64). Inputs may be a PIL image / numpy array (as datasets give them) or tensors, so the
transforms compose in any order. Images are resampled bilinearly, labels by nearest neighbour
(pixel-centre aligned, like the bilinear grid) so the two stay registered.

Randomness comes from `generator` when given, else from the global torch RNG: DataLoader workers
seed that per worker from the main process's RNG, so restoring the RNG state on resume replays the
same augmentation. (A Generator object is copied into every worker, so workers would repeat each
other's draws: use it for single-process loading or tests.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

ImageLike = Image.Image | np.ndarray | Tensor
LabelLike = Image.Image | np.ndarray | Tensor


def to_tensors(image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
    """(image (3, H, W) float32 in [0, 1], label (H, W) int64).

    Accepts a PIL image or a uint8 (H, W, 3) array for the image (converted to RGB), an already
    converted float tensor (3, H, W), and a PIL "L"/"P" image, array or tensor for the label.
    """
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
            )
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    if isinstance(label, Image.Image):
        label = np.array(label)
    if isinstance(label, np.ndarray):
        label = torch.from_numpy(label.astype(np.int64))
    return image.float(), label.long()


def _random(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


class Compose:
    """Apply transforms in order; always returns tensors (an empty Compose just converts)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        for transform in self.transforms:
            image, label = transform(image, label)
        return to_tensors(image, label)


class ToTensor:
    """Convert only (the default when a dataset is given no transforms)."""

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        return to_tensors(image, label)


def resize(image: Tensor, label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize to (height, width): bilinear (antialiased) image, nearest-neighbour label."""
    image = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_(0, 1)
    # "nearest-exact" samples at pixel centres, matching bilinear's half-pixel grid;
    # plain "nearest" would shift the label by up to a pixel relative to the image.
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return image, label.long()


class RandomScale:
    """Rescale both by a factor drawn uniformly from `scale_range` (paper: 0.7-1.2)."""

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.7, 1.2),
        generator: torch.Generator | None = None,
    ) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (lo, hi)
        self.generator = generator

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        image, label = to_tensors(image, label)
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * _random(self.generator)
        h, w = label.shape
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        return resize(image, label, size) if size != (h, w) else (image, label)


class RandomHorizontalFlip:
    """Mirror both left-right with probability `p`."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        image, label = to_tensors(image, label)
        if _random(self.generator) < self.p:
            return image.flip(-1), label.flip(-1)
        return image, label


class RandomCrop:
    """Crop a random (height, width) window; smaller inputs are first padded at the bottom/right,
    the image with `fill` (a value or one per channel, e.g. the dataset mean) and the label with
    `ignore_index`, so padding never counts in the loss."""

    def __init__(
        self,
        size: int | tuple[int, int],
        fill: float | Sequence[float] = 0.0,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = fill
        self.ignore_index = ignore_index
        self.generator = generator

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        image, label = to_tensors(image, label)
        (th, tw), (h, w) = self.size, label.shape
        if h < th or w < tw:
            ph, pw = max(th, h), max(tw, w)
            fill = torch.as_tensor(self.fill, dtype=image.dtype).reshape(-1, 1, 1)
            padded = fill.expand(image.shape[0], ph, pw).clone()
            padded[:, :h, :w] = image
            padded_label = label.new_full((ph, pw), self.ignore_index)
            padded_label[:h, :w] = label
            image, label, h, w = padded, padded_label, ph, pw
        top = int(torch.randint(0, h - th + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - tw + 1, (), generator=self.generator))
        return image[:, top : top + th, left : left + tw], label[top : top + th, left : left + tw]


# ITU-R BT.601 luma weights; the hue rotation below turns chroma about this grey axis.
LUMA = (0.299, 0.587, 0.114)


def grey(image: Tensor) -> Tensor:
    """Luma of a (3, H, W) RGB image, (1, H, W)."""
    r, g, b = LUMA
    return r * image[0:1] + g * image[1:2] + b * image[2:3]


def adjust_colour(
    image: Tensor, brightness: float, contrast: float, saturation: float, hue: float
) -> Tensor:
    """Photometric change of a (3, H, W) image in [0, 1], clamped after each step:
    brightness multiplies every value; contrast scales about the image's mean luma; saturation
    blends with the pixel's luma (0 = grey, 1 = unchanged); hue rotates the chroma about the grey
    axis by `hue` turns (0.5 = complementary colours), keeping luma. A factor of 1 (hue 0) is
    skipped, so no change leaves the image bit for bit."""
    if brightness != 1:
        image = (image * brightness).clamp(0, 1)
    if contrast != 1:
        mean = grey(image).mean()
        image = (mean + contrast * (image - mean)).clamp(0, 1)
    luma = grey(image)
    if saturation != 1:
        image = (luma + saturation * (image - luma)).clamp(0, 1)
        luma = grey(image)
    if hue:
        # Rodrigues rotation about the unit grey direction n = (1, 1, 1) / sqrt(3) in RGB;
        # luma is kept by subtracting the rotated image's luma change.
        angle = 2 * math.pi * hue
        cos, sin = math.cos(angle), math.sin(angle)
        n = image.new_tensor(1 / math.sqrt(3)).expand(3)
        cross = n[0] * torch.stack([image[2] - image[1], image[0] - image[2], image[1] - image[0]])
        dot = (image * n[:, None, None]).sum(0, keepdim=True) * n[:, None, None]
        rotated = cos * image + sin * cross + (1 - cos) * dot
        image = (rotated + (luma - grey(rotated))).clamp(0, 1)
    return image


class ColourJitter:
    """Random photometric change of the image only (labels untouched): brightness, contrast and
    saturation factors drawn from [1 - x, 1 + x], hue from [-h, h] turns, as torchvision's
    ColorJitter names them. (0, 0, 0, 0) leaves the image as it is."""

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if (
            min(brightness, contrast, saturation, hue) < 0
            or max(brightness, contrast, saturation) > 1
            or hue > 0.5
        ):
            raise ValueError(
                "colour jitter needs 0 <= brightness, contrast, saturation <= 1 and 0 <= hue <= 0.5, "
                f"got {(brightness, contrast, saturation, hue)}"
            )
        self.amounts = (brightness, contrast, saturation, hue)
        self.generator = generator

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        image, label = to_tensors(image, label)
        b, c, s, h = self.amounts
        factors = [1 + x * (2 * _random(self.generator) - 1) for x in (b, c, s)]
        return adjust_colour(image, *factors, h * (2 * _random(self.generator) - 1)), label


def train_transforms(
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.7, 1.2),
    flip: bool = True,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
    colour_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
) -> Compose:
    """The paper's augmentation (random scale, horizontal flip, crop/pad to a fixed size), then
    colour jitter when any of its amounts is non-zero."""
    steps: list[Callable] = [RandomScale(scale_range, generator)]
    if flip:
        steps.append(RandomHorizontalFlip(0.5, generator))
    steps.append(RandomCrop(crop_size, fill, generator=generator))
    if any(colour_jitter):
        steps.append(ColourJitter(*colour_jitter, generator=generator))
    return Compose(steps)
