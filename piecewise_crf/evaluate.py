"""Evaluation: one pass over a split scores every prediction stage of a `Predictor`.

The stages are the Predictor's (unary, crf, crf+dense; see `piecewise_crf.inference`). A sweep
adds stages "crf[mode,scale]" computed from the same potentials, so choosing the pairwise mode
and scale on held-out data costs one forward pass per image.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from piecewise_crf.checkpoint import check_classes
from piecewise_crf.config import CRFConfig
from piecewise_crf.files import atomic_write, atomic_write_text, refuse_overwriting_inputs
from piecewise_crf.inference import Predictor
from piecewise_crf.metrics import ConfusionMatrix
from piecewise_crf.runtime import dataset_from_config, ensure_writable, open_dataset

BATCH_SIZE = 4  # same-size images per forward pass when scoring a split


def sweep_settings(
    crf: CRFConfig, scales: Sequence[float] = (), modes: Sequence[str] = ()
) -> dict[str, CRFConfig]:
    """ "crf[mode,scale]" -> `crf` with that pairwise mode and scale, for every pair."""
    return {
        f"crf[{mode},{scale:g}]": dataclasses.replace(crf, pairwise_mode=mode, pairwise_scale=scale)
        for mode in modes
        for scale in scales
    }


def batches(dataset: Dataset, indices: Iterable[int], size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(images (B, 3, H, W), labels (B, H, W)) of up to `size` consecutive same-size items."""
    images: list[Tensor] = []
    labels: list[Tensor] = []
    for i in indices:
        image, label = dataset[i]
        if images and (len(images) == size or image.shape != images[0].shape):
            yield torch.stack(images), torch.stack(labels)
            images, labels = [], []
        images.append(image)
        labels.append(label)
    if images:
        yield torch.stack(images), torch.stack(labels)


def score(
    predictor: Predictor,
    dataset: Dataset,
    *,
    indices: Iterable[int] | None = None,
    stages: Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> dict[str, ConfusionMatrix]:
    """Confusion matrices per stage over `dataset` (or the given `indices` of it), at full
    resolution, same-size consecutive images in batches. In distributed runs pass each rank its
    shard of indices and call `ConfusionMatrix.all_reduce` on the result."""
    stages = predictor.stages if stages is None else tuple(stages)
    k = predictor.model.num_classes
    ignore = getattr(dataset, "ignore_index", predictor.model.ignore_index)
    matrices = {name: ConfusionMatrix(k, ignore) for name in stages}
    indices = list(range(len(dataset)) if indices is None else indices)
    bar = tqdm(total=len(indices), desc="evaluate", disable=not progress, dynamic_ncols=True)
    for images, labels in batches(dataset, indices, batch_size):
        for name, probs in predictor(images, stages).items():
            matrices[name].update(probs.argmax(1).cpu(), labels)
        bar.update(len(images))
    bar.close()
    return matrices


def summarise(
    matrices: dict[str, ConfusionMatrix],
    classes: Sequence[str],
    mean_classes: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """{stage: metrics} with class names; NaN becomes None so the JSON is standard."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    out = {}
    for name, cm in matrices.items():
        metrics = {k: clean(v) for k, v in cm.compute(mean_classes).items()}
        metrics["classes"] = list(classes)
        out[name] = metrics
    return out


def format_table(results: dict[str, dict[str, Any]], classes: Sequence[str]) -> str:
    """Per-class IoU (%) for every stage, then the means."""
    stages = list(results)
    width = max(12, *(len(c) for c in classes))
    cols = [max(9, len(s)) for s in stages]
    head = f"{'class':<{width}}  " + "  ".join(
        f"{s:>{c}}" for s, c in zip(stages, cols, strict=True)
    )
    lines = [head, "-" * len(head)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    for i, name in enumerate(classes):
        row = [pct(results[s]["per_class_iou"][i]) for s in stages]
        lines.append(
            f"{name:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(row, cols, strict=True))
        )
    lines.append("-" * len(head))
    for key, label in [
        ("mean_iou", "mean IoU"),
        ("pixel_accuracy", "pixel acc"),
        ("mean_accuracy", "mean acc"),
        ("frequency_weighted_iou", "fw IoU"),
    ]:
        row = [pct(results[s][key]) for s in stages]
        lines.append(
            f"{label:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(row, cols, strict=True))
        )
    return "\n".join(lines)


def plot_confusion(
    matrices: dict[str, ConfusionMatrix], classes: Sequence[str], path: str | Path
) -> None:
    """Row-normalised confusion matrices (true class per row), one panel per main stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in ("unary", "crf", "crf+dense") if s in matrices]
    size = max(4.0, 0.35 * len(classes) + 2)
    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = matrices[name].matrix.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = m / m.sum(1, keepdims=True)
        ax.imshow(np.nan_to_num(m), vmin=0, vmax=1, cmap="Blues")
        ax.set_title(name)
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write_json(results: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=2), path)


