"""`piecewise-crf tune-dense-crf`: grid search of the dense-CRF parameters on validation images.

As DeepLab did, the model is fixed and only the boundary-refinement parameters are searched. For
each image the model's CRF marginals (the checkpoint's crf settings, upsampled to full
resolution) are computed once; the dense CRF then runs for every parameter combination, and
each combination (plus the no-dense baseline, the "crf" stage) accumulates its own confusion
matrix. Lattices are shared: the bilateral lattice is built once per image and (xy, rgb) std,
the Gaussian one once per image size and xy std, so weights and iterations come almost free.
The dense CRF itself is `piecewise_crf.densecrf` run exactly as the "crf+dense" stage of
`evaluate` runs it (on the CPU the numbers are identical).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from piecewise_crf.config import DenseCRFConfig
from piecewise_crf.evaluate import describe, open_split, subset_indices, summarise, write_json
from piecewise_crf.files import refuse_overwriting_inputs
from piecewise_crf.inference import Predictor
from piecewise_crf.metrics import ConfusionMatrix
from piecewise_crf.runtime import ensure_writable

BASELINE = "crf (no dense)"

# DeepLab's search (Chen et al. 2015, sec. 4.1): w1 in 3..5, sigma_alpha (xy) 50..80,
# sigma_beta (rgb) 3..13 for the bilateral kernel; the Gaussian kernel fixed near w2 = 3, 1..3.
DEFAULT_GRID = {
    "bi_weight": (3.0, 4.0, 5.0),
    "bi_xy_std": (50.0, 67.0, 80.0),
    "bi_rgb_std": (3.0, 5.0, 10.0, 13.0),
    "pos_weight": (3.0,),
    "pos_xy_std": (1.0, 3.0),
    "iterations": (5,),
}


def params(dense: DenseCRFConfig) -> dict[str, Any]:
    """A grid point's parameters: the dense_crf section without `enabled`."""
    return {k: v for k, v in asdict(dense).items() if k != "enabled"}


def set_line(dense: DenseCRFConfig) -> str:
    """Ready to paste after a command's `--set`."""
    return " ".join(f"dense_crf.{k}={_num(v)}" for k, v in params(dense).items())


def yaml_section(dense: DenseCRFConfig) -> str:
    return "dense_crf:\n" + "".join(f"  {k}: {_num(v)}\n" for k, v in params(dense).items())


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def dense_grid(
    bi_weights: Sequence[float] = DEFAULT_GRID["bi_weight"],
    bi_xy_stds: Sequence[float] = DEFAULT_GRID["bi_xy_std"],
    bi_rgb_stds: Sequence[float] = DEFAULT_GRID["bi_rgb_std"],
    pos_weights: Sequence[float] = DEFAULT_GRID["pos_weight"],
    pos_xy_stds: Sequence[float] = DEFAULT_GRID["pos_xy_std"],
    iterations: Sequence[int] = DEFAULT_GRID["iterations"],
) -> list[DenseCRFConfig]:
    """Every combination of the given values (duplicates dropped), validated."""

    def values(name: str, given: Sequence[Any], positive: bool, integer: bool = False) -> list:
        flag = "--" + name.replace("_", "-") + ("" if name == "iterations" else "s")
        given = list(given)
        if not given:
            raise ValueError(f"{flag}: the grid needs at least one value")
        out = []
        for v in given:
            if integer:
                if isinstance(v, bool) or not float(v).is_integer() or v < 0:
                    raise ValueError(f"{flag}: iterations must be non-negative integers, got {v!r}")
                v = int(v)
            else:
                v = float(v)
                if not math.isfinite(v) or v < 0 or (positive and v == 0):
                    kind = "positive" if positive else "non-negative"
                    raise ValueError(f"{flag}: values must be finite and {kind}, got {v!r}")
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


