"""Evaluation: one pass over a split scores every prediction stage.

Stages, each a (K, H, W) probability map at full image resolution:
  unary      softmax of the Unary-Net scores, upsampled
  crf        mean-field marginals on the node grid, upsampled (the checkpoint's crf settings)
  crf+dense  the dense CRF (boundary refinement) applied to the crf marginals
A sweep adds stages "crf[mode,scale]" computed from the same potentials, so choosing the pairwise
mode and scale on validation data costs one forward pass per image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from piecewise_crf.checkpoint import check_classes, load_checkpoint, model_from_checkpoint
from piecewise_crf.config import CRFConfig, DenseCRFConfig
from piecewise_crf.densecrf import dense_crf
from piecewise_crf.files import atomic_write, atomic_write_text, refuse_overwriting_inputs
from piecewise_crf.metrics import ConfusionMatrix
from piecewise_crf.model import DeepStructuredModel
from piecewise_crf.runtime import amp_dtype, ensure_writable, open_dataset, resolve_device


@dataclass(frozen=True)
class CRFSetting:
    """One way of running mean-field: iterations, pairwise mode and scale."""

    iterations: int = 3
    mode: str = "raw"
    scale: float = 1.0

    @classmethod
    def from_config(cls, crf: CRFConfig) -> CRFSetting:
        return cls(crf.iterations, crf.pairwise_mode, crf.pairwise_scale)


def crf_stages(
    main: CRFSetting, sweep_scales: Sequence[float] = (), sweep_modes: Sequence[str] = ()
) -> dict[str, CRFSetting]:
    """{"crf": main} plus "crf[mode,scale]" for every swept (mode, scale) pair."""
    stages = {"crf": main}
    for mode in sweep_modes:
        for scale in sweep_scales:
            stages[f"crf[{mode},{scale:g}]"] = CRFSetting(main.iterations, mode, scale)
    return stages


def _resize(probs: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def stage_probabilities(
    model: DeepStructuredModel,
    image: Tensor,
    crf: dict[str, CRFSetting],
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Probabilities (K, H, W) per stage for one image (3, H, W) in [0, 1], on its device.

    With several test scales or flipping, the marginals of every variant are averaged at full
    resolution (mean-field runs on each variant's own grid).
    """
    size = tuple(image.shape[-2:])
    sums: dict[str, Tensor] = {}
    variants = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    for scale, flipped in variants:
        x = image[None]
        if scale != 1.0:
            scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False, antialias=True)
        if flipped:
            x = x.flip(-1)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            potentials = model(x)
        grids = {"unary": potentials.unary.float().softmax(1)}
        for name, s in crf.items():
            grids[name] = model.marginals(
                potentials, iterations=s.iterations, pairwise_mode=s.mode, pairwise_scale=s.scale
            )
        for name, grid in grids.items():
            probs = _resize(model.upsample(grid, tuple(x.shape[-2:])), size)
            if flipped:
                probs = probs.flip(-1)
            sums[name] = sums[name] + probs if name in sums else probs
    return {name: (total / len(variants))[0] for name, total in sums.items()}


def refine(image: Tensor, probs: Tensor, dense: DenseCRFConfig) -> Tensor:
    """The crf+dense stage: dense CRF on the full-resolution uint8 image, on probs' device."""
    rgb = (image.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8)
    return dense_crf(
        rgb,
        probs.float(),
        iterations=dense.iterations,
        pos_xy_std=dense.pos_xy_std,
        pos_weight=dense.pos_weight,
        bi_xy_std=dense.bi_xy_std,
        bi_rgb_std=dense.bi_rgb_std,
        bi_weight=dense.bi_weight,
    )


