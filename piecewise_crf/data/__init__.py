"""Segmentation datasets in their real on-disk formats, joint transforms, and `build_dataset`.

Every dataset yields (image (3, H, W) float32 RGB in [0, 1], label (H, W) int64) with classes
0..K-1 and 255 = ignore, and has `classes`, `palette`, `num_classes`, `ignore_index`, `names`.
`register_dataset` adds a reader of your own under a name that configs can use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from piecewise_crf.data.base import IGNORE_INDEX, JointTransform, SegmentationDataset
from piecewise_crf.data.camvid import CamVid
from piecewise_crf.data.context import PascalContext
from piecewise_crf.data.folder import FolderDataset
from piecewise_crf.data.nyud import NYUDv2, NYUDv2Folder
from piecewise_crf.data.siftflow import SiftFlow
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.data.voc import VOCSegmentation


def _nyud(root: str | Path, split: str, **kwargs: Any) -> SegmentationDataset:
    """The labeled .mat when `root` holds it, else the image/ + label40/ folders."""
    labeled = (Path(root) / "nyu_depth_v2_labeled.mat").is_file()
    return (NYUDv2 if labeled else NYUDv2Folder)(root, split, **kwargs)


# name -> reader, called as reader(root, split, transforms=..., **kwargs)
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "camvid": CamVid,
    "voc": VOCSegmentation,
    "context": PascalContext,
    "nyud": _nyud,
    "siftflow": SiftFlow,
    "folder": FolderDataset,
    "synthetic": SyntheticContext,
}


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: `@register_dataset("cityscapes")` on a reader `cls(root, split, *,
    transforms=None, **kwargs)` makes `data.dataset: cityscapes` open it."""

    def add(reader: Callable[..., Any]) -> Callable[..., Any]:
        if name in DATASETS and DATASETS[name] is not reader:
            raise ValueError(f"a dataset named {name!r} is already registered")
        DATASETS[name] = reader
        return reader

    return add


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    transforms: JointTransform | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Open dataset `name` (a key of DATASETS) at `root`; extra keywords go to its reader
    (e.g. `num_classes` for "folder", `sbd_root` for "voc", `test_list` for "siftflow")."""
    name = name.lower()
    if name == "synthetic":  # generated, so it has no root
        return SyntheticContext.split(split, transforms=transforms)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(
            f"dataset {name!r} needs its folder: pass --data-root DIR or set data.root"
        )
    return DATASETS[name](root, split, transforms=transforms, **kwargs)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "CamVid",
    "FolderDataset",
    "NYUDv2",
    "NYUDv2Folder",
    "PascalContext",
    "SegmentationDataset",
    "SiftFlow",
    "SyntheticContext",
    "VOCSegmentation",
    "build_dataset",
    "register_dataset",
]
