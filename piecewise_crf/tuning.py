"""Tuning the dense CRF: a grid search of its parameters on held-out images.

As DeepLab did, the model is fixed and only the boundary-refinement parameters are searched. For
each image the model's CRF marginals (the checkpoint's crf settings, upsampled to full
resolution) are computed once; the dense CRF then runs for every parameter combination, and
each combination (plus the no-dense baseline, the "crf" stage) accumulates its own confusion
matrix. Lattices are shared: the bilateral lattice is built once per image and (xy, rgb) std,
the Gaussian one once per image size and xy std, so weights and iterations come almost free.
The dense CRF itself is `permutocrf` run exactly as the "crf+dense" stage of
`evaluate` runs it (on the CPU the numbers are identical).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from permutocrf import bilateral_kernel, gaussian_kernel, mean_field, unary_scores
from piecewise_crf.config import DENSE_GRID, DenseCRFConfig
from piecewise_crf.errors import ArgumentError
from piecewise_crf.evaluation import Progress, summarise
from piecewise_crf.inference import Predictor
from piecewise_crf.metrics import ConfusionMatrix

BASELINE = "crf (no dense)"


def params(dense: DenseCRFConfig) -> dict[str, Any]:
    """A grid point's parameters: the dense_crf section without `enabled`."""
    return {k: v for k, v in asdict(dense).items() if k != "enabled"}


def dense_grid(
    bi_weights: Sequence[float] = DENSE_GRID["bi_weight"],
    bi_xy_stds: Sequence[float] = DENSE_GRID["bi_xy_std"],
    bi_rgb_stds: Sequence[float] = DENSE_GRID["bi_rgb_std"],
    pos_weights: Sequence[float] = DENSE_GRID["pos_weight"],
    pos_xy_stds: Sequence[float] = DENSE_GRID["pos_xy_std"],
    iterations: Sequence[int] = DENSE_GRID["iterations"],
) -> list[DenseCRFConfig]:
    """Every combination of the given values (duplicates dropped), validated."""

    def values(name: str, given: Sequence[Any], positive: bool, integer: bool = False) -> list:
        parameter = name if name == "iterations" else f"{name}s"  # dense_grid's keyword

        def refuse(need: str) -> ArgumentError:
            return ArgumentError(lambda spell: f"{spell(parameter)}: {need}")

        given = list(given)
        if not given:
            raise refuse("the grid needs at least one value")
        out = []
        for v in given:
            if integer:
                if isinstance(v, bool) or not float(v).is_integer() or v < 0:
                    raise refuse(f"iterations must be non-negative integers, got {v!r}")
                v = int(v)
            else:
                v = float(v)
                if not math.isfinite(v) or v < 0 or (positive and v == 0):
                    kind = "positive" if positive else "non-negative"
                    raise refuse(f"values must be finite and {kind}, got {v!r}")
            if v not in out:
                out.append(v)
        return out

    axes = [
        values("bi_weight", bi_weights, positive=False),
        values("bi_xy_std", bi_xy_stds, positive=True),
        values("bi_rgb_std", bi_rgb_stds, positive=True),
        values("pos_weight", pos_weights, positive=False),
        values("pos_xy_std", pos_xy_stds, positive=True),
        values("iterations", iterations, positive=False, integer=True),
    ]
    names = ("bi_weight", "bi_xy_std", "bi_rgb_std", "pos_weight", "pos_xy_std", "iterations")
    return [
        DenseCRFConfig(**dict(zip(names, combo, strict=True))) for combo in itertools.product(*axes)
    ]


def refine_grid(
    image: Tensor, probs: Tensor, grid: Sequence[DenseCRFConfig], device: torch.device
) -> list[Tensor]:
    """Labels (H, W) for every grid point: `dense_crf` on one image, lattices shared.

    Same steps as `dense_crf(rgb, probs, ...)` for one image: uint8 RGB as `inference.refine`
    makes it, unary log(max(p, 1e-5)), Potts mean-field over the Gaussian + bilateral lattices.
    """
    k, h, w = probs.shape
    rgb = (image.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).to(device)
    q = probs.float().to(device)
    logp = unary_scores(q).reshape(k, -1)
    labels: list[Tensor | None] = [None] * len(grid)
    order = sorted(range(len(grid)), key=lambda i: (grid[i].bi_xy_std, grid[i].bi_rgb_std))
    for (xy, rgb_std), group in itertools.groupby(
        order, key=lambda i: (grid[i].bi_xy_std, grid[i].bi_rgb_std)
    ):
        bilateral = bilateral_kernel(rgb, xy, rgb_std, dtype=q.dtype)
        for i in group:
            s = grid[i]
            gauss = gaussian_kernel(h, w, s.pos_xy_std, dtype=q.dtype, device=q.device)
            out = mean_field(logp, [gauss, bilateral], [s.pos_weight, s.bi_weight], s.iterations)
            labels[i] = out.argmax(0).view(h, w).cpu()
    return labels  # type: ignore[return-value]