def predict_stages(
    model: DeepStructuredModel,
    image: Tensor,
    crf: dict[str, CRFSetting],
    dense: DenseCRFConfig | None,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """All stages for one image, "crf+dense" included when `dense` settings are given."""
    probs = stage_probabilities(model, image, crf, scales=scales, flip=flip, amp_dtype=amp_dtype)
    if dense is not None and "crf" in probs:
        probs["crf+dense"] = refine(image, probs["crf"], dense)
    return probs


def evaluate_model(
    model: DeepStructuredModel,
    dataset: Dataset,
    crf: dict[str, CRFSetting],
    *,
    dense: DenseCRFConfig | None = None,
    device: str | torch.device = "cpu",
    indices: Iterable[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, ConfusionMatrix]:
    """Confusion matrices per stage over `dataset` (or the given `indices` of it).

    Items are (image (3, H, W) in [0, 1], label (H, W)) at full resolution, one at a time (images
    may differ in size). In distributed runs pass each rank its shard of indices and call
    `ConfusionMatrix.all_reduce` on the result.
    """
    k = model.num_classes
    ignore = getattr(dataset, "ignore_index", model.ignore_index)
    stages = ["unary", *crf] + (["crf+dense"] if dense is not None and "crf" in crf else [])
    matrices = {name: ConfusionMatrix(k, ignore) for name in stages}
    indices = list(range(len(dataset)) if indices is None else indices)
    was_training = model.training
    model.eval()
    try:
        for i in tqdm(indices, desc="evaluate", disable=not progress, dynamic_ncols=True):
            image, label = dataset[i]
            probs = predict_stages(
                model,
                image.to(device),
                crf,
                dense,
                scales=scales,
                flip=flip,
                amp_dtype=amp_dtype,
            )
            for name, p in probs.items():
                matrices[name].update(p.argmax(0).cpu(), label)
    finally:
        model.train(was_training)
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


def open_for_inference(
    checkpoint: str | Path,
    dataset: str | None,
    root: str | Path | None,
    split: str,
    device: str,
) -> tuple[DeepStructuredModel, Any, Dataset, str, torch.device]:
    """Load a checkpoint's model onto `device` and open a split of its (or the named) dataset.

    Returns (model, config, dataset, dataset name, device); the dataset's classes must match
    the checkpoint's.
    """
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(ckpt, str(checkpoint))
    name = dataset or config.data.dataset
    root = root if root is not None else config.data.root
    data = open_dataset(name, root, split, num_classes=config.model.num_classes)
    check_classes(ckpt, list(data.classes), f"dataset {name!r}")
    dev = resolve_device(device)
    return model.to(dev), config, data, name, dev


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
    refuse_overwriting_inputs([json_path], [checkpoint], "--json")
    refuse_overwriting_inputs([confusion_path], [checkpoint], "--confusion")
    for path in (json_path, confusion_path):
        if path is not None:
            ensure_writable(Path(path).parent)
    model, config, data, name, dev = open_for_inference(checkpoint, dataset, root, split, device)
    if box_fraction is not None:
        model.set_prediction_box(box_fraction)
    classes = list(data.classes)
    main = CRFSetting(
        config.crf.iterations if iterations is None else iterations,
        pairwise_mode or config.crf.pairwise_mode,
        config.crf.pairwise_scale if pairwise_scale is None else pairwise_scale,
    )
    crf = crf_stages(main, sweep_scales, sweep_modes if sweep_scales else ())
    use_dense = dense and config.dense_crf.enabled
    notes = []
    indices = subset_indices(len(data), limit)
    matrices = evaluate_model(
        model,
        data,
        crf,
        dense=config.dense_crf if use_dense else None,
        device=dev,
        indices=indices,
        scales=scales,
        flip=flip,
        amp_dtype=amp_dtype(dev, config.train.amp),
        progress=progress,
    )
    if not use_dense:
        notes.append("crf+dense skipped: dense CRF disabled")
    mean_classes = data.mean_classes() if hasattr(data, "mean_classes") else None
    results = summarise(matrices, classes, mean_classes)
    box = model.prediction_box or config.model.box_fraction
    print(f"{name} {split}: {len(indices)} of {len(data)} images, CRF {main}, box {box:g}")
    print(format_table(results, classes))
    for note in notes:
        print(f"note: {note}")
    if json_path is not None:
        write_json(results, json_path)
        print(f"metrics written to {json_path}")
    if confusion_path is not None:
        plot_confusion(matrices, classes, confusion_path)
        print(f"confusion matrices written to {confusion_path}")
    return results