def _refine_grid(
    image: Tensor, probs: Tensor, grid: Sequence[DenseCRFConfig], device: torch.device
) -> list[Tensor]:
    """Labels (H, W) for every grid point: `dense_crf` on one image, lattices shared.

    Same steps as `dense_crf(rgb, probs, ...)` for one image: uint8 RGB as `evaluate.refine`
    makes it, unary log(max(p, 1e-5)), Potts mean-field over the Gaussian + bilateral lattices.
    """
    from piecewise_crf.densecrf import bilateral_kernel, gaussian_kernel, mean_field, unary_scores

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
    progress: bool = False,
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
    for i in tqdm(indices, desc="tune dense CRF", disable=not progress, dynamic_ncols=True):
        image, label = dataset[i]
        image = image.to(predictor.device)
        probs = predictor(image[None], stages=("crf",))["crf"][0]
        baseline.update(probs.argmax(0).cpu(), label)
        refined = _refine_grid(image, probs, grid, predictor.device)
        for cm, pred in zip(matrices, refined, strict=True):
            cm.update(pred, label)
    return baseline, matrices


def rank_results(
    baseline: ConfusionMatrix,
    matrices: Sequence[ConfusionMatrix],
    grid: Sequence[DenseCRFConfig],
    classes: Sequence[str],
    mean_classes: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Baseline metrics and one row per grid point (params + metrics), best mean IoU first."""
    names = [BASELINE, *(str(i) for i in range(len(grid)))]
    summary = summarise(dict(zip(names, [baseline, *matrices], strict=True)), classes, mean_classes)
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


def tune_dense_crf_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    split: str = "val",
    limit: int | None = None,
    grid: Sequence[DenseCRFConfig] | None = None,
    pairwise_mode: str | None = None,
    pairwise_scale: float | None = None,
    json_path: str | Path | None = None,
    device: str = "auto",
    top: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """`piecewise-crf tune-dense-crf`: grid-search the dense CRF for a checkpoint on a split.

    The CRF marginals use the checkpoint's crf settings, or `pairwise_mode` / `pairwise_scale`
    when given (tune the dense CRF on the CRF you will use). Prints the ranking, the best setting
    as a `--set` line and as YAML; writes every result to `json_path`. Returns what the JSON holds.
    """
    grid = dense_grid() if grid is None else list(grid)
    if not grid:
        raise ValueError("the dense-CRF grid is empty")
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit}")
    if json_path is not None:
        refuse_overwriting_inputs([json_path], [checkpoint], "--json", suffix=".json")
        ensure_writable(Path(json_path).parent)
    given = {"pairwise_mode": pairwise_mode, "pairwise_scale": pairwise_scale}
    overrides = {key: value for key, value in given.items() if value is not None}
    predictor = Predictor.from_checkpoint(checkpoint, device=device, **overrides)
    config, crf = predictor.config, predictor.crf
    data, name = open_split(predictor, dataset, root, split)
    classes = list(data.classes)
    indices = subset_indices(len(data), limit)
    print(
        f"{name} {split}: {len(indices)} of {len(data)} images, CRF {describe(crf)}, "
        f"{len(grid)} dense-CRF settings"
    )
    baseline, matrices = tune_dense_crf(predictor, data, grid, indices=indices, progress=progress)
    mean_classes = data.mean_classes() if hasattr(data, "mean_classes") else None
    base, rows = rank_results(baseline, matrices, grid, classes, mean_classes)
    best = DenseCRFConfig(**rows[0]["params"])
    result = {
        "dataset": name,
        "split": split,
        "images": len(indices),
        "indices": indices,
        "classes": classes,
        "crf": asdict(crf),
        "checkpoint_dense_crf": asdict(config.dense_crf),
        "baseline": base,
        "best": rows[0],
        "results": rows,
    }
    print(format_ranking(base, rows, top))
    print(f"best dense CRF (mean IoU {100 * (rows[0]['mean_iou'] or 0):.2f}):")
    print(f"  --set {set_line(best)}")
    print(yaml_section(best).rstrip())
    if json_path is not None:
        write_json(result, json_path)
        print(f"all {len(rows)} results written to {json_path}")
    return result