def open_split(
    predictor: Predictor, dataset: str | None, root: str | Path | None, split: str
) -> tuple[Dataset, str]:
    """A split of the checkpoint's dataset (or the named one), whose classes must be the
    predictor's. Returns (dataset, its name)."""
    config = predictor.config
    if config is None:
        raise ValueError("open_split needs a Predictor made by Predictor.from_checkpoint")
    name = dataset or config.data.dataset
    if name == config.data.dataset:
        data = dataset_from_config(config, split, root=root)
    else:
        data = open_dataset(name, root, split, num_classes=config.model.num_classes)
    check_classes(predictor.classes, list(data.classes), f"dataset {name!r}")
    return data, name


def describe(crf: CRFConfig) -> str:
    """'raw x0.01, 3 iterations' (plus any ring weights): a mean-field setting in a few words."""
    rings = "".join(
        f", {name} rings x{'/'.join(f'{w:.3g}' for w in weights)}"
        for name, weights in crf.ring_weights.items()
    )
    return f"{crf.pairwise_mode} x{crf.pairwise_scale:g}{rings}, {crf.iterations} iterations"


def subset_indices(n: int, limit: int | None) -> list[int]:
    """`limit` images spread evenly over a split of `n` (all of them without a limit).

    Spread rather than the first ones: validation sets are often ordered by sequence or scene.
    """
    if n == 0:
        raise ValueError("the split has no images")
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit}")
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    split: str = "test",
    json_path: str | Path | None = None,
    confusion_path: str | Path | None = None,
    iterations: int | None = None,
    pairwise_mode: str | None = None,
    pairwise_scale: float | None = None,
    box_fraction: float | None = None,
    sweep_scales: Sequence[float] = (),
    sweep_modes: Sequence[str] = ("raw", "interaction"),
    dense: bool = True,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    limit: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """`piecewise-crf evaluate`: score every stage of a checkpoint on a dataset split (or on
    `limit` images spread over it, e.g. for a quick pairwise sweep).

    The dataset defaults to the one the checkpoint was trained on; CRF settings default to the
    checkpoint's config, and so does the prediction range box (`box_fraction`). Prints the
    per-class table, writes the JSON and the confusion PNG.
    """
    if json_path is not None and confusion_path is None:
        confusion_path = Path(json_path).with_name(Path(json_path).stem + "_confusion.png")
    refuse_overwriting_inputs([json_path], [checkpoint], "--json", suffix=".json")
    refuse_overwriting_inputs([confusion_path], [checkpoint], "--confusion", suffix=".png")
    for path in (json_path, confusion_path):
        if path is not None:
            ensure_writable(Path(path).parent)
    given = {
        "iterations": iterations,
        "pairwise_mode": pairwise_mode,
        "pairwise_scale": pairwise_scale,
        "box_fraction": box_fraction,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    if not dense:
        overrides["dense_enabled"] = False
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, scales=scales, flip=flip, **overrides
    )
    crf = predictor.crf
    predictor.sweep = sweep_settings(crf, sweep_scales, sweep_modes if sweep_scales else ())
    data, name = open_split(predictor, dataset, root, split)
    classes = list(data.classes)
    indices = subset_indices(len(data), limit)
    matrices = score(predictor, data, indices=indices, progress=progress)
    mean_classes = data.mean_classes() if hasattr(data, "mean_classes") else None
    results = summarise(matrices, classes, mean_classes)
    box = crf.box_fraction or predictor.config.model.box_fraction
    print(f"{name} {split}: {len(indices)} of {len(data)} images, CRF {describe(crf)}, box {box:g}")
    print(format_table(results, classes))
    if not predictor.dense.enabled:
        print("note: crf+dense skipped: dense CRF disabled")
    if json_path is not None:
        write_json(results, json_path)
        print(f"metrics written to {json_path}")
    if confusion_path is not None:
        plot_confusion(matrices, classes, confusion_path)
        print(f"confusion matrices written to {confusion_path}")
    return results
