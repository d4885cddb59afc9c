"""Segmentation datasets in their real on-disk formats, joint transforms, and `build_dataset`.

Every dataset yields (image (3, H, W) float32 RGB in [0, 1], label (H, W) int64) with classes
0..K-1 and 255 = ignore, and has `classes`, `palette`, `num_classes`, `ignore_index`, `names`.
`@register_dataset("cityscapes")` on a reader `cls(root, split, *, transforms=None, **kwargs)`
makes `data.dataset: cityscapes` open it; a reader of files calls `base.dataset_root` on `root`
first (FilePairDataset does), so a missing folder is reported the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from piecewise_crf.data.base import IGNORE_INDEX, JointTransform, SegmentationDataset
from piecewise_crf.data.camvid import CamVid
from piecewise_crf.data.context import PascalContext
from piecewise_crf.data.folder import FolderDataset
from piecewise_crf.data.nyud import NYUDv2, NYUDv2Folder, read_nyud
from piecewise_crf.data.siftflow import SiftFlow
from piecewise_crf.data.synthetic import SyntheticContext, read_synthetic
from piecewise_crf.data.voc import VOCSegmentation
from piecewise_crf.registry import Registry

# name -> reader, called as reader(root, split, *, transforms=None, **kwargs)
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
register_dataset = DATASETS.register

register_dataset("camvid")(CamVid)
register_dataset("voc")(VOCSegmentation)
register_dataset("context")(PascalContext)
register_dataset("nyud")(read_nyud)
register_dataset("siftflow")(SiftFlow)
register_dataset("folder")(FolderDataset)
register_dataset("synthetic")(read_synthetic)


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    transforms: JointTransform | None = None,
    **kwargs: Any,
) -> Dataset:
    """Open dataset `name` (a name in DATASETS) at `root` (ignored by "synthetic", which is
    generated); extra keywords go to its reader (e.g. `num_classes` for "folder", `sbd_root` for
    "voc", `test_list` for "siftflow")."""
    return DATASETS[name.lower()](root, split, transforms=transforms, **kwargs)


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
