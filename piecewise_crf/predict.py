"""Prediction on image files: a palette PNG per image, a colour overlay, optional probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from piecewise_crf.checkpoint import load_checkpoint, model_from_checkpoint
from piecewise_crf.data.base import IMAGE_SUFFIXES, open_rgb
from piecewise_crf.evaluate import CRFSetting, predict_stages
from piecewise_crf.runtime import amp_dtype, ensure_writable, resolve_device

STAGES = ("unary", "crf", "crf+dense")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively) in the given folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return files


def colorize(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A palette ("P") PNG image: pixel values are class ids, shown in the dataset's colours."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    return image


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """The image (H, W, 3) uint8 blended with the class colours."""
    colours = np.asarray(palette, dtype=np.float32)[labels]
    return (image * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    stage: str = "crf+dense",
    save_probs: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """`piecewise-crf predict`: writes <stem>.png, <stem>_overlay.png (and <stem>_probs.npy,
    float32 (K, H, W)) into `out` for every input image; returns the label PNG paths."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    files = collect_images(inputs)
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(ckpt, str(checkpoint))
    palette = np.asarray(ckpt["palette"], dtype=np.uint8)
    dev = resolve_device(device)
    model.to(dev)
    out = ensure_writable(out)
    crf = {"crf": CRFSetting.from_config(config.crf)} if stage != "unary" else {}
    written, seen = [], set()
    for path in tqdm(files, desc="predict", disable=not progress, dynamic_ncols=True):
        rgb = np.array(open_rgb(path))  # a writable copy for torch.from_numpy
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(dev)
        probs = predict_stages(
            model,
            image,
            crf,
            config.dense_crf if stage == "crf+dense" else None,
            scales=scales,
            flip=flip,
            amp_dtype=amp_dtype(dev, config.train.amp),
        )[stage]
        stem = path.stem
        while stem in seen:  # the same file name in two input folders
            stem += "_"
        seen.add(stem)
        labels = probs.argmax(0).cpu().numpy()
        colorize(labels, palette).save(out / f"{stem}.png")
        Image.fromarray(overlay(rgb, labels, palette)).save(out / f"{stem}_overlay.png")
        if save_probs:
            np.save(out / f"{stem}_probs.npy", probs.float().cpu().numpy())
        written.append(out / f"{stem}.png")
    return written
