"""Joint transforms keep image and label registered, pad labels with ignore, and are seedable."""

import numpy as np
import pytest
import torch
from PIL import Image

from piecewise_crf.data.transforms import (
    ColourJitter,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ToTensor,
    adjust_colour,
    grey,
    to_tensors,
    train_transforms,
)


def encoded_pair(height=60, width=80, block=10, seed=0):
    """Label in blocks of classes 0..9; the image's red channel encodes the class."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 10, (height // block, width // block))
    label = np.kron(coarse, np.ones((block, block), int)).astype(np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = label * 25
    image[..., 1] = np.arange(width)[None] * 3  # a horizontal ramp, to see flips
    return Image.fromarray(image), label


def interior(label):
    """Pixels whose 5x5 neighbourhood has a single label value."""
    padded = np.pad(label, 2, mode="edge")
    same = np.ones(label.shape, bool)
    for dy in range(5):
        for dx in range(5):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


@pytest.mark.parametrize("seed", range(6))
def test_image_and_label_stay_aligned(seed):
    image, label = encoded_pair(seed=seed)
    transform = train_transforms((64, 72), generator=torch.Generator().manual_seed(seed))
    x, y = transform(image, label)
    assert x.shape == (3, 64, 72) and x.dtype == torch.float32
    assert y.shape == (64, 72) and y.dtype == torch.int64
    y = y.numpy()
    assert set(np.unique(y)) <= set(range(10)) | {255}  # nearest neighbour: no new values
    keep = interior(y) & (y != 255)
    assert keep.sum() > 500
    np.testing.assert_allclose(x[0].numpy()[keep] * 255 / 25, y[keep], atol=0.05)
    pad = interior(y) & (y == 255)
    assert np.all(x.numpy()[:, pad] == 0)


def test_flip_mirrors_both():
    image, label = encoded_pair()
    x, y = RandomHorizontalFlip(p=1.0)(image, label)
    x0, y0 = to_tensors(image, label)
    assert torch.equal(x, x0.flip(-1)) and torch.equal(y, y0.flip(-1))
    x, y = RandomHorizontalFlip(p=0.0)(image, label)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_scale_range_and_nearest_labels():
    image, label = encoded_pair(40, 60)
    for seed in range(5):
        x, y = RandomScale((0.5, 0.5), torch.Generator().manual_seed(seed))(image, label)
        assert x.shape == (3, 20, 30) and y.shape == (20, 30)
        assert set(y.unique().tolist()) <= set(range(10))
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((1.2, 0.7))


def test_crop_pads_image_with_fill_and_label_with_ignore():
    image, label = encoded_pair(30, 40)
    x, y = RandomCrop((50, 60), fill=(0.5, 0.25, 0.0))(image, label)
    assert x.shape == (3, 50, 60)
    assert torch.all(y[30:] == 255) and torch.all(y[:, 40:] == 255)
    assert torch.equal(y[:30, :40], torch.from_numpy(label).long())
    assert torch.all(x[0, 30:] == 0.5) and torch.all(x[1, :, 40:] == 0.25)


def test_seeded_generator_reproduces_and_global_rng_is_used_otherwise():
    image, label = encoded_pair()
    a = train_transforms(48, generator=torch.Generator().manual_seed(3))(image, label)
    b = train_transforms(48, generator=torch.Generator().manual_seed(3))(image, label)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    torch.manual_seed(7)
    c = train_transforms(48)(image, label)
    torch.manual_seed(7)
    d = train_transforms(48)(image, label)
    assert all(torch.equal(u, v) for u, v in zip(c, d, strict=True))


def test_accepts_tensors_and_default_conversion():
    image, label = encoded_pair()
    x, y = ToTensor()(image, label)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and y.dtype == torch.int64
    x2, y2 = Compose([RandomHorizontalFlip(0.0)])(x, y.clone())  # tensors in, e.g. synthetic data
    assert torch.equal(x2, x) and torch.equal(y2, y)
    gray = Image.fromarray(np.full((4, 5), 100, np.uint8))
    assert to_tensors(gray, np.zeros((4, 5), np.uint8))[0].shape == (3, 4, 5)


def pixel(*rgb):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)


def test_adjust_colour_by_hand():
    x = pixel(0.2, 0.4, 0.6)  # luma 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6 = 0.363
    assert float(grey(x)) == pytest.approx(0.363)
    close = torch.testing.assert_close
    close(adjust_colour(x, 1.5, 1, 1, 0), pixel(0.3, 0.6, 0.9))
    close(adjust_colour(x, 2, 1, 1, 0), pixel(0.4, 0.8, 1.0))  # clamped
    close(adjust_colour(x, 1, 1, 0, 0), pixel(0.363, 0.363, 0.363))  # no saturation: grey
    close(adjust_colour(x, 1, 1, 0.5, 0), pixel(0.2815, 0.3815, 0.4815))
    # contrast about the image's mean luma: two pixels of luma 0.363 and 0.2 * 0.299 + ...
    two = torch.cat([x, pixel(0.0, 0.0, 0.0)], dim=2)
    close(adjust_colour(two, 1, 0, 1, 0), torch.full((3, 1, 2), 0.363 / 2))
    # a third of a turn about the grey axis maps (r, g, b) to (b, r, g); luma is then restored
    rotated = pixel(0.6, 0.2, 0.4)
    close(adjust_colour(x, 1, 1, 1, 1 / 3), rotated + (0.363 - float(grey(rotated))))
    close(adjust_colour(x, 1, 1, 1, 1.0), x)  # a whole turn


def test_colour_jitter_changes_the_image_only():
    image, label = encoded_pair()
    jitter = ColourJitter(0.4, 0.4, 0.4, 0.05, generator=torch.Generator().manual_seed(3))
    x, y = jitter(image, label)
    original, _ = to_tensors(image, label)
    assert not torch.equal(x, original) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(y, torch.from_numpy(label.astype(np.int64)))
    again = ColourJitter(0.4, 0.4, 0.4, 0.05, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again(image, label)[0], x)
    assert torch.equal(ColourJitter()(image, label)[0], original)
    with pytest.raises(ValueError, match="hue <= 0.5"):
        ColourJitter(hue=0.7)
    steps = train_transforms((32, 32), colour_jitter=(0.1, 0, 0, 0)).transforms
    assert isinstance(steps[-1], ColourJitter)
    assert not any(isinstance(t, ColourJitter) for t in train_transforms((32, 32)).transforms)
