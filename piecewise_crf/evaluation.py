"""Evaluation: one pass over a split scores every prediction stage of a `Predictor`.

The stages are the Predictor's (unary, crf, crf+dense; see `piecewise_crf.inference`). A sweep
adds stages "crf[mode,scale]" computed from the same potentials, so choosing the pairwise mode
and scale on held-out data costs one forward pass per image. Library code: it returns
matrices, metrics and text; the commands print and write them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from piecewise_crf.checkpoint import check_classes
from piecewise_crf.config import Config, CRFConfig
from piecewise_crf.data import build_dataset
from piecewise_crf.errors import ArgumentError
from piecewise_crf.files import atomic_write
from piecewise_crf.inference import Predictor
from piecewise_crf.metrics import ConfusionMatrix

BATCH_SIZE = 4  # same-size images per forward pass when scoring a split
Progress = Callable[[int], None]  # called with the number of images just done


def open_dataset(
    config: Config,
    split: str,
    *,
    name: str | None = None,
    root: str | Path | None = None,
    transforms: Any = None,
) -> Dataset:
    """`split` of the config's dataset at `root` (default `data.root`), or of another dataset
    `name` at `root`; a "folder" dataset gets its classes and void values from the config,
    since its files do not say them (an unset `model.num_classes`: it counts its labels)."""
    data = config.data
    own = name is None or name == data.dataset
    name = data.dataset if name is None else name
    extra: dict[str, Any] = {}
    if name == "folder":
        extra = {"num_classes": config.model.num_classes}
        if own:
            extra.update(class_names=list(data.class_names) or None)
            extra.update(palette=list(data.palette) or None)
            extra.update(ignore_values=data.ignore_values)
    root = data.root if own and root is None else root
    return build_dataset(name, root, split, transforms=transforms, **extra)


def open_split(
    config: Config,
    classes: Sequence[str],
    split: str,
    *,
    name: str | None = None,
    root: str | Path | None = None,
) -> Dataset:
    """`open_dataset`, refused unless its classes are the model's `classes`."""
    data = open_dataset(config, split, name=name, root=root)
    check_classes(classes, list(data.classes), f"dataset {name or config.data.dataset!r}")
    return data


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
    progress: Progress | None = None,
) -> dict[str, ConfusionMatrix]:
    """Confusion matrices per stage over `dataset` (or the given `indices` of it), at full
    resolution, same-size consecutive images in batches. In distributed runs pass each rank its
    shard of indices and call `ConfusionMatrix.all_reduce` on the result."""
    stages = predictor.stages if stages is None else tuple(stages)
    k = predictor.model.num_classes
    ignore = getattr(dataset, "ignore_index", predictor.model.ignore_index)
    matrices = {name: ConfusionMatrix(k, ignore) for name in stages}
    indices = list(range(len(dataset)) if indices is None else indices)
    for images, labels in batches(dataset, indices, batch_size):
        for name, probs in predictor(images, stages).items():
            matrices[name].update(probs.argmax(1).cpu(), labels)
        if progress is not None:
            progress(len(images))
    return matrices


def mean_classes(dataset: Dataset) -> Sequence[int] | None:
    """The classes metric means average over: all (None), unless the dataset says otherwise."""
    return dataset.mean_classes() if hasattr(dataset, "mean_classes") else None


def summarise(
    matrices: dict[str, ConfusionMatrix],
    classes: Sequence[str],
    mean_over: Sequence[int] | None = None,
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
        metrics = {k: clean(v) for k, v in cm.compute(mean_over).items()}
        metrics["classes"] = list(classes)
        out[name] = metrics
    return out


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, '-' for None (a metric that is not defined)."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


SUMMARY_ROWS = {
    "mean_iou": "mean IoU",
    "pixel_accuracy": "pixel acc",
    "mean_accuracy": "mean acc",
    "frequency_weighted_iou": "fw IoU",
}


def format_table(results: dict[str, dict[str, Any]], classes: Sequence[str]) -> str:
    """Per-class IoU (%) for every stage, then the means."""
    stages = list(results)
    width = max(12, *(len(c) for c in classes))
    cols = [max(9, len(s)) for s in stages]

    def line(label: str, cells: Iterable[str]) -> str:
        row = "  ".join(f"{v:>{c}}" for v, c in zip(cells, cols, strict=True))
        return f"{label:<{width}}  {row}"

    head = line("class", stages)
    lines = [head, "-" * len(head)]
    for i, name in enumerate(classes):
        lines.append(line(name, (percent(results[s]["per_class_iou"][i]) for s in stages)))
    lines.append("-" * len(head))
    for key, label in SUMMARY_ROWS.items():
        lines.append(line(label, (percent(results[s][key]) for s in stages)))
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


def describe(crf: CRFConfig) -> str:
    """'raw x0.01, 3 iterations' (plus any ring weights, and ' at most, stop at 0.001' with a
    tolerance): a mean-field setting in a few words."""
    rings = "".join(
        f", {name} rings x{'/'.join(f'{w:.3g}' for w in weights)}"
        for name, weights in crf.ring_weights.items()
    )
    stop = f" at most, stop at {crf.tolerance:g}" if crf.tolerance > 0 else ""
    return f"{crf.pairwise_mode} x{crf.pairwise_scale:g}{rings}, {crf.iterations} iterations{stop}"


def subset_indices(n: int, limit: int | None) -> list[int]:
    """`limit` images spread evenly over a split of `n` (all of them without a limit).

    Spread rather than the first ones: validation sets are often ordered by sequence or scene.
    """
    if n == 0:
        raise ValueError("the split has no images")
    if limit is not None and limit < 1:
        raise ArgumentError(
            lambda name: f"{name('limit')} must be a positive number of images, got {limit}"
        )
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})
