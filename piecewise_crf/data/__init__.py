"""Segmentation datasets in their real on-disk formats, joint transforms, and `build_dataset`.

Every dataset yields (image (3, H, W) float32 RGB in [0, 1], label (H, W) int64) with classes
0..K-1 and 255 = ignore, and has `classes`, `palette`, `num_classes`, `ignore_index`, `names`.
"""

from __future__ import annotations

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

DATASETS = ("camvid", "voc", "context", "nyud", "siftflow", "folder", "synthetic")


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    transforms: JointTransform | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Open dataset `name` (one of DATASETS) at `root`; extra keywords go to its class
    (e.g. `num_classes` for "folder", `sbd_root` for "voc", `test_list` for "siftflow").
    "nyud" reads the labeled .mat when `root` holds it, else the image/ + label40/ folders."""
    name = name.lower()
    if name == "synthetic":  # generated, so it has no root
        return SyntheticContext.split(split, transforms=transforms)
    if root is None:
        raise ValueError(
            f"dataset {name!r} needs its folder: pass --data-root DIR or set data.root"
        )
    if name == "camvid":
        cls = CamVid
    elif name == "voc":
        cls = VOCSegmentation
    elif name == "context":
        cls = PascalContext
    elif name == "nyud":
        cls = NYUDv2 if (Path(root) / "nyu_depth_v2_labeled.mat").is_file() else NYUDv2Folder
    elif name == "siftflow":
        cls = SiftFlow
    elif name == "folder":
        cls = FolderDataset
    else:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return cls(root, split, transforms=transforms, **kwargs)


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
]
