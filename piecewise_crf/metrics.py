"""Segmentation metrics from a confusion matrix, as defined by Long et al. (FCN, CVPR 2015).

With n_ij the number of pixels of true class i predicted as j and t_i = sum_j n_ij:
pixel accuracy = sum_i n_ii / sum_i t_i, mean accuracy = mean_i n_ii / t_i,
IoU_i = n_ii / (t_i + sum_j n_ji - n_ii), frequency-weighted IoU = sum_i t_i IoU_i / sum_i t_i.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

ArrayLike = np.ndarray | torch.Tensor


def _as_int_tensor(values: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        if not (np.issubdtype(values.dtype, np.integer) and values.dtype != np.bool_):
            raise TypeError(f"{what} must hold integer class ids, got numpy dtype {values.dtype}")
        return torch.from_numpy(values.astype(np.int64, copy=False))
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise TypeError(
                f"{what} must hold integer class ids, got torch dtype {values.dtype} "
                "(take .argmax(dim) of scores first)"
            )
        return values.long()
    raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(values).__name__}")


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


class ConfusionMatrix:
    """Accumulates a (K, K) matrix of counts; row = true class, column = predicted class.

    Pixels whose target equals `ignore_index` are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one batch: `pred` and `target` are integer arrays or tensors of the same shape."""
        p = _as_int_tensor(pred, "pred")
        t = _as_int_tensor(target, "target").to(p.device)
        if p.shape != t.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
        k = self.num_classes
        counted = t != self.ignore_index
        t, p = t[counted], p[counted]
        bad = (t < 0) | (t >= k)
        if bad.any():
            values = sorted(t[bad].unique().tolist())
            raise ValueError(
                f"target holds values {values[:10]} outside 0..{k - 1} that are not the "
                f"ignore index {self.ignore_index}"
            )
        bad = (p < 0) | (p >= k)
        if bad.any():
            values = sorted(p[bad].unique().tolist())
            raise ValueError(f"pred holds values {values[:10]} outside 0..{k - 1}")
        counts = torch.bincount(t * k + p, minlength=k * k)
        self.matrix += counts.reshape(k, k).cpu().numpy()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another shard)."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) "
                f"into a {self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes of an initialised torch.distributed group."""
        if dist.is_available() and dist.is_initialized():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            counts = torch.from_numpy(self.matrix).to(device)
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            self.matrix = counts.cpu().numpy()
        return self

    def per_class_accuracy(self) -> list[float]:
        """n_ii / t_i per class; NaN where the class never occurs in the target."""
        n = self.matrix.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.diag(n) / n.sum(1)).tolist()

    def per_class_iou(self) -> list[float]:
        """IoU per class; NaN where the class is absent from both prediction and target."""
        n = self.matrix.astype(np.float64)
        diag = np.diag(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (diag / (n.sum(1) + n.sum(0) - diag)).tolist()

    def compute(self, classes: Sequence[int] | None = None) -> dict[str, float | list[float]]:
        """All metrics as plain Python numbers.

        `classes` restricts the means (mean accuracy, mean IoU, frequency-weighted IoU) to those
        class ids, e.g. SIFT-flow's classes that occur in its test set. Pixel accuracy and the
        per-class lists always cover every class.
        """
        n = self.matrix.astype(np.float64)
        total = n.sum(1)
        acc = np.array(self.per_class_accuracy())
        iou = np.array(self.per_class_iou())
        subset = np.arange(self.num_classes) if classes is None else np.asarray(classes, int)
        if subset.size and (subset.min() < 0 or subset.max() >= self.num_classes):
            raise ValueError(f"classes must be in 0..{self.num_classes - 1}, got {list(subset)}")
        t_sub = total[subset]
        # A class with t_i = 0 contributes nothing to the weighted sum (its IoU may be 0 or NaN).
        weighted = np.where(t_sub > 0, t_sub * np.nan_to_num(iou[subset]), 0.0).sum()
        return {
            "pixel_accuracy": float(n.trace() / total.sum()) if total.sum() else float("nan"),
            "mean_accuracy": _nanmean(acc[subset]),
            "mean_iou": _nanmean(iou[subset]),
            "frequency_weighted_iou": float(weighted / t_sub.sum())
            if t_sub.sum()
            else float("nan"),
            "per_class_iou": iou.tolist(),
            "per_class_accuracy": acc.tolist(),
        }
