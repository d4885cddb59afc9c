"""Pictures of labels: palette PNGs, colour overlays on the image, and grids of examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from piecewise_crf.files import atomic_write


def colorize(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A palette ("P") PNG image: pixel values are class ids, shown in the dataset's colours."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    return image


def overlay(image: Image.Image, label: Image.Image, alpha: float = 0.5) -> Image.Image:
    """The RGB image blended with the class colours of a palette label image of its size.

    Blended by PIL in uint8: at 8000x6000, 0.55 GB over the inputs (a float numpy blend: 2.7 GB).
    """
    return Image.blend(image, label.convert("RGB"), alpha)


def example_grid(
    rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], scale: float = 0.5
) -> Image.Image:
    """One image of examples side by side: ``rows[i][j]`` is an (H, W, 3) uint8 panel, column j
    titled ``titles[j]``; panels are resized by ``scale`` (nearest, so labels stay crisp)."""
    if not rows or any(len(r) != len(titles) for r in rows):
        raise ValueError(f"every row needs one panel per title ({len(titles)})")
    h, w = rows[0][0].shape[:2]
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    gap, head = 4, 18
    grid = Image.new(
        "RGB", (len(titles) * (pw + gap) - gap, head + len(rows) * (ph + gap)), "white"
    )
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(titles):
        draw.text((j * (pw + gap) + 4, 3), title, fill="black")
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            tile = Image.fromarray(panel).resize((pw, ph), Image.Resampling.NEAREST)
            grid.paste(tile, (j * (pw + gap), head + i * (ph + gap)))
    return grid


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write `image` as a PNG, atomically."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))