def tune_dense_crf(
    predictor: Predictor,
    dataset: Dataset,
    grid: Sequence[DenseCRFConfig],
    *,
    indices: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> tuple[ConfusionMatrix, list[ConfusionMatrix]]:
    """Confusion matrices of the baseline (the predictor's crf marginals, no dense CRF) and of
    every grid point. The model runs once per image; the dense CRF on the predictor's device."""
    if not grid:
        raise ValueError("the dense-CRF grid is empty")
    k = predictor.model.num_classes
    ignore = getattr(dataset, "ignore_index", predictor.model.ignore_index)
    baseline = ConfusionMatrix(k, ignore)
    matrices = [ConfusionMatrix(k, ignore) for _ in grid]
    indices = list(range(len(dataset)) if indices is None else indices)
    for i in indices:
        image, label = dataset[i]
        image = image.to(predictor.device)
        probs = predictor(image[None], stages=("crf",))["crf"][0]
        baseline.update(probs.argmax(0).cpu(), label)
        refined = refine_grid(image, probs, grid, predictor.device)
        for cm, pred in zip(matrices, refined, strict=True):
            cm.update(pred, label)
        if progress is not None:
            progress(1)
    return baseline, matrices


def rank_results(
    baseline: ConfusionMatrix,
    matrices: Sequence[ConfusionMatrix],
    grid: Sequence[DenseCRFConfig],
    classes: Sequence[str],
    mean_over: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Baseline metrics and one row per grid point (params + metrics), best mean IoU first."""
    names = [BASELINE, *(str(i) for i in range(len(grid)))]
    summary = summarise(dict(zip(names, [baseline, *matrices], strict=True)), classes, mean_over)
    rows = []
    for i, setting in enumerate(grid):
        metrics = summary[str(i)]
        metrics.pop("classes")
        rows.append({"params": params(setting), **metrics})

    def key(row: dict[str, Any]) -> float:
        v = row["mean_iou"]
        return -math.inf if v is None else v

    rows.sort(key=key, reverse=True)  # stable: ties keep grid order
    base = summary[BASELINE]
    base.pop("classes")
    return base, rows


def format_ranking(baseline: dict[str, Any], rows: Sequence[dict[str, Any]], top: int = 10) -> str:
    """Top `top` grid points by mean IoU, then the baseline; metrics in %."""
    head = (
        f"{'rank':>4}  {'bi_w':>5} {'bi_xy':>6} {'bi_rgb':>6} {'pos_w':>5} {'pos_xy':>6} "
        f"{'iters':>5}  {'mIoU':>6} {'d mIoU':>7} {'pix acc':>7} {'mean acc':>8}"
    )
    lines = [head, "-" * len(head)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    def delta(v: float | None) -> str:
        b = baseline["mean_iou"]
        return "-" if v is None or b is None else f"{100 * (v - b):+.2f}"

    def metrics(r: dict[str, Any]) -> str:
        return (
            f"{pct(r['mean_iou']):>6} {delta(r['mean_iou']):>7} {pct(r['pixel_accuracy']):>7} "
            f"{pct(r['mean_accuracy']):>8}"
        )

    for rank, r in enumerate(rows[:top], 1):
        p = r["params"]
        lines.append(
            f"{rank:>4}  {p['bi_weight']:>5g} {p['bi_xy_std']:>6g} {p['bi_rgb_std']:>6g} "
            f"{p['pos_weight']:>5g} {p['pos_xy_std']:>6g} {p['iterations']:>5}  {metrics(r)}"
        )
    if len(rows) > top:
        lines.append(f"{'...':>4}  ({len(rows) - top} more in the JSON)")
    lines.append("-" * len(head))
    lines.append(f"{'':>4}  {BASELINE:<37}  {metrics(baseline)}")
    return "\n".join(lines)
